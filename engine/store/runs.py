"""The metrics store: per-run append-only files, read through DuckDB SQL views.

Why this shape. DuckDB lets one process hold a database file read-write, and refuses every other process while it
does, readers included. Training jobs are separate processes that write all the time, and the dashboard reads all
the time, so no process ever holds a `.duckdb` file here:

* Each run owns `data/runs/<run_id>/`. Its process appends JSON lines to one file per table (`metrics.jsonl`,
  `generations.jsonl`, ...), each batch in a single `write` on a file opened in append mode, so a reader sees whole
  lines plus at most one partial last line, which it skips and picks up on the next poll.
* `run.json` (written once, atomically) holds the run's metadata and config; `status.jsonl` is an append-only log
  of status events, the last one wins.
* When a run ends its tables are compacted to Parquet (sorted by metric name and step, so a curve query reads
  few row groups), written to a temporary name and renamed into place; the JSONL file is deleted afterwards.
  Readers take the Parquet file of a table whenever it exists and ignore a JSONL beside it that is older, so a row is
  never counted twice; if a file vanishes between listing and reading, the read is retried on a fresh listing.
* A resumed run (`train --resume`) appends to a fresh JSONL beside its Parquet: a JSONL newer than the Parquet is
  read as well, and the next compaction merges the two. A resumed run also logs again the steps between its last
  checkpoint and the crash: for metrics the latest row of each (run_id, step, name) wins, both in the views and in
  compaction, so curves and last values follow the resumed run.
* A file DuckDB cannot read (a damaged Parquet, an unreadable JSONL) is left out of the views with a warning that
  names it, and every other run is still served; undecodable JSONL lines are counted and named at compaction.
* Readers (dashboard, CLI, evaluation) open an in-memory DuckDB connection and query views over the file lists.
  `engine.store.export.export_database` materializes everything into a self-contained `.duckdb` file for sharing.

The schema lives in `SCHEMA`, the one place that names tables and columns.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from engine.errors import PrefLabError
from engine.paths import RunLayout, runs_dir

SCHEMA: dict[str, dict[str, str]] = {
    "metrics": {"run_id": "VARCHAR", "step": "BIGINT", "name": "VARCHAR", "value": "DOUBLE", "time": "DOUBLE"},
    # One row per generated text; `cache_key` hashes model, prompt set, sampling parameters and seed.
    "generations": {"run_id": "VARCHAR", "cache_key": "VARCHAR", "model": "VARCHAR", "prompt_set": "VARCHAR",
                    "prompt_id": "BIGINT", "prompt": "VARCHAR", "output": "VARCHAR", "num_tokens": "BIGINT",
                    "time": "DOUBLE"},
    # Pairwise verdicts of a judge or a person (`source` = judge name or "human"). `position`: where output_a was
    # shown, "a" (first only) or "ab" (both orders averaged, engine.judges.both_orders); NULL when not recorded.
    "judgments": {"run_id": "VARCHAR", "source": "VARCHAR", "prompt": "VARCHAR", "model_a": "VARCHAR",
                  "model_b": "VARCHAR", "output_a": "VARCHAR", "output_b": "VARCHAR", "prob_a": "DOUBLE",
                  "winner": "VARCHAR", "position": "VARCHAR", "time": "DOUBLE"},
    # Summary numbers of an evaluation: win rates with intervals, scores, margins.
    # `distribution`: what sampled the texts a number describes (engine.decoding.distributions); NULL for numbers
    # of no generation (teacher-forced reward margins).
    "evaluations": {"run_id": "VARCHAR", "model": "VARCHAR", "baseline": "VARCHAR", "metric": "VARCHAR",
                    "value": "DOUBLE", "low": "DOUBLE", "high": "DOUBLE", "n": "BIGINT", "distribution": "VARCHAR",
                    "time": "DOUBLE"},
    # Points of a mixing run: weights (JSON list), per-objective scores, how they were obtained (`kind`) and which
    # distribution they describe (engine.decoding.distributions: only points of one distribution share a front).
    "mixtures": {"run_id": "VARCHAR", "label": "VARCHAR", "weights": "VARCHAR", "objective": "VARCHAR",
                 "score": "DOUBLE", "kind": "VARCHAR", "ess": "DOUBLE", "distribution": "VARCHAR", "time": "DOUBLE"},
}
STATUSES = ("queued", "running", "finished", "failed", "cancelled")
ACTIVE = ("queued", "running")
_OPEN_FILE_RETRIES = 30  # under heavy load a reader racing many compactions exhausted 10 re-listings
# Which copy of a logged metric counts: the newest row of each key (a resumed run re-logs steps after its checkpoint).
METRIC_KEY = ("run_id", "step", "name")
# Errors of DuckDB that mean "this file cannot be read now" (vanished, damaged, unreadable), not "bad SQL".
_FILE_ERRORS = (duckdb.IOException, duckdb.InvalidInputException)

logger = logging.getLogger(__name__)


class StoreError(PrefLabError, RuntimeError):
    """The store cannot be read or written; the message says which file and what to do."""


def new_run_id(method: str) -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{method}-{uuid.uuid4().hex[:6]}"


def run_dir(run_id: str) -> Path:
    if not run_id or "/" in run_id or run_id.startswith("."):
        raise StoreError(f"run id {run_id!r} is not a plain folder name")
    return runs_dir() / run_id


def run_layout(run_id: str) -> RunLayout:
    """The files of run `run_id` (engine.paths.RunLayout), the id checked as run_dir checks it."""
    return RunLayout(run_dir(run_id))


# ----------------------------------------------------------------------------------------------- writing


class RunWriter:
    """Appends rows of one run. Used by exactly one process: the run's own (or, for status, whoever ends it)."""

    def __init__(self, run_id: str):
        self.run_id = run_id
        self.layout = run_layout(run_id)
        self.dir = self.layout.root
        self.dir.mkdir(parents=True, exist_ok=True)

    @classmethod
    def create(cls, run_id: str, *, method: str, name: str, config: dict[str, Any], kind: str = "train") -> RunWriter:
        """Start a run folder with its metadata; the metadata never changes afterwards."""
        writer = cls(run_id)
        meta = {"run_id": run_id, "method": method, "name": name, "kind": kind, "created": time.time(),
                "config": config}
        tmp = writer.layout.metadata.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(meta), encoding="utf-8")
        tmp.replace(writer.layout.metadata)
        return writer

    def append(self, table: str, rows: Iterable[dict[str, Any]]) -> None:
        """Append rows to a table; columns are checked against SCHEMA, run_id and time filled in."""
        columns = SCHEMA[table]
        now = time.time()
        lines = []
        for row in rows:
            unknown = set(row) - set(columns)
            if unknown:
                raise StoreError(f"table {table}: unknown column(s) {sorted(unknown)}; allowed: {list(columns)}")
            full = {"run_id": self.run_id, "time": now, **row}
            lines.append(json.dumps(full, allow_nan=True) + "\n")
        if lines:
            _append_text(self.layout.table_rows(table), "".join(lines))

    def log_metrics(self, step: int, values: dict[str, float]) -> None:
        self.append("metrics", ({"step": int(step), "name": k, "value": float(v)} for k, v in values.items()))

    def set_status(self, status: str, *, pid: int | None = None, message: str = "") -> None:
        if status not in STATUSES:
            raise StoreError(f"status {status!r} is not one of {STATUSES}")
        event = {"status": status, "pid": pid, "message": message, "time": time.time()}
        _append_text(self.layout.status_log, json.dumps(event) + "\n")

    def compact(self) -> None:
        """Turn each table's JSONL into sorted Parquet, merged with the Parquet of an earlier attempt (a resumed
        run); readers switch to the new Parquet as soon as it appears."""
        con = duckdb.connect()
        try:
            for table in SCHEMA:
                src, target = self.layout.table_rows(table), self.layout.table_compacted(table)
                if not src.exists():
                    continue
                rel = _read_json(con, [str(src)], table)
                _warn_unreadable_lines(src, rel.aggregate("count(*)").fetchall()[0][0])
                if target.exists():
                    rel = _read_parquet(con, [str(target)], table).union(rel)
                if table == "metrics":
                    rel = _latest_metrics(rel)
                order = "name, step" if table == "metrics" else "time"
                tmp = target.with_suffix(".parquet.tmp")
                rel.order(order).write_parquet(str(tmp))
                tmp.replace(target)
                src.unlink()
        finally:
            con.close()


