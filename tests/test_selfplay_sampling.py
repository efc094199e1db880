"""Sampling draws from softmax(logits / T) whatever the model's generation_config asks for, on both backends, and
vLLM evaluation gives every request a seed of its own (engine/decoding/generation.py, engine/decoding/rollouts.py).

Truth: the table LM's exact next-token distribution (tests/logits_table.py) and a chi-square test of the empirical
frequencies at significance 1e-4; vLLM's documented "off" values of its SamplingParams fields.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from engine.decoding.generation import SamplingParams, generate_transformers, generate_vllm, vllm_sampling_kwargs
from engine.decoding.rollouts import response_tokens, sample
from tests.logits_table import table_model, table_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ACTIONS = ["rock", "paper", "scissors", "lizard"]
LOGITS = [0.9, -0.4, 0.3, -1.2]
DRAWS = 20_000
# every processor a generation_config can switch on and that changes a one-token draw: greedy top-k, a repetition
# penalty on the prompt's words, nucleus, min-p and typical cut-offs, and a ban on repeating the prompt's words
HOSTILE = {"top_k": 1, "repetition_penalty": 5.0, "top_p": 0.5, "min_p": 0.4, "typical_p": 0.2,
           "no_repeat_ngram_size": 1, "do_sample": False}


def _assert_frequencies_match(tokens: np.ndarray, temperature: float) -> None:
    expected = torch.softmax(torch.tensor(LOGITS, dtype=torch.float64) / temperature, dim=0).numpy()
    counts = np.bincount(tokens, minlength=len(ACTIONS) + 1)
    assert counts[len(ACTIONS)] == 0  # the special token (probability ~1e-18) is never drawn
    result = chisquare(counts[:len(ACTIONS)], DRAWS * expected)
    assert result.pvalue > 1e-4, (counts, DRAWS * expected)


def test_self_play_samples_follow_the_model_despite_its_generation_config():
    model, tokenizer = table_model(LOGITS, **HOSTILE), table_tokenizer(ACTIONS)
    rollout = sample(model, tokenizer, ["rock paper"] * DRAWS, max_new_tokens=1, temperature=1.0, seed=0,
                     max_prompt_tokens=8)
    _assert_frequencies_match(response_tokens(rollout)[:, 0].numpy(), 1.0)


def test_evaluation_samples_follow_the_model_at_their_temperature_despite_its_generation_config():
    model, tokenizer = table_model(LOGITS, **HOSTILE), table_tokenizer(ACTIONS)
    out = generate_transformers(model, tokenizer, ["rock paper"] * DRAWS,
                                SamplingParams(max_new_tokens=1, temperature=0.5, seed=1), batch_size=DRAWS,
                                cache="dynamic")
    _assert_frequencies_match(np.array([ACTIONS.index(text) for text in out.texts]), 0.5)


def test_vllm_sampling_parameters_switch_every_other_processor_off():
    kwargs = vllm_sampling_kwargs(temperature=1.0, top_p=1.0, max_tokens=12, seed=7, n=4)
    # vLLM's off values: top_k 0 (or -1) keeps the whole vocabulary, min_p 0 no floor, penalties neutral
    assert kwargs == {"n": 4, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0,
                      "presence_penalty": 0.0, "frequency_penalty": 0.0, "min_tokens": 0, "max_tokens": 12,
                      "seed": 7}


@pytest.fixture
def fake_vllm(monkeypatch):
    """A `vllm` module whose LLM records the requests' sampling parameters (one completion of ids per request)."""
    requests: list = []

    class LLM:
        def __init__(self, model: str, **kwargs) -> None:
            self.model = model

        def generate(self, prompts, sampling_params, use_tqdm=True):
            params = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(prompts)
            requests.append(params)
            return [types.SimpleNamespace(outputs=[types.SimpleNamespace(text=f"seed {p.seed}", token_ids=[1])])
                    for p in params]

    module = types.ModuleType("vllm")
    module.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    module.LLM, module.SamplingParams = LLM, lambda **kwargs: types.SimpleNamespace(**kwargs)
    monkeypatch.setitem(sys.modules, "vllm", module)
    return requests


def test_vllm_evaluation_gives_every_request_its_own_reproducible_seed(fake_vllm):
    prompts = ["Same prompt"] * 3 + ["Other"]
    params = SamplingParams(max_new_tokens=5, temperature=0.7, seed=3)
    first = generate_vllm("models/x", prompts, params)
    again = generate_vllm("models/x", prompts, params)
    other = generate_vllm("models/x", prompts, SamplingParams(max_new_tokens=5, temperature=0.7, seed=4))
    seeds = [[p.seed for p in call] for call in fake_vllm]
    assert len(set(seeds[0])) == len(prompts)  # identical prompts get different samples
    assert seeds[1] == seeds[0] and first.texts == again.texts  # a rerun draws the same ones
    assert not set(seeds[2]) & set(seeds[0]) and other.texts != first.texts
    for request in fake_vllm[0]:
        assert vars(request) == vllm_sampling_kwargs(0.7, 1.0, 5, request.seed)
