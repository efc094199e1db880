"""Mixed decoding (engine/mixed_decoding.py) against independent truth: transformers' own `generate`, full forwards
without a KV cache, and the sequence-level mixture enumerated over every two-token continuation."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from engine.data.demo.corpus import generate_corpus
from engine.data.demo.models import LMSpec, tiny_llama, train_tokenizer
from engine.decoding.generation import SamplingParams, generate_transformers
from engine.decoding.mixture import (
    REFERENCE,
    LoraPolicies,
    SeparatePolicies,
    load_policies,
    logratios,
    sample,
    sample_mixture,
)
from engine.models.loading import load_model

SPEC = LMSpec(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
PROMPTS = ["The movie", "I watched this film", "A truly", "Not", "This sequel was"]  # uneven: left padding matters


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(generate_corpus(300, seed=0)["text"].tolist(), vocab_size=300)


def _model(tokenizer, seed: int, sharpen: float = 4.0):
    """A random tiny Llama; scaling its (tied) embeddings makes its next-token distributions peaked and different
    from the other seeds', so mixtures are not near-uniform."""
    model = tiny_llama(tokenizer, replace(SPEC, seed=seed)).eval()
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(sharpen)
    return model


@pytest.fixture(scope="module")
def separate(tokenizer):
    return SeparatePolicies({REFERENCE: _model(tokenizer, 0), "a": _model(tokenizer, 1), "b": _model(tokenizer, 2)},
                            tokenizer)


@pytest.fixture(scope="module")
def adapters(tokenizer, tmp_path_factory):
    """Two saved LoRA adapters (random A and B, so they change the base) on the seed-0 base."""
    from peft import LoraConfig, get_peft_model

    folder, paths = tmp_path_factory.mktemp("adapters"), {}
    for i, name in enumerate(("a", "b")):
        config = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj"],
                            init_lora_weights=False)
        base = _model(tokenizer, 0)
        torch.manual_seed(10 + i)  # after building the base, whose constructor reseeds
        peft_model = get_peft_model(base, config)
        peft_model.save_pretrained(folder / name)
        paths[name] = str(folder / name)
    base = folder / "base"
    _model(tokenizer, 0).save_pretrained(base)
    tokenizer.save_pretrained(base)
    return str(base), paths


@pytest.fixture(scope="module")
def lora(tokenizer, adapters):
    return load_policies(adapters[0], adapters[1], tokenizer, backend="lora_batch", device="cpu")


GREEDY = SamplingParams(max_new_tokens=10, temperature=0.0)
SAMPLED = SamplingParams(max_new_tokens=10, temperature=0.7, seed=3)


@pytest.mark.parametrize("params", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
@pytest.mark.parametrize("which", [0, 1])
def test_one_hot_mixture_equals_generate(separate, tokenizer, params, which):
    weights = [1.0, 0.0] if which == 0 else [0.0, 1.0]
    name = "ab"[which]
    expected = generate_transformers(separate.models[name], tokenizer, PROMPTS, params, batch_size=2)
    mixed = sample(separate, ["a", "b"], weights, PROMPTS, params, batch_size=2)
    assert mixed.texts == expected.texts
    assert mixed.num_tokens == expected.num_tokens


@pytest.mark.parametrize("params", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_one_hot_lora_batch_equals_that_adapters_generate(lora, tokenizer, adapters, params):
    from peft import PeftModel

    single = PeftModel.from_pretrained(load_model(adapters[0], device="cpu"), adapters[1]["b"]).eval()
    expected = generate_transformers(single, tokenizer, PROMPTS, params, batch_size=2)
    mixed = sample(lora, ["a", "b"], [0.0, 1.0], PROMPTS, params, batch_size=2)
    assert mixed.texts == expected.texts


def test_shared_base_lora_batching_equals_separate_models(lora, tokenizer, adapters):
    merged = load_policies(adapters[0], adapters[1], tokenizer, backend="separate", device="cpu")
    assert isinstance(lora, LoraPolicies) and isinstance(merged, SeparatePolicies)
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True, padding_side="left")
    names = [REFERENCE, "a", "b"]
    with lora.open(names, enc["input_ids"], enc["attention_mask"]) as (first_l, step_l), \
            merged.open(names, enc["input_ids"], enc["attention_mask"]) as (first_s, step_s):
        torch.testing.assert_close(first_l, first_s, atol=1e-4, rtol=1e-4)
        tokens = first_s[1].argmax(-1)
        torch.testing.assert_close(step_l(tokens), step_s(tokens), atol=1e-4, rtol=1e-4)
    # adapters really differ from the base and from each other, so the comparison has power
    assert (first_s[0] - first_s[1]).abs().max() > 1e-2 and (first_s[1] - first_s[2]).abs().max() > 1e-2
    for params in (GREEDY, SAMPLED):
        assert sample(lora, ["a", "b"], [0.3, 0.7], PROMPTS, params).texts == \
            sample(merged, ["a", "b"], [0.3, 0.7], PROMPTS, params).texts


@pytest.mark.parametrize("backend", ["separate", "lora"])
def test_cached_decoding_matches_full_forward_with_padding(separate, lora, tokenizer, backend):
    """Each step's logits from the KV-cached loop equal a full forward over prompt + tokens so far (no cache)."""
    policies = separate if backend == "separate" else lora
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True, padding_side="left")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    steps = []
    with torch.no_grad(), policies.open([REFERENCE, "a", "b"], ids, mask) as (logits, step):
        for _ in range(3):
            steps.append((ids, mask, logits))
            tokens = logits[1].argmax(-1)
            ids, mask = torch.cat([ids, tokens[:, None]], 1), torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            logits = step(tokens)
    for ids, mask, logits in steps:
        for i, name in enumerate([REFERENCE, "a", "b"]):
            model, context = policies.scoring(name)
            for row, prompt_ids in enumerate(ids):
                real = prompt_ids[mask[row].bool()][None]  # the unpadded sequence
                with torch.no_grad(), context():
                    full = model(input_ids=real).logits[0, -1].float()
                torch.testing.assert_close(logits[i, row], full, atol=1e-4, rtol=1e-4)


