"""Every read the dashboard makes, in one module: runs, metrics, evaluations, judgments, mixtures, generations.

All SQL goes through one shared `StoreReader` (an in-memory DuckDB over the per-run files, see engine/store.py)
with `?` placeholders only. The reader is shared by every session of the server and guarded by a lock: a DuckDB
connection must not run two queries at once, and the reader rebuilds its views only when the file list changes,
so sharing it keeps polling cheap. It follows PREFLAB_DATA at call time, so tests can point it elsewhere.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pandas as pd

from engine.config import ModelSection, resolve_path
from engine.methods import family_of, get_method
from engine.paths import REPO_ROOT, models_dir
from engine.store.jobs import list_jobs, refresh_status
from engine.store.runs import ACTIVE, StoreReader, run_dir

RUN_COLUMNS = ["run_id", "name", "method", "kind", "model", "objective", "status", "steps", "started", "duration",
               "ended", "message"]
DEMO_KIND = "demo"
_LOCK = threading.Lock()
_READER: StoreReader | None = None


def _with_reader(read: Callable[[StoreReader], pd.DataFrame]) -> pd.DataFrame:
    global _READER
    with _LOCK:
        if _READER is None:
            _READER = StoreReader()
        return read(_READER)


def query(sql: str, params: list[Any] | None = None) -> pd.DataFrame:
    """A parameterized query over the store's tables (metrics, generations, judgments, evaluations, mixtures)."""
    return _with_reader(lambda reader: reader.query(sql, params))


class _LockedReader:
    """The shared reader as the engine's views see it (``reader.query``): each query takes the lock, the statistics
    computed on its result (a Bradley-Terry fit, a Pareto front) do not, so they hold up no other session."""

    def query(self, sql: str, params: list[Any] | None = None) -> pd.DataFrame:
        return query(sql, params)


_SHARED = _LockedReader()


# ---------------------------------------------------------------------------------------------- runs


def _model_of(config: dict[str, Any]) -> str:
    if isinstance(config.get("models"), dict):  # an evaluation run compares several models
        return ", ".join(config["models"])
    return str(config.get("model", {}).get("path", ""))


def _objective_of(method: str, config: dict[str, Any]) -> str:
    """What a run optimizes or measures, in a few words: objectives of a mix, the judge, or the preference set."""
    if family_of(method) is not None:
        return get_method(method).objective_of(config)
    return str(config.get("judge", ""))  # an evaluation run: its judge


def runs_table() -> pd.DataFrame:
    """All runs, newest first, with liveness checked (a dead job shows as failed), last step and duration."""
    jobs = list_jobs()
    steps = query("SELECT run_id, max(step) AS steps FROM metrics GROUP BY run_id")
    last_step = dict(zip(steps["run_id"], steps["steps"]))
    now = time.time()
    rows = []
    for job in jobs:
        config = job.get("config") or {}
        started, ended = job["started"], job["ended"]
        rows.append({**{k: job[k] for k in ("run_id", "name", "method", "kind", "status", "message")},
                     "model": _model_of(config), "objective": _objective_of(job["method"], config),
                     "steps": last_step.get(job["run_id"]), "started": started, "ended": ended,
                     "duration": None if started is None else (ended or now) - started})
    frame = pd.DataFrame(rows, columns=RUN_COLUMNS)
    frame["steps"] = frame["steps"].astype("Int64")
    frame["duration"] = pd.to_timedelta(frame["duration"], unit="s").dt.round("1s")
    for col in ("started", "ended"):
        frame[col] = pd.to_datetime(frame[col], unit="s")
    return frame


def run_info(run_id: str) -> dict[str, Any]:
    """A run's metadata, config and status (liveness checked)."""
    return refresh_status(run_id)


def is_active(status: str) -> bool:
    return status in ACTIVE


def demo_ready() -> bool:
    """True once the default policy model (ModelSection.path, the demo's SFT model) exists."""
    return resolve_path(ModelSection().path).is_dir()


