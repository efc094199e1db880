"""Loading policies and references by local path or hub name, with optional fresh LoRA adapters.

Real models and the demo models go through the same `load_model` / `load_tokenizer`, so a run config can name
either `data/models/sft` or `meta-llama/Llama-3.2-3B` without other changes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from engine.config.checks import HUB_ID
from engine.errors import InputError

if TYPE_CHECKING:
    from engine.config.sections import LoraSection


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Use `n` intra-op threads inside the block, then restore the previous count (None leaves it alone).

    The demo models are so small that extra threads gain little, while on a shared CPU two spinning threads were
    measured 17x slower per step than one. Scoped, so nothing process-wide changes for the caller.
    """
    if n is None:
        yield
        return
    if n < 1:
        raise InputError(f"num_threads must be at least 1 (or None to leave it), got {n}")
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' picks CUDA when present, else CPU."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """'auto' is bf16 on CUDA (halves memory, full speed) and fp32 on CPU (bf16 matmuls there are ~17x slower)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise InputError(f"dtype must be 'auto' or one of {sorted(names)}, got {dtype!r}")
    return names[dtype]


def check_source(name_or_path: str | Path) -> str:
    """Return the model source as a string; a missing folder that cannot be a hub id is a clear error up front."""
    text = str(name_or_path)
    if Path(text).expanduser().exists():
        return str(Path(text).expanduser())
    if not HUB_ID.match(text) or ".." in text:
        raise InputError(f"model path {text!r} does not exist and is not a hub id (owner/name); "
                         "fix: pass an existing folder or run `python -m engine demo prepare` for the demo models")
    return text


@contextmanager
def explain_load_errors(source: str) -> Iterator[None]:
    """Turn a failed from_pretrained (offline, typo, gated repo, folder without weights) into one clear line."""
    try:
        yield
    except OSError as err:
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        where = "folder" if Path(source).exists() else "hub (it is not a local folder)"
        raise InputError(f"model {source!r} could not be loaded from the {where}: {first_line}; fix: check the "
                         "name or folder, the network or HF_HUB_OFFLINE") from err


def load_tokenizer(name_or_path: str | Path, pad_token: str | None = None,
                   trust_remote_code: bool = False) -> PreTrainedTokenizerFast:
    """Load a tokenizer; batching needs a pad token, so a tokenizer without one is refused
    unless `pad_token` is given."""
    source = check_source(name_or_path)
    with explain_load_errors(source):
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    if pad_token is not None:
        tokenizer.pad_token = pad_token
    if tokenizer.pad_token is None:
        raise InputError(f"tokenizer {source!r} has no pad_token; fix: pass pad_token=... "
                         f"(its eos token is {tokenizer.eos_token!r})")
    return tokenizer


def lora_config(lora: LoraSection):
    """peft's LoraConfig for the run config's `model.lora` section: the one place the two are translated."""
    from peft import LoraConfig  # peft is only needed when adapters are asked for

    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=list(lora.target_modules), task_type="CAUSAL_LM")


def load_model(name_or_path: str | Path, dtype: str | torch.dtype = "auto", device: str | torch.device = "auto",
               lora: LoraSection | None = None, trust_remote_code: bool = False) -> torch.nn.Module:
    """Load a causal LM by local path or hub name, in eval mode, optionally wrapped with fresh LoRA adapters."""
    source = check_source(name_or_path)
    dev = resolve_device(device)
    with explain_load_errors(source):
        model = AutoModelForCausalLM.from_pretrained(source, dtype=resolve_dtype(dtype, dev),
                                                     trust_remote_code=trust_remote_code).to(dev)
    model.eval()
    if lora is None:
        return model
    from peft import get_peft_model

    return get_peft_model(model, lora_config(lora))
