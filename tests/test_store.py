"""The store: rows survive concurrent writers, compaction and export; queries return what was written."""

import json

import duckdb
import numpy as np
import pandas as pd
import pytest

from bench.store import build_large_store, concurrent_writes
from engine.store.export import export_database
from engine.store.runs import RunWriter, StoreError, StoreReader, list_run_ids, read_run, run_context, table_files


def test_metrics_round_trip_before_and_after_compaction(data_root):
    writer = RunWriter.create("r1", method="dpo", name="first", config={"dpo": {"beta": 0.1}})
    expected = {(s, n): s * 0.5 + i for s in range(30) for i, n in enumerate(["loss", "rewards/margins"])}
    for step in range(30):
        writer.log_metrics(step, {n: v for (s, n), v in expected.items() if s == step})
    reader = StoreReader()
    before = reader.query("SELECT step, name, value FROM metrics ORDER BY step, name")
    writer.compact()
    after = reader.query("SELECT step, name, value FROM metrics ORDER BY step, name")
    assert {(r.step, r.name): r.value for r in before.itertuples()} == expected
    pd.testing.assert_frame_equal(before, after)
    assert table_files("metrics") == [str(data_root / "runs" / "r1" / "metrics.parquet")]
    assert not (data_root / "runs" / "r1" / "metrics.jsonl").exists()


def test_reader_skips_a_partial_last_line_and_sees_it_once_complete(data_root):
    writer = RunWriter.create("r1", method="dpo", name="r1", config={})
    writer.log_metrics(0, {"loss": 1.0})
    line = json.dumps({"run_id": "r1", "step": 1, "name": "loss", "value": 0.5, "time": 0.0})
    path = data_root / "runs" / "r1" / "metrics.jsonl"
    with path.open("a") as f:
        f.write(line[:20])
    reader = StoreReader()
    assert reader.query("SELECT count(*) AS n FROM metrics")["n"].iloc[0] == 1
    with path.open("a") as f:
        f.write(line[20:] + "\n")
    assert reader.query("SELECT sum(value) AS s FROM metrics")["s"].iloc[0] == 1.5


def test_four_writer_processes_and_a_polling_reader_lose_nothing(data_root):
    result = concurrent_writes(writers=4, rows=10_000, data=str(data_root), poll_seconds=0.2)
    assert result["errors"] == 0, result["error_messages"]
    assert result["rows_read_back"] == result["rows_written"] == 40_000
    assert result["polls"] >= 1
    assert result["max_lag_s"] < 2.0
    for run_id in list_run_ids():
        assert read_run(run_id)["status"] == "finished"


def test_typical_queries_return_the_right_numbers_on_a_large_store(data_root):
    build_large_store(str(data_root), total_rows=200_000, runs=10)
    reader = StoreReader()
    raw = reader.query("SELECT * FROM metrics")
    assert len(raw) == 200_000
    last = reader.last_values()
    expect_last = raw.sort_values("step").groupby(["run_id", "name"]).tail(1)
    merged = last.merge(expect_last, on=["run_id", "name"], suffixes=("", "_expected"))
    assert len(merged) == len(expect_last) == 100
    assert np.allclose(merged["value"], merged["value_expected"])
    runs = sorted(raw["run_id"].unique())[:5]
    curve = reader.curve("metric_3", runs, max_points=100)
    for run_id in runs:
        one = raw[(raw.run_id == run_id) & (raw.name == "metric_3")].sort_values("step")
        got = curve[curve.run_id == run_id]
        assert len(got) <= 100
        width = int(np.ceil(len(one) / 100))
        expected = one.groupby(one["step"] // width)["value"].mean().to_numpy()
        assert np.allclose(got["value"].to_numpy(), expected)


def test_unknown_columns_and_run_ids_are_refused(data_root):
    writer = RunWriter.create("r1", method="dpo", name="r1", config={})
    with pytest.raises(StoreError, match="unknown column"):
        writer.append("evaluations", [{"model": "a", "colour": "red"}])
    with pytest.raises(StoreError, match="not a plain folder name"):
        RunWriter("../escape")
    with pytest.raises(StoreError, match="no run 'nope'"):
        read_run("nope")


def test_run_context_records_failure_and_keeps_metrics(data_root):
    RunWriter.create("r1", method="dpo", name="r1", config={})
    with pytest.raises(RuntimeError):
        with run_context("r1") as writer:
            writer.log_metrics(0, {"loss": 2.0})
            raise RuntimeError("loss became NaN at step 1")
    run = read_run("r1")
    assert run["status"] == "failed" and "loss became NaN" in run["message"]
    assert StoreReader().query("SELECT value FROM metrics")["value"].tolist() == [2.0]


def test_sql_and_html_in_values_are_stored_literally(data_root):
    nasty = "x'); DROP TABLE metrics; -- <script>alert(1)</script>"
    writer = RunWriter.create("r1", method="dpo", name=nasty, config={})
    writer.append("generations", [{"model": nasty, "prompt": nasty, "output": nasty}])
    reader = StoreReader()
    got = reader.query("SELECT output FROM generations WHERE model = ?", [nasty])
    assert got["output"].tolist() == [nasty]
    assert read_run("r1")["name"] == nasty


def test_export_writes_a_self_contained_database(data_root, tmp_path):
    writer = RunWriter.create("r1", method="mrpo", name="r1", config={"mrpo": {"beta": 0.1}})
    writer.log_metrics(0, {"loss": 1.0, "mrpo/alpha_0": 0.4})
    writer.append("evaluations", [{"model": "r1", "baseline": "sft", "metric": "win_rate", "value": 0.6,
                                   "low": 0.5, "high": 0.7, "n": 100}])
    target = tmp_path / "share.duckdb"
    counts = export_database(target)
    assert counts["metrics"] == 2 and counts["evaluations"] == 1 and counts["runs"] == 1
    con = duckdb.connect(str(target), read_only=True)
    assert con.execute("SELECT value FROM metrics WHERE name = 'mrpo/alpha_0'").fetchone()[0] == 0.4
    assert json.loads(con.execute("SELECT config FROM runs").fetchone()[0]) == {"mrpo": {"beta": 0.1}}
    con.close()
    with pytest.raises(StoreError, match="exists"):
        export_database(target)