def _warn_unreadable_lines(path: Path, rows_read: int) -> None:
    """Name a JSONL file some of whose lines could not be read (damaged, or cut by a crash mid-write)."""
    with path.open("rb") as f:
        lines = sum(1 for line in f if line.strip())
    if lines > rows_read:
        logger.warning("%s: %d of %d lines could not be read and are left out (damaged or cut short)", path,
                       lines - rows_read, lines)


def _latest_metrics(rel: duckdb.DuckDBPyRelation) -> duckdb.DuckDBPyRelation:
    """One row per METRIC_KEY, the one written last."""
    ranked = rel.select(f"*, row_number() OVER (PARTITION BY {', '.join(METRIC_KEY)} ORDER BY time DESC) AS _rank")
    return ranked.filter("_rank = 1").select(*SCHEMA["metrics"])


def _append_text(path: Path, text: str) -> None:
    # O_APPEND with one write per batch: concurrent readers see whole lines and at most one partial tail.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, text.encode("utf-8"))
    finally:
        os.close(fd)


@contextmanager
def run_context(run_id: str) -> Iterator[RunWriter]:
    """Wrap a job's body: status running at entry, finished or failed (with the error) at exit, then compaction."""
    writer = RunWriter(run_id)
    writer.set_status("running", pid=os.getpid())
    try:
        yield writer
    except BaseException as err:
        reason = "cancelled" if isinstance(err, KeyboardInterrupt) else "failed"
        writer.set_status(reason, message=f"{type(err).__name__}: {err}".splitlines()[0][:500])
        writer.compact()
        raise
    writer.set_status("finished")
    writer.compact()


