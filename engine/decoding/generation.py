"""Generation backends: transformers (default, CPU or GPU) and vLLM (optional, GPU), plus a cache in the store.

Defaults follow the MPO paper's evaluation: 128 new tokens at temperature 0.5, plain temperature sampling (no
top-k: transformers' `generate` defaults to top_k=50, which would change the distribution being evaluated; and no
other logits processor a model's generation_config may switch on, see `sampling_kwargs`).

`cached_generate` keys every output by model, prompt set, sampling parameters and seed; a comparison that was
generated once is read back from the `generations` table instead of being generated again.

Speed on GPUs (`generate_transformers`'s ``cache`` and ``compile``): transformers' `StaticCache` preallocates the
KV cache so every decode step has the same shapes, and `generation_config.compile_config` then compiles the decode
step (prefill stays eager). Shapes only repeat if batches do, so the batch is padded up to a power of two (with copies
of its first prompt) and the cache length up to a power of two of at least 64; one `StaticCache` per (model, bucket)
is kept for the life of the model in `_STATIC_CACHES`, and reusing its tensors (same addresses) lets the compiled step
and its CUDA graphs be replayed instead of recorded again. Prompts are not padded to a length bucket: prefill runs
eagerly, so its shape never reaches the compiled step, and the cache length already absorbs the prompt length.

torch and transformers are imported inside the functions that generate, so light processes (the dashboard) can
use `SamplingParams` and the cache without loading them.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from engine.errors import InputError

BACKENDS = ("transformers", "vllm")
CACHE_MODES = ("auto", "dynamic", "static")
# "auto" compiles only calls big enough to repay the compile. Measured on an H100 at 0.5B: eager generate made
# 2.0k tokens/s, static cache + compile 13k after a 36 s compile: break-even near 85k new tokens for a first call,
# less once the graph is cached in the process. 512 prompts x 128 tokens compiles; a one-prompt dashboard call does not.
AUTO_COMPILE_MIN_TOKENS = 65_536
MIN_CACHE_LEN = 64
# model -> {(batch rows, cache length, device, dtype): StaticCache}; dropped with the model (weak keys).
_STATIC_CACHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# generate() kwargs that switch off every logits processor and warper but temperature and top-p, whatever the model's
# generation_config sets (Qwen2.5-Instruct's asks for top_k 20 and repetition_penalty 1.05). transformers fills only
# the fields a call leaves unset from the model's config, so each is set here, None where None means off.
PROCESSORS_OFF: dict[str, Any] = {
    "top_k": 0, "min_p": None, "top_h": None, "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0,
    "repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0, "bad_words_ids": None, "sequence_bias": None, "suppress_tokens": None,
    "begin_suppress_tokens": None, "forced_bos_token_id": None, "forced_eos_token_id": None,
    "exponential_decay_length_penalty": None, "min_length": 0, "min_new_tokens": None, "guidance_scale": None,
    "watermarking_config": None, "renormalize_logits": False, "stop_strings": None, "max_time": None,
    "num_beams": 1}


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 0.5  # 0 means greedy
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise InputError(f"max_new_tokens: must be >= 1 (got {self.max_new_tokens})")
        if self.temperature < 0:
            raise InputError(f"temperature: must be >= 0, 0 for greedy (got {self.temperature})")
        if not 0 < self.top_p <= 1:
            raise InputError(f"top_p: must lie in (0, 1] (got {self.top_p})")


def derived_seed(seed: int, *parts: int) -> int:
    """An independent seed per (run seed, part, ...), the same on every rerun: a resumed run or a repeated
    evaluation draws exactly what it drew before, and different parts (rounds, steps, prompts) never share a stream."""
    return int(np.random.SeedSequence([seed, *parts]).generate_state(1)[0])


def sampling_kwargs(temperature: float, top_p: float = 1.0) -> dict[str, Any]:
    """`generate` kwargs for softmax(logits / temperature) sampling (nucleus when top_p < 1), greedy for temperature 0,
    with no other processor whatever the model's generation_config says (PROCESSORS_OFF)."""
    if temperature == 0:
        return {**PROCESSORS_OFF, "do_sample": False}
    return {**PROCESSORS_OFF, "do_sample": True, "temperature": temperature, "top_p": top_p}


def vllm_sampling_kwargs(temperature: float, top_p: float, max_tokens: int, seed: int, n: int = 1) -> dict[str, Any]:
    """`vllm.SamplingParams` fields for the same distribution as `sampling_kwargs`: every penalty and cut-off off
    (vLLM 0.31: top_k 0 disables top-k, -1 is accepted as the old spelling), `n` samples, the request's seed."""
    return {"n": n, "temperature": temperature, "top_p": top_p, "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0,
            "presence_penalty": 0.0, "frequency_penalty": 0.0, "min_tokens": 0, "max_tokens": max_tokens, "seed": seed}


