"""Command line: `python -m engine <command>`; `--help` on each command lists its options."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from engine.config import config_fields, config_to_dict, default_config, load_config
from engine.data.worlds import DEFAULT_WORLD, WORLDS
from engine.errors import PrefLabError
from engine.methods import get_method, method_names
from engine.store.runs import StoreError

_WORLD_HELP = "; ".join(f"{w.name}: {w.summary}" for w in WORLDS.values())


def _fmt_time(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def cmd_runs_list(args: argparse.Namespace) -> int:
    from engine.store.jobs import list_jobs

    jobs = list_jobs()
    if args.status:
        jobs = [j for j in jobs if j["status"] == args.status]
    if not jobs:
        print("no runs yet: start one from the dashboard or with `python -m engine train --config FILE`")
        return 0
    print(f"{'run id':40} {'method':12} {'status':10} {'started':19}  name")
    for job in jobs:
        print(f"{job['run_id']:40} {job['method']:12} {job['status']:10} {_fmt_time(job['started']):19}  "
              f"{job['name']}")
    return 0


def cmd_runs_show(args: argparse.Namespace) -> int:
    from engine.store.jobs import refresh_status
    from engine.store.runs import StoreReader

    job = refresh_status(args.run_id)
    for key in ("run_id", "name", "method", "kind", "status", "message", "pid"):
        print(f"{key:8}: {job[key]}")
    print(f"{'started':8}: {_fmt_time(job['started'])}\n{'ended':8}: {_fmt_time(job['ended'])}")
    reader = StoreReader()
    last = reader.last_values([args.run_id])
    if len(last):
        print("last metrics:")
        for row in last.itertuples():
            print(f"  {row.name:32} {row.value:12.5g}  (step {row.step})")
    print("config:\n" + json.dumps(job["config"], indent=2))
    return 0


def cmd_runs_cancel(args: argparse.Namespace) -> int:
    from engine.store.jobs import cancel

    job = cancel(args.run_id, grace=args.grace)
    print(f"{job['run_id']}: {job['status']}")
    return 0


def cmd_runs_logs(args: argparse.Namespace) -> int:
    from engine.store.jobs import tail_log
    from engine.store.runs import read_run

    read_run(args.run_id)  # a clear error for an unknown id
    print(tail_log(args.run_id, args.lines))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import os

    from engine.config import config_from_dict
    from engine.store.jobs import launch, pid_alive
    from engine.store.runs import ACTIVE, RunWriter, new_run_id, read_run, run_context

    if args.config:
        cfg = load_config(args.config)
        run_id = new_run_id(cfg.method)
        name = args.name or cfg.logging.run_name or run_id
        if args.detach:
            launch(["train", "--run", run_id], method=cfg.method, name=name, config=config_to_dict(cfg),
                   num_processes=cfg.training.num_processes, run_id=run_id)
            print(f"started {run_id}; follow it with `python -m engine runs logs {run_id}`")
            return 0
        RunWriter.create(run_id, method=cfg.method, name=name, config=config_to_dict(cfg))
    else:
        run_id = args.run or args.resume
        run = read_run(run_id)
        # The runner records the job's own pid (or accelerate's, our parent); another live process owns the run.
        if run["status"] in ACTIVE and run["pid"] not in (os.getpid(), os.getppid()) and pid_alive(run["pid"]):
            raise StoreError(f"run {run_id} is {run['status']} in process {run['pid']}; two processes must not write"
                             f" one run: wait for it to end or `python -m engine runs cancel {run_id}`")
        if args.resume and run["status"] == "finished":
            raise StoreError(f"run {run_id} already finished; nothing to resume (start a new run to train more)")
        cfg = config_from_dict(run["config"], f"run {run_id}")
    from engine.recipes import run_recipe
    from engine.recipes.preference import TrainingDiverged

    if os.environ.get("RANK", "0") != "0":  # accelerate's other ranks train but leave the records to rank 0
        run_recipe(cfg, RunWriter(run_id), resume=bool(args.resume))
        return 0
    try:
        with run_context(run_id) as writer:
            print(f"run {run_id}: training {cfg.method}", flush=True)
            out = run_recipe(cfg, writer, resume=bool(args.resume))
    except TrainingDiverged as err:  # recorded as failed by run_context; one line, no traceback, in the log
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"run {run_id} finished; model saved to {out}")
    return 0


def _as_job(run_id: str | None):
    """Inside a job started by the runner, record status in its run; from a terminal, just run."""
    from contextlib import nullcontext

    from engine.store.runs import run_context

    return run_context(run_id) if run_id else nullcontext()


def cmd_demo_prepare(args: argparse.Namespace) -> int:
    import os

    from engine.data.worlds import get_world
    from engine.store.jobs import RUN_ID_ENV

    world = get_world(args.world)
    with _as_job(os.environ.get(RUN_ID_ENV)):
        result = world.prepare(force=args.force, scale=args.scale)
    total = sum(result["seconds"].values())
    print(f"demo world {world.name!r} ready under {Path(result['manifest']).parent} ({total:.0f} s; "
          f"rebuilt: {', '.join(result['built']) or 'nothing, all cached'})")
    return 0


def cmd_demo_run(args: argparse.Namespace) -> int:
    from engine.data.worlds import get_world
    from engine.recipes.demo_run import demo_run

    config = args.config or get_world(args.world).spec
    result = demo_run(config, dry_run=args.dry_run, scale=args.scale)
    if not args.dry_run:
        total = result["seconds"]["total"]  # wall time: the stages ran side by side, so their sum overstates it
        print(f"demo finished in {total:.0f} s as run {result['run_id']}; open the dashboard (make run) to compare")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from engine.recipes.evaluation import eval_command

    run_id = eval_command(args.models, args.prompts, args.judge, baseline=args.baseline, scorers=args.scorers,
                          pairs=args.pairs, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                          seed=args.seed, backend=args.backend, limit=args.limit, name=args.name)
    print(f"evaluation stored as run {run_id}")
    return 0


def cmd_mix(args: argparse.Namespace) -> int:
    if args.balance:
        from engine.recipes.mixing_estimates import balance

        result = balance(args.run)
        print("lambda* = " + ", ".join(f"{k} {v:.3f}" for k, v in result["weights"].items()))
        print("estimated scores at lambda*: " + ", ".join(f"{k} {v:.3f}" for k, v in result["scores"].items()))
        print(f"duality gap {result['gap']:.2e}, F_hat {result['F_hat']:.4f}")
        return 0
    from engine.recipes.mixing import mix_generate

    weights = [float(w) for w in args.weights.split(",")]
    rows = mix_generate(args.run, weights, prompts=args.prompt or None, n=args.n, seed=args.seed)
    for row in rows:
        scores = ", ".join(f"{k} {v:.3f}" for k, v in row["scores"].items())
        print(f"--- {row['prompt']!r} ({scores})\n{row['prompt']}{row['output']}")
    return 0


def _print_fields(cfg) -> None:
    rows = [(path, json.dumps(value, default=str), text) for path, value, text in config_fields(cfg)]
    width = max(len(f"{path} = {value}") for path, value, _ in rows)
    for path, value, text in rows:
        print(f"  {f'{path} = {value}':<{width}}  # {text}" if text else f"  {path} = {value}")


def cmd_config_check(args: argparse.Namespace) -> int:
    cfg = load_config(args.file)
    print(f"{args.file}: valid {cfg.method} config ({get_method(cfg.method).paper}); every field, defaults filled in:")
    _print_fields(cfg)
    return 0


def cmd_config_fields(args: argparse.Namespace) -> int:
    method = get_method(args.method)
    print(f"{method.name}: {method.paper}; math in {method.docs}. Fields and defaults:")
    _print_fields(default_config(method.name))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from engine.store.export import export_database

    counts = export_database(Path(args.output))
    print(f"wrote {args.output}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


BENCHMARKS = {"store": "bench.store", "mixing": "bench.mixing", "train": "bench.train_throughput",
              "dashboard": "bench.dashboard", "gpu": "bench.gpu"}


def cmd_bench(args: argparse.Namespace) -> int:
    import importlib

    module = BENCHMARKS[args.name]
    return importlib.import_module(module).main(args.rest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine", description="PrefLab engine: train, mix, evaluate.")
    sub = parser.add_subparsers(dest="command", required=True)

    runs = sub.add_parser("runs", help="list, inspect and cancel runs").add_subparsers(dest="action", required=True)
    p = runs.add_parser("list", help="all runs with their status")
    p.add_argument("--status", choices=["queued", "running", "finished", "failed", "cancelled"])
    p.set_defaults(func=cmd_runs_list)
    p = runs.add_parser("show", help="one run: status, last metrics, config")
    p.add_argument("run_id")
    p.set_defaults(func=cmd_runs_show)
    p = runs.add_parser("cancel", help="stop a running job (SIGTERM, then SIGKILL)")
    p.add_argument("run_id")
    p.add_argument("--grace", type=float, default=10.0, help="seconds between SIGTERM and SIGKILL")
    p.set_defaults(func=cmd_runs_cancel)
    p = runs.add_parser("logs", help="the end of a run's log")
    p.add_argument("run_id")
    p.add_argument("--lines", type=int, default=50)
    p.set_defaults(func=cmd_runs_logs)

    p = sub.add_parser("train", help=f"train a policy from a config ({', '.join(method_names())})")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="YAML/JSON run config (see configs/)")
    source.add_argument("--run", help="run the config stored with an existing run (how the runner starts jobs)")
    source.add_argument("--resume", metavar="RUN", help="continue a run from its last checkpoint")
    p.add_argument("--name", help="run name shown in the dashboard")
    p.add_argument("--detach", action="store_true", help="start as a background job and return at once")
    p.set_defaults(func=cmd_train)

    demo = sub.add_parser("demo", help="the offline demo world").add_subparsers(dest="action", required=True)
    p = demo.add_parser("prepare", help="build a demo world: its models, prompts and preference sets (cached)")
    p.add_argument("--world", default=DEFAULT_WORLD, choices=list(WORLDS), help=_WORLD_HELP)
    p.add_argument("--force", action="store_true", help="rebuild every step even if cached")
    p.add_argument("--scale", default="full", choices=["full", "test"], help="test: a miniature world in seconds")
    p.set_defaults(func=cmd_demo_prepare)
    p = demo.add_parser("run", help="train, evaluate and compare every method on the demo task (reuses done steps)")
    p.add_argument("--world", default=DEFAULT_WORLD, choices=list(WORLDS), help=_WORLD_HELP + "; its spec runs")
    p.add_argument("--config", help="pipeline spec instead of the world's (configs/demo_real.yaml: GPU)")
    p.add_argument("--scale", choices=["full", "test"], help="test: a shortened pipeline that runs in a minute")
    p.add_argument("--dry-run", action="store_true", help="print the plan without loading anything")
    p.set_defaults(func=cmd_demo_run)

    p = sub.add_parser("eval", help="compare models: generations, judged win rates with CIs, scores, margins")
    p.add_argument("--models", required=True, help="comma-separated name=path, run ids or model paths")
    p.add_argument("--prompts", required=True, help="prompt set: parquet/jsonl with a prompt column, or hub name")
    p.add_argument("--judge", default="bt:sentiment", help="pairwise judge, e.g. bt:sentiment, lm:PATH")
    p.add_argument("--baseline", help="model name every other model is compared with (default: the first)")
    p.add_argument("--scorers", default="sentiment,conciseness", help="comma-separated per-objective scorers")
    p.add_argument("--pairs", help="held-out preference pairs for implicit reward margins of trained runs")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="transformers", choices=["transformers", "vllm"])
    p.add_argument("--limit", type=int, help="use only the first N prompts")
    p.add_argument("--name", help="run name shown in the dashboard")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("mix", help="a mixing_po run: generate from a mixture, or rebalance its weights")
    p.add_argument("--run", required=True, help="id of a finished mixing_po run")
    action = p.add_mutually_exclusive_group(required=True)
    action.add_argument("--weights", help="comma-separated weights in objective order, summing to 1")
    action.add_argument("--balance", action="store_true", help="run mirror descent and print lambda* with scores")
    p.add_argument("--prompt", action="append", help="prompt to continue (repeatable; default: the run's prompts)")
    p.add_argument("--n", type=int, default=8, help="number of samples")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_mix)

    config = sub.add_parser("config", help="check config files").add_subparsers(dest="action", required=True)
    p = config.add_parser("check", help="validate a YAML/JSON config and print it with defaults filled in")
    p.add_argument("file")
    p.set_defaults(func=cmd_config_check)
    p = config.add_parser("fields", help="every field of a method's config with its default and help")
    p.add_argument("method", choices=method_names())
    p.set_defaults(func=cmd_config_fields)

    p = sub.add_parser("export", help="write every run's data into one self-contained .duckdb file")
    p.add_argument("output", help="path of the new .duckdb file")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("bench", help="benchmarks (see bench/)")
    p.add_argument("name", choices=sorted(BENCHMARKS))
    p.add_argument("rest", nargs=argparse.REMAINDER, help="options of the benchmark (--help for its list)")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except PrefLabError as err:  # the user's input or an outside service: one line; anything else is a bug
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
