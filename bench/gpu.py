"""Speed on real GPUs (issue 12), side by side in one run, printed and appended to bench/RESULTS.md.

    python -m engine bench gpu [--sizes 0.5b,1.5b] [--parts train,generate,mix] [--note TEXT]

On CUDA, for Qwen2.5-0.5B- and 1.5B-shaped Qwen2 models with random weights in bf16 (built from a `Qwen2Config`
here, no download; the demo tokenizer, so token ids stay below the 151,936-row vocabulary the shapes keep):

* train: DPO-family steady step throughput (tokens/s after warm-up steps, bench/train_throughput.py's entries, each
  in a fresh process) and MFU, against stock TRL `DPOTrainer` with and without `precompute_ref_log_probs`; MRPO K=3
  against K=1. 16 sequences x 512 tokens per step.
* generate: tokens/s at batch 64, 128 new tokens, of engine.decoding.generation's transformers backend
  (what ``cache="auto"``
  picks, the static bucketed cache eager, and static + torch.compile) against plain ``model.generate``; the first
  (compiling) call is timed apart.
* mix: mixed decoding of K=3 LoRA experts batched on the shared base, and K=3 separate models, against one policy
  (bench/mixing.py's `decoding_speed`).

On CPU the same table runs on the tiny demo model (`--sizes tiny`, small shapes, a few minutes on 2 cores) and MFU
is n/a. MFU = 6 * N * tokens/s / peak dense bf16 FLOP/s, N the policy's parameters (tied embeddings counted once):
forward and backward of the trained policy only, without the attention term (PaLM's 12 * layers * hidden * seq per
token: +4.5% at 0.5B and +2.9% at 1.5B with 512-token sequences), and without the reference forward that TRL's
in-loop entry does on top. The run time on a GPU is not measured yet (expect minutes per size): where commands are
time-limited, run one ``--sizes`` (or ``--parts``) per command; each run appends its own section.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Qwen2.5-0.5B and -1.5B shapes (their config.json files); vocabulary, tied embeddings and RoPE base are shared.
QWEN2_SHAPES = {
    "0.5b": {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
             "num_key_value_heads": 2},
    "1.5b": {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
             "num_key_value_heads": 2},
}
QWEN2_COMMON = {"vocab_size": 151936, "tie_word_embeddings": True, "max_position_embeddings": 32768,
                "rope_theta": 1_000_000.0, "rms_norm_eps": 1e-6}
# Dense (not sparse) bf16 tensor-core peaks from the vendors' data sheets; first matching name wins.
PEAK_BF16_FLOPS = (("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12))
TRAIN_ENTRIES = ("trl_stock", "trl_precompute", "dpo", "mallows_po", "mrpo_k1", "mrpo_k3")
PARTS = ("train", "generate", "mix")


@dataclass(frozen=True)
class Shape:
    """Sizes of one run. prompt/response: tokens per side of a pair; batch: pairs per step (2 sequences each)."""

    prompt: int
    response: int
    batch: int
    steps: int
    warmup: int
    gen_batch: int
    new_tokens: int
    repeats: int


GPU_SHAPE = Shape(prompt=256, response=256, batch=8, steps=24, warmup=4, gen_batch=64, new_tokens=128, repeats=3)
CPU_SHAPE = Shape(prompt=32, response=32, batch=8, steps=16, warmup=2, gen_batch=32, new_tokens=32, repeats=3)


def peak_bf16_flops(gpu_name: str) -> float | None:
    """Peak dense bf16 FLOP/s of a GPU by its CUDA name, None when it is not in PEAK_BF16_FLOPS."""
    return next((flops for key, flops in PEAK_BF16_FLOPS if key.lower() in gpu_name.lower()), None)


def mfu(params: int, tokens_per_s: float, peak_flops: float | None) -> float | None:
    """Model FLOPs utilisation of training: 6 FLOPs per parameter per token (2 forward, 4 backward) over the peak."""
    if peak_flops is None or not math.isfinite(tokens_per_s):
        return None
    return 6.0 * params * tokens_per_s / peak_flops


def machine_name() -> str:
    """The GPU's CUDA name, or the CPU model from /proc/cpuinfo with its core count."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    model = next((l.split(":", 1)[1].strip() for l in lines if l.startswith("model name")), platform.processor())
    return f"{model or 'unknown CPU'}, {os.cpu_count()} cores"


