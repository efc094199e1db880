"""The static-cache, bucketed and compiled decode path of engine.decoding.generation
against transformers' plain `generate`
with a dynamic cache (the independent truth: same model, same prompts, greedy), and its bucket bookkeeping.

The compiled path runs on CPU with a counting dynamo backend: it traces exactly what CUDA would compile, and counts
the graphs dynamo hands to the backend, so a recompilation cannot go unnoticed.
"""

import pytest
import torch

from engine.decoding.generation import (
    AUTO_COMPILE_MIN_TOKENS,
    SamplingParams,
    batch_bucket,
    cache_len_bucket,
    decode_plan,
    generate_transformers,
    static_caches,
)
from engine.models.loading import load_model, load_tokenizer

GREEDY = SamplingParams(max_new_tokens=12, temperature=0.0)
# Different lengths, so left padding is exercised; eight prompts cover buckets 4 (3 and 4 prompts) and 8 (5 prompts).
PROMPTS = ["The movie", "I watched this film last night and", "A truly", "Not", "This sequel was",
           "Honestly the acting in this one", "What a", "The director"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def stop_token(tiny_world):
    """The tiny model rarely says EOS within a few tokens, so the tests make its most frequent greedy token the EOS:
    some rows then stop early and are padded while the others decode on."""
    model, tokenizer = load_model(tiny_world.sft, device="cpu"), load_tokenizer(tiny_world.sft)
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True, padding_side="left")
    out = model.generate(**batch, max_new_tokens=GREEDY.max_new_tokens, do_sample=False, eos_token_id=None,
                         pad_token_id=tokenizer.pad_token_id)
    return int(out[:, batch["input_ids"].shape[1]:].flatten().mode().values)


@pytest.fixture
def tokenizer(tiny_world, stop_token):
    tokenizer = load_tokenizer(tiny_world.sft)
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(stop_token)
    return tokenizer


@pytest.fixture
def model(tiny_world, stop_token):
    """A fresh model per test, so the module's per-model caches start empty."""
    model = load_model(tiny_world.sft, device="cpu")
    model.generation_config.eos_token_id = stop_token
    return model


def _plain_generate(model, tokenizer, prompts):
    """transformers' own greedy generate, dynamic cache, one batch: continuations cut at EOS."""
    batch = tokenizer(list(prompts), return_tensors="pt", padding=True, padding_side="left")
    out = model.generate(**batch, max_new_tokens=GREEDY.max_new_tokens, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id)
    texts = []
    for row in out[:, batch["input_ids"].shape[1]:].tolist():
        row = row[:row.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in row else row
        texts.append(tokenizer.decode([i for i in row if i != tokenizer.pad_token_id], skip_special_tokens=True))
    return texts


def test_buckets_by_hand():
    assert [batch_bucket(n, 64) for n in (1, 2, 3, 4, 5, 33, 64)] == [1, 2, 4, 4, 8, 64, 64]
    assert [batch_bucket(n, 48) for n in (17, 33, 48)] == [32, 48, 48]  # capped: a full batch is never padded
    assert [cache_len_bucket(n) for n in (1, 64, 65, 140, 256, 257)] == [64, 64, 128, 256, 256, 512]
    with pytest.raises(ValueError, match="rows"):
        batch_bucket(9, 8)


def test_decode_plan_defaults_and_refusals():
    big = AUTO_COMPILE_MIN_TOKENS
    assert decode_plan("auto", None, "cpu", 10 * big) == (False, None)  # CPU default unchanged: dynamic, eager
    assert decode_plan("auto", None, "cuda", big - 1) == (False, None)  # too small to repay a compile
    static, options = decode_plan("auto", None, "cuda", big)
    assert static and options == {"fullgraph": False, "dynamic": False}
    assert decode_plan("static", None, "cpu", 1) == (True, None)
    assert decode_plan("static", None, "cuda", 1)[1] is not None
    assert decode_plan("static", False, "cuda", big) == (True, None)
    assert decode_plan("auto", {"mode": "max-autotune"}, "cpu", 1)[1]["mode"] == "max-autotune"
    with pytest.raises(ValueError, match="cache: must be one of"):
        decode_plan("paged", None, "cpu", 1)
    with pytest.raises(ValueError, match="compile: compiling the decode step needs cache='static'"):
        decode_plan("dynamic", True, "cpu", 1)
    with pytest.raises(ValueError, match="compile: must be"):
        decode_plan("static", "yes", "cpu", 1)


@pytest.mark.parametrize("batch_size", [8, 3])
def test_static_bucketed_greedy_equals_plain_generate(model, tokenizer, batch_size):
    """8 prompts in one batch, or in batches of 3, 3, 2 (buckets 3, 3, 2): token for token the plain output."""
    expected = _plain_generate(model, tokenizer, PROMPTS)
    static = generate_transformers(model, tokenizer, PROMPTS, GREEDY, batch_size=batch_size, cache="static",
                                   compile=False)
    dynamic = generate_transformers(model, tokenizer, PROMPTS, GREEDY, batch_size=batch_size, cache="dynamic")
    assert static.texts == dynamic.texts == expected
    assert static.num_tokens == dynamic.num_tokens
    assert min(static.num_tokens) < max(static.num_tokens) == GREEDY.max_new_tokens, "rows should stop apart"


def test_cache_entry_reused_within_a_bucket(model, tokenizer):
    generate_transformers(model, tokenizer, PROMPTS[:3], GREEDY, batch_size=8, cache="static", compile=False)
    first = static_caches(model)
    assert [key[:2] for key in first] == [(4, 64)]
    generate_transformers(model, tokenizer, PROMPTS[3:7], GREEDY, batch_size=8, cache="static", compile=False)
    again = static_caches(model)
    assert again.keys() == first.keys() and all(again[k] is first[k] for k in first)  # 4 prompts: the same cache
    generate_transformers(model, tokenizer, PROMPTS[:5], GREEDY, batch_size=8, cache="static", compile=False)
    assert sorted(key[:2] for key in static_caches(model)) == [(4, 64), (8, 64)]


def test_compiled_decode_compiles_once_per_bucket(model, tokenizer):
    graphs = []

    def counting_backend(graph_module, example_inputs, **options):
        graphs.append(graph_module)
        return graph_module.forward

    compile = {"backend": counting_backend}
    try:
        first = generate_transformers(model, tokenizer, PROMPTS[:3], GREEDY, batch_size=8, compile=compile)
        second = generate_transformers(model, tokenizer, PROMPTS[3:7], GREEDY, batch_size=8, compile=compile)
        assert len(graphs) == 1, "a second batch size in the same bucket recompiled"
        third = generate_transformers(model, tokenizer, PROMPTS[:5], GREEDY, batch_size=8, compile=compile)
        assert len(graphs) == 2  # bucket 8: one more graph
    finally:
        torch._dynamo.reset()  # leave no compiled code behind for other tests
    assert first.texts + second.texts == _plain_generate(model, tokenizer, PROMPTS[:7])
    assert third.texts == _plain_generate(model, tokenizer, PROMPTS[:5])
