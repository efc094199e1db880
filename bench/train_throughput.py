"""Training throughput, side by side in one run: PrefLab's trainers against TRL's stock DPOTrainer.

    python bench/train_throughput.py [--model PATH] [--pairs N] [--epochs 2] [--batch 16]

Same model, data, batch and steps for every entry; each entry runs in a fresh subprocess so that its peak memory
(max RSS on CPU, max allocated on CUDA) is its own. Wall time covers everything a user waits for: building the
trainer, the reference precompute pass, and all training steps over the epochs. Prints training tokens/s (prompt
and response tokens of chosen and rejected sequences), the seconds spent before the first step (loading, tokenizing
and every reference pass), and ratios:

  * every method against stock TRL with precomputed reference log-probs (target >= 0.95x) and without
    (target >= 1.1x);
  * MRPO with K = 2 and 3 references against K = 1 (which is DPO against the single reference; target >= 0.9x).

Defaults use the demo's tiny SFT model on CPU (run `python -m engine demo prepare` first); on a GPU machine pass a
larger model folder. Each entry also reports its steady step throughput (tokens/s over the training steps after
`--warmup` steps, synchronised on CUDA: no model loading, precompute pass or first-step autotuning), which
bench/gpu.py turns into MFU; `run_in_subprocess` is the piece it reuses.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

ENTRIES = {
    "trl_stock": "TRL DPOTrainer, reference model in the loop",
    "trl_precompute": "TRL DPOTrainer, precompute_ref_log_probs=True",
    "dpo": "PrefLab dpo",
    "mallows_po": "PrefLab mallows_po (theta)",
    "mrpo_k1": "MRPO, K=1 (= DPO against one reference)",
    "mrpo_k2": "PrefLab mrpo, K=2",
    "mrpo_k3": "PrefLab mrpo, K=3",
}


@dataclass(frozen=True)
class Setup:
    """What every entry of one comparison shares: models, data and the training shape.

    dtype: weights as loaded for every entry ("auto": bf16 on CUDA, fp32 on CPU), compute follows the trainer's
    bf16 autocast on CUDA; max_length: prompt + response tokens kept per sequence; warmup: steps left out of the
    steady step throughput; threads: torch threads in the entry's process (None leaves torch's default).
    """

    model: str
    refs: tuple[str, str]
    pairs: str
    n_pairs: int = 256
    epochs: float = 2.0
    batch: int = 16
    max_length: int = 128
    dtype: str = "auto"
    warmup: int = 2
    threads: int | None = None
    lora: int | None = None  # LoRA rank on q, k, v, o for every entry (alpha 2r); None: full fine-tuning

    def argv(self) -> list[str]:
        return ["--model", self.model, "--refs", ",".join(self.refs), "--pairs", self.pairs, "--n-pairs",
                str(self.n_pairs), "--epochs", str(self.epochs), "--batch", str(self.batch), "--max-length",
                str(self.max_length), "--dtype", self.dtype, "--warmup", str(self.warmup),
                *(["--threads", str(self.threads)] if self.threads else []),
                *(["--lora", str(self.lora)] if self.lora else [])]


def _step_clock(warmup: int):
    """A callback recording (time, tokens seen) after every optimizer step, synchronised with the GPU."""
    import torch
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self):
            self.marks: list[tuple[float, int]] = []  # [0]: training begins; [i]: step i ends

        def _mark(self, state) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.marks.append((time.perf_counter(), state.num_input_tokens_seen))

        def on_train_begin(self, args, state, control, **kwargs):
            self._mark(state)

        def on_step_end(self, args, state, control, **kwargs):
            self._mark(state)

        def tokens_per_s(self) -> float:
            """Tokens/s from the end of step `warmup` to the end of the last step (nan if there is no such span)."""
            if len(self.marks) < warmup + 2:
                return float("nan")
            (t0, n0), (t1, n1) = self.marks[warmup], self.marks[-1]
            return (n1 - n0) / (t1 - t0)

    return StepClock()


def run_entry(entry: str, setup: Setup, out: str) -> dict:
    """Train one entry in this process and return tokens, seconds, steady step tokens/s and peak memory."""
    import torch
    from trl import DPOTrainer

    from engine.config import config_from_dict
    from engine.data.loaders import load_preferences
    from engine.data.validation import truncate_pairs
    from engine.methods import get_method
    from engine.models.loading import load_model, load_tokenizer, lora_config
    from engine.recipes.preference import training_arguments

    model = setup.model
    method = {"trl_stock": "dpo", "trl_precompute": "dpo", "mrpo_k1": "dpo"}.get(entry, entry.split("_k")[0])
    k = int(entry[-1]) if entry.startswith("mrpo_k") else 1
    sections = {"mrpo": {"references": [model, *setup.refs[:k - 1]]}} if method == "mrpo" else {}
    lora = None if setup.lora is None else {"r": setup.lora, "alpha": 2 * setup.lora, "dropout": 0.0,
                                            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
    cfg = config_from_dict({"method": method, "model": {"path": model, "dtype": setup.dtype, "lora": lora},
                            "data": {"train": setup.pairs, "eval": None, "limit": setup.n_pairs,
                                     "max_length": setup.max_length},
                            "training": {"batch_size": setup.batch, "epochs": setup.epochs, "learning_rate": 1e-4},
                            **sections})
    tokenizer = load_tokenizer(model)
    data, _ = truncate_pairs(load_preferences(setup.pairs, limit=setup.n_pairs), tokenizer, cfg.data.max_length)
    args = training_arguments(cfg, Path(out), has_eval=False)
    args.logging_steps = 10**6  # logging costs the same everywhere; keep it out of the measurement
    args.disable_tqdm = True
    clock = _step_clock(setup.warmup)
    start = time.perf_counter()
    policy = load_model(model, dtype=setup.dtype)
    peft = {} if cfg.model.lora is None else {"peft_config": lora_config(cfg.model.lora)}
    if entry.startswith("trl"):
        args.precompute_ref_log_probs = entry == "trl_precompute"
        # with LoRA, TRL's reference is the policy with its adapters disabled: no second model
        ref = None if args.precompute_ref_log_probs or peft else load_model(model, dtype=setup.dtype)
        trainer = DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=data,
                             processing_class=tokenizer, callbacks=[clock], **peft)
    else:
        trainer = get_method(method).load_trainer()(model=policy, args=args, train_dataset=data,
                                   processing_class=tokenizer,
                                   method_params=cfg.params, callbacks=[clock], **peft)
    built = time.perf_counter()  # model loaded, data tokenized, every reference pass done
    trainer.train()
    seconds = time.perf_counter() - start
    tokens = trainer._total_train_tokens
    if torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"entry": entry, "tokens": tokens, "seconds": seconds, "setup_seconds": built - start,
            "tokens_per_s": tokens / seconds,
            "step_tokens_per_s": clock.tokens_per_s(), "steps": len(clock.marks) - 1, "params": policy.num_parameters(),
            "peak_mib": peak}


def run_in_subprocess(entry: str, setup: Setup) -> dict:
    """run_entry in a fresh Python process (its peak memory is its own); raises RuntimeError with its stderr."""
    from engine.paths import REPO_ROOT

    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", entry, *setup.argv()]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"{entry}: failed\n{proc.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def random_models(shape: str, tokenizer_from: str, folder: Path, count: int = 3) -> list[str]:
    """Save ``count`` randomly initialised Llamas of ``HIDDEN,LAYERS`` (4x MLP, 64-dim heads; seeds 0, 1, ...) with
    the tokenizer of ``tokenizer_from`` into subfolders of ``folder``; returns their paths: the policy, then the
    secondary references. Random weights train at the same speed as trained ones."""
    from engine.data.demo.models import LMSpec, tiny_llama
    from engine.models.loading import load_tokenizer

    try:
        hidden, layers = (int(v) for v in shape.split(","))
    except ValueError:
        raise SystemExit(f"--shape: expected HIDDEN,LAYERS such as 512,8 (got {shape!r})") from None
    tokenizer = load_tokenizer(tokenizer_from)
    paths = []
    for seed in range(count):
        model = tiny_llama(tokenizer, LMSpec(hidden_size=hidden, num_layers=layers, num_heads=max(1, hidden // 64),
                                             intermediate_size=4 * hidden, seed=seed))
        paths.append(str(folder / f"seed{seed}"))
        model.save_pretrained(paths[-1])
        tokenizer.save_pretrained(paths[-1])
    print(f"{count} random Llamas {shape}: {model.num_parameters() / 1e6:.1f}M parameters each", flush=True)
    return paths


def main(argv: list[str] | None = None) -> int:
    from engine.paths import demo_dir, models_dir

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(models_dir() / "sft"))
    parser.add_argument("--refs", default=str(models_dir() / "ref2"),
                        help="comma-separated secondary references for MRPO; with one, K=3 adds a randomly "
                        "initialised model of its shape")
    parser.add_argument("--pairs", default=str(demo_dir() / "prefs_sentiment_train.parquet"))
    parser.add_argument("--n-pairs", type=int, default=256)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128, help="prompt + response tokens kept per sequence")
    parser.add_argument("--dtype", default="auto", help="weights dtype of every entry (auto: bf16 on CUDA)")
    parser.add_argument("--warmup", type=int, default=2, help="steps left out of the steady step throughput")
    parser.add_argument("--threads", type=int, help="torch threads per entry (default: torch's; 1 on a shared CPU)")
    parser.add_argument("--shape", help="HIDDEN,LAYERS: three randomly initialised Llamas of that shape (seeds 0-2) "
                        "with the demo tokenizer replace --model and --refs (on CPU, models whose weights, not the "
                        "libraries, dominate peak memory: e.g. 512,8 has 34M parameters)")
    parser.add_argument("--lora", type=int, help="LoRA rank (q, k, v, o; alpha 2r) for every entry; default: full "
                        "fine-tuning")
    parser.add_argument("--entries", default=",".join(ENTRIES))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one entry and print JSON
    args = parser.parse_args(argv)
    if args.one:
        return compare(args)
    with tempfile.TemporaryDirectory() as folder:
        if args.shape:
            args.model, *refs = random_models(args.shape, args.model, Path(folder))
        else:
            refs = args.refs.split(",")
            if len(refs) < 2:  # MRPO refuses a reference listed twice
                refs.append(random_like(refs[0], Path(folder) / "random_ref"))
        args.refs = ",".join(refs)
        return compare(args)


def random_like(source: str, folder: Path) -> str:
    """Save a randomly initialised model with the architecture and tokenizer of ``source``; returns its path."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from engine.models.loading import load_tokenizer

    torch.manual_seed(1)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(source)).save_pretrained(folder)
    load_tokenizer(source).save_pretrained(folder)
    print(f"third MRPO reference: a randomly initialised copy of {source}'s architecture", flush=True)
    return str(folder)


