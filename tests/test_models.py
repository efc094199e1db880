"""Tokenizer and model building, saving, offline reloading, LoRA, and the loader's errors."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from engine.config import ConfigError, LoraSection
from engine.data.demo.models import LMSpec, perplexity, tiny_llama
from engine.models.loading import load_model, load_tokenizer, resolve_dtype, torch_threads

_RELOAD_SCRIPT = """
import json, sys, torch
from engine.models.loading import load_model, load_tokenizer
path, text, out = sys.argv[1:4]
tok = load_tokenizer(path)
model = load_model(path)
ids = tok([text], return_tensors="pt")["input_ids"]
with torch.no_grad():
    logits = model(input_ids=ids).logits[0, -1]
try:
    load_model("preflab-test-owner/no-such-model")
    hub_error = None
except ValueError as err:
    hub_error = str(err)
json.dump({"ids": ids[0].tolist(), "logits": logits.tolist(), "padding_side": tok.padding_side,
           "max_len": tok.model_max_length, "hub_error": hub_error}, open(out, "w"))
"""


def test_tokenizer_special_tokens_and_round_trip(tiny_tokenizer_dir):
    tok = load_tokenizer(tiny_tokenizer_dir)
    assert len({tok.pad_token_id, tok.bos_token_id, tok.eos_token_id}) == 3
    assert tok.padding_side == "left" and tok.model_max_length == 256
    text = "The café scene: 10/10, naïve but fun 😀"  # bytes never seen in training still round-trip
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == text
    batch = tok(["short", "a much longer line of text"], padding=True)
    assert batch["input_ids"][0][0] == tok.pad_token_id and batch["attention_mask"][0][0] == 0


def test_prompt_tokens_are_a_prefix_of_prompt_plus_continuation(tiny_tokenizer_dir):
    from engine.data.demo.corpus import generate_corpus

    tok = load_tokenizer(tiny_tokenizer_dir)
    for row in generate_corpus(100, seed=9).itertuples():
        prompt_ids = tok(row.prompt)["input_ids"]
        assert tok(row.text)["input_ids"][: len(prompt_ids)] == prompt_ids


def test_save_and_reload_offline_gives_identical_outputs(demo_world, tmp_path):
    text = "I watched Silent River last night. The acting was"
    tok, model = load_tokenizer(demo_world["sft"]), load_model(demo_world["sft"])
    ids = tok([text], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = model(input_ids=ids).logits[0, -1]
    out = tmp_path / "reloaded.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    subprocess.run([sys.executable, "-c", _RELOAD_SCRIPT, demo_world["sft"], text, str(out)], env=env, check=True,
                   timeout=120)
    reloaded = json.loads(out.read_text())
    assert reloaded["ids"] == ids[0].tolist()
    assert reloaded["padding_side"] == "left" and reloaded["max_len"] == tok.model_max_length
    np.testing.assert_array_equal(np.array(reloaded["logits"], dtype=np.float32), expected.numpy())
    # offline, a hub-shaped name that is not a folder fails with one line naming it
    assert "'preflab-test-owner/no-such-model'" in reloaded["hub_error"] and "\n" not in reloaded["hub_error"]


def test_second_reference_differs_from_sft(demo_world):
    sft, ref2 = load_model(demo_world["sft"]), load_model(demo_world["ref2"])
    assert sft.config.hidden_size != ref2.config.hidden_size
    assert load_tokenizer(demo_world["ref2"]).get_vocab() == load_tokenizer(demo_world["sft"]).get_vocab()
    ids = load_tokenizer(demo_world["sft"])(["The plot was"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        p, q = (torch.softmax(m(input_ids=ids).logits[0, -1], -1) for m in (sft, ref2))
    assert 0.5 * (p - q).abs().sum() > 0.05  # total variation between their next-token distributions


def test_perplexity_matches_token_by_token_computation(tiny_tokenizer_dir):
    tok = load_tokenizer(tiny_tokenizer_dir)
    model = tiny_llama(tok, LMSpec(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, seed=3))
    texts = ["Great fun.", "The plot was not very good, but"]
    nll, count = 0.0, 0
    for text in texts:  # one sequence at a time, no padding, each prefix scored separately
        ids = tok(text)["input_ids"] + [tok.eos_token_id]
        for t in range(1, len(ids)):
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ids[:t]])).logits[0, -1]
            nll -= torch.log_softmax(logits, -1)[ids[t]].item()
            count += 1
    assert perplexity(model, tok, texts, batch_size=2) == pytest.approx(math.exp(nll / count), rel=1e-4)


def test_lora_wraps_model_and_starts_as_identity(demo_world):
    base = load_model(demo_world["sft"])
    wrapped = load_model(demo_world["sft"], lora=LoraSection(r=4, alpha=8, dropout=0.0,
                                                             target_modules=["q_proj", "v_proj"]))
    trainable = {n for n, p in wrapped.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert any("q_proj.lora_A" in n for n in trainable) and not any("k_proj" in n for n in trainable)
    ids = torch.tensor([[1, 10, 20, 30]])
    with torch.no_grad():  # LoRA's B matrices start at zero, so the wrapped model computes the same function
        torch.testing.assert_close(wrapped(input_ids=ids).logits, base(input_ids=ids).logits)
    with pytest.raises(ConfigError, match="model.lora.r: must be > 0"):
        LoraSection(r=0).validate("model.lora")


def test_loader_errors_name_the_field(tmp_path, tiny_tokenizer_dir):
    with pytest.raises(ValueError, match="does not exist"):
        load_model(tmp_path / "missing" / "model")
    with pytest.raises(ValueError, match="does not exist"):
        load_tokenizer("not a model name!")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):  # a folder without a model: an error naming the folder
        load_model(tmp_path / "empty")
    core = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1, "</s>": 2}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=core, eos_token="</s>").save_pretrained(tmp_path / "nopad")
    with pytest.raises(ValueError, match="pad_token"):
        load_tokenizer(tmp_path / "nopad")
    assert load_tokenizer(tmp_path / "nopad", pad_token="</s>").pad_token_id == 2
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype("float8", torch.device("cpu"))


def test_dtype_and_threads_defaults(demo_world):
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert next(load_model(demo_world["sft"], dtype="bf16").parameters()).dtype == torch.bfloat16
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