@dataclass(frozen=True)
class Generations:
    texts: list[str]
    num_tokens: list[int]


def batch_bucket(rows: int, batch_size: int) -> int:
    """Rows a batch of ``rows`` prompts is padded to: the next power of two, capped at ``batch_size`` (so a full
    batch is never padded, and a last partial batch lands in one of a few buckets)."""
    if not 1 <= rows <= batch_size:
        raise InputError(f"rows: need 1 <= rows <= batch_size={batch_size} (got {rows})")
    return min(1 << (rows - 1).bit_length(), batch_size)


def cache_len_bucket(tokens: int) -> int:
    """Static cache length for ``tokens`` (prompt + new tokens): the next power of two, at least MIN_CACHE_LEN."""
    if tokens < 1:
        raise InputError(f"tokens: must be >= 1 (got {tokens})")
    return max(MIN_CACHE_LEN, 1 << (tokens - 1).bit_length())


def decode_plan(cache: str, compile: bool | dict | None, device_type: str, new_tokens: int) -> tuple[bool, dict | None]:
    """(use a static bucketed cache, torch.compile options or None) for one `generate_transformers` call.

    ``cache="auto"`` means static + compiled on CUDA for calls of at least AUTO_COMPILE_MIN_TOKENS new tokens, else
    dynamic and eager (the CPU default, as before). ``compile=None`` follows the cache choice; ``True`` uses
    transformers' defaults with static shapes (one graph per bucket); a dict gives `CompileConfig` fields.
    """
    if cache not in CACHE_MODES:
        raise InputError(f"cache: must be one of {', '.join(CACHE_MODES)} (got {cache!r})")
    if compile is not None and not isinstance(compile, (bool, dict)):
        raise InputError(f"compile: must be None, a bool or a dict of CompileConfig fields (got {compile!r})")
    asked = compile is True or isinstance(compile, dict)
    if cache == "auto":
        static = asked if compile is not None else device_type == "cuda" and new_tokens >= AUTO_COMPILE_MIN_TOKENS
    else:
        static = cache == "static"
    if compile is None:
        asked = static and device_type == "cuda"
    if asked and not static:
        raise InputError("compile: compiling the decode step needs cache='static' (or 'auto'); a dynamic cache "
                         "changes shape every token")
    if not asked:
        return static, None
    # dynamic=False: specialise per bucket instead of tracing symbolic shapes, which CUDA graphs record per size anyway
    return static, {"fullgraph": False, "dynamic": False, **(compile if isinstance(compile, dict) else {})}


def static_caches(model) -> dict[tuple[int, int, str, Any], Any]:
    """``model``'s reusable StaticCaches by bucket (rows, cache length, device, dtype); a copy of the mapping."""
    return dict(_STATIC_CACHES.get(model, {}))


def _static_cache(model, rows: int, length: int):
    """The model's StaticCache for this bucket, emptied: the same tensors every call, so compiled steps replay."""
    from transformers import StaticCache

    key = (rows, length, str(model.device), model.dtype)
    per_model = _STATIC_CACHES.setdefault(model, {})
    if key not in per_model:
        per_model[key] = StaticCache(config=model.config, max_cache_len=length)
    cache = per_model[key]
    cache.reset()
    return cache


def _static_kwargs(model, batch: dict, rows: int, new_tokens: int, compile_options: dict | None) -> dict:
    """generate() inputs padded to the bucket (copies of the first prompt, whose outputs are dropped) with the
    bucket's cache and the compile setting."""
    import torch
    from transformers import CompileConfig

    extra = rows - batch["input_ids"].shape[0]
    padded = {k: torch.cat([v, v[:1].expand(extra, -1)]) for k, v in batch.items()}
    length = cache_len_bucket(padded["input_ids"].shape[1] + new_tokens)
    padded["past_key_values"] = _static_cache(model, rows, length)
    if compile_options is None:
        padded["disable_compile"] = True  # transformers compiles a static cache on CUDA unless told not to
    else:
        config = CompileConfig(**compile_options)
        config._compile_all_devices = True  # transformers' switch for compiling off CUDA (tests, CPU runs)
        padded["compile_config"] = config
    return padded


