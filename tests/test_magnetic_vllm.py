"""MagMPO's vLLM sampling path without vLLM: the config field and its errors, the conversion of vLLM completions
into the tensors a step trains on (checked against transformers' own rollouts), the LoRA merge sent to the engine
(checked against PEFT's merge), and a whole run through a fake `vllm` module that samples with the tiny model it
was handed weights for (engine/rollouts.py, engine/trainers/magnetic_po.py, MagneticPOParams)."""

from __future__ import annotations

import copy
import importlib.machinery
import importlib.util
import sys
import types

import pandas as pd
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

import engine.recipes.magnetic_selfplay as magnetic_po
from engine.config import LoraSection, config_from_dict
from engine.config.checks import ConfigError
from engine.decoding.rollouts import merged_weights, rollout_from_token_ids, sample
from engine.methods.magnetic_po.config import MagneticPOParams
from engine.models.loading import load_model, load_tokenizer
from engine.recipes.magnetic_selfplay import SelfPlay, train_magnetic
from engine.store.runs import RunWriter

STEP_METRICS = ("loss", "learning_rate", "grad_norm", "magmpo/adv_std", "magmpo/kl_to_magnet", "magmpo/kl_to_sft",
                "magmpo/kl_step", "magmpo/response_length")
ROUND_METRICS = ("magmpo/winrate_vs_magnet", "magmpo/winrate_vs_sft", "magmpo/exploitability")
LORA = {"r": 2, "alpha": 4, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
DIST_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def world(tiny_world, data_root):
    """The tiny SFT model, 16 training prompts and 4 held-out prompts; runs written under a fresh data folder."""
    pd.read_parquet(tiny_world.prompts).iloc[:4].to_parquet(data_root / "heldout.parquet")
    return tiny_world


@pytest.fixture
def no_vllm(monkeypatch):
    """vLLM absent whatever this machine has installed."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))


def _config(world, backend: str = "auto", lora=None):
    return config_from_dict({
        "method": "magnetic_po",
        "model": {"path": str(world.sft), "lora": lora},
        "data": {"train": str(world.prompts), "eval": None, "max_length": 48},
        "training": {"learning_rate": 1e-2, "batch_size": 2, "max_steps": 4, "warmup_ratio": 0.0, "seed": 0,
                     "device": "cpu"},
        "magnetic_po": {"prompts": "heldout.parquet", "judge": "bt:conciseness", "alpha": 0.1, "rounds": 2,
                        "group_size": 3, "max_new_tokens": 6, "generation_backend": backend}})


# ---------------------------------------------------------------------------------------------- the config field


def test_asking_for_vllm_without_it_fails_at_load_time_and_before_any_model(world, no_vllm, monkeypatch):
    with pytest.raises(ConfigError) as err:
        _config(world, backend="vllm")
    message = str(err.value)
    assert "magnetic_po.generation_backend" in message and "pip install -r requirements-gpu.txt" in message
    assert "\n" not in message
    # a config changed after loading is checked again by the trainer, before the judge or the policy is loaded
    cfg = _config(world)
    cfg.params.generation_backend = "vllm"
    loaded = []
    monkeypatch.setattr(magnetic_po, "get_single_order_judge", lambda name: loaded.append(name))
    monkeypatch.setattr(magnetic_po, "load_model", lambda *a, **k: loaded.append(a))
    with pytest.raises(ConfigError, match="generation_backend.*requirements-gpu.txt"):
        train_magnetic(cfg, RunWriter("vllm-missing"))
    assert loaded == []


@pytest.mark.parametrize("field, value, message", [
    ("temperature", 0.9, "temperature: self-play must sample from the policy at temperature 1 (got 0.9)"),
    ("eta", 0.0, "eta: must be > 0 (got 0.0)"), ("eta", -1.0, "eta: must be > 0 (got -1.0)"),
    ("inner_steps", 0, "inner_steps: must be > 0 (got 0)")])
def test_the_mmd_fields_refuse_bad_values_in_one_line(world, field, value, message):
    with pytest.raises(ConfigError) as err:
        config_from_dict({"method": "magnetic_po", "model": {"path": str(world.sft)},
                          "data": {"train": str(world.prompts)},
                          "magnetic_po": {"prompts": "heldout.parquet", field: value}})
    assert str(err.value).startswith(f"config: magnetic_po.{message}") and "\n" not in str(err.value)


def test_auto_is_transformers_here_and_vllm_only_where_it_is_installed_on_cuda(world, no_vllm, monkeypatch):
    assert _config(world).params.generation_backend == "auto"
    for cuda in (False, True):
        assert MagneticPOParams().sampling_backend(cuda=cuda) == "transformers"
        assert MagneticPOParams(generation_backend="transformers").sampling_backend(cuda=cuda) == "transformers"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: importlib.machinery.ModuleSpec(name, None))
    assert MagneticPOParams().sampling_backend(cuda=True) == "vllm"
    assert MagneticPOParams().sampling_backend(cuda=False) == "transformers"
    assert MagneticPOParams(generation_backend="vllm").sampling_backend(cuda=False) == "vllm"


# ---------------------------------------------------------------------------------------------- conversion, merge


def test_completions_become_the_tensors_sample_builds(world):
    tokenizer = load_tokenizer(world.sft)
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    # by hand: prompts left-padded to 3, responses right-padded to 3, the mask ends at the first EOS
    built = rollout_from_token_ids([[5, 6, 7], [8]], [[9, eos], [10, 11, 12]], tokenizer)
    assert built.input_ids.tolist() == [[5, 6, 7, 9, eos, pad], [pad, pad, 8, 10, 11, 12]]
    assert built.prompt_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert built.response_mask.tolist() == [[1, 1, 0], [1, 1, 1]]
    assert built.texts == [tokenizer.decode([9]), tokenizer.decode([10, 11, 12])]
    # what vLLM returns (prompt ids, then each response up to its EOS) rebuilds transformers' rollout exactly
    model = load_model(world.sft)
    prompts = ["The movie was", "I think this film is really quite", "Bad"]
    reference = sample(model, tokenizer, prompts, max_new_tokens=12, temperature=1.0, seed=4, max_prompt_tokens=5)
    width = reference.prompt_mask.shape[1]
    prompt_ids = [row[:width][mask.bool()].tolist() for row, mask in zip(reference.input_ids, reference.prompt_mask)]
    responses = [row[width:][mask.bool()].tolist() for row, mask in zip(reference.input_ids, reference.response_mask)]
    assert prompt_ids[1] == tokenizer(prompts[1])["input_ids"][-5:]  # cut from the left, as the engine cuts
    rebuilt = rollout_from_token_ids(prompt_ids, responses, tokenizer)
    for name in ("input_ids", "prompt_mask", "response_mask"):
        assert torch.equal(getattr(rebuilt, name), getattr(reference, name)), name
    assert rebuilt.texts == reference.texts
    with pytest.raises(ValueError, match="responses"):
        rollout_from_token_ids([[5]], [[9], [10]], tokenizer)


def test_lora_weights_are_sent_merged_without_touching_the_policy(world):
    policy = load_model(world.sft, lora=LoraSection(**LORA))
    with torch.no_grad():  # lora_B starts at 0 (a zero delta); give the adapters something to merge
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(generator=torch.Generator().manual_seed(len(name)))
    before = {name: p.detach().clone() for name, p in policy.named_parameters()}
    sent = dict(merged_weights(policy))
    expected = dict(copy.deepcopy(policy).merge_and_unload().named_parameters())
    assert sent.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(sent[name], tensor), name
    base = dict(load_model(world.sft).named_parameters())
    changed = {name for name in base if not torch.equal(sent[name], base[name])}
    assert changed and all(name.endswith(("q_proj.weight", "v_proj.weight")) for name in changed)
    assert all(torch.equal(p, before[name]) for name, p in policy.named_parameters())


# ---------------------------------------------------------------------------------------------- a run through vLLM


class FakeVLLM:
    """The handful of vLLM names the engine uses, sampling with a tiny transformers model of its own.

    `load_weights` writes into that model by checkpoint name (an unknown name is a KeyError, as in vLLM), and every
    `generate` first records whether its weights equal `expected()`, the policy's current (merged) weights.
    """

    def __init__(self, expected) -> None:
        self.expected, self.engines, self.syncs, self.calls, self.in_sync = expected, [], [], [], []
        module = types.ModuleType("vllm")
        module.__spec__ = importlib.machinery.ModuleSpec("vllm", None)  # found by importlib.util.find_spec
        module.LLM, module.SamplingParams = self._llm_class(), lambda **kwargs: types.SimpleNamespace(**kwargs)
        self.module = module

    def _llm_class(self):
        fake = self

        class LLM:
            def __init__(self, model: str, **kwargs) -> None:
                fake.engines.append({"model": model, **kwargs})
                self.model, self.received = AutoModelForCausalLM.from_pretrained(model).eval(), set()
                runner = types.SimpleNamespace(model=types.SimpleNamespace(load_weights=self.load_weights))
                self.llm_engine = types.SimpleNamespace(
                    model_executor=types.SimpleNamespace(driver_worker=types.SimpleNamespace(model_runner=runner)))

            @torch.no_grad()
            def load_weights(self, weights) -> None:
                params = dict(self.model.named_parameters())
                for name, tensor in weights:
                    params[name].copy_(tensor)
                    self.received.add(name)

            def reset_prefix_cache(self) -> None:
                fake.syncs.append(self.received)
                self.received = set()

            @torch.no_grad()
            def generate(self, prompts, sampling_params, use_tqdm=True):
                expected = fake.expected()
                fake.in_sync.append(all(torch.equal(p, expected[name]) for name, p in self.model.named_parameters()))
                fake.calls.append(sampling_params)
                outputs = []
                for prompt, params in zip(prompts, sampling_params):
                    ids = torch.tensor([prompt["prompt_token_ids"]])
                    torch.manual_seed(params.seed)
                    out = self.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                              temperature=params.temperature, top_p=params.top_p, top_k=params.top_k,
                                              max_new_tokens=params.max_tokens, num_return_sequences=params.n)
                    eos = self.model.generation_config.eos_token_id
                    completions = []
                    for row in out[:, ids.shape[1]:].tolist():  # vLLM's token_ids stop at (and keep) the EOS
                        row = row[:row.index(eos) + 1] if eos in row else row
                        completions.append(types.SimpleNamespace(token_ids=row, text=None))
                    outputs.append(types.SimpleNamespace(prompt_token_ids=prompt["prompt_token_ids"],
                                                         outputs=completions))
                return outputs

        return LLM


@pytest.fixture
def fake_vllm(monkeypatch):
    """A fake `vllm` installed for one test; the policy of the run is caught as SelfPlay is built."""
    plays = []
    real_init = SelfPlay.__init__

    def catch(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        plays.append(self)

    def expected():  # the weights vLLM should hold: the policy's, LoRA merged by PEFT's own merge
        policy = plays[-1].policy
        merged = copy.deepcopy(policy).merge_and_unload() if isinstance(policy, PeftModel) else policy
        return dict(merged.named_parameters())

    fake = FakeVLLM(expected)
    monkeypatch.setattr(SelfPlay, "__init__", catch)
    monkeypatch.setitem(sys.modules, "vllm", fake.module)
    for key in DIST_ENV:  # the engine sets these for vLLM's one-process group; restore them after the test
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    return fake


@pytest.mark.parametrize("lora", [None, LORA], ids=["full", "lora"])
def test_a_run_samples_through_one_engine_synced_after_every_update(world, fake_vllm, lora):
    cfg = _config(world, backend="vllm", lora=lora)
    writer = RunWriter(f"vllm-{'lora' if lora else 'full'}")
    train_magnetic(cfg, writer)
    # one engine for the job, built from the start checkpoint with the run's context length
    assert len(fake_vllm.engines) == 1
    engine = fake_vllm.engines[0]
    assert engine["model"] == str(world.sft) and engine["max_model_len"] == cfg.data.max_length
    assert engine["distributed_executor_backend"] == "external_launcher"
    # the policy changes at each of the 4 steps and is sampled after each change (next step or round evaluation):
    # 5 versions (SFT + 4 updates), each pushed once and whole
    every_weight = {name for name, _ in AutoModelForCausalLM.from_pretrained(world.sft).named_parameters()}
    assert len(fake_vllm.syncs) == cfg.training.max_steps + 1
    assert all(names == every_weight for names in fake_vllm.syncs)
    assert len(fake_vllm.in_sync) == len(fake_vllm.calls) and all(fake_vllm.in_sync)
    # sampling parameters, all at temperature 1: G per prompt for self-play (4 steps), POOL_SIZE for the reference
    # pool (once) and EXPLOIT_SAMPLES for the exploitability (step 0 and 2 rounds); one per prompt at the evaluation
    # temperature for the held-out texts (3 times)
    params = [p for call in fake_vllm.calls for p in call]
    kinds = [(call[0].n, call[0].temperature) for call in fake_vllm.calls]
    assert kinds.count((cfg.params.group_size, 1.0)) == 4
    assert magnetic_po.POOL_SIZE == magnetic_po.EXPLOIT_SAMPLES and kinds.count((magnetic_po.POOL_SIZE, 1.0)) == 1 + 3
    assert kinds.count((1, magnetic_po.EVAL_TEMPERATURE)) == 3 and len(kinds) == 11
    # nothing but temperature shapes the distribution: vLLM's off values for every other processor
    assert all(p.max_tokens == cfg.params.max_new_tokens and p.top_p == 1.0 and p.top_k == 0 and p.min_p == 0.0
               and p.repetition_penalty == 1.0 and p.presence_penalty == 0.0 and p.frequency_penalty == 0.0
               and p.min_tokens == 0 for p in params)
    # vLLM seeds the i-th of n samples with the request's seed + i: every sampled row of a call has its own seed
    for call in fake_vllm.calls:
        rows = [p.seed + i for p in call for i in range(p.n)]
        assert len(set(rows)) == len(rows)
    step_seeds = [call[0].seed for call in fake_vllm.calls if call[0].n == cfg.params.group_size]
    assert len(set(step_seeds)) == len(step_seeds)
    # the run went to the end and logged what the transformers path logs
    metrics = pd.read_json(writer.dir / "metrics.jsonl", lines=True)
    for name in STEP_METRICS:
        assert sorted(metrics[metrics.name == name].step) == [1, 2, 3, 4], name
    for name in ROUND_METRICS:
        assert sorted(metrics[metrics.name == name].step) == ([0, 2, 4] if name == "magmpo/exploitability" else [2, 4])
    assert metrics.value.notna().all() and (writer.dir / "model" / "config.json").is_file()


def test_auto_on_cpu_samples_with_transformers_even_with_vllm_installed(world, fake_vllm, capsys):
    writer = RunWriter("vllm-auto-cpu")
    train_magnetic(_config(world), writer)
    assert fake_vllm.engines == [] and fake_vllm.calls == []
    assert "sampling with transformers" in capsys.readouterr().out
    assert set(STEP_METRICS) <= set(pd.read_json(writer.dir / "metrics.jsonl", lines=True).name)


def test_a_response_ends_at_any_of_the_models_end_tokens():
    """Qwen2.5-Instruct-like: the generation config stops on two ids; the mask ends at whichever comes first."""
    from types import SimpleNamespace

    from engine.decoding.rollouts import end_token_ids, rollout_from_token_ids

    tokenizer = SimpleNamespace(eos_token_id=9, pad_token_id=8,
                                batch_decode=lambda rows, skip_special_tokens: [" ".join(map(str, r)) for r in
                                                                                rows.tolist()])
    ends = end_token_ids(tokenizer, SimpleNamespace(eos_token_id=[7, 9]))
    assert ends == [7, 9]
    rollout = rollout_from_token_ids([[1, 2]], [[3, 7, 4, 9]], tokenizer, end_ids=ends)
    assert rollout.response_mask.tolist() == [[1, 1, 0, 0]]
    assert end_token_ids(tokenizer, SimpleNamespace(eos_token_id=None)) == [9]
