"""MixMPO benchmark: mixed-decoding speed for K experts against one policy, and the instant-estimate latency.

    python -m engine bench mixing --batch 32 --new-tokens 64 --threads 1

Side by side in one run, on one base model (the demo's models/sft if built, else a random model of its shape) with K
random LoRA adapters: tokens/s of one policy (the mixture loop with one-hot weights, and transformers' ``generate``
for reference), of the K-expert mixture with one model and KV cache per expert (adapters merged into full copies),
and of the K-expert mixture with the adapters batched on the shared base (one forward per token). Ratios are to the
one-policy loop. Then the latency of ``engine.recipes.mixing_estimates.instant_estimate`` on 10,000 stored samples.
Timings are medians of ``--repeats`` interleaved runs, per wall second and per CPU second of this process; with one
thread on a shared machine the CPU figure is the stable one, and only ratios mean much.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def base_model(folder: Path) -> tuple[str, object, str]:
    """The demo SFT model and tokenizer if present, else a random model of the same shape saved in ``folder``;
    returns (model path, tokenizer, a phrase saying which)."""
    from engine.data.demo.corpus import generate_corpus
    from engine.data.demo.models import LMSpec, tiny_llama, train_tokenizer
    from engine.models.loading import load_tokenizer
    from engine.paths import models_dir

    if (models_dir() / "sft" / "config.json").exists():
        return str(models_dir() / "sft"), load_tokenizer(models_dir() / "sft"), "demo models/sft"
    tokenizer = train_tokenizer(generate_corpus(2000, seed=0)["text"].tolist(), vocab_size=2048)
    model = tiny_llama(tokenizer, LMSpec())
    model.save_pretrained(folder / "base")
    tokenizer.save_pretrained(folder / "base")
    return str(folder / "base"), tokenizer, "random model of the demo's shape"


def make_adapters(base: str, folder: Path, k: int) -> dict[str, str]:
    """K random LoRA adapters (r=16 on q_proj and v_proj, nonzero B so each changes the model) on ``base``."""
    import torch
    from peft import LoraConfig, get_peft_model

    from engine.models.loading import load_model

    paths = {}
    for i in range(k):
        model = load_model(base, device="cpu")
        torch.manual_seed(100 + i)
        config = LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        get_peft_model(model, config).save_pretrained(folder / f"expert{i}")
        paths[f"expert{i}"] = str(folder / f"expert{i}")
    return paths


def time_runs(setups: dict[str, Callable[[], object]], repeats: int, warmup: bool = False) -> dict[str, dict]:
    """Generated tokens per wall second and per CPU second of this process for each setup (each returns an object
    with ``num_tokens``), medians over ``repeats`` interleaved rounds. ``warmup``: one untimed first call per setup
    (compilation, CUDA start-up), whose seconds are reported as ``first_s``."""
    import torch

    first = {}
    if warmup:
        for name, run in setups.items():
            start = time.perf_counter()
            with torch.no_grad():
                run()
            first[name] = time.perf_counter() - start
    wall: dict[str, list[float]] = {name: [] for name in setups}
    cpu: dict[str, list[float]] = {name: [] for name in setups}
    tokens: dict[str, int] = {}
    for _ in range(repeats):
        for name, run in setups.items():
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            with torch.no_grad():
                out = run()
            wall[name].append(time.perf_counter() - start_wall)
            cpu[name].append(time.process_time() - start_cpu)
            tokens[name] = sum(out.num_tokens)
    return {name: {"wall": tokens[name] / statistics.median(wall[name]),
                   "cpu": tokens[name] / statistics.median(cpu[name]), "first_s": first.get(name, float("nan"))}
            for name in setups}


def decoding_speed(batch: int, new_tokens: int, repeats: int, ks: tuple[int, ...] = (2, 3),
                   base: tuple[str, object, str] | None = None, device: str = "cpu", dtype: str = "auto",
                   warmup: bool = False) -> dict[str, dict | str]:
    """Generated tokens per second for each configuration (median over interleaved repeats, see `time_runs`);
    ``base`` is a (path, tokenizer, description) triple, by default `base_model`'s."""
    from engine.decoding.generation import SamplingParams, generate_transformers
    from engine.decoding.mixture import REFERENCE, load_policies, sample

    with tempfile.TemporaryDirectory() as tmp:
        base_path, tokenizer, source = base or base_model(Path(tmp))
        adapters = make_adapters(base_path, Path(tmp), max(ks))
        prompts = [f"The movie number {i} was" for i in range(batch)]
        params = SamplingParams(max_new_tokens=new_tokens, temperature=1.0, seed=0)
        setups = {}
        single = load_policies(base_path, {"expert0": adapters["expert0"]}, tokenizer, backend="separate",
                               device=device, dtype=dtype)
        setups["one policy (mixture loop)"] = lambda: sample(single, [REFERENCE], [1.0], prompts, params, batch)
        setups["one policy (generate)"] = lambda: generate_transformers(single.models[REFERENCE], tokenizer, prompts,
                                                                         params, batch)
        for k in ks:
            names = [f"expert{i}" for i in range(k)]
            chosen = {n: adapters[n] for n in names}
            weights = [1.0 / k] * k
            for backend in ("separate", "lora_batch"):
                policies = load_policies(base_path, chosen, tokenizer, backend=backend, device=device, dtype=dtype)
                setups[f"K={k} {backend}"] = (lambda p=policies, n=names, w=weights: sample(p, n, w, prompts, params,
                                                                                            batch))
        return {"source": source, **time_runs(setups, repeats, warmup)}


