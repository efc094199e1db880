"""Preference pairs for the demo worlds, built as in the MPO paper's IMDb task: sample continuations per prompt from
the SFT model, score them with each objective's judge, keep the best as `chosen` and the worst as `rejected`.

Both objectives label the *same* samples, so their sets can be compared prompt by prompt: where sentiment
prefers the longer, warmer continuation and conciseness the shorter one, there is a real trade-off to mix.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from engine.errors import InputError
from engine.judges import Scorer, get_scorer

# Objective name -> scorer name (engine/judges.py). The MPO paper's IMDb objectives.
OBJECTIVES: dict[str, str] = {"sentiment": "sentiment", "conciseness": "conciseness"}


@torch.no_grad()
def sample_continuations(model: torch.nn.Module, tokenizer, prompts: Sequence[str], n_per_prompt: int = 2,
                         max_new_tokens: int = 96, temperature: float = 1.0, batch_size: int = 64, seed: int = 0,
                         progress: bool = True) -> list[list[str]]:
    """`n_per_prompt` continuations per prompt by plain temperature sampling (top_k=0: generate defaults to 50).

    Continuations are decoded without special tokens and keep their leading space, so prompt + continuation is the
    full text and re-tokenizes with the prompt as a prefix.
    """
    if n_per_prompt < 1 or max_new_tokens < 1 or temperature <= 0:
        raise InputError("n_per_prompt and max_new_tokens must be at least 1 and temperature positive, got "
                         f"{n_per_prompt}, {max_new_tokens}, {temperature}")
    torch.manual_seed(seed)
    model.eval()
    flat = [p for p in prompts for _ in range(n_per_prompt)]
    texts: list[str] = []
    for start in tqdm(range(0, len(flat), batch_size), desc="sampling", disable=not progress, leave=False):
        batch = tokenizer(flat[start:start + batch_size], return_tensors="pt", padding=True,
                          padding_side="left").to(model.device)
        out = model.generate(**batch, do_sample=True, top_k=0, top_p=1.0, temperature=temperature,
                             max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id)
        texts.extend(tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True))
    return [texts[i * n_per_prompt:(i + 1) * n_per_prompt] for i in range(len(prompts))]


def label_pairs(prompts: Sequence[str], samples: Sequence[Sequence[str]], scorer: Scorer) -> pd.DataFrame:
    """One pair per prompt, ordered by `scorer` (higher wins): the best of its samples as `chosen`, the worst as
    `rejected` (with two samples, simply the better and the worse). Empty samples (the model stopped at once) are left
    out, as the loaders refuse empty responses; a prompt whose remaining samples all tie is dropped."""
    flat_prompts = [prompt for prompt, group in zip(prompts, samples) for _ in group]
    flat_scores = np.asarray(scorer.score(flat_prompts, [text for group in samples for text in group]), dtype=float)
    rows, start = [], 0
    for prompt, group in zip(prompts, samples):
        scores, start = flat_scores[start:start + len(group)], start + len(group)
        kept = [i for i, text in enumerate(group) if text.strip()]
        if len(kept) < 2:
            continue
        best = max(kept, key=lambda i: scores[i])
        worst = min(kept, key=lambda i: scores[i])
        if scores[best] > scores[worst]:
            rows.append((prompt, group[best], group[worst], scores[best], scores[worst]))
    return pd.DataFrame(rows, columns=["prompt", "chosen", "rejected", "score_chosen", "score_rejected"])


def build_preference_sets(model: torch.nn.Module, tokenizer, splits: dict[str, Sequence[str]], out_dir: Path,
                          objectives: dict[str, str] = OBJECTIVES, max_new_tokens: int = 96, batch_size: int = 64,
                          seed: int = 0, progress: bool = True, samples_per_prompt: int = 2) -> dict[str, Path]:
    """For every split (e.g. train/test prompts) and objective write prefs_<objective>_<split>.parquet, and the
    union over objectives, prefs_all_<split>.parquet (with an `objective` column), for a DPO-on-everything baseline.

    samples_per_prompt: continuations sampled per prompt; each objective pairs its best with its worst, so more
    samples give wider score gaps, as in on-policy DPO data built with a reward model (e.g. SimPO's, best vs worst
    of 5); 2 is the MPO paper's construction.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    scorers = {name: get_scorer(scorer) for name, scorer in objectives.items()}
    written: dict[str, Path] = {}
    for index, (split, prompts) in enumerate(splits.items()):
        samples = sample_continuations(model, tokenizer, prompts, n_per_prompt=samples_per_prompt,
                                       max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed + index,
                                       progress=progress)
        frames = []
        for name, scorer in scorers.items():
            frame = label_pairs(prompts, samples, scorer)
            written[f"prefs_{name}_{split}"] = _write(frame, out_dir / f"prefs_{name}_{split}.parquet")
            frames.append(frame.assign(objective=name))
        written[f"prefs_all_{split}"] = _write(pd.concat(frames, ignore_index=True),
                                               out_dir / f"prefs_all_{split}.parquet")
    return written


def _write(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_parquet(path, index=False)
    return path
