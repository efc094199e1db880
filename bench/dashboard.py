"""Dashboard benchmark: every query the pages make, and the Runs page in a real browser, over a 1M-row store.

    python -m engine bench dashboard [--rows 1000000] [--repeats 7] [--loads 5]

The store holds ``--rows`` metric rows in 20 finished runs (bench/store.py's ``build_large_store``, compacted
Parquet as runs end) plus what the other pages read: an evaluation run (scores, win rates, generations, judge
verdicts and human votes among four models) and a mixing run (stored samples, lambda path, a Pareto sweep).

Prints, for each function of dashboard/queries.py that a page calls, the first call and the median of
``--repeats`` further calls (target: median under 200 ms), then the Runs page in headless Chromium: from
navigation start to the runs table drawn, for a first visit and the median of ``--loads`` more (target: 2 s).
Exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

QUERY_TARGET_MS = 200.0
RUNS_PAGE_TARGET_MS = 2000.0
MODELS = ("sft", "dpo", "mallows", "mrpo")
OBJECTIVES = ("sentiment", "conciseness")
EVAL_RUN, MIX_RUN = "bench-eval", "bench-mix"
PROMPTS, MIX_PROMPTS, MIX_SAMPLES, MD_STEPS = 200, 64, 40, 2000
# Runs page: the runs table's cells mirrored in the DOM (st.dataframe draws on a canvas) mean it is drawn.
RUNS_TABLE = ".st-key-table_runs [role=gridcell]"


def fill_pages(seed: int = 0) -> None:
    """An evaluation run and a mixing run with samples, in the store PREFLAB_DATA points to."""
    from engine.recipes.mixing_estimates import MixingSamples, simplex_grid
    from engine.store.runs import RunWriter, run_context

    rng = np.random.default_rng(seed)
    RunWriter.create(EVAL_RUN, method="eval", name="eval vs sft", kind="eval",
                     config={"judge": "bt:sentiment", "models": {m: f"models/{m}" for m in MODELS}})
    with run_context(EVAL_RUN) as writer:
        writer.append("generations", ({"cache_key": m, "model": m, "prompt_set": "bench", "prompt_id": p,
                                       "prompt": f"prompt {p}", "output": f"output of {m} for prompt {p}",
                                       "num_tokens": int(rng.integers(5, 60))}
                                      for m in MODELS for p in range(PROMPTS)))
        writer.append("judgments", ({"source": "bt:sentiment", "prompt": f"prompt {p}", "model_a": m,
                                     "model_b": "sft", "output_a": f"output of {m} for prompt {p}",
                                     "output_b": f"output of sft for prompt {p}", "prob_a": float(q),
                                     "winner": "a" if q > 0.5 else "b"}
                                    for m in MODELS[1:] for p, q in enumerate(rng.uniform(0, 1, PROMPTS))))
        writer.append("judgments", ({"source": "human", "prompt": f"prompt {p}", "model_a": "dpo", "model_b": m,
                                     "output_a": "a", "output_b": "b", "prob_a": 1.0, "winner": "a"}
                                    for m in ("mallows", "mrpo") for p in range(20)))
        rows = []
        for m in MODELS:
            for o in OBJECTIVES:
                value = float(rng.uniform(0, 1))
                rows.append({"model": m, "baseline": "sft", "metric": f"score/{o}", "value": value,
                             "low": value - 0.05, "high": value + 0.05, "n": PROMPTS})
            if m != "sft":
                rows += [{"model": m, "baseline": "sft", "metric": metric, "value": 0.6, "low": 0.55, "high": 0.65,
                          "n": PROMPTS} for metric in ("win_rate", "lc_win_rate")]
        writer.append("evaluations", rows)

    objectives = [{"name": o, "train": f"demo/prefs_{o}_train.parquet", "judge": o} for o in OBJECTIVES]
    RunWriter.create(MIX_RUN, method="mixing_po", name="mix", config={"method": "mixing_po",
                                                                      "mixing_po": {"objectives": objectives}})
    with run_context(MIX_RUN) as writer:
        shape = (MIX_PROMPTS, MIX_SAMPLES)
        samples = MixingSamples(list(OBJECTIVES), list(OBJECTIVES), rng.normal(0, 1, (*shape, 2)),
                                rng.uniform(0, 1, (*shape, 2)), rng.normal(-20, 2, shape), np.full(shape, 12))
        samples.save(writer.layout.samples)
        pd.DataFrame({"prompt_id": np.repeat(np.arange(MIX_PROMPTS), MIX_SAMPLES),
                      "sample_id": np.tile(np.arange(MIX_SAMPLES), MIX_PROMPTS),
                      "prompt": np.repeat([f"prompt {i}" for i in range(MIX_PROMPTS)], MIX_SAMPLES),
                      "response": "r"}).to_parquet(writer.layout.sample_texts, index=False)
        writer.layout.lambda_star.write_text(json.dumps(dict(zip(OBJECTIVES, (0.6, 0.4)))), encoding="utf-8")
        for step in range(MD_STEPS):
            lam = 0.5 + 0.1 * step / MD_STEPS
            writer.log_metrics(step, {f"mix/lambda_{OBJECTIVES[0]}": lam, f"mix/lambda_{OBJECTIVES[1]}": 1 - lam})
        writer.append("mixtures", ({"label": "grid", "weights": json.dumps(list(w)), "objective": o,
                                    "score": float(rng.uniform(0, 1)), "kind": "estimate", "ess": 20.0}
                                   for w in simplex_grid(2, 10) for o in OBJECTIVES))


def page_queries() -> dict[str, Callable[[], Any]]:
    """Each function of dashboard/queries.py that a page calls, with the arguments that page passes."""
    from dashboard import queries as q
    from engine.store.runs import list_run_ids

    runs = [r for r in list_run_ids() if r.startswith("large-")][:5]
    prompt = "prompt 0"
    return {
        "runs_table": q.runs_table,
        "run_info": lambda: q.run_info(runs[0]),
        "demo_ready": q.demo_ready,
        "config_presets": q.config_presets,
        "metric_names (5 runs)": lambda: q.metric_names(runs),
        "runs_with_metric (5 runs)": lambda: q.runs_with_metric("metric_3", runs),
        "metric_curves (5 runs x 5k steps)": lambda: q.metric_curves("metric_3", runs),
        "evaluation_rows": lambda: q.evaluation_rows(["win_rate", "lc_win_rate"]),
        "judgment_sources": q.judgment_sources,
        "judgments": lambda: q.judgments(["bt:sentiment", "human"]),
        "leaderboard (BT fit, 200 resamples)": lambda: q.leaderboard(["bt:sentiment", "human"]),
        "score_objectives": q.score_objectives,
        "pareto_table": lambda: q.pareto_table(list(OBJECTIVES)),
        "pareto_table (one run's mixtures)": lambda: q.pareto_table(list(OBJECTIVES),
                                                                      ["mixture:estimate", "mixture:generated"],
                                                                      [MIX_RUN]),
        "lambda_path": lambda: q.lambda_path(MIX_RUN, list(OBJECTIVES)),
        "mixing_runs": q.mixing_runs,
        "mixing_objectives": lambda: q.mixing_objectives(MIX_RUN),
        "mixing_lambda_star": lambda: q.mixing_lambda_star(MIX_RUN),
        "mixing_prompts": lambda: q.mixing_prompts(MIX_RUN),
        "stored_prompts": q.stored_prompts,
        "outputs_for_prompt": lambda: q.outputs_for_prompt(prompt),
        "verdicts": lambda: q.verdicts(prompt, f"output of dpo for {prompt}", f"output of sft for {prompt}"),
        "local_models": q.local_models,
    }


def time_queries(repeats: int) -> dict[str, tuple[float, float]]:
    """Milliseconds of each page query: (first call, median of ``repeats`` further calls)."""
    out = {}
    for label, fn in page_queries().items():
        t0 = time.perf_counter()
        fn()
        first = (time.perf_counter() - t0) * 1000
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1000)
        out[label] = (first, statistics.median(samples))
    return out


# The least a Streamlit page with one table costs on this machine: the floor under the Runs page's time.
BARE_PAGE = """import pandas as pd
import streamlit as st