def estimate_latency(n_prompts: int = 250, m: int = 40, k: int = 3, calls: int = 50) -> dict[str, float]:
    """Milliseconds per instant_estimate call on n_prompts x m stored samples (first call and median)."""
    from engine.recipes.mixing_estimates import MixingSamples, instant_estimate

    rng = np.random.default_rng(0)
    names = [f"objective{i}" for i in range(k)]
    samples = MixingSamples(names, names, rng.normal(0, 3, (n_prompts, m, k)), rng.normal(0, 1, (n_prompts, m, k)),
                            np.zeros((n_prompts, m)), np.ones((n_prompts, m)))
    start = time.perf_counter()
    instant_estimate(samples, np.full(k, 1.0 / k))
    first = time.perf_counter() - start
    laps = []
    for lam in rng.dirichlet(np.ones(k), size=calls):
        start = time.perf_counter()
        instant_estimate(samples, lam)
        laps.append(time.perf_counter() - start)
    return {"samples": n_prompts * m, "first_ms": first * 1e3, "median_ms": statistics.median(laps) * 1e3,
            "max_ms": max(laps) * 1e3}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine bench mixing", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32, help="prompts decoded together")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: a shared machine's tiny matmuls gain nothing from more)")
    parser.add_argument("--model", help="base model folder instead of the demo's models/sft, e.g. "
                        "data/models/smollm2-135m-instruct (a 49,152-token vocabulary)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    base = None
    if args.model:
        from engine.models.loading import load_tokenizer

        base = (args.model, load_tokenizer(args.model), args.model)
    rates = decoding_speed(args.batch, args.new_tokens, args.repeats, base=base)
    print(f"mixed decoding: {rates.pop('source')}, batch {args.batch}, {args.new_tokens} new tokens, "
          f"{args.threads} thread(s), median of {args.repeats}; tokens/s per wall second and per CPU second of "
          "this process (the CPU figure is what counts on a shared machine)")
    one = rates["one policy (mixture loop)"]
    for name, rate in rates.items():
        print(f"  {name:28} wall {rate['wall']:7.0f} tokens/s ({rate['wall'] / one['wall']:4.2f}x)   "
              f"cpu {rate['cpu']:7.0f} tokens/s ({rate['cpu'] / one['cpu']:4.2f}x one policy)")
    latency = estimate_latency()
    print(f"instant estimate on {latency['samples']} samples: first call {latency['first_ms']:.1f} ms, "
          f"median {latency['median_ms']:.2f} ms, max {latency['max_ms']:.2f} ms (target < 50 ms)")
    ok = rates["K=3 lora_batch"]["cpu"] / one["cpu"] >= 0.5 and latency["median_ms"] < 50
    print(f"targets (K=3 shared-base batching >= 0.5x one policy; estimate < 50 ms): {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
