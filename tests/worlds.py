"""Tiny offline worlds for tests: a tokenizer and Llama models trained in seconds on demo reviews.

Built once per test session (see the `tiny_world` fixture in conftest.py) and referred to by absolute paths, so
each test can still use a data folder of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from engine.data.demo.corpus import generate_corpus
from engine.data.demo.models import LMSpec, tiny_llama, train_lm, train_tokenizer

SPEC = LMSpec(hidden_size=48, num_layers=1, num_heads=2, intermediate_size=96, steps=60, batch_size=16,
              block_size=64, lr=3e-3, seed=0)


@dataclass(frozen=True)
class TinyWorld:
    root: Path
    sft: Path  # tokenizer + SFT model
    ref2: Path  # a second reference: same tokenizer, other seed and size
    other_tokenizer_ref: Path  # a reference with a different tokenizer (MRPO re-tokenization)
    prefs_train: Path  # prompt/chosen/rejected: positive continuation preferred over negative
    prefs_test: Path
    prompts: Path


def save_tiny_lm(folder: Path, tokenizer, spec: LMSpec, texts: list[str] | None = None):
    """A tiny Llama of `spec`, trained on `texts` when given (left random otherwise), saved with its tokenizer in
    `folder`; returns the model."""
    model = tiny_llama(tokenizer, spec)
    if texts:
        train_lm(model, tokenizer, texts, spec, progress=False)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


def sentiment_pairs(corpus: pd.DataFrame) -> pd.DataFrame:
    """Pairs sharing a prompt where the chosen continuation comes from a positive review, the rejected a negative."""
    pos = corpus[corpus.label == 1].reset_index(drop=True)
    neg = corpus[corpus.label == 0].reset_index(drop=True)
    n = min(len(pos), len(neg))
    return pd.DataFrame({"prompt": pos.prompt[:n], "chosen": pos.continuation[:n],
                         "rejected": neg.continuation[:n]}).query("chosen != rejected")


def build_tiny_world(root: Path) -> TinyWorld:
    corpus = generate_corpus(400, seed=0)
    tokenizer = train_tokenizer(corpus.text.tolist(), vocab_size=400, model_max_length=128)
    other_tokenizer = train_tokenizer(corpus.text.tolist()[:200], vocab_size=320, model_max_length=128)
    paths = {name: root / "models" / name for name in ("sft", "ref2", "other_tok_ref")}
    # Only the SFT model is trained: the other references just need to be different models.
    save_tiny_lm(paths["sft"], tokenizer, SPEC, corpus.text.tolist())
    save_tiny_lm(paths["ref2"], tokenizer, LMSpec(**{**SPEC.__dict__, "hidden_size": 32, "seed": 1}))
    save_tiny_lm(paths["other_tok_ref"], other_tokenizer, SPEC)
    pairs = sentiment_pairs(corpus)
    (root / "demo").mkdir(parents=True, exist_ok=True)
    train, test = root / "demo" / "prefs_train.parquet", root / "demo" / "prefs_test.parquet"
    pairs.iloc[:96].to_parquet(train)
    pairs.iloc[96:128].to_parquet(test)
    prompts = root / "demo" / "prompts.parquet"
    corpus[["prompt"]].drop_duplicates().iloc[:16].to_parquet(prompts)
    return TinyWorld(root, paths["sft"], paths["ref2"], paths["other_tok_ref"], train, test, prompts)