def _two_token_tables(policies, prompt, names):
    """log_softmax of each named policy at step 1 [K, V] and at step 2 after every first token [K, V, V]."""
    x = policies.tokenizer(prompt, return_tensors="pt")["input_ids"]
    vocab = policies.models[names[0]].config.vocab_size
    ext = torch.cat([x.repeat(vocab, 1), torch.arange(vocab)[:, None]], dim=1)
    with torch.no_grad():
        step1 = torch.stack([torch.log_softmax(policies.models[n](input_ids=x).logits[0, -1].double(), -1)
                             for n in names])
        step2 = torch.stack([torch.log_softmax(policies.models[n](input_ids=ext).logits[:, -1].double(), -1)
                             for n in names])
    return step1, step2


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_sir_token_log_weights_equal_enumerated_sequence_mixture(separate, temperature):
    """Summed per-step corrections = log prod_k pi_k(y)^w_k - log q(y), both computed from full forwards."""
    w = torch.tensor([0.35, 0.65], dtype=torch.float64)
    step1, step2 = _two_token_tables(separate, "The movie", ["a", "b"])
    mix1, mix2 = (w[:, None] * step1).sum(0), (w[:, None, None] * step2).sum(0)
    out = sample(separate, ["a", "b"], w.tolist(), ["The movie"] * 40,
                 SamplingParams(max_new_tokens=2, temperature=temperature, seed=5), track_weights=True)
    eos = separate.tokenizer.eos_token_id
    for ids, log_w in zip(out.token_ids, out.log_weight):
        y1 = ids[0]
        log_p = mix1[y1] + (mix2[y1, ids[1]] if len(ids) > 1 else 0.0)
        log_q = torch.log_softmax(mix1 / temperature, -1)[y1]
        if len(ids) > 1:
            log_q = log_q + torch.log_softmax(mix2[y1] / temperature, -1)[ids[1]]
        assert len(ids) == 2 or y1 == eos
        assert log_w == pytest.approx(float(log_p - log_q), abs=1e-4)
    assert np.ptp(out.log_weight) > 1e-3  # the weights vary: the token-level proposal is not the target


def test_sir_ref_resamples_reference_draws_by_weighted_logratios(separate):
    out = sample_mixture(separate, ["a", "b"], [0.5, 0.5], ["The movie", "Not"],
                         SamplingParams(max_new_tokens=3, temperature=1.0, seed=2), mode="sir_ref", candidates=6)
    assert out.ess.shape == (2,) and np.all((out.ess >= 1 - 1e-9) & (out.ess <= 6 + 1e-9))
    ell, _ = logratios(separate, ["a", "b"], ["The movie", "Not"], out.token_ids)
    np.testing.assert_allclose(out.log_weight, ell @ np.array([0.5, 0.5]), atol=1e-5)


def test_logratios_equal_teacher_forced_sums(separate, tokenizer):
    out = sample(separate, [REFERENCE], [1.0], PROMPTS[:3], SamplingParams(max_new_tokens=6, temperature=1.0))
    ell, ref_logps = logratios(separate, ["a", "b"], PROMPTS[:3], out.token_ids)
    for row, (prompt, response) in enumerate(zip(PROMPTS[:3], out.token_ids)):
        p = tokenizer(prompt)["input_ids"]
        seq = torch.tensor([p + response])
        sums = []
        for name in (REFERENCE, "a", "b"):
            with torch.no_grad():
                logp = torch.log_softmax(separate.models[name](input_ids=seq).logits[0].double(), -1)
            sums.append(sum(float(logp[len(p) - 1 + t, tok]) for t, tok in enumerate(response)))
        assert ref_logps[row] == pytest.approx(sums[0], abs=1e-3)
        np.testing.assert_allclose(ell[row], [sums[1] - sums[0], sums[2] - sums[0]], atol=1e-3)


def test_bad_inputs_are_one_line_errors(separate, tokenizer, adapters):
    with pytest.raises(ValueError, match="sum to 1"):
        sample(separate, ["a", "b"], [0.5, 0.6], PROMPTS)
    with pytest.raises(ValueError, match="not in this set"):
        sample(separate, ["a", "zzz"], [0.5, 0.5], PROMPTS)
    with pytest.raises(ValueError, match="temperature > 0"):
        sample_mixture(separate, ["a", "b"], [0.5, 0.5], PROMPTS, GREEDY, mode="sir_token")
    with pytest.raises(ValueError, match="mode"):
        sample_mixture(separate, ["a", "b"], [0.5, 0.5], PROMPTS, mode="beam")
    full = {"a": adapters[0]}  # a full model folder, not an adapter
    with pytest.raises(ValueError, match="lora_batch"):
        load_policies(adapters[0], full, tokenizer, backend="lora_batch")