def generate_transformers(model, tokenizer, prompts: Sequence[str], params: SamplingParams,
                          batch_size: int = 32, desc: str = "generating", cache: str = "auto",
                          compile: bool | dict | None = None) -> Generations:
    """Batched sampling with `model.generate`, prompts left-padded; returns decoded continuations only.

    ``cache``/``compile``: see `decode_plan`. Greedy outputs of the static path equal the dynamic path's; sampled
    outputs follow the same distribution but not the same draws (the padded batch changes the random stream).
    """
    import torch

    device = next(model.parameters()).device
    static, compile_options = decode_plan(cache, compile, device.type, len(prompts) * params.max_new_tokens)
    tokenizer.padding_side = "left"
    generator_seed = torch.Generator().manual_seed(params.seed)
    texts, counts = [], []
    for start in tqdm(range(0, len(prompts), batch_size), desc=desc, leave=False):
        batch = tokenizer(list(prompts[start:start + batch_size]), return_tensors="pt", padding=True).to(device)
        rows, width = batch["input_ids"].shape
        inputs = dict(batch)
        if static:
            inputs = _static_kwargs(model, inputs, batch_bucket(rows, batch_size), params.max_new_tokens,
                                    compile_options)
        # One seed per batch drawn from the run's seed: results do not depend on which batches ran before.
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator_seed)))
        out = model.generate(**inputs, max_new_tokens=params.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                             **sampling_kwargs(params.temperature, params.top_p))
        new_tokens = out[:rows, width:]
        for row in new_tokens:
            ids = row.tolist()
            if tokenizer.eos_token_id in ids:
                ids = ids[:ids.index(tokenizer.eos_token_id)]
            ids = [i for i in ids if i != tokenizer.pad_token_id]
            texts.append(tokenizer.decode(ids, skip_special_tokens=True))
            counts.append(len(ids))
    return Generations(texts, counts)


def generate_vllm(model_path: str, prompts: Sequence[str], params: SamplingParams) -> Generations:
    """Generation through vLLM (GPU only). Imported here so that the project works without it."""
    try:
        import vllm
    except ImportError:
        raise RuntimeError("backend vllm: vLLM is not installed; `pip install -r requirements-gpu.txt` on a CUDA "
                           "machine, or use --backend transformers") from None
    llm = vllm.LLM(model=model_path, seed=params.seed)
    # one seed per request: two identical prompts get different samples, and a rerun draws the same ones
    sampling = [vllm.SamplingParams(**vllm_sampling_kwargs(params.temperature, params.top_p, params.max_new_tokens,
                                                           derived_seed(params.seed, index)))
                for index in range(len(prompts))]
    outputs = llm.generate(list(prompts), sampling)
    return Generations([o.outputs[0].text for o in outputs], [len(o.outputs[0].token_ids) for o in outputs])


def generate(model_path: str, prompts: Sequence[str], params: SamplingParams = SamplingParams(),
             backend: str = "transformers", batch_size: int = 32, cache: str = "auto",
             compile: bool | dict | None = None) -> Generations:
    """Load a model by local path or hub name and sample one continuation per prompt (``cache``, ``compile``: the
    transformers backend's decode plan, see `decode_plan`)."""
    if backend not in BACKENDS:
        raise InputError(f"backend: must be one of {', '.join(BACKENDS)} (got {backend!r})")
    if not prompts:
        raise InputError("prompts: the prompt set is empty; give at least one prompt")
    if backend == "vllm":
        return generate_vllm(model_path, prompts, params)
    from engine.models.loading import load_model, load_tokenizer

    tokenizer = load_tokenizer(model_path)
    model = load_model(model_path)
    return generate_transformers(model, tokenizer, prompts, params, batch_size, cache=cache, compile=compile)


def weights_fingerprint(model_path: str) -> str:
    """Changes when a local model's weight files change (size and modification time); a hub name stands for itself.

    Part of the cache key, so retraining into the same folder never serves the old model's generations.
    """
    folder = Path(model_path)
    if not folder.is_dir():
        return model_path
    stats = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in folder.glob("*.safetensors"))
    return hashlib.sha256(json.dumps([str(folder.resolve()), stats]).encode()).hexdigest()[:16]


def cache_key(model: str, prompt_set: str, params: SamplingParams, backend: str, weights: str = "") -> str:
    """Identity of a batch of generations: same key, same texts (up to backend nondeterminism on GPU)."""
    blob = json.dumps({"model": model, "weights": weights, "prompt_set": prompt_set, "backend": backend,
                       **asdict(params)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cached_generate(model: str, model_path: str, prompt_set: str, prompts: Sequence[str], writer, reader,
                    params: SamplingParams = SamplingParams(), backend: str = "transformers") -> Generations:
    """Generations for (model, prompt set, params), read from the store if present, else generated and stored.

    `model` is the name shown in the dashboard; `model_path` what the loader gets. Rows go to `writer`'s run.
    """
    key = cache_key(model, prompt_set, params, backend, weights_fingerprint(model_path))
    stored = reader.query("SELECT DISTINCT ON (prompt_id) prompt_id, output, num_tokens FROM generations "
                          "WHERE cache_key = ? ORDER BY prompt_id", [key])
    if len(stored) == len(prompts):
        return Generations(stored["output"].tolist(), stored["num_tokens"].astype(int).tolist())
    result = generate(model_path, prompts, params, backend)
    writer.append("generations", ({"cache_key": key, "model": model, "prompt_set": prompt_set, "prompt_id": i,
                                   "prompt": p, "output": t, "num_tokens": n}
                                  for i, (p, t, n) in enumerate(zip(prompts, result.texts, result.num_tokens))))
    return result
