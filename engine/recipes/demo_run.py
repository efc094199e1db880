"""The end-to-end demo: one job that trains every method on the offline sentiment-vs-conciseness task, evaluates
every policy and mixture against the SFT model, and leaves it all in the store, so the dashboard fills at once.

Steps (spec: configs/demo.yaml, documented there; configs/demo_smollm2.yaml runs on SmolLM2-135M-Instruct,
configs/demo_real.yaml is the GPU version):
1. prepare the spec's demo world (engine/data/worlds.py: tiny or smollm2; each caches its own steps);
2. train the stages, each its own job: a ``python -m engine train`` process started by engine.store.jobs exactly as the
   dashboard starts one, so each run shows in the runs table with its log, status and cancel button, a crash in one
   cannot take down the others, and ``parallel`` of them run at once;
3. evaluate, in this process, as one run of kind "eval" per judge (engine.recipes.evaluation.evaluate_models): win rates
   with bootstrap intervals, length-controlled win rates, per-objective scores and margins, implicit reward margins.
The pipeline itself is a run of kind "demo": its log shows every step and its time, its metrics hold
``demo/seconds/<step>``.

Reuse. A stage whose config equals that of a finished run created after the demo world was last built is not
trained again (a run still going with that config is followed, not duplicated); an evaluation with the same
models, prompts, judge and sampling is not run again.

DPO per objective. With ``dpo_runs: true`` on the mixing stage, each objective's expert is first trained as a
``dpo`` run of its own (config derived from the mixing config exactly as engine.recipes.mixing derives it), then copied
into the mixing run, which keeps saved experts when started with ``--resume``: the DPO baselines cost nothing extra.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

from engine.config import resolve_source
from engine.errors import PrefLabError
from engine.methods import family_of
from engine.methods.mixing_po.config import UNION
from engine.paths import RunLayout
from engine.recipes.demo_spec import (
    DEFAULT_CONFIG,
    DemoPlan,
    Stage,
    find_run,
    format_plan,
    load_plan,
    point_label,
    world_time,
)
from engine.store.jobs import RUN_ID_ENV, cancel, launch, refresh_status
from engine.store.runs import ACTIVE, RunWriter, StoreError, StoreReader, new_run_id, run_context, run_layout

POLL_SECONDS = 2.0


class StageFailed(PrefLabError, RuntimeError):
    """A stage job ended failed or cancelled; the message names it and how to read its log."""


# ---------------------------------------------------------------------------------------------- training


def _launch(stage: Stage, runs: dict[str, str]) -> str:
    run_id = new_run_id(stage.cfg.method)
    for objective, source in stage.experts.items():
        shutil.copytree(run_layout(runs[source]).model, run_layout(run_id).expert(objective).model)
    # --resume keeps the copied experts (engine.recipes.mixing: saved experts are kept on resume)
    args = ["train", "--resume" if stage.experts else "--run", run_id]
    return launch(args, method=stage.cfg.method, name=stage.cfg.logging.run_name or f"demo: {stage.name}",
                  config=stage.config, num_processes=stage.cfg.training.num_processes, run_id=run_id)


def _train_stages(plan: DemoPlan, since: float, say: Callable[[str], None],
                  seconds: dict[str, float]) -> dict[str, str]:
    """Run every stage (reusing finished ones), ``plan.parallel`` jobs at once; stage name -> run id."""
    pending, running, done, failed = list(plan.stages), {}, {}, []
    try:
        while pending or running:
            for stage in list(pending):
                if failed or len(running) >= plan.parallel:
                    break
                if not all(d in done for d in stage.experts.values()):
                    continue
                pending.remove(stage)
                found = find_run(stage.config, "train", since)
                if found is not None and found["status"] == "finished":
                    done[stage.name], seconds[stage.name] = found["run_id"], 0.0
                    say(f"{stage.name}: reusing finished run {found['run_id']}")
                    continue
                run_id = found["run_id"] if found else _launch(stage, done)
                running[stage.name] = (run_id, time.perf_counter())
                say(f"{stage.name}: {'following running' if found else 'started'} run {run_id} ({stage.cfg.method})")
            for name, (run_id, start) in list(running.items()):
                job = refresh_status(run_id)
                if job["status"] in ACTIVE:
                    continue
                del running[name]
                seconds[name] = time.perf_counter() - start
                if job["status"] == "finished":
                    done[name] = run_id
                    say(f"{name}: finished run {run_id} in {seconds[name]:.1f} s")
                else:
                    failed.append(f"{name} ({run_id}) {job['status']}: {job['message']}")
                    say(f"{name}: {job['status']} ({job['message']}); `python -m engine runs logs {run_id}`")
            if failed and not running:
                raise StageFailed(f"demo stopped: {'; '.join(failed)}; fix it and rerun, finished stages are reused")
            if running:
                time.sleep(POLL_SECONDS)
    except BaseException:
        for run_id, _ in running.values():  # jobs live in their own sessions: they would outlive us
            with suppress(StoreError):  # it may end between the check and the signal
                if refresh_status(run_id)["status"] in ACTIVE:
                    cancel(run_id, grace=5.0)
        raise
    return done


def _eval_models(plan: DemoPlan, runs: dict[str, str]) -> tuple[dict[str, str], dict[str, tuple[str, Any]]]:
    """Display name -> model path for every trained policy; mixture name -> (mixing run id, weights point)."""
    models, mixtures = {plan.eval.baseline: resolve_source(plan.eval.baseline_path)}, {}
    for stage in plan.stages:
        layout = run_layout(runs[stage.name])
        if family_of(stage.cfg.method) != "mixing":
            models[stage.name] = str(layout.model)
            continue
        if layout.baseline(UNION).model.is_dir():
            models[f"{stage.name}:union"] = str(layout.baseline(UNION).model)
        for point in plan.eval.mixtures:
            name = f"{stage.name}:{point_label(point)}"
            models[name], mixtures[name] = str(layout.root), (runs[stage.name], point)
    return models, mixtures


def _mixture_generations(mixtures: dict[str, tuple[str, Any]], models: dict[str, str], prompts: list[str],
                         prompt_set: str, params, backend: str, writer: RunWriter, reader) -> str | None:
    """Decode each mixture on the eval prompts with the eval's sampling and store the texts under the key
    engine.decoding.generation.cached_generate looks up, so evaluate_models judges them like any model's.
    Returns how the mixtures were decoded (a decode mode; None without mixtures), which names the distribution."""
    from engine.decoding.distributions import mixture_mode
    from engine.decoding.generation import cache_key, weights_fingerprint
    from engine.decoding.mixture import sample_mixture
    from engine.recipes.mixing import run_policies
    from engine.recipes.mixing_estimates import mixing_run_config

    policies: dict[str, Any] = {}  # mixing run id -> its loaded reference and experts, shared by its points
    modes = set()
    for name, (run_id, point) in mixtures.items():
        cfg = mixing_run_config(run_id)
        modes.add(mixture_mode(cfg.params.decode_mode, params.temperature))
        key = cache_key(name, prompt_set, params, backend, weights_fingerprint(models[name]))
        stored = reader.query("SELECT count(DISTINCT prompt_id) AS n FROM generations WHERE cache_key = ?", [key])
        if int(stored["n"].iloc[0]) == len(prompts):
            continue
        names = [o.name for o in cfg.params.objectives]
        if point == "lambda*":
            star = json.loads(run_layout(run_id).lambda_star.read_text(encoding="utf-8"))
            point = [star[n] for n in names]
        members = [(n, float(w)) for n, w in zip(names, point) if w > 0]
        # one policy is sampled exactly; a mixture as its run decodes it, token-level away from temperature 1
        mode = mixture_mode(cfg.params.decode_mode, params.temperature) if len(members) > 1 else "token"
        if run_id not in policies:
            policies[run_id] = run_policies(cfg, run_layout(run_id))
        out = sample_mixture(policies[run_id], [n for n, _ in members], [w for _, w in members],
                             prompts, params, mode, cfg.params.sir_candidates, cfg.params.batch_size)
        writer.append("generations", ({"cache_key": key, "model": name, "prompt_set": prompt_set, "prompt_id": i,
                                       "prompt": p, "output": t, "num_tokens": c}
                                      for i, (p, t, c) in enumerate(zip(prompts, out.texts, out.num_tokens))))
    return "token" if "token" in modes else next(iter(modes), None)


def _reward_margins(plan: DemoPlan, runs: dict[str, str], writer: RunWriter, reader) -> None:
    """Implicit reward margins on each DPO-family policy's own held-out pairs (the union baseline on all of them)."""
    from engine.recipes.evaluation import reward_margins, run_reward_margins

    for stage in plan.stages:
        cfg, layout = stage.cfg, run_layout(runs[stage.name])
        family = family_of(cfg.method)
        if family == "preference" and cfg.data.eval is not None:
            run_reward_margins(runs[stage.name], writer, model=stage.name, reader=reader)
        union_pairs, union = layout.union_pairs("test"), layout.baseline(UNION).model
        if family == "mixing" and union_pairs.exists() and union.is_dir():
            reward_margins(str(union), resolve_source(cfg.model.path),
                           str(union_pairs), cfg.params.beta, writer, model=f"{stage.name}:union",
                           baseline=plan.eval.baseline, max_length=cfg.data.max_length)


