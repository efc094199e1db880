"""Compare: win rates with intervals (raw and length-controlled), reward margins and accuracies over steps, and
the Bradley-Terry leaderboard over every verdict, human votes included."""

import pandas as pd
import streamlit as st

from dashboard import charts
from dashboard.queries import (
    evaluation_rows,
    judgment_sources,
    judgments,
    leaderboard,
    metric_curves,
    metric_names,
    runs_table,
    runs_with_metric,
)
from dashboard.tables import eval_win_rates, judgment_win_rates
from dashboard.widgets import chart, table


@st.cache_data(show_spinner="fitting Bradley-Terry ratings")
def cached_leaderboard(sources: tuple[str, ...], stamp: tuple[int, float]) -> pd.DataFrame:
    """engine.store.standings.leaderboard over these sources. ``stamp`` (how many verdicts, the newest one's time) only
    keys the cache: a new verdict or vote refits, an unchanged store reuses the fit."""
    return leaderboard(list(sources))


st.title("Compare")
cached_pair_rates = st.cache_data(judgment_win_rates, show_spinner=False)

# ---------------------------------------------------------------------------------------------- evaluation runs

st.header("Win rates from evaluation runs")
rates = eval_win_rates(evaluation_rows(["win_rate", "lc_win_rate"]))
if rates.empty:
    st.info("No evaluation yet: `python -m engine eval --models sft=models/sft,<run id> --prompts "
            "demo/prompts_heldout.parquet` writes win rates here.")
else:
    eval_runs = sorted(rates["run_id"].unique(), reverse=True)
    picked = st.multiselect("Evaluation runs", eval_runs, default=eval_runs[:1], key="cmp_eval_runs")
    shown = rates[rates["run_id"].isin(picked)]
    chart(charts.win_rate_bars(shown, "Win rate against the baseline (95% bootstrap CI)"), "eval_win_rates")
    st.caption("Win rate estimates P(the judge prefers the model's response to the baseline's) on a prompt drawn "
               "like the evaluation's prompts, both sampled as the distribution column says, the judge seeing both "
               "orders (judgments.position 'ab'); 95% bootstrap interval over prompts. The length-controlled win rate "
               "(AlpacaEval 2) is a point estimate; the store keeps no interval for it.")
    table(shown, "eval_win_rates", "win_rates.csv")

# ---------------------------------------------------------------------------------------------- verdicts

st.header("Win rates from verdicts")
sources = judgment_sources()
if not sources:
    st.info("No verdicts yet: evaluation runs store the judge's, and votes on the Generations page store yours.")
else:
    chosen_sources = st.multiselect("Sources", sources, default=sources, key="cmp_sources",
                                    help="judges by name, and 'human' for votes cast on the Generations page")
    rated_sources = chosen_sources or sources
    verdicts = judgments(rated_sources)
    pairs = cached_pair_rates(verdicts)
    bars = pairs.assign(label=pairs["model"] + " vs " + pairs["opponent"], metric=pairs["source"],
                        value=pairs["win_rate"])
    chart(charts.win_rate_bars(bars, "Win rate of the first model of each pair, per source"), "pair_win_rates")
    table(pairs, "pair_win_rates", "pair_win_rates.csv")

    st.header("Leaderboard")
    board = cached_leaderboard(tuple(rated_sources), (len(verdicts), float(verdicts["time"].max())))
    chart(charts.leaderboard_chart(board), "leaderboard")
    if board["group"].nunique() > 1:
        st.warning("Some models never met, even through others: each group is rated on its own scale (column "
                   "group).")
    table(board.round({"rating": 1, "low": 1, "high": 1}), "leaderboard", "leaderboard.csv")

# ---------------------------------------------------------------------------------------------- margins

st.header("Reward margins and accuracy over steps")
runs = runs_table()
names_of = dict(zip(runs["run_id"], runs["name"]))
with_steps = runs.loc[runs["steps"].notna(), "run_id"].tolist()
margin_metrics = [n for n in metric_names(with_steps) if "margin" in n or "accurac" in n]
if not margin_metrics:
    st.info("No reward-margin or accuracy metrics logged yet (DPO-family runs log rewards/margins and "
            "rewards/accuracies; evaluation runs log reward_margin/<model>).")
else:
    # Training margins first: what the heading promises; the eval_* and per-model ones follow alphabetically.
    first = margin_metrics.index("rewards/margins") if "rewards/margins" in margin_metrics else 0
    metric = st.selectbox("Metric", margin_metrics, index=first, key="cmp_margin_metric")
    candidates = runs_with_metric(metric, with_steps)
    picked_runs = st.multiselect("Runs", candidates, default=candidates[:4], key="cmp_margin_runs",
                                 format_func=lambda r: f"{names_of.get(r, r)} ({r})")
    smoothing = st.slider("Smoothing", 0.0, 0.99, 0.0, 0.01, key="cmp_smoothing")
    curves = metric_curves(metric, picked_runs)
    chart(charts.metric_curves(curves, metric, smoothing, names_of), "margins")
    table(curves, "margin_curves", "margin_curves.csv")
