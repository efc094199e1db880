"""Build the offline demo world: corpus, tokenizer, SFT model, second reference, preference sets.

Every step is cached (engine/data/cache.py): its outputs are kept while demo_dir()/manifest.json records the same
key for it; changing a size rebuilds that step and everything downstream; `force=True` rebuilds all.

Layout (paths from engine/paths.py):
  demo_dir()/corpus_train.parquet, corpus_heldout.parquet   text, label (1 positive), prompt, continuation
  demo_dir()/prompts_heldout.parquet                         prompt: evaluation prompts, unseen in SFT and pairs
  demo_dir()/prefs_<objective>_<train|test>.parquet         prompt, chosen, rejected, score_chosen, score_rejected
  demo_dir()/prefs_all_<train|test>.parquet                 the same, all objectives, plus an `objective` column
  models_dir()/tokenizer, models_dir()/sft, models_dir()/ref2
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from engine.data.cache import Step, run_steps
from engine.errors import InputError
from engine.paths import demo_dir, models_dir

VERSION = 3  # bump when the generator or a builder changes what it writes: cached steps are rebuilt


@dataclass(frozen=True)
class DemoScale:
    """Sizes of one demo world. "full" is the demo; "test" is a small world for the test suite."""

    n_train_reviews: int
    n_heldout_reviews: int
    vocab_size: int
    sft: dict
    ref2: dict
    n_pref_train: int
    n_pref_test: int
    n_eval_prompts: int
    max_new_tokens: int

    def __post_init__(self) -> None:
        if self.n_pref_train > self.n_train_reviews:
            raise InputError(f"n_pref_train ({self.n_pref_train}) must not exceed n_train_reviews")
        if self.n_eval_prompts + self.n_pref_test > self.n_heldout_reviews:
            raise InputError("n_eval_prompts + n_pref_test must not exceed n_heldout_reviews: both come from "
                             "held-out reviews and must not overlap")


# sft: the policy/reference every method starts from. ref2: the second reference for MRPO, deliberately different:
# another seed, a smaller network, and a data mix of every positive review but only half of the negative ones
# (negative_share). Model fields are engine.models.LMSpec's.
SCALES: dict[str, DemoScale] = {
    "full": DemoScale(n_train_reviews=12000, n_heldout_reviews=1000, vocab_size=2048,
                      sft={"hidden_size": 128, "num_layers": 2, "intermediate_size": 384, "steps": 200,
                           "batch_size": 16, "lr": 3e-3, "seed": 0},
                      ref2={"hidden_size": 96, "num_layers": 2, "intermediate_size": 256, "steps": 100,
                            "batch_size": 16, "lr": 3e-3, "seed": 1, "negative_share": 0.5},
                      n_pref_train=2000, n_pref_test=200, n_eval_prompts=200, max_new_tokens=80),
    "test": DemoScale(n_train_reviews=1000, n_heldout_reviews=100, vocab_size=2048,
                      sft={"hidden_size": 64, "num_layers": 2, "intermediate_size": 192, "steps": 60,
                           "batch_size": 16, "block_size": 64, "lr": 5e-3, "seed": 0},
                      ref2={"hidden_size": 48, "num_layers": 1, "intermediate_size": 128, "steps": 20,
                            "batch_size": 16, "block_size": 64, "lr": 5e-3, "seed": 1, "negative_share": 0.5},
                      n_pref_train=48, n_pref_test=16, n_eval_prompts=16, max_new_tokens=40),
}


FOLDERS = ("tokenizer", "sft", "ref2")  # the entries of _paths() that are folders


def _paths() -> dict[str, Path]:
    demo, models = demo_dir(), models_dir()
    paths = {name: demo / f"{name}.parquet" for name in ("corpus_train", "corpus_heldout", "prompts_heldout")}
    paths.update({name: models / name for name in FOLDERS})
    for objective in ("sentiment", "conciseness", "all"):
        for split in ("train", "test"):
            paths[f"prefs_{objective}_{split}"] = demo / f"prefs_{objective}_{split}.parquet"
    return paths


def _build_corpus(sizes: DemoScale, seed: int, paths: dict[str, Path]) -> dict:
    from engine.data.demo.corpus import generate_corpus

    corpus = generate_corpus(sizes.n_train_reviews + sizes.n_heldout_reviews, seed=seed)
    paths["corpus_train"].parent.mkdir(parents=True, exist_ok=True)
    corpus.iloc[: sizes.n_train_reviews].to_parquet(paths["corpus_train"], index=False)
    heldout = corpus.iloc[sizes.n_train_reviews:]
    heldout.to_parquet(paths["corpus_heldout"], index=False)
    heldout[["prompt"]].iloc[: sizes.n_eval_prompts].to_parquet(paths["prompts_heldout"], index=False)
    return {"mean_words": float(corpus["text"].str.split().str.len().mean()), "positive_share":
            float(corpus["label"].mean())}


def _build_tokenizer(sizes: DemoScale, paths: dict[str, Path]) -> dict:
    from engine.data.demo.models import train_tokenizer

    texts = pd.read_parquet(paths["corpus_train"])["text"].tolist()
    tokenizer = train_tokenizer(texts, vocab_size=sizes.vocab_size)
    tokenizer.save_pretrained(paths["tokenizer"])
    return {"vocab_size": len(tokenizer)}


def _build_lm(spec_fields: dict, name: str, paths: dict[str, Path], progress: bool) -> dict:
    """Train and save one model on every positive review and the first `negative_share` of the negative ones."""
    from engine.data.demo.models import LMSpec, perplexity, tiny_llama, train_lm
    from engine.models.loading import load_tokenizer

    fields = dict(spec_fields)
    negative_share = fields.pop("negative_share", 1.0)
    spec = LMSpec(**fields)
    tokenizer = load_tokenizer(paths["tokenizer"])
    train = pd.read_parquet(paths["corpus_train"])
    negatives = train.index[train["label"] == 0]
    train = train.drop(negatives[round(len(negatives) * negative_share):])
    model = tiny_llama(tokenizer, spec)
    losses = train_lm(model, tokenizer, train["text"].tolist(), spec, progress=progress, desc=name)
    model.save_pretrained(paths[name])
    tokenizer.save_pretrained(paths[name])
    heldout = pd.read_parquet(paths["corpus_heldout"])["text"].tolist()
    return {"parameters": sum(p.numel() for p in model.parameters()), "final_loss": float(sum(losses[-10:]) / 10),
            "heldout_perplexity": perplexity(model, tokenizer, heldout)}


def _build_preferences(sizes: DemoScale, seed: int, paths: dict[str, Path], progress: bool) -> dict:
    from engine.data.demo.preferences import build_preference_sets
    from engine.models.loading import load_model, load_tokenizer

    model, tokenizer = load_model(paths["sft"]), load_tokenizer(paths["sft"])
    train_prompts = pd.read_parquet(paths["corpus_train"])["prompt"].iloc[: sizes.n_pref_train].tolist()
    heldout = pd.read_parquet(paths["corpus_heldout"])["prompt"]
    test_prompts = heldout.iloc[sizes.n_eval_prompts: sizes.n_eval_prompts + sizes.n_pref_test].tolist()
    written = build_preference_sets(model, tokenizer, {"train": train_prompts, "test": test_prompts},
                                    paths["prefs_all_train"].parent, max_new_tokens=sizes.max_new_tokens,
                                    batch_size=128, seed=seed, progress=progress)
    return {name: len(pd.read_parquet(path)) for name, path in written.items()}


def prepare_demo(force: bool = False, progress: bool = True, scale: str = "full", seed: int = 0,
                 num_threads: int | None = 1) -> dict:
    """Build (or reuse) the demo world and return its paths, per-step metrics, seconds, and what was rebuilt.

    num_threads: torch intra-op threads while building, restored afterwards; None keeps torch's default. The demo
    models are too small to gain from more threads, and on a CPU shared with other jobs the tiny-model SFT ran 8x
    faster with one thread than with two.
    """
    if scale not in SCALES:
        raise InputError(f"scale must be one of {sorted(SCALES)}, got {scale!r}")
    sizes, paths = SCALES[scale], _paths()
    prefs = [p for name, p in paths.items() if name.startswith("prefs_")]
    steps = {
        "corpus": Step([], [sizes.n_train_reviews, sizes.n_heldout_reviews, sizes.n_eval_prompts],
                       [paths["corpus_train"], paths["corpus_heldout"], paths["prompts_heldout"]],
                       lambda: _build_corpus(sizes, seed, paths)),
        "tokenizer": Step(["corpus"], sizes.vocab_size, [paths["tokenizer"] / "tokenizer.json"],
                          lambda: _build_tokenizer(sizes, paths)),
        "sft": Step(["tokenizer"], sizes.sft, [paths["sft"] / "config.json"],
                    lambda: _build_lm(sizes.sft, "sft", paths, progress)),
        "ref2": Step(["tokenizer"], sizes.ref2, [paths["ref2"] / "config.json"],
                     lambda: _build_lm(sizes.ref2, "ref2", paths, progress)),
        "preferences": Step(["sft"], [sizes.n_pref_train, sizes.n_pref_test, sizes.max_new_tokens], prefs,
                            lambda: _build_preferences(sizes, seed, paths, progress)),
    }
    result = run_steps("demo", steps, demo_dir() / "manifest.json", VERSION, seed, scale, force=force,
                       progress=progress, num_threads=num_threads)
    return {**{name: str(path) for name, path in paths.items()}, **result}
