"""Launch, watch and cancel jobs, each in its own process.

A job is a `python -m engine ...` command started from an argument list (never a shell string) in a new process
group, with stdout and stderr going to `data/runs/<run_id>/log.txt`. The runner records the pid in the run's status
log; the job itself records `running`, then `finished` or `failed` (see `engine.store.runs.run_context`).

Streamlit does not own child processes, and a job may outlive the dashboard that started it, so liveness is checked
from the pid on every status query: a run that says it is active but whose process is gone (or a zombie) is marked
`failed` on the spot. Its metrics stay where they are.

Jobs that ask for more than one process go through `accelerate launch`, which starts one process per GPU.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from engine.errors import InputError
from engine.paths import REPO_ROOT
from engine.store.runs import ACTIVE, RunWriter, StoreError, list_run_ids, new_run_id, read_run, run_layout

CANCEL_GRACE_SECONDS = 10.0
RUN_ID_ENV = "PREFLAB_RUN_ID"

logger = logging.getLogger(__name__)


def job_command(engine_args: list[str], num_processes: int = 1) -> list[str]:
    """The argument list that runs `python -m engine <engine_args>`, through accelerate for several processes."""
    if num_processes < 1:
        raise InputError(f"num_processes: must be >= 1 (got {num_processes})")
    if num_processes == 1:
        return [sys.executable, "-m", "engine", *engine_args]
    return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes),
            "--module", "engine", *engine_args]


def launch(engine_args: list[str], *, method: str, name: str | None = None, config: dict[str, Any] | None = None,
           kind: str = "train", num_processes: int = 1, run_id: str | None = None) -> str:
    """Start a job in the background and return its run id. The job learns its id from PREFLAB_RUN_ID."""
    run_id = run_id or new_run_id(method)
    writer = RunWriter.create(run_id, method=method, name=name or run_id, config=config or {}, kind=kind)
    log = open(writer.layout.log, "ab")
    env = {**os.environ, RUN_ID_ENV: run_id, "PYTHONUNBUFFERED": "1"}
    try:
        proc = subprocess.Popen(job_command(engine_args, num_processes), cwd=REPO_ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    finally:
        log.close()
    writer.set_status("queued", pid=proc.pid)
    _CHILDREN[proc.pid] = proc
    return run_id


# Popen objects of jobs started by this process, so that finished children are reaped and leave no zombies.
_CHILDREN: dict[int, subprocess.Popen] = {}


def _reap() -> None:
    for pid, proc in list(_CHILDREN.items()):
        if proc.poll() is not None:
            del _CHILDREN[pid]


def pid_alive(pid: int | None) -> bool:
    """True if the process exists and is not a zombie."""
    if not pid:
        return False
    _reap()
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        try:
            state = stat.read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        return state not in ("Z", "X")
    return True


def refresh_status(run_id: str) -> dict[str, Any]:
    """The run's metadata and status, marking it failed if its process died without saying so."""
    run = read_run(run_id)
    if run["status"] in ACTIVE and not pid_alive(run["pid"]):
        RunWriter(run_id).set_status("failed", message="the process exited without finishing (killed or crashed);"
                                     " see the log")
        run = read_run(run_id)
    return run


def list_jobs() -> list[dict[str, Any]]:
    """Every run with its status; one whose metadata cannot be read is named in a warning and left out, so a damaged
    folder does not hide the other runs."""
    jobs = []
    for run_id in list_run_ids():
        try:
            jobs.append(refresh_status(run_id))
        except StoreError as err:
            logger.warning("%s", err)
    return jobs


def tail_log(run_id: str, lines: int = 50) -> str:
    path = run_layout(run_id).log
    if not path.exists():
        return ""
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 200 * lines))
        text = f.read().decode("utf-8", errors="replace")
    # Progress bars redraw with carriage returns: keep only each line's final state.
    shown = [line.rsplit("\r", 1)[-1] for line in text.rstrip("\n").split("\n")]
    return "\n".join(shown[-lines:])


def cancel(run_id: str, grace: float = CANCEL_GRACE_SECONDS) -> dict[str, Any]:
    """SIGTERM the job's process group, SIGKILL it after `grace` seconds, and record `cancelled`."""
    run = refresh_status(run_id)
    if run["status"] not in ACTIVE:
        raise StoreError(f"run {run_id} is {run['status']}, not running; nothing to cancel")
    pid = run["pid"]
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if pid_alive(pid):
        _signal_group(pid, signal.SIGKILL)
        while pid_alive(pid):
            time.sleep(0.05)
    RunWriter(run_id).set_status("cancelled", message="cancelled by the user")
    return read_run(run_id)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(os.getpgid(pid), sig)
    except ProcessLookupError:
        pass
