"""The demo spec (configs/demo.yaml): read, validated and printed as a plan, without loading any model or data.

A spec names the demo world to prepare, the training stages (each a run config file plus overrides), and the
evaluation; named scale patches (``scales``) shorten everything for CI. Every stage's run config is validated on
load by engine.config, so a typo stops the demo before anything runs; before the demo world exists its files stand
as empty placeholders in a scratch folder for that check. `find_run` says which steps a store already holds.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from engine.config import ConfigError, RunConfig, check_data_ref, check_model_ref, config_from_dict, config_to_dict
from engine.config.checks import check_simplex
from engine.data.worlds import DEFAULT_WORLD, get_world
from engine.methods import family_of, get_method
from engine.methods.mixing_po.config import expert_config
from engine.paths import REPO_ROOT, data_dir
from engine.store.jobs import refresh_status
from engine.store.runs import ACTIVE, list_run_ids, read_run

DEFAULT_CONFIG = REPO_ROOT / "configs" / "demo.yaml"
_TOP_KEYS = {"world", "threads", "parallel", "stages", "eval", "scales"}
_EVAL_DEFAULTS = {"prompts": "demo/prompts_heldout.parquet", "baseline": {"name": "sft", "path": "models/sft"},
                  "judges": ["bt:sentiment"], "scorers": ["sentiment", "conciseness"], "mixtures": ["lambda*"],
                  "max_new_tokens": 48, "temperature": 0.5, "seed": 0, "limit": None, "backend": "transformers",
                  "reward_margins": True}


class DemoError(ConfigError):
    """The demo spec is wrong; the message names the field and the fix."""


@dataclass(frozen=True)
class Stage:
    """One training job of the demo: its validated run config and, for mixing, which stages provide experts."""

    name: str
    cfg: RunConfig
    config: dict[str, Any]  # what the run stores, compared for reuse
    source: str  # where the config came from, for the plan
    experts: dict[str, str] = field(default_factory=dict)  # objective -> stage whose model is that expert


@dataclass(frozen=True)
class EvalSpec:
    """The evaluation step: what is compared with the baseline, on which prompts, by which judges and scorers."""

    prompts: str
    baseline: str
    baseline_path: str
    judges: list[str]
    scorers: list[str]
    mixtures: list[Any]  # "lambda*" or weights in objective order
    sampling: dict[str, Any]  # engine.decoding.generation.SamplingParams fields
    limit: int | None
    backend: str
    reward_margins: bool


@dataclass(frozen=True)
class DemoPlan:
    """A validated demo spec at one scale: the world to prepare, the stages in start order, the evaluation."""

    source: Path
    scale: str
    world: str  # the demo world's name (engine/data/worlds.py)
    world_scale: str | None  # None: no demo world to prepare (real models and data)
    threads: int | None
    parallel: int
    stages: list[Stage]
    eval: EvalSpec


# ---------------------------------------------------------------------------------------------- the spec


def _merge(base: Any, over: Any) -> Any:
    """``over`` on top of ``base``: mappings merged key by key, anything else replaced."""
    if isinstance(base, dict) and isinstance(over, dict):
        return {**base, **{k: _merge(base.get(k), v) for k, v in over.items()}}
    return over


def _mapping(where: str, value: Any, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DemoError(f"{where}: must be a mapping (got {value!r})")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise DemoError(f"{where}.{unknown[0]}: unknown key; allowed: {', '.join(sorted(allowed))}")
    return value


def _read_yaml(path: Path, where: str) -> Any:
    if not path.is_file():
        raise DemoError(f"{where}: no such file {path}")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise DemoError(f"{where}: cannot parse {path} ({str(err).splitlines()[0]})") from None


def _count(where: str, value: Any, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DemoError(f"{where}: must be a positive integer{' or null' if allow_none else ''} (got {value!r})")
    return value


@contextmanager
def _world_placeholders(world: str | None) -> Iterator[None]:
    """Validate run configs before the demo world exists: its files stand as empty placeholders in a scratch data
    folder, so every other check still runs (nothing is written where the real world will be)."""
    if world is None:
        yield
        return
    with tempfile.TemporaryDirectory(prefix="preflab-plan-") as scratch:
        previous = os.environ.get("PREFLAB_DATA")
        os.environ["PREFLAB_DATA"] = scratch
        try:
            layout, folders = get_world(world).layout()
            for name, path in layout.items():
                is_folder = name in folders
                (path if is_folder else path.parent).mkdir(parents=True, exist_ok=True)
                if not is_folder:
                    path.touch()
            yield
        finally:
            if previous is None:
                os.environ.pop("PREFLAB_DATA", None)
            else:
                os.environ["PREFLAB_DATA"] = previous


def _expert_stages(mix: Stage) -> list[Stage]:
    """Each objective's DPO expert as a run config of its own, by the expert_config the mixing recipe uses too."""
    cfg, out = mix.cfg, []
    for objective in cfg.params.objectives:
        derived = expert_config(cfg, objective.train, objective.eval, cfg.data.limit)
        name = f"dpo_{objective.name}"
        as_dict = config_to_dict(derived)
        out.append(Stage(name, config_from_dict(as_dict, f"stage {name}"), as_dict, f"{mix.source}, {objective.name}"
                         " expert"))
    return out