# ----------------------------------------------------------------------------------------------- reading


def table_files(table: str, root: Path | None = None) -> list[str]:
    """The files holding `table`: per run folder its Parquet if compacted, its JSONL if not compacted or newer than
    the Parquet (rows of a resumed run; an older JSONL is one a compaction is about to delete)."""
    root = runs_dir() if root is None else root
    files = []
    if not root.is_dir():
        return files
    for layout in (RunLayout(p) for p in sorted(root.iterdir()) if p.is_dir()):
        parquet, jsonl = _mtime(layout.table_compacted(table)), _mtime(layout.table_rows(table))
        if parquet is not None:
            files.append(str(layout.table_compacted(table)))
        if jsonl is not None and (parquet is None or jsonl > parquet):
            files.append(str(layout.table_rows(table)))
    return files


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def _read_json(con: duckdb.DuckDBPyConnection, files: list[str], table: str) -> duckdb.DuckDBPyRelation:
    # ignore_errors turns a line still being written into a null row, dropped here; the next poll reads it whole.
    rel = con.read_json(files, columns=SCHEMA[table], format="newline_delimited", ignore_errors=True)
    return rel.filter("run_id IS NOT NULL")


def _read_parquet(con: duckdb.DuckDBPyConnection, files: list[str], table: str) -> duckdb.DuckDBPyRelation:
    """`table`'s columns from Parquet files; a column added to SCHEMA after a file was written reads as NULL."""
    rel = con.read_parquet(files, union_by_name=True)
    present = set(rel.columns)
    return rel.select(*(duckdb.ColumnExpression(c) if c in present
                        else duckdb.ConstantExpression(None).cast(duckdb.sqltype(kind)).alias(c)
                        for c, kind in SCHEMA[table].items()))


