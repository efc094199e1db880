"""Export: every run's tables, plus a `runs` table, in one self-contained `.duckdb` file for sharing.

Kept apart from engine/store.py because it is the one place that writes a DuckDB database file; the store itself
never holds one (see that module's docstring). It reads through `StoreReader`, so it sees exactly what the
dashboard sees: the newest row of each metric key, damaged run files left out and named.
"""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from engine.store.runs import SCHEMA, StoreError, StoreReader, list_run_ids, read_run

logger = logging.getLogger(__name__)


def export_database(target: Path) -> dict[str, int]:
    """Write every table, plus a `runs` table, into one self-contained .duckdb file; returns row counts.

    The file is built under a temporary name and renamed when complete, so a failed export (disk full, a run's files
    changing under it) leaves no half-written database behind; damaged run files are left out and named, as in reads.
    """
    target = Path(target)
    if target.exists():
        raise StoreError(f"{target} exists; choose a new file name (export never overwrites)")
    if not target.parent.is_dir():
        raise StoreError(f"{target}: folder {target.parent} does not exist; create it or choose another path")
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    reader = StoreReader()
    counts = {}
    try:
        for table in SCHEMA:
            reader.query(f"SELECT count(*) FROM {table}")  # settles the views, leaving damaged files out
        reader.con.execute("ATTACH ? AS export", [str(tmp)])
        runs = pd.DataFrame(_readable_runs(),
                            columns=["run_id", "method", "name", "kind", "status", "created", "ended", "config"])
        reader.con.register("runs_frame", runs)
        reader.con.execute("CREATE TABLE export.runs AS SELECT * FROM runs_frame")
        counts["runs"] = len(runs)
        for table in SCHEMA:
            # Table names come from SCHEMA, never from input.
            reader.con.execute(f"CREATE TABLE export.{table} AS SELECT * FROM {table}")
            counts[table] = reader.con.execute(f"SELECT count(*) FROM export.{table}").fetchone()[0]
        reader.con.execute("DETACH export")
        tmp.replace(target)
    except (duckdb.Error, OSError) as err:
        raise StoreError(f"export to {target} failed: {str(err).splitlines()[0]}; nothing was written (check free "
                         "space and write access, then try again)") from None
    finally:
        reader.close()
        for leftover in (tmp, tmp.with_name(tmp.name + ".wal")):
            leftover.unlink(missing_ok=True)
    return counts


def _readable_runs() -> list[dict[str, Any]]:
    rows = []
    for run_id in list_run_ids():
        try:
            rows.append(_flat_run(read_run(run_id)))
        except StoreError as err:
            logger.warning("export: left out %s", err)
    return rows


def _flat_run(run: dict[str, Any]) -> dict[str, Any]:
    return {k: run[k] for k in ("run_id", "method", "name", "kind", "status", "created", "ended")} | {
        "config": json.dumps(run["config"])}
