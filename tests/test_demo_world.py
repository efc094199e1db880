"""The offline demo world: generator, SFT quality against a unigram baseline, preference sets, caching."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.data.demo.corpus import MAX_WORDS, generate_corpus, prompt_of
from engine.judges import get_scorer

PREF_COLUMNS = ["prompt", "chosen", "rejected", "score_chosen", "score_rejected"]


def test_generator_is_seeded_and_varied():
    first, again, other = generate_corpus(400, seed=3), generate_corpus(400, seed=3), generate_corpus(400, seed=4)
    pd.testing.assert_frame_equal(first, again)
    assert not first["text"].equals(other["text"])
    words = first["text"].str.split().str.len()
    assert words.min() <= 6 and words.max() <= MAX_WORDS and (words >= 50).mean() > 0.05
    assert 0.4 < first["label"].mean() < 0.6
    longer = first["text"][words > 8]  # one-liners repeat, as "Loved it." does on IMDb; longer reviews must not
    assert len(longer) > 0.8 * len(first) and longer.nunique() == len(longer)
    text = " ".join(first["text"]).lower()
    assert " not " in text and " very " in text and ", but " in text  # negation, intensifiers, concessions


def test_prompts_are_word_prefixes_leaving_a_continuation():
    corpus = generate_corpus(300, seed=7)
    for row in corpus.itertuples():
        assert row.prompt + row.continuation == row.text
        assert row.continuation.startswith(" ") and row.continuation.strip()
        assert 1 <= len(row.prompt.split()) <= 4 and not row.prompt.endswith(" ")
    with pytest.raises(ValueError, match="text"):
        prompt_of("Alone", np.random.default_rng(0))
    with pytest.raises(ValueError, match="n_reviews"):
        generate_corpus(0)


def test_sentiment_judge_agrees_with_generator_labels():
    corpus = generate_corpus(3000, seed=11)
    scores = get_scorer("sentiment").score([""] * len(corpus), corpus["text"].tolist())
    agreement = float(((scores > 0.5).astype(int) == corpus["label"].to_numpy()).mean())
    assert agreement >= 0.95, agreement


def test_sft_perplexity_is_at_most_half_of_unigram(demo_world):
    from engine.data.demo.models import perplexity
    from engine.models.loading import load_model, load_tokenizer

    tokenizer = load_tokenizer(demo_world["sft"])
    train = pd.read_parquet(demo_world["corpus_train"])["text"].tolist()
    heldout = pd.read_parquet(demo_world["corpus_heldout"])["text"].tolist()
    eos = tokenizer.eos_token_id

    def targets(texts):  # the tokens perplexity() predicts: everything after <bos>, plus <eos>
        return [t for ids in tokenizer(texts)["input_ids"] for t in (*ids[1:], eos)]

    counts = Counter(targets(train))
    vocab = len(tokenizer)
    total = sum(counts.values()) + vocab  # add-one smoothing: no held-out token gets probability zero
    test_tokens = targets(heldout)
    unigram = math.exp(-sum(math.log((counts[t] + 1) / total) for t in test_tokens) / len(test_tokens))
    sft = perplexity(load_model(demo_world["sft"]), tokenizer, heldout)
    assert sft <= 0.5 * unigram, (sft, unigram)


def test_every_pair_is_ordered_by_its_objective(demo_world):
    for objective in ("sentiment", "conciseness"):
        scorer = get_scorer(objective)
        for split in ("train", "test"):
            frame = pd.read_parquet(demo_world[f"prefs_{objective}_{split}"])
            assert list(frame.columns) == PREF_COLUMNS and len(frame) > 0
            chosen = scorer.score(frame["prompt"].tolist(), frame["chosen"].tolist())
            rejected = scorer.score(frame["prompt"].tolist(), frame["rejected"].tolist())
            assert (chosen > rejected).all()
            np.testing.assert_allclose(chosen, frame["score_chosen"])
            np.testing.assert_allclose(rejected, frame["score_rejected"])


def test_union_set_and_heldout_prompts(demo_world):
    for split in ("train", "test"):
        union = pd.read_parquet(demo_world[f"prefs_all_{split}"])
        parts = [pd.read_parquet(demo_world[f"prefs_{o}_{split}"]).assign(objective=o)
                 for o in ("sentiment", "conciseness")]
        pd.testing.assert_frame_equal(union, pd.concat(parts, ignore_index=True))
    heldout_prompts = set(pd.read_parquet(demo_world["corpus_heldout"])["prompt"])
    assert set(pd.read_parquet(demo_world["prefs_sentiment_test"])["prompt"]) <= heldout_prompts
    evaluation = pd.read_parquet(demo_world["prompts_heldout"])
    assert list(evaluation.columns) == ["prompt"] and len(evaluation) > 0
    assert set(evaluation["prompt"]) <= heldout_prompts


def test_objectives_disagree_on_common_pairs(demo_world):
    def winners(objective):
        frame = pd.concat([pd.read_parquet(demo_world[f"prefs_{objective}_{s}"]) for s in ("train", "test")])
        return {(r.prompt, frozenset((r.chosen, r.rejected))): r.chosen for r in frame.itertuples()}

    sentiment, conciseness = winners("sentiment"), winners("conciseness")
    common = sentiment.keys() & conciseness.keys()
    assert len(common) >= 30
    disagree = sum(sentiment[k] != conciseness[k] for k in common) / len(common)
    assert 0.2 <= disagree <= 0.8, disagree  # a real trade-off, yet not two mirror images


def test_prepare_is_cached_and_rebuilds_only_what_is_missing(demo_world, monkeypatch):
    from engine.data.demo.prepare import prepare_demo

    monkeypatch.setenv("PREFLAB_DATA", demo_world["root"])
    ref2_config = Path(demo_world["ref2"]) / "config.json"
    before = ref2_config.read_text()
    assert prepare_demo(scale="test", progress=False)["built"] == []
    ref2_config.unlink()
    again = prepare_demo(scale="test", progress=False)
    assert again["built"] == ["ref2"] and ref2_config.read_text() == before
    manifest = json.loads(Path(again["manifest"]).read_text())
    assert manifest["scale"] == "test" and set(manifest["steps"]) == {"corpus", "tokenizer", "sft", "ref2",
                                                                     "preferences"}
    with pytest.raises(ValueError, match="scale"):
        prepare_demo(scale="huge")