def compare(args: argparse.Namespace) -> int:
    """Every entry of ``args.entries`` in its own process, then the ratios (or one entry here, with --one)."""
    refs = args.refs.split(",")
    setup = Setup(args.model, (refs[0], refs[1]), args.pairs, args.n_pairs, args.epochs, args.batch,
                  args.max_length, args.dtype, args.warmup, args.threads, args.lora)
    if args.one:
        from engine.models.loading import torch_threads

        with tempfile.TemporaryDirectory() as out, torch_threads(args.threads):
            result = run_entry(args.one, setup, out)
        print("RESULT " + json.dumps(result))
        return 0
    results = {}
    for entry in args.entries.split(","):
        try:
            results[entry] = r = run_in_subprocess(entry, setup)
        except RuntimeError as err:
            print(err)
            return 1
        print(f"{ENTRIES[entry]:48} {r['tokens_per_s']:9.0f} tokens/s  {r['seconds']:7.1f} s "
              f"({r['setup_seconds']:5.1f} s before the first step)  peak {r['peak_mib']:7.0f} MiB", flush=True)
    speed = {k: v["tokens_per_s"] for k, v in results.items()}
    print("\nratios (higher is faster):")
    for entry in ("dpo", "mallows_po", "mrpo_k2", "mrpo_k3"):
        if entry in speed:
            for base in ("trl_precompute", "trl_stock"):
                if base in speed:
                    print(f"  {entry:10} / {base:15} = {speed[entry] / speed[base]:.2f}x")
    for k in ("mrpo_k2", "mrpo_k3"):
        if k in speed and "mrpo_k1" in speed:
            one, more = results["mrpo_k1"], results[k]
            extra = more["seconds"] - one["seconds"]
            before = more["setup_seconds"] - one["setup_seconds"]
            print(f"  {k:10} / mrpo_k1         = {speed[k] / speed['mrpo_k1']:.2f}x"
                  f"  ({extra:+.1f} s in all, {before:+.1f} s of it before the first step: the extra references' pass)")
    if "trl_stock" in results:
        print("peak memory vs stock TRL without precompute: " + ", ".join(
            f"{k} {results[k]['peak_mib'] / results['trl_stock']['peak_mib']:.2f}x" for k in results
            if k != "trl_stock"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
