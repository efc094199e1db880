"""The job runner: real subprocesses launched, killed, cancelled and noticed dead; the CLI that shows them."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from engine.paths import REPO_ROOT
from engine.store import jobs as runner
from engine.store.runs import StoreReader, read_run

# A job that logs a metric every 20 ms until stopped; with IGNORE_TERM it survives SIGTERM.
JOB = textwrap.dedent("""
    import os, signal, sys, time
    from engine.store.runs import run_context
    if os.environ.get("IGNORE_TERM"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with run_context(os.environ["PREFLAB_RUN_ID"]) as writer:
        print("job started", flush=True)
        for step in range(int(os.environ.get("STEPS", "100000"))):
            writer.log_metrics(step, {"loss": 1.0 / (step + 1)})
            time.sleep(0.02)
    print("job done", flush=True)
""")


@pytest.fixture
def fake_job(tmp_path, monkeypatch):
    """Launch the JOB script instead of `python -m engine ...`; everything else is the real runner."""
    script = tmp_path / "job.py"
    script.write_text(JOB)
    monkeypatch.setattr(runner, "job_command", lambda args, num_processes=1: [sys.executable, str(script), *args])
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    return script


def wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def logged_steps(run_id):
    return StoreReader().query("SELECT count(*) AS n FROM metrics WHERE run_id = ?", [run_id])["n"].iloc[0]


def test_command_lines():
    assert runner.job_command(["train", "--config", "a.yaml"]) == [sys.executable, "-m", "engine", "train",
                                                                  "--config", "a.yaml"]
    multi = runner.job_command(["train", "--config", "a.yaml"], num_processes=4)
    assert multi[:5] == [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "4"]
    assert multi[5:] == ["--module", "engine", "train", "--config", "a.yaml"]
    with pytest.raises(ValueError, match="num_processes"):
        runner.job_command([], num_processes=0)


def test_a_finished_job_has_its_log_and_metrics(data_root, fake_job, monkeypatch):
    monkeypatch.setenv("STEPS", "5")
    run_id = runner.launch([], method="dpo", name="short")
    assert wait_for(lambda: runner.refresh_status(run_id)["status"] == "finished")
    assert logged_steps(run_id) == 5
    # The job prints its last line just after recording "finished": wait for the process, not the status.
    assert wait_for(lambda: not runner.pid_alive(runner.refresh_status(run_id)["pid"]))
    assert "job done" in runner.tail_log(run_id)


def test_a_sigkilled_job_is_marked_failed_and_keeps_its_metrics(data_root, fake_job):
    run_id = runner.launch([], method="dpo", name="victim")
    assert wait_for(lambda: logged_steps(run_id) >= 5)
    pid = runner.refresh_status(run_id)["pid"]
    os.kill(pid, signal.SIGKILL)
    t0 = time.monotonic()
    assert wait_for(lambda: runner.refresh_status(run_id)["status"] == "failed", timeout=5.0)
    assert time.monotonic() - t0 < 5.0
    assert "exited without finishing" in read_run(run_id)["message"]
    assert logged_steps(run_id) >= 5
    listing = subprocess.run([sys.executable, "-m", "engine", "runs", "list"], capture_output=True, text=True,
                             cwd=REPO_ROOT, env=os.environ, check=True).stdout
    assert run_id in listing and "failed" in listing.split(run_id)[1].splitlines()[0]


def test_cancel_terminates_and_escalates_to_sigkill(data_root, fake_job, monkeypatch):
    polite = runner.launch([], method="dpo", name="polite")
    monkeypatch.setenv("IGNORE_TERM", "1")
    stubborn = runner.launch([], method="dpo", name="stubborn")
    assert wait_for(lambda: logged_steps(polite) > 0 and logged_steps(stubborn) > 0)
    t0 = time.monotonic()
    assert runner.cancel(polite, grace=5.0)["status"] == "cancelled"
    assert time.monotonic() - t0 < 5.0
    t0 = time.monotonic()
    assert runner.cancel(stubborn, grace=0.5)["status"] == "cancelled"
    assert time.monotonic() - t0 >= 0.5
    assert not runner.pid_alive(read_run(stubborn)["pid"])
    with pytest.raises(Exception, match="nothing to cancel"):
        runner.cancel(polite)


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True, cwd=REPO_ROOT,
                          env=env or os.environ)


def test_cli_bad_config_is_one_line_exit_2_and_writes_nothing(data_root, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: dpo\nmodel: {path: Qwen/Qwen2.5-0.5B}\ndata: {train: Anthropic/hh-rlhf, eval: null}\n"
                   "dpo: {beta: -0.1}\n")
    result = cli("config", "check", str(bad))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "dpo.beta: must be > 0" in result.stderr
    assert not (data_root / "runs").exists()


def test_cli_help_and_unknown_run(data_root):
    for args in (["--help"], ["runs", "--help"], ["runs", "list", "--help"], ["bench", "--help"],
                 ["config", "check", "--help"], ["export", "--help"]):
        assert cli(*args).returncode == 0, args
    result = cli("runs", "show", "no-such-run")
    assert result.returncode == 2 and "no run 'no-such-run'" in result.stderr


def test_log_tail_keeps_the_last_state_of_progress_bars(data_root):
    from engine.store.runs import RunWriter

    writer = RunWriter.create("r1", method="dpo", name="r1", config={})
    (writer.dir / "log.txt").write_bytes(b"start\n 10%|#  \r 50%|#####  \r100%|##########\ndone\n")
    assert runner.tail_log("r1") == "start\n100%|##########\ndone"
    assert runner.tail_log("r1", lines=1) == "done"