def _stages(raw: Any, folder: Path, patches: dict[str, Any], threads: int | None) -> list[Stage]:
    if not isinstance(raw, list) or not raw:
        raise DemoError("stages: must be a non-empty list of {name, config, overrides, dpo_runs}")
    stages: list[Stage] = []
    for i, entry in enumerate(raw):
        where = f"stages[{i}]"
        entry = _mapping(where, entry, {"name", "config", "overrides", "dpo_runs"})
        name = entry.get("name")
        if not isinstance(name, str) or not name.replace("_", "").isalnum():
            raise DemoError(f"{where}.name: give a name of letters, digits and '_' (got {name!r})")
        config: dict[str, Any] = {}
        if "config" in entry:
            config = _read_yaml((folder / str(entry["config"])).resolve(), f"{where}.config")
        for patch in (entry.get("overrides") or {}, patches.get("all") or {}, patches.get(name) or {}):
            config = _merge(config, patch)
        if threads is not None and isinstance(config, dict):
            config = _merge({"training": {"num_threads": threads}}, config)
        cfg = config_from_dict(config, f"stage {name}")
        stage = Stage(name, cfg, config_to_dict(cfg), str(entry.get("config", "inline")))
        if entry.get("dpo_runs"):
            if family_of(cfg.method) != "mixing":
                raise DemoError(f"{where}.dpo_runs: only a mixing stage ({cfg.method} is not one) has per-objective "
                                "experts")
            experts = _expert_stages(stage)
            stages += experts
            stage = dataclasses.replace(stage, experts={s.name[4:]: s.name for s in experts})
        stages.append(stage)
    names = [s.name for s in stages]
    unknown = sorted(set(patches) - set(names) - {"all"})
    if len(set(names)) != len(names) or unknown:
        raise DemoError(f"stages: names must be unique and scale patches must name stages (got {names}, "
                        f"patches for {unknown})")
    return stages


