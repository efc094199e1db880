"""Preference pairs for the demo world, built as in the MPO paper's IMDb task: sample two continuations per
prompt from the SFT model, label the pair with each objective's judge, keep the better one as `chosen`.

Both objectives label the *same* sampled pairs, so their sets can be compared pair by pair: where sentiment
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


def label_pairs(prompts: Sequence[str], a: Sequence[str], b: Sequence[str], scorer: Scorer) -> pd.DataFrame:
    """Pairs ordered by `scorer` (higher wins) with their scores; ties, identical texts included, are dropped, and
    so are pairs with an empty continuation (the model stopped at once): the loaders refuse empty responses."""
    score_a = np.asarray(scorer.score(prompts, a), dtype=float)
    score_b = np.asarray(scorer.score(prompts, b), dtype=float)
    a_wins = score_a > score_b
    frame = pd.DataFrame({
        "prompt": list(prompts),
        "chosen": np.where(a_wins, a, b), "rejected": np.where(a_wins, b, a),
        "score_chosen": np.where(a_wins, score_a, score_b), "score_rejected": np.where(a_wins, score_b, score_a),
    })
    nonempty = np.array([bool(x.strip()) and bool(y.strip()) for x, y in zip(a, b)], dtype=bool)
    return frame[(score_a != score_b) & nonempty].reset_index(drop=True)


def build_preference_sets(model: torch.nn.Module, tokenizer, splits: dict[str, Sequence[str]], out_dir: Path,
                          objectives: dict[str, str] = OBJECTIVES, max_new_tokens: int = 96, batch_size: int = 64,
                          seed: int = 0, progress: bool = True) -> dict[str, Path]:
    """For every split (e.g. train/test prompts) and objective write prefs_<objective>_<split>.parquet, and the
    union over objectives, prefs_all_<split>.parquet (with an `objective` column), for a DPO-on-everything baseline.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    scorers = {name: get_scorer(scorer) for name, scorer in objectives.items()}
    written: dict[str, Path] = {}
    for index, (split, prompts) in enumerate(splits.items()):
        pairs = sample_continuations(model, tokenizer, prompts, n_per_prompt=2, max_new_tokens=max_new_tokens,
                                     batch_size=batch_size, seed=seed + index, progress=progress)
        a, b = [pair[0] for pair in pairs], [pair[1] for pair in pairs]
        frames = []
        for name, scorer in scorers.items():
            frame = label_pairs(prompts, a, b, scorer)
            written[f"prefs_{name}_{split}"] = _write(frame, out_dir / f"prefs_{name}_{split}.parquet")
            frames.append(frame.assign(objective=name))
        written[f"prefs_all_{split}"] = _write(pd.concat(frames, ignore_index=True),
                                               out_dir / f"prefs_all_{split}.parquet")
    return written


def _write(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_parquet(path, index=False)
    return path
