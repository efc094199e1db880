"""Soak: trainings launched at once through engine.store.jobs while a reader polls the store, as the dashboard does.

Afterwards every run must hold every metric of every step, with the values the same config gives trained alone
(same seed), and no job may have logged an error. CI runs 4 trainings of 10 steps (about a minute on 2 cores).
A longer soak runs with PREFLAB_SOAK=1: PREFLAB_SOAK_RUNS trainings (default 8) of PREFLAB_SOAK_STEPS steps
(default 200) that also checkpoint, e.g. `PREFLAB_SOAK=1 .venv/bin/pytest tests/test_soak.py`.
"""

from __future__ import annotations

import os
import time

from engine.config import config_from_dict, config_to_dict
from engine.store import jobs as runner
from engine.store.runs import ACTIVE, StoreReader
from tests.test_reliability import alone_metrics, assert_same_metrics, dpo_config, served_metrics

SOAK = os.environ.get("PREFLAB_SOAK") == "1"
RUNS = int(os.environ.get("PREFLAB_SOAK_RUNS", "8")) if SOAK else 4
STEPS = int(os.environ.get("PREFLAB_SOAK_STEPS", "200")) if SOAK else 10
POLL_SECONDS = 0.2


def _poll(reader: StoreReader, run_ids: list[str], seen: dict[str, int]) -> None:
    """What the dashboard asks while runs are live; rows a reader has seen must never disappear."""
    from dashboard.queries import runs_table

    counts = reader.query("SELECT run_id, count(*) AS n FROM metrics WHERE list_contains(?, run_id) GROUP BY run_id",
                          [run_ids])
    for run_id, n in zip(counts["run_id"], counts["n"]):
        assert n >= seen.get(run_id, 0), f"{run_id}: {seen[run_id]} rows seen before, {n} now"
        seen[run_id] = n
    reader.last_values(run_ids)
    reader.curve("loss", run_ids)
    assert set(run_ids) <= set(runs_table()["run_id"])


def test_trainings_at_once_lose_nothing_and_match_their_solo_runs(tiny_world, data_root):
    configs = {f"soak-{i}": dpo_config(tiny_world, steps=STEPS, seed=i, learning_rate=1e-3 * (i + 1),
                                       save_every=STEPS // 4 if SOAK else 0, name=f"soak {i}") for i in range(RUNS)}
    for run_id, raw in configs.items():
        runner.launch(["train", "--run", run_id], method="dpo", name=raw["logging"]["run_name"],
                      config=config_to_dict(config_from_dict(raw)), run_id=run_id)
    run_ids = list(configs)
    reader, seen, polls = StoreReader(), {}, 0
    deadline = time.monotonic() + (3600 if SOAK else 600)
    while any(runner.refresh_status(r)["status"] in ACTIVE for r in run_ids):
        assert time.monotonic() < deadline, "the trainings did not finish in time"
        _poll(reader, run_ids, seen)
        polls += 1
        time.sleep(POLL_SECONDS)
    _poll(reader, run_ids, seen)
    assert polls >= 5  # the reader really ran alongside the writers

    for run_id, raw in configs.items():
        run = runner.refresh_status(run_id)
        log = (data_root / "runs" / run_id / "log.txt").read_text(encoding="utf-8", errors="replace")
        assert run["status"] == "finished", (run["message"], log[-2000:])
        assert "Traceback" not in log and "ERROR" not in log, log[-2000:]
        # Every metric of every step, and the values a solo run of the same config and seed logs.
        assert_same_metrics(served_metrics(run_id), alone_metrics(raw))
