"""Crashes and resumes: a SIGKILLed training, `train --resume`, steps logged twice, and a dashboard restarted mid-run.

A resumed run starts again from its last complete checkpoint, so the steps it had logged after that checkpoint are
logged a second time. The store's rule (engine/store.py): the newest row of each (run_id, step, name) wins, in every
view and in compaction, so the curve, the last values and the dashboard follow the resumed run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd

from engine.__main__ import main
from engine.config import config_from_dict, config_to_dict
from engine.paths import REPO_ROOT, RunLayout
from engine.store import jobs as runner
from engine.store.runs import RunWriter, StoreReader, read_run
from tests.test_reliability import (
    CALL_SUMMARY,
    alone_metrics,
    assert_same_metrics,
    create_run,
    dpo_config,
    one_metric,
    served_metrics,
    wait_for,
)


def _loss_steps(reader: StoreReader, run_id: str) -> list[int]:
    frame = reader.query("SELECT step FROM metrics WHERE run_id = ? AND name = 'loss' ORDER BY step", [run_id])
    return frame["step"].tolist()


def test_a_sigkilled_run_is_failed_keeps_its_metrics_and_resumes_onto_the_same_curve(tiny_world, data_root):
    raw = dpo_config(tiny_world, steps=24, save_every=4)
    run_id = runner.launch(["train", "--run", "victim"], method="dpo", name="victim",
                           config=config_to_dict(config_from_dict(raw)), run_id="victim")
    checkpoints = data_root / "runs" / run_id / "checkpoints"
    reader = StoreReader()
    assert wait_for(lambda: (checkpoints / "checkpoint-4" / "trainer_state.json").exists()
                    and max(_loss_steps(reader, run_id), default=0) >= 6, timeout=180)
    os.kill(runner.refresh_status(run_id)["pid"], signal.SIGKILL)
    killed_at = time.time()
    resume_from = RunLayout(checkpoints.parent).complete_checkpoints()[-1][0]

    assert wait_for(lambda: runner.refresh_status(run_id)["status"] == "failed", timeout=5)
    assert "exited without finishing" in read_run(run_id)["message"]
    logged = _loss_steps(reader, run_id)
    assert logged == list(range(1, len(logged) + 1)) and len(logged) >= 6  # every step up to the kill stays
    assert len(logged) < 24  # killed mid-run; steps after resume_from (if any) will be logged a second time

    result = subprocess.run([sys.executable, "-m", "engine", "train", "--resume", run_id], capture_output=True,
                            text=True, cwd=REPO_ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_run(run_id)["status"] == "finished"
    assert_same_metrics(served_metrics(run_id), alone_metrics(raw), exclude=CALL_SUMMARY)
    rows = reader.query("SELECT step, time FROM metrics WHERE run_id = ? AND name = 'loss'", [run_id])
    times = rows.set_index("step")["time"]
    assert (times[times.index <= resume_from] < killed_at).all()  # kept from the first attempt
    assert (times[times.index > resume_from] > killed_at).all()  # the re-logged steps: the resumed rows won
    log = (data_root / "runs" / run_id / "log.txt").read_text(encoding="utf-8", errors="replace")
    assert "Traceback" not in log  # the first attempt died silently by SIGKILL; the resume went through the CLI


def test_the_newest_row_of_a_step_logged_twice_wins_everywhere(data_root):
    """Live runs (JSONL), compacted runs (Parquet) and runs resumed after compaction (Parquet + a newer JSONL)."""
    from dashboard.queries import metric_curves

    first = {step: 10.0 + step for step in range(1, 7)}
    second = {step: 20.0 + step for step in range(5, 9)}  # resumed from checkpoint 4, re-logs 5 and 6
    expected = pd.Series({**first, **second}, dtype=float)

    writer = RunWriter.create("live", method="dpo", name="live", config={})
    for values in (first, second):
        for step, value in values.items():
            writer.log_metrics(step, {"loss": value})

    def check(run_id: str) -> None:
        reader = StoreReader()
        served = one_metric(served_metrics(run_id), "loss")
        pd.testing.assert_series_equal(served, expected, check_names=False, check_index_type=False)
        last = reader.last_values([run_id]).iloc[0]
        assert (last["step"], last["value"]) == (8, 28.0)
        curve = reader.curve("loss", [run_id], max_points=100)
        assert curve["step"].tolist() == list(range(1, 9)) and curve["value"].tolist() == expected.tolist()
        shown = metric_curves("loss", [run_id])
        assert shown["value"].tolist() == expected.tolist()

    check("live")
    writer.compact()
    check("live")

    writer = RunWriter.create("failed-then-resumed", method="dpo", name="f", config={})
    for step, value in first.items():
        writer.log_metrics(step, {"loss": value})
    writer.compact()  # a failed attempt is compacted by run_context
    time.sleep(0.05)  # a resumed process starts seconds later; the JSONL must be visibly newer than the Parquet
    for step, value in second.items():
        writer.log_metrics(step, {"loss": value})
    check("failed-then-resumed")
    writer.compact()  # merges the earlier Parquet with the resumed rows
    check("failed-then-resumed")
    assert not (writer.dir / "metrics.jsonl").exists()


def test_resume_is_refused_for_a_finished_run_a_run_owned_by_another_process_or_no_checkpoint(
        tiny_world, data_root, capsys):
    raw = dpo_config(tiny_world, steps=4)

    def events(run_id):
        return (data_root / "runs" / run_id / "status.jsonl").read_text().count("\n")

    done = create_run(raw, "done")
    RunWriter(done).set_status("finished")
    assert main(["train", "--resume", done]) == 2
    assert "already finished; nothing to resume" in capsys.readouterr().err
    assert read_run(done)["status"] == "finished" and events(done) == 1

    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        busy = create_run(raw, "busy")
        RunWriter(busy).set_status("running", pid=owner.pid)
        for args in (["train", "--resume", busy], ["train", "--run", busy]):
            assert main(args) == 2
            assert f"in process {owner.pid}; two processes must not write one run" in capsys.readouterr().err
        assert read_run(busy)["status"] == "running" and events(busy) == 1
    finally:
        owner.kill()
        owner.wait()

    crashed = create_run(raw, "crashed")  # save_every 0: no checkpoint to continue from
    RunWriter(crashed).set_status("failed", message="killed")
    assert main(["train", "--resume", crashed]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "resume: no complete checkpoint" in err and "save_every" in err
    assert not (data_root / "runs" / crashed / "metrics.jsonl").exists()


DASHBOARD = """
import json, sys, time
from dashboard.forms import initial_values
from dashboard.launch import launch_training
print(launch_training("dpo", initial_values("dpo", json.loads(sys.argv[1]))), flush=True)
time.sleep(600)  # a server keeps running until it is stopped
"""


def test_a_dashboard_restart_neither_stops_nor_loses_a_run(tiny_world, data_root):
    """The dashboard's launch button starts the job in a session of its own, so stopping the dashboard's process
    group (Ctrl-C, a service restart) does not reach it; a fresh dashboard then shows the whole run."""
    from dashboard.queries import runs_table

    raw = dpo_config(tiny_world, steps=40, name="survivor")
    dashboard = subprocess.Popen([sys.executable, "-c", DASHBOARD, json.dumps(raw)], cwd=REPO_ROOT,
                                 stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        run_id = dashboard.stdout.readline().strip()
        job = read_run(run_id)["pid"]
        assert os.getpgid(job) == job != os.getpgid(dashboard.pid)  # a process group (and session) of its own
        reader = StoreReader()
        assert wait_for(lambda: _loss_steps(reader, run_id), timeout=180)  # training has started
        os.killpg(dashboard.pid, signal.SIGTERM)
        dashboard.wait(timeout=30)
        gone = time.time()
    finally:
        if dashboard.poll() is None:
            os.killpg(dashboard.pid, signal.SIGKILL)
    assert wait_for(lambda: runner.refresh_status(run_id)["status"] != "running", timeout=180, poll=0.2)
    assert read_run(run_id)["status"] == "finished"
    after = reader.query("SELECT count(*) AS n FROM metrics WHERE run_id = ? AND name = 'loss' AND time > ?",
                         [run_id, gone])
    assert after["n"].iloc[0] > 0  # it went on training with the dashboard gone
    assert_same_metrics(served_metrics(run_id), alone_metrics(raw))
    row = runs_table().set_index("run_id").loc[run_id]
    assert (row["name"], row["status"], row["steps"]) == ("survivor", "finished", 40)