def _empty(con: duckdb.DuckDBPyConnection, table: str) -> duckdb.DuckDBPyRelation:
    cols = SCHEMA[table]
    frame = pd.DataFrame({c: pd.Series(dtype=_PANDAS_DTYPES[t]) for c, t in cols.items()})
    return con.from_df(frame)


_PANDAS_DTYPES = {"VARCHAR": "object", "BIGINT": "int64", "DOUBLE": "float64"}


class StoreReader:
    """Read-only SQL over every run's files. Holds an in-memory DuckDB connection, so it never locks anything.

    Views are rebuilt only when the list of files changes; a query that races a compaction is retried.
    """

    def __init__(self, root: Path | None = None):
        self.root = root
        self.con = duckdb.connect()
        self._listing: dict[str, list[str]] = {}
        self._relations: dict[str, duckdb.DuckDBPyRelation] = {}
        # Files left out because DuckDB could not read them: path -> (mtime, why); retried once the file changes.
        self.skipped: dict[str, tuple[int | None, str]] = {}

    def refresh(self) -> None:
        for table in SCHEMA:
            files = [f for f in table_files(table, self.root) if not self._still_bad(f)]
            if files != self._listing.get(table):
                self._register(table, files)
                self._listing[table] = files

    def _still_bad(self, path: str) -> bool:
        if path not in self.skipped:
            return False
        if self.skipped[path][0] == _mtime(Path(path)):
            return True
        del self.skipped[path]
        return False

    def _relation(self, table: str, files: list[str]) -> duckdb.DuckDBPyRelation:
        parquet = [f for f in files if f.endswith(".parquet")]
        jsonl = [f for f in files if f.endswith(".jsonl")]
        parts = []
        if parquet:
            parts.append(_read_parquet(self.con, parquet, table))
        if jsonl:
            parts.append(_read_json(self.con, jsonl, table))
        rel = parts[0] if parts else _empty(self.con, table)
        for extra in parts[1:]:
            rel = rel.union(extra)
        return rel

    def _register(self, table: str, files: list[str]) -> None:
        if table != "metrics":
            rel = self._relation(table, files)
        else:
            # Only folders with a JSONL can hold repeated metric keys (compaction keeps the latest row), so the
            # window that picks the latest row runs over live and resumed runs only, not over finished ones.
            live = {str(Path(f).parent) for f in files if f.endswith(".jsonl")}
            settled = [f for f in files if str(Path(f).parent) not in live]
            rel = self._relation(table, settled)
            if live:
                rel = rel.union(_latest_metrics(self._relation(table, [f for f in files if f not in settled])))
        self._relations[table] = rel  # keep the relation alive while the view refers to it
        rel.create_view(table, replace=True)

    def query(self, sql: str, params: list[Any] | None = None) -> pd.DataFrame:
        """Run a parameterized query over the tables of SCHEMA; `?` placeholders only, never formatted SQL.

        A file that vanished (a compaction) is handled by re-listing; a file that still fails on a fresh listing
        is damaged: it is named in a warning and in `skipped`, left out, and the query runs over the others.
        """
        for attempt in range(_OPEN_FILE_RETRIES):
            try:
                self.refresh()  # binding a view opens its files too: a compaction can race it as well
                return self.con.execute(sql, params or []).df()
            except _FILE_ERRORS as err:
                if attempt == _OPEN_FILE_RETRIES - 1:
                    raise StoreError(f"the run files under {self.root or runs_dir()} could not be read: "
                                     f"{str(err).splitlines()[0]}; try again") from None
                # A file compacted away since the listing is gone on the next one: re-list at once. Any other
                # failure that survives a re-listing is a damaged file: find it and leave it out.
                if "No files found" not in str(err) and attempt > 0:
                    self._skip_unreadable()
                    time.sleep(0.01 * attempt)
                self._listing.clear()
        raise AssertionError("unreachable")

    def _skip_unreadable(self) -> None:
        """Read every file on its own; those that fail (and still exist) go to `skipped`."""
        for table in SCHEMA:
            for path in table_files(table, self.root):
                if path in self.skipped:
                    continue
                try:
                    self._relation(table, [path]).aggregate("count(*)").fetchall()
                except _FILE_ERRORS as err:
                    mtime = _mtime(Path(path))
                    if mtime is None:
                        continue  # it vanished: a compaction, not damage
                    reason = str(err).splitlines()[0]
                    self.skipped[path] = (mtime, reason)
                    logger.warning("store: left out %s, which cannot be read (%s); the other runs are shown. Fix or "
                                   "delete the file", path, reason)

    # -- typical dashboard queries ---------------------------------------------------------------

    def last_values(self, run_ids: list[str] | None = None) -> pd.DataFrame:
        """Last logged value of every metric of every run (columns run_id, name, step, value)."""
        where = "WHERE list_contains(?, run_id)" if run_ids else ""
        return self.query(f"SELECT run_id, name, max(step) AS step, arg_max(value, step) AS value FROM metrics "
                          f"{where} GROUP BY run_id, name ORDER BY run_id, name", [run_ids] if run_ids else [])

    def curve(self, name: str, run_ids: list[str], max_points: int = 500) -> pd.DataFrame:
        """One metric over steps for several runs, averaged into at most `max_points` buckets per run."""
        return self.query(
            """
            WITH m AS (SELECT run_id, step, value FROM metrics WHERE name = ? AND list_contains(?, run_id)),
                 span AS (SELECT run_id, greatest(1, ceil((max(step) - min(step) + 1) / ?)) AS width,
                                 min(step) AS first FROM m GROUP BY run_id)
            SELECT m.run_id, min(m.step) AS step, avg(m.value) AS value
            FROM m JOIN span USING (run_id)
            GROUP BY m.run_id, floor((m.step - span.first) / span.width)
            ORDER BY m.run_id, step
            """,
            [name, run_ids, max_points],
        )

    def metric_names(self, run_ids: list[str] | None = None) -> list[str]:
        where = "WHERE list_contains(?, run_id)" if run_ids else ""
        frame = self.query(f"SELECT DISTINCT name FROM metrics {where} ORDER BY name", [run_ids] if run_ids else [])
        return frame["name"].tolist()

    def close(self) -> None:
        self.con.close()