def _eval_spec(raw: Any, stages: list[Stage]) -> EvalSpec:
    from engine.decoding.generation import BACKENDS, SamplingParams

    spec = _merge(_EVAL_DEFAULTS, _mapping("eval", raw or {}, set(_EVAL_DEFAULTS)))
    baseline = _mapping("eval.baseline", spec["baseline"], {"name", "path"})
    check_data_ref("eval.prompts", spec["prompts"])
    check_model_ref("eval.baseline.path", str(baseline.get("path")))
    for key in ("judges", "scorers"):
        if not isinstance(spec[key], list) or not spec[key] or not all(isinstance(x, str) for x in spec[key]):
            raise DemoError(f"eval.{key}: must be a non-empty list of names, e.g. [bt:sentiment]")
    if any(j.partition(":")[0] not in ("bt", "lm", "openai") for j in spec["judges"]):
        raise DemoError(f"eval.judges: use bt:<scorer>, lm:<path> or openai:<url>#<model> (got {spec['judges']})")
    if spec["backend"] not in BACKENDS:
        raise DemoError(f"eval.backend: must be one of {', '.join(BACKENDS)} (got {spec['backend']!r})")
    sampling = {k: spec[k] for k in ("max_new_tokens", "temperature", "seed")}
    try:
        SamplingParams(**sampling)
    except (TypeError, ValueError) as err:
        raise DemoError(f"eval.{err}") from None
    for i, point in enumerate(spec["mixtures"]):
        for stage in (s for s in stages if family_of(s.cfg.method) == "mixing"):
            if point != "lambda*":
                k = len(stage.cfg.params.objectives)
                if not isinstance(point, list) or len(point) != k:
                    raise DemoError(f"eval.mixtures[{i}]: 'lambda*' or {k} weights in objective order")
                check_simplex(f"eval.mixtures[{i}]", point)
    return EvalSpec(spec["prompts"], str(baseline.get("name")), str(baseline["path"]), spec["judges"],
                    spec["scorers"], spec["mixtures"], sampling, _count("eval.limit", spec["limit"], True),
                    spec["backend"], bool(spec["reward_margins"]))


def load_plan(config_path: str | Path = DEFAULT_CONFIG, scale: str | None = None) -> DemoPlan:
    """Read and validate a demo spec (every run config included) without loading any model or data."""
    path = Path(config_path).resolve()
    doc = _mapping(str(path), _read_yaml(path, "config_path"), _TOP_KEYS)
    scales = _mapping("scales", doc.get("scales") or {}, set(doc.get("scales") or {}))
    scale = scale or "full"
    if scale != "full" and scale not in scales:
        raise DemoError(f"scale: {scale!r} is not defined in {path}; use full or one of {sorted(scales)}")
    patch = _mapping(f"scales.{scale}", scales.get(scale) or {}, _TOP_KEYS - {"scales"})
    doc = _merge({k: v for k, v in doc.items() if k != "stages"}, {k: v for k, v in patch.items() if k != "stages"})
    world = _mapping("world", doc.get("world") or {}, {"name", "prepare", "scale"})
    world_name = str(world.get("name", DEFAULT_WORLD))
    get_world(world_name)  # an unknown name stops here, with the valid ones
    world_scale = str(world.get("scale", "full")) if world.get("prepare", False) else None
    threads = _count("threads", doc.get("threads"), allow_none=True)
    parallel = _count("parallel", doc.get("parallel", 1))
    stage_patches = _mapping(f"scales.{scale}.stages", patch.get("stages") or {}, set(patch.get("stages") or {}))
    unprepared = world_scale is not None and not get_world(world_name).manifest().exists()
    with _world_placeholders(world_name if unprepared else None):
        stages = _stages(_read_yaml(path, "config_path").get("stages"), path.parent, stage_patches, threads)
        spec = _eval_spec(doc.get("eval"), stages)
    return DemoPlan(path, scale, world_name, world_scale, threads, parallel, stages, spec)


# ---------------------------------------------------------------------------------------------- reuse


def world_time(plan: DemoPlan) -> float:
    """Runs older than the demo world's last build were trained on other models or data: never reused."""
    manifest = get_world(plan.world).manifest()
    return manifest.stat().st_mtime if plan.world_scale is not None and manifest.exists() else 0.0