def config_presets() -> dict[str, dict[str, Any]]:
    """The example configs shipped in configs/*.yaml, by method (the first file of each method wins)."""
    import yaml

    presets: dict[str, dict[str, Any]] = {}
    for path in sorted((REPO_ROOT / "configs").glob("*.yaml")):
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        if isinstance(raw, dict) and isinstance(raw.get("method"), str):
            presets.setdefault(raw["method"], raw)
    return presets


# ---------------------------------------------------------------------------------------------- metrics


def metric_names(run_ids: list[str]) -> list[str]:
    if not run_ids:
        return []
    frame = query("SELECT DISTINCT name FROM metrics WHERE list_contains(?, run_id) ORDER BY name", [run_ids])
    return frame["name"].tolist()


def runs_with_metric(name: str, run_ids: list[str]) -> list[str]:
    """Those of ``run_ids`` that logged ``name``, in the given order."""
    frame = query("SELECT DISTINCT run_id FROM metrics WHERE name = ? AND list_contains(?, run_id)", [name, run_ids])
    found = set(frame["run_id"])
    return [r for r in run_ids if r in found]


def metric_curves(name: str, run_ids: list[str], max_points: int = 500) -> pd.DataFrame:
    """One metric over steps for several runs (columns run_id, step, value), bucket-averaged to max_points."""
    if not run_ids:
        return pd.DataFrame(columns=["run_id", "step", "value"])
    return _with_reader(lambda reader: reader.curve(name, run_ids, max_points))


def lambda_path(run_id: str, objectives: list[str]) -> pd.DataFrame:
    """Mirror-descent iterates of a mixing run: columns step, objective, weight (metrics mix/lambda_<name>)."""
    names = [f"mix/lambda_{o}" for o in objectives]
    frame = query("SELECT step, name, value FROM metrics WHERE run_id = ? AND list_contains(?, name) "
                  "ORDER BY step, name", [run_id, names])
    frame["objective"] = frame["name"].str.removeprefix("mix/lambda_")
    return frame.rename(columns={"value": "weight"})[["step", "objective", "weight"]]


# ---------------------------------------------------------------------------------------------- evaluations


def evaluation_rows(metrics: list[str]) -> pd.DataFrame:
    """Latest value of each (run, model, baseline, metric) for the given metrics, with the run's name."""
    frame = query("SELECT run_id, model, baseline, metric, arg_max(value, time) AS value, arg_max(low, time) AS low,"
                  " arg_max(high, time) AS high, arg_max(n, time) AS n, arg_max(distribution, time) AS distribution"
                  " FROM evaluations WHERE list_contains(?, metric)"
                  " GROUP BY run_id, model, baseline, metric ORDER BY run_id, model, metric", [metrics])
    return frame


def judgments(sources: list[str] | None = None) -> pd.DataFrame:
    """Every pairwise verdict (judges' and human votes), winner filled from prob_a where a row has none."""
    sql = ("SELECT run_id, source, prompt, model_a, model_b, prob_a, coalesce(winner, CASE WHEN prob_a > 0.5 THEN 'a'"
           " WHEN prob_a < 0.5 THEN 'b' ELSE 'tie' END) AS winner, time FROM judgments WHERE model_a <> model_b"
           " AND (winner IS NOT NULL OR prob_a IS NOT NULL)")
    if sources:
        return query(sql + " AND list_contains(?, source) ORDER BY time", [sources])
    return query(sql + " ORDER BY time")


def judgment_sources() -> list[str]:
    return query("SELECT DISTINCT source FROM judgments ORDER BY source")["source"].tolist()


def leaderboard(sources: list[str] | None = None, n_resamples: int = 200) -> pd.DataFrame:
    """Bradley-Terry ratings from the verdicts of these sources (all when None): engine.store.standings.leaderboard."""
    from engine.store import standings  # brings scikit-learn (about a second): only the pages that rate pay for it

    return standings.leaderboard(_SHARED, sources, n_resamples)


def score_objectives() -> list[str]:
    """Objectives that some model or mixture point has a score on, except the mixtures' KL (a cost)."""
    frame = query("SELECT DISTINCT substr(metric, 7) AS objective FROM evaluations WHERE starts_with(metric, "
                  "'score/') UNION SELECT DISTINCT objective FROM mixtures WHERE objective <> 'kl' ORDER BY objective")
    return frame["objective"].tolist()