def vllm_ready(models: dict[str, str], folder: Path) -> dict[str, str]:
    """vLLM loads full models only: LoRA adapter folders are merged into their base once, under ``folder``."""
    from peft import AutoPeftModelForCausalLM

    from engine.models.loading import load_tokenizer

    ready = dict(models)
    for name, path in models.items():
        if not (Path(path) / "adapter_config.json").exists():
            continue
        target = folder / name.replace(":", "_").replace("*", "star")
        if not (target / "config.json").exists():
            merged = AutoPeftModelForCausalLM.from_pretrained(path).merge_and_unload()
            merged.save_pretrained(target)
            load_tokenizer(path).save_pretrained(target)
        ready[name] = str(target)
    return ready


def _evaluate(plan: DemoPlan, runs: dict[str, str], since: float, say: Callable[[str], None],
              layout: RunLayout) -> list[str]:
    """One eval run per judge, the first judge's last (the dashboard's Compare page shows the newest first)."""
    from engine.data.loaders import load_prompts
    from engine.decoding.distributions import distribution_name
    from engine.decoding.generation import SamplingParams
    from engine.recipes.evaluation import evaluate_models, prompt_set_name

    spec, (models, mixtures) = plan.eval, _eval_models(plan, runs)
    params = SamplingParams(**spec.sampling)
    prompts = list(load_prompts(resolve_source(spec.prompts), limit=spec.limit)["prompt"])
    eval_ids = []
    for judge in reversed(spec.judges):
        margins = spec.reward_margins and judge == spec.judges[0]
        config = {"models": models, "prompts": spec.prompts, "judge": judge, "baseline": spec.baseline,
                  "scorers": ",".join(spec.scorers), "params": dataclasses.asdict(params), "backend": spec.backend,
                  "limit": spec.limit, "mixtures": {k: v[1] for k, v in mixtures.items()}, "reward_margins": margins}
        found = find_run(config, "eval", since)
        if found is not None and found["status"] == "finished":
            say(f"eval ({judge}): reusing finished run {found['run_id']}")
            eval_ids.append(found["run_id"])
            continue
        run_id = new_run_id("eval")
        RunWriter.create(run_id, method="eval", name=f"demo eval ({judge})", config=config, kind="eval")
        say(f"eval ({judge}): run {run_id}, {len(models)} models on {len(prompts)} prompts")
        with run_context(run_id) as writer:
            reader = StoreReader()
            mode = _mixture_generations(mixtures, models, prompts, prompt_set_name(spec.prompts, prompts), params,
                                        spec.backend, writer, reader)
            paths = vllm_ready(models, layout.merged) if spec.backend == "vllm" else models
            evaluate_models(paths, spec.prompts, judge, writer, baseline=spec.baseline, scorers=spec.scorers,
                            params=params, backend=spec.backend, limit=spec.limit, reader=reader,
                            distribution=distribution_name(params.temperature, mode))
            if margins:
                _reward_margins(plan, runs, writer, reader)
        eval_ids.append(run_id)
    return eval_ids


