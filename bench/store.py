"""Store benchmark: concurrent writers with a polling reader, then dashboard queries over a 1M-row store.

    python -m engine bench store --writers 4 --rows 10000

Prints rows written and read back, errors seen by any process, write throughput, the longest time between a row's
write and the first poll that saw it, and the latency of the dashboard's typical queries over 1,000,000 stored rows.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

METRIC_NAMES = [f"metric_{i}" for i in range(10)]


def _writer(run_id: str, rows: int, data: str, errors: mp.Queue) -> None:
    os.environ["PREFLAB_DATA"] = data
    from engine.store.runs import RunWriter, run_context

    try:
        RunWriter.create(run_id, method="dpo", name=run_id, config={})
        with run_context(run_id) as writer:
            for step in range(rows // len(METRIC_NAMES)):
                writer.log_metrics(step, {name: step * 0.001 for name in METRIC_NAMES})
    except Exception as err:  # reported to the parent, which counts it
        errors.put(f"{run_id}: {type(err).__name__}: {err}")


def concurrent_writes(writers: int, rows: int, data: str, poll_seconds: float = 0.2) -> dict[str, float]:
    """`writers` processes append `rows` metric rows each while this process polls; returns the counts."""
    from engine.store.runs import StoreReader

    errors: mp.Queue = mp.get_context("spawn").Queue()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(f"bench-{i}", rows, data, errors)) for i in range(writers)]
    reader = StoreReader()
    reader_errors, lags, polls, seen = 0, [], 0, {}
    start = time.time()
    for p in procs:
        p.start()
    while any(p.is_alive() for p in procs):
        try:
            polled_at = time.time()
            frame = reader.query("SELECT run_id, time FROM metrics")
            polls += 1
            # A row's lag: from the moment its writer wrote it to the first poll that saw it.
            for run_id, times in frame.groupby("run_id")["time"]:
                ordered = np.sort(times.to_numpy())
                lags.extend(polled_at - ordered[seen.get(run_id, 0):])
                seen[run_id] = len(ordered)
        except Exception:
            reader_errors += 1
        time.sleep(poll_seconds)
    for p in procs:
        p.join()
    elapsed = time.time() - start
    read_back = int(reader.query("SELECT count(*) AS n FROM metrics")["n"].iloc[0])
    writer_errors = []
    while not errors.empty():
        writer_errors.append(errors.get())
    reader.close()
    written = writers * (rows // len(METRIC_NAMES)) * len(METRIC_NAMES)
    return {"rows_written": written, "rows_read_back": read_back, "errors": len(writer_errors) + reader_errors,
            "rows_per_s": written / elapsed, "polls": polls,
            "max_lag_s": max(lags) if lags else 0.0, "error_messages": writer_errors}


def build_large_store(data: str, total_rows: int = 1_000_000, runs: int = 20) -> None:
    """Finished runs holding `total_rows` metric rows in all, written as compacted Parquet the way runs end."""
    import duckdb

    os.environ["PREFLAB_DATA"] = data
    from engine.store.runs import RunWriter

    steps = total_rows // runs // len(METRIC_NAMES)
    con = duckdb.connect()
    for r in range(runs):
        writer = RunWriter.create(f"large-{r:02d}", method="dpo", name=f"large-{r}", config={})
        writer.set_status("finished")
        con.execute(
            "COPY (SELECT ? AS run_id, s AS step, 'metric_' || n AS name, random() AS value, epoch(now()) AS time "
            "FROM range(?) t(s), range(?) u(n) ORDER BY name, step) TO ? (FORMAT parquet)",
            [writer.run_id, steps, len(METRIC_NAMES), str(writer.dir / "metrics.parquet")])
    con.close()


def query_latencies(data: str, repeats: int = 7) -> dict[str, float]:
    """Median milliseconds of the dashboard's typical queries on a reader that has already listed the files."""
    os.environ["PREFLAB_DATA"] = data
    from engine.store.runs import StoreReader, list_run_ids

    reader = StoreReader()
    runs = list_run_ids()[:5]
    count = int(reader.query("SELECT count(*) AS n FROM metrics")["n"].iloc[0])
    timings = {"last value per run and metric": lambda: reader.last_values(),
               "curve of one metric for 5 runs": lambda: reader.curve("metric_3", runs),
               "metric names": lambda: reader.metric_names()}
    out = {"rows": count}
    for label, fn in timings.items():
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1000)
        out[label] = statistics.median(samples)
    reader.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine bench store", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--rows", type=int, default=10_000, help="metric rows per writer")
    parser.add_argument("--large-rows", type=int, default=1_000_000, help="rows of the store the queries run on")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        data = str(Path(tmp) / "concurrent")
        os.environ["PREFLAB_DATA"] = data
        result = concurrent_writes(args.writers, args.rows, data)
        print(f"writers: {args.writers}  rows written: {result['rows_written']}  rows read back: "
              f"{result['rows_read_back']}  errors: {result['errors']}")
        for message in result["error_messages"]:
            print(f"  error: {message}")
        print(f"write throughput: {result['rows_per_s']:.0f} rows/s  reader polls: {result['polls']}  "
              f"max lag from write to read: {result['max_lag_s']:.2f} s")
        large = str(Path(tmp) / "large")
        build_large_store(large, args.large_rows)
        latencies = query_latencies(large)
        print(f"query latency over {latencies.pop('rows')} stored rows (median of 7):")
        for label, ms in latencies.items():
            print(f"  {label}: {ms:.1f} ms")
    ok = result["rows_read_back"] == result["rows_written"] and result["errors"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