# ----------------------------------------------------------------------------------------------- runs


def read_run(run_id: str) -> dict[str, Any]:
    """Metadata and latest status of a run (status comes from the last line of status.jsonl)."""
    layout = run_layout(run_id)
    meta_path = layout.metadata
    if not meta_path.exists():
        raise StoreError(f"no run {run_id!r} under {runs_dir()}; `python -m engine runs list` shows the runs")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StoreError(f"{meta_path}: damaged run metadata ({err}); delete the run folder or restore the file")\
            from None
    events = _status_events(layout.status_log)
    last = events[-1] if events else {"status": "queued", "pid": None, "message": "", "time": meta["created"]}
    pids = [e["pid"] for e in events if e.get("pid")]
    started = next((e["time"] for e in events if e["status"] == "running"), None)
    ended = last["time"] if last["status"] not in ACTIVE else None
    return {**meta, "status": last["status"], "message": last.get("message", ""), "pid": pids[-1] if pids else None,
            "started": started, "ended": ended}


def _status_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line still being written
    return events


def list_run_ids() -> list[str]:
    root = runs_dir()
    if not root.is_dir():
        return []
    return sorted((p.name for p in root.iterdir() if RunLayout(p).metadata.exists()), reverse=True)


def delete_run(run_id: str) -> None:
    shutil.rmtree(run_dir(run_id))