# ---------------------------------------------------------------------------------------------- the job


def _demo_run_id(run_id: str | None, plan: DemoPlan) -> str:
    """The runner's id when started as a job (its run.json exists), else a new run of kind demo."""
    run_id = run_id or os.environ.get(RUN_ID_ENV)
    if run_id and run_layout(run_id).metadata.exists():
        return run_id
    run_id = run_id or new_run_id("demo")
    RunWriter.create(run_id, method="demo", name=f"demo run ({plan.scale})", kind="demo",
                     config={"config_file": str(plan.source), "scale": plan.scale,
                             "stages": {s.name: s.config for s in plan.stages}})
    return run_id


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def demo_run(config_path: str | Path = DEFAULT_CONFIG, dry_run: bool = False, scale: str | None = None,
             run_id: str | None = None) -> dict[str, Any]:
    """Prepare, train every stage, evaluate (module docstring); returns the demo run id, each stage's run id, the
    eval run ids and seconds per step. ``dry_run`` prints the plan and returns it, loading and writing nothing.
    ``scale`` picks a patch from the spec's ``scales`` (``test``: every step in a few minutes); ``run_id`` is the
    demo's own run (default: PREFLAB_RUN_ID when the runner started this job, else a new one).
    """
    plan = load_plan(config_path, scale)
    if dry_run:
        text = format_plan(plan)
        print(text, flush=True)
        return {"plan": text}
    demo_id = _demo_run_id(run_id, plan)
    started, seconds = time.perf_counter(), {}

    def say(message: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f} s] {message}", flush=True)

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None  # cancel: stop our stage jobs
    try:
        with run_context(demo_id) as writer:
            say(f"demo run {demo_id}: {plan.source.name}, scale {plan.scale}")
            if plan.world_scale is not None:
                from engine.data.worlds import get_world

                tick = time.perf_counter()
                built = get_world(plan.world).prepare(scale=plan.world_scale, num_threads=plan.threads or 1)["built"]
                seconds["prepare"] = time.perf_counter() - tick
                say(f"prepare: {'built ' + ', '.join(built) if built else 'all cached'} ({seconds['prepare']:.1f} s)")
                plan = load_plan(config_path, scale)  # now against the real files
            since = world_time(plan)
            runs = _train_stages(plan, since, say, seconds)
            tick = time.perf_counter()
            from engine.models.loading import torch_threads

            with torch_threads(plan.threads):
                evals = _evaluate(plan, runs, since, say, writer.layout)
            seconds["eval"] = time.perf_counter() - tick
            seconds["total"] = time.perf_counter() - started
            writer.log_metrics(0, {f"demo/seconds/{k}": v for k, v in seconds.items()})
            say(f"demo finished in {seconds['total']:.1f} s: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()
                                                                        if k != "total"))
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    return {"run_id": demo_id, "stages": runs, "evals": evals, "seconds": seconds}