st.title("Runs")
with st.container(key="table_runs"):
    st.dataframe(pd.DataFrame({"run_id": ["a", "b"], "status": ["finished", "running"]}), hide_index=True)
"""


def page_loads(data: Path, loads: int, script: str = "app.py") -> list[float]:
    """Milliseconds from navigation start to the runs table drawn, for 1 + ``loads`` visits (fresh sessions)."""
    from dashboard.server import chromium, serve

    times = []
    with serve(data, data.parent / "streamlit.log", script) as url, chromium() as page:
        for _ in range(1 + loads):
            page.goto(url)
            page.locator(RUNS_TABLE).first.wait_for(state="attached", timeout=60_000)
            times.append(page.evaluate("() => performance.now()"))
            page.wait_for_timeout(500)  # the rest of the page settles before the next visit
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine bench dashboard", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="metric rows in the store")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls of each query after the first")
    parser.add_argument("--loads", type=int, default=5, help="timed visits of the Runs page after the first")
    args = parser.parse_args(argv)
    from bench.store import build_large_store

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        build_large_store(str(data), args.rows)  # sets PREFLAB_DATA for this process
        fill_pages()
        from dashboard.queries import query

        count = int(query("SELECT count(*) AS n FROM metrics")["n"].iloc[0])
        print(f"store: {count} metric rows in {len(os.listdir(data / 'runs'))} runs")
        timings = time_queries(args.repeats)
        width = max(map(len, timings))
        print(f"page queries, ms (first call, median of {args.repeats}; target median < {QUERY_TARGET_MS:.0f}):")
        for label, (first, median) in timings.items():
            flag = "" if median < QUERY_TARGET_MS else "  OVER TARGET"
            print(f"  {label:<{width}}  {first:8.1f}  {median:8.1f}{flag}")
        loads = page_loads(data, args.loads)
        bare_script = Path(tmp) / "bare_page.py"
        bare_script.write_text(BARE_PAGE, encoding="utf-8")
        bare = page_loads(data, args.loads, str(bare_script))
        median_load = statistics.median(loads[1:] or loads)
        print(f"Runs page in Chromium, navigation start to runs table drawn: first visit {loads[0]:.0f} ms, "
              f"median of {args.loads} more {median_load:.0f} ms (target < {RUNS_PAGE_TARGET_MS:.0f}); "
              f"a bare Streamlit page with one table: {statistics.median(bare[1:] or bare):.0f} ms "
              f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    slow = [label for label, (_, median) in timings.items() if median >= QUERY_TARGET_MS]
    ok = not slow and median_load < RUNS_PAGE_TARGET_MS
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