def build_qwen2(size: str, folder: Path, tokenizer, seed: int, device: str) -> str:
    """A Qwen2 model of the named shape with random weights in bf16, saved with ``tokenizer``; returns its folder."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(**QWEN2_SHAPES[size], **QWEN2_COMMON, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    with torch.device(device):  # initialising 1.5B weights on the GPU takes seconds, on the CPU much longer
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def build_models(size: str, folder: Path, device: str) -> tuple[str, tuple[str, str], str]:
    """(policy folder, two reference folders for MRPO, description): Qwen2 shapes on CUDA, the tiny demo model
    (bench/mixing.py's `base_model`) with random tiny references for ``tiny``."""
    from bench.mixing import base_model
    from engine.data.demo.models import LMSpec, tiny_llama

    policy, tokenizer, source = base_model(folder)
    if size == "tiny":
        refs = []
        for seed in (1, 2):
            tiny_llama(tokenizer, LMSpec(seed=seed)).save_pretrained(folder / f"ref{seed}")
            tokenizer.save_pretrained(folder / f"ref{seed}")
            refs.append(str(folder / f"ref{seed}"))
        return policy, (refs[0], refs[1]), source
    paths = [build_qwen2(size, folder / f"qwen2_{size}_{seed}", tokenizer, seed, device) for seed in (0, 1, 2)]
    return paths[0], (paths[1], paths[2]), f"Qwen2.5-{size.upper()}-shaped Qwen2, random bf16 weights"


def long_pairs(tokenizer, n: int, prompt_tokens: int, response_tokens: int, path: Path) -> str:
    """``n`` preference pairs of about ``prompt_tokens`` + ``response_tokens`` tokens per sequence, cut from the
    synthetic review corpus (speed only needs realistic lengths, not meaningful preferences); saved as parquet."""
    import pandas as pd

    from engine.data.demo.corpus import generate_corpus

    ids = tokenizer(" ".join(generate_corpus(400, seed=3)["text"]), add_special_tokens=False)["input_ids"]
    span = prompt_tokens + 2 * response_tokens
    if len(ids) < 2 * span:
        raise ValueError(f"corpus too short for {span}-token pairs; lower the prompt or response length")

    def window(start: int, length: int) -> str:
        start %= len(ids) - length
        return tokenizer.decode(ids[start:start + length])

    stride = (len(ids) - span) // max(n, 1) or 1
    rows = [{"prompt": window(i * stride, prompt_tokens),
             "chosen": window(i * stride + prompt_tokens, response_tokens),
             "rejected": window(i * stride + prompt_tokens + response_tokens, response_tokens)} for i in range(n)]
    pd.DataFrame(rows).to_parquet(path)
    return str(path)


def train_rows(size: str, policy: str, refs: tuple[str, str], tokenizer, shape: Shape, folder: Path,
               peak: float | None, threads: int | None) -> list[dict]:
    """bench/train_throughput.py's entries, each in a fresh process, as table rows with ratios and MFU."""
    from bench.train_throughput import ENTRIES, Setup, run_in_subprocess

    pairs = long_pairs(tokenizer, shape.batch * shape.steps, shape.prompt, shape.response, folder / "pairs.parquet")
    setup = Setup(policy, refs, pairs, n_pairs=shape.batch * shape.steps, epochs=1.0, batch=shape.batch,
                  max_length=shape.prompt + shape.response + 2, warmup=shape.warmup, threads=threads)  # + BOS, EOS
    results, failed = {}, {}
    for entry in TRAIN_ENTRIES:
        try:
            results[entry] = r = run_in_subprocess(entry, setup)
            print(f"  {ENTRIES[entry]:48} {r['step_tokens_per_s']:9.0f} tok/s per step", flush=True)
        except RuntimeError as err:  # an OOM in one entry must not lose the others' numbers
            failed[entry] = "failed: " + str(err).strip().splitlines()[-1][:120]
            print(f"  {ENTRIES[entry]:48} {failed[entry]}", flush=True)
    rows = []
    for entry in TRAIN_ENTRIES:
        if entry in failed:
            rows.append({"part": "train", "model": size, "entry": ENTRIES[entry], "tokens_per_s": None,
                         "note": failed[entry]})
            continue
        r = results[entry]
        speed = r["step_tokens_per_s"]
        base = "mrpo_k1" if entry == "mrpo_k3" else "trl_precompute"
        note = f"end to end {r['tokens_per_s']:.0f} tok/s, {r['steps']} steps, peak {r['peak_mib']:.0f} MiB"
        if entry not in ("trl_stock", "trl_precompute") and "trl_stock" in results:
            note += f"; {speed / results['trl_stock']['step_tokens_per_s']:.2f}x TRL in-loop"
        rows.append({"part": "train", "model": size, "entry": ENTRIES[entry], "tokens_per_s": speed, "vs": base,
                     "ratio": speed / results[base]["step_tokens_per_s"] if base in results else None,
                     "mfu": mfu(r["params"], speed, peak), "note": note})
    return rows


def _plain_generate(model, batch: dict, new_tokens: int, eos: int, pad: int):
    """transformers' `generate` as a user calls it (dynamic cache, eager) on already tokenized prompts."""
    from engine.decoding.generation import Generations

    out = model.generate(**batch, max_new_tokens=new_tokens, do_sample=True, temperature=1.0, top_k=0,
                         pad_token_id=pad)[:, batch["input_ids"].shape[1]:].tolist()
    counts = [row.index(eos) if eos in row else len(row) for row in out]
    return Generations([""] * len(out), counts)


def generate_rows(size: str, policy: str, shape: Shape, device: str) -> list[dict]:
    """Generation tokens/s of engine.decoding.generation's transformers backend against plain `model.generate`."""
    from bench.mixing import time_runs
    from engine.decoding.generation import SamplingParams, decode_plan, generate_transformers
    from engine.models.loading import load_model, load_tokenizer

    model, tokenizer = load_model(policy, device=device), load_tokenizer(policy)
    prompts = [f"The movie number {i} was" for i in range(shape.gen_batch)]
    params = SamplingParams(max_new_tokens=shape.new_tokens, temperature=1.0, seed=0)
    batch = dict(tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left").to(device))
    static, options = decode_plan("auto", None, device, len(prompts) * params.max_new_tokens)
    auto = f"cache=auto (picks {'static' if static else 'dynamic'}{', compiled' if options else ', eager'})"
    setups = {"model.generate, dynamic cache, eager": lambda: _plain_generate(
                  model, batch, shape.new_tokens, tokenizer.eos_token_id, tokenizer.pad_token_id),
              f"generate_transformers, {auto}": lambda: generate_transformers(
                  model, tokenizer, prompts, params, shape.gen_batch),
              "generate_transformers, static bucketed cache, eager": lambda: generate_transformers(
                  model, tokenizer, prompts, params, shape.gen_batch, cache="static", compile=False),
              "generate_transformers, static cache + torch.compile": lambda: generate_transformers(
                  model, tokenizer, prompts, params, shape.gen_batch, cache="static", compile=True)}
    rates = time_runs(setups, shape.repeats, warmup=True)
    plain = rates["model.generate, dynamic cache, eager"]["wall"]
    rows = [{"part": "generate", "model": size, "entry": name, "tokens_per_s": rate["wall"],
             "vs": "model.generate", "ratio": rate["wall"] / plain,
             "note": f"batch {shape.gen_batch}, {shape.new_tokens} new tokens, first call {rate['first_s']:.1f} s"}
            for name, rate in rates.items()]
    return rows


def mix_rows(size: str, policy: str, tokenizer, shape: Shape, device: str) -> list[dict]:
    """Mixed decoding, K=3 experts against one policy (bench/mixing.py's `decoding_speed`)."""
    from bench.mixing import decoding_speed

    rates = decoding_speed(shape.gen_batch, shape.new_tokens, shape.repeats, ks=(3,), base=(policy, tokenizer, size),
                           device=device, warmup=True)
    rates.pop("source")
    one = rates["one policy (mixture loop)"]["wall"]
    rows = [{"part": "mix", "model": size, "entry": name, "tokens_per_s": rate["wall"], "vs": "one policy loop",
             "ratio": rate["wall"] / one, "note": f"batch {shape.gen_batch}, {shape.new_tokens} new tokens, eager"}
            for name, rate in rates.items()]
    return rows


def format_row(row: dict) -> str:
    """One table row as a console line."""
    speed = "failed" if row.get("tokens_per_s") is None else f"{row['tokens_per_s']:9.0f} tok/s"
    ratio = f"{row['ratio']:.2f}x {row['vs']}" if row.get("ratio") is not None else ""
    util = f"MFU {row['mfu']:.2f}" if row.get("mfu") is not None else ""
    return f"{row['part']:8} {row['model']:5} {row['entry']:58} {speed:>15} {ratio:26} {util:9} {row['note']}"


def markdown(rows: list[dict], header: str) -> str:
    """The rows as a markdown table under ``header`` (the section appended to bench/RESULTS.md)."""
    lines = [header, "", "| part | model | entry | tokens/s | ratio | MFU | notes |",
             "|---|---|---|---:|---:|---:|---|"]
    for row in rows:
        speed = "failed" if row.get("tokens_per_s") is None else f"{row['tokens_per_s']:.0f}"
        ratio = f"{row['ratio']:.2f}x vs {row['vs']}" if row.get("ratio") is not None else ""
        util = f"{row['mfu']:.2f}" if row.get("mfu") is not None else ("n/a" if row["part"] == "train" else "")
        lines.append(f"| {row['part']} | {row['model']} | {row['entry']} | {speed} | {ratio} | {util} | "
                     f"{row['note']} |")
    return "\n".join(lines) + "\n"


def run_parts(sizes: list[str], parts: list[str], device: str, shape: Shape, peak: float | None,
              threads: int | None) -> list[dict]:
    """Every asked part for every size, each size's models built once in a temporary folder; rows printed as they
    come."""
    from engine.models.loading import load_tokenizer

    rows = []
    for size in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            policy, refs, source = build_models(size, Path(tmp), device)
            print(f"{size}: {source}", flush=True)
            tokenizer = load_tokenizer(policy)
            for part in parts:
                if part == "train":
                    new = train_rows(size, policy, refs, tokenizer, shape, Path(tmp), peak, threads)
                elif part == "generate":
                    new = generate_rows(size, policy, shape, device)
                else:
                    new = mix_rows(size, policy, tokenizer, shape, device)
                print("\n".join(format_row(row) for row in new), flush=True)
                rows += new
    return rows


def main(argv: list[str] | None = None) -> int:
    import torch
    import transformers
    import trl

    from engine.models.loading import torch_threads
    from engine.paths import REPO_ROOT

    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(prog="python -m engine bench gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="0.5b,1.5b" if cuda else "tiny",
                        help="comma-separated: 0.5b, 1.5b (Qwen2 shapes, random weights), tiny (the demo model)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    parser.add_argument("--peak-tflops", type=float, help="peak dense bf16 TFLOP/s, for a GPU not in the table")
    parser.add_argument("--threads", type=int, default=None if cuda else 1,
                        help="torch threads per process (CPU default 1: tiny matmuls on a shared machine)")
    parser.add_argument("--note", default="", help="a line written under the heading (load, other work running)")
    parser.add_argument("--results", default=str(REPO_ROOT / "bench" / "RESULTS.md"), help="'-': print only")
    args = parser.parse_args(argv)
    sizes, parts = args.sizes.split(","), args.parts.split(",")
    bad = [s for s in sizes if s not in (*QWEN2_SHAPES, "tiny")] + [p for p in parts if p not in PARTS]
    if bad:
        raise ValueError(f"--sizes/--parts: unknown {bad}; sizes are {', '.join([*QWEN2_SHAPES, 'tiny'])}, parts "
                         f"{', '.join(PARTS)}")
    device, shape = ("cuda", GPU_SHAPE) if cuda else ("cpu", CPU_SHAPE)
    machine = machine_name()
    peak = args.peak_tflops * 1e12 if args.peak_tflops else (peak_bf16_flops(machine) if cuda else None)
    print(f"{machine}; torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}; "
          f"peak bf16 {'n/a' if peak is None else f'{peak / 1e12:.0f} TFLOP/s'}", flush=True)
    with torch_threads(args.threads):
        rows = run_parts(sizes, parts, device, shape, peak, args.threads)
    header = (f"## `python -m engine bench gpu` — {machine} — {datetime.date.today().isoformat()}\n\n"
              f"`python -m engine bench gpu --sizes {args.sizes} --parts {args.parts}`; torch {torch.__version__}, "
              f"transformers {transformers.__version__}, trl {trl.__version__}; {shape_text(shape, cuda)}. "
              "train: steady step tokens/s after warm-up steps, ratio to TRL with precomputed references (MRPO K=3: "
              "to K=1); MFU = 6·N·tokens/s / peak dense bf16, no attention term. generate, mix: tokens/s per wall "
              "second, median of the repeats after one untimed call." + (f"\n\n{args.note}" if args.note else ""))
    table = markdown(rows, header)
    print("\n" + table)
    if args.results != "-":
        with open(args.results, "a", encoding="utf-8") as out:
            out.write("\n" + table)
        print(f"appended to {args.results}")
    return 0


def shape_text(shape: Shape, cuda: bool) -> str:
    """The run's sizes in words, for the heading."""
    return (f"{'bf16 weights, ' if cuda else 'fp32, '}DPO steps of {shape.batch} pairs x "
            f"{shape.prompt}+{shape.response} tokens ({shape.steps} steps, {shape.warmup} warm-up), generation "
            f"batch {shape.gen_batch} x {shape.new_tokens} new tokens, {shape.repeats} repeats")


if __name__ == "__main__":
    raise SystemExit(main())