def find_run(config: dict[str, Any], kind: str, since: float = 0.0) -> dict[str, Any] | None:
    """The newest finished run of ``kind`` with exactly this config, created at or after ``since``; else the newest
    such run still going; else None."""
    wanted, going = json.loads(json.dumps(config)), None
    for run_id in list_run_ids():
        meta = read_run(run_id)
        if meta["kind"] != kind or meta["created"] < since or meta["config"] != wanted:
            continue
        run = refresh_status(run_id)
        if run["status"] == "finished":
            return run
        if run["status"] in ACTIVE and going is None:
            going = run
    return going


# ---------------------------------------------------------------------------------------------- evaluation


def point_label(point: Any) -> str:
    return "lambda*" if point == "lambda*" else "w=" + ",".join(f"{w:.2f}" for w in point)


# ---------------------------------------------------------------------------------------------- the plan, printed


def _stage_line(stage: Stage, since: float) -> str:
    cfg, t = stage.cfg, stage.cfg.training
    found = find_run(stage.config, "train", since)
    action = (f"reuse finished run {found['run_id']}" if found and found["status"] == "finished" else
              f"follow running run {found['run_id']}" if found else "train")
    refs = list(getattr(cfg.params, "references", [])) or [cfg.model.path]
    objectives = getattr(cfg.params, "objectives", None)
    data = (", ".join(f"{o.name}: {o.train} (judge {o.judge})" for o in objectives) if objectives else
            cfg.data.train + (f", held out {cfg.data.eval}" if cfg.data.eval else ""))
    length = f"max_steps {t.max_steps}" if t.max_steps > 0 else f"epochs {t.epochs:g}"
    lines = [f"  {stage.name:<16} {cfg.method:<12} [{action}]  config {stage.source}",
             f"      model {cfg.model.path}" + (f", LoRA r={cfg.model.lora.r}" if cfg.model.lora else "")
             + f"; references {', '.join(refs)}; data {data}",
             f"      training lr {t.learning_rate:g}, batch {t.batch_size}, {length}, threads "
             f"{t.num_threads or 'default'}",
             f"      writes runs/<id>/: {get_method(cfg.method).outputs(cfg.params)}"]
    if stage.experts:
        lines.insert(1, f"      experts copied from {', '.join(stage.experts.values())} (each its own dpo run)")
    return "\n".join(lines)


def format_plan(plan: DemoPlan) -> str:
    """What demo_run would do, step by step, with what it would reuse; reads the store, loads no model."""
    since, spec = world_time(plan), plan.eval
    world = ("no demo world (real models and data by name)" if plan.world_scale is None else
             f"demo world {plan.world!r} ({get_world(plan.world).summary}), scale {plan.world_scale}, under "
             f"{data_dir()}: " + ("prepared (cached steps are kept)" if since else "not prepared yet: its models, "
                                 "prompts and preference sets get built first"))
    names = [spec.baseline] + [n for s in plan.stages for n in (
        [f"{s.name}:union"] + [f"{s.name}:{point_label(p)}" for p in spec.mixtures]
        if family_of(s.cfg.method) == "mixing" else [s.name])]
    return "\n".join([
        f"PrefLab demo plan: {plan.source} (scale {plan.scale})",
        f"1. prepare: {world}",
        f"2. train {len(plan.stages)} stages, {plan.parallel} job(s) at once, torch threads {plan.threads}:",
        *(_stage_line(s, since) for s in plan.stages),
        f"3. evaluate against {spec.baseline} ({spec.baseline_path}): {', '.join(names)}",
        f"   prompts {spec.prompts}" + (f" (first {spec.limit})" if spec.limit else "")
        + f"; sampling {spec.sampling}, backend {spec.backend}; scorers {', '.join(spec.scorers)}",
        f"   one eval run per judge ({', '.join(spec.judges)}): generations, judgments, evaluations rows win_rate "
        "(95% bootstrap CI), lc_win_rate, score/<scorer>, margin/<scorer>, pareto_front"
        + (", reward_margin and reward_accuracy" if spec.reward_margins else "")])