def pareto_table(objectives: list[str], kinds: list[str] | None = None,
                 run_ids: list[str] | None = None) -> pd.DataFrame:
    """Models and mixture points with scores on ``objectives`` and the front among those kept:
    engine.store.standings.pareto_table (columns name, label, kind, run_id, weights, ess, *objectives, on_front)."""
    from engine.store import standings

    return standings.pareto_table(_SHARED, objectives, kinds, run_ids)


# ---------------------------------------------------------------------------------------------- mixing runs


def mixing_runs() -> list[str]:
    """Mixing runs whose samples are stored (the mixer needs them), newest first."""
    from engine.recipes.mixing_estimates import samples_path

    return [j["run_id"] for j in list_jobs()
            if family_of(j["method"]) == "mixing" and samples_path(j["run_id"]).exists()]


def mixing_objectives(run_id: str) -> list[str]:
    config = run_info(run_id)["config"]
    return [o["name"] for o in config.get(config.get("method", ""), {}).get("objectives", [])]


def mixing_lambda_star(run_id: str) -> dict[str, float] | None:
    """λ* the run found (mixing/lambda.json), or None before the run gets there."""
    path = run_dir(run_id) / "mixing" / "lambda.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def mixing_prompts(run_id: str, limit: int = 200) -> list[str]:
    """Prompts of a mixing run's stored samples, in order."""
    path = run_dir(run_id) / "mixing" / "samples.parquet"
    if not path.exists():
        return []
    frame = pd.read_parquet(path, columns=["prompt_id", "prompt"])
    return frame.drop_duplicates("prompt_id").sort_values("prompt_id")["prompt"].head(limit).tolist()


# ---------------------------------------------------------------------------------------------- generations


def stored_prompts(limit: int = 500) -> list[str]:
    """Prompts that have stored outputs from at least two models, most-covered first."""
    frame = query("SELECT prompt, count(DISTINCT model) AS models FROM generations GROUP BY prompt "
                  "HAVING count(DISTINCT model) >= 2 ORDER BY models DESC, prompt LIMIT ?", [limit])
    return frame["prompt"].tolist()


def outputs_for_prompt(prompt: str) -> pd.DataFrame:
    """The latest stored output of each model for one prompt (columns model, output, num_tokens, run_id)."""
    return query("SELECT model, arg_max(output, time) AS output, arg_max(num_tokens, time) AS num_tokens, "
                 "arg_max(run_id, time) AS run_id FROM generations WHERE prompt = ? GROUP BY model ORDER BY model",
                 [prompt])


def verdicts(prompt: str, output_a: str, output_b: str) -> pd.DataFrame:
    """Stored verdicts on these two exact outputs for this prompt, in either order, seen from output_a's side."""
    frame = query("SELECT source, model_a, model_b, output_a, prob_a, winner, time FROM judgments WHERE prompt = ? "
                  "AND ((output_a = ? AND output_b = ?) OR (output_a = ? AND output_b = ?)) ORDER BY time",
                  [prompt, output_a, output_b, output_b, output_a])
    swapped = frame["output_a"] != output_a
    frame.loc[swapped, "prob_a"] = 1.0 - frame.loc[swapped, "prob_a"]
    frame.loc[swapped, "winner"] = frame.loc[swapped, "winner"].map({"a": "b", "b": "a", "tie": "tie"})
    return frame.drop(columns=["output_a"])


def local_models() -> dict[str, str]:
    """Models that can generate here: folders under data/models and trained runs' saved models (name -> path)."""
    found: dict[str, str] = {}
    root = models_dir()
    if root.is_dir():
        for folder in sorted(root.iterdir()):
            if (folder / "config.json").exists():
                found[folder.name] = str(folder)
    for job in list_jobs():
        model = run_dir(job["run_id"]) / "model"
        if (model / "config.json").exists() or (model / "adapter_config.json").exists():
            found[job["run_id"]] = str(model)
    return found
