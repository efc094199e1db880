"""Pareto: objective-vs-objective scores of models and mixtures with the front drawn, and a mixing run's λ path."""

import streamlit as st

from dashboard import charts
from dashboard.queries import lambda_path, mixing_objectives, pareto_table, runs_table, score_objectives
from dashboard.tables import estimate_path
from dashboard.widgets import chart, stop_unless, table
from engine.methods import method_names
from engine.recipes.mixing_estimates import load_samples, samples_path

NO_PATH = "(none)"

st.title("Pareto")
objectives = score_objectives()
stop_unless(len(objectives) >= 2, "A Pareto chart needs scores on at least two objectives: evaluation runs "
            "(score/<scorer>) and mixing_po runs (their Pareto sweep) write them.")

picked = st.multiselect("Objectives (2 or 3)", objectives, default=objectives[:2], max_selections=3,
                        key="pareto_objectives")
stop_unless(len(picked) >= 2, "Pick two or three objectives.")
kinds_present = sorted(pareto_table(picked)["kind"].unique())
kinds = st.multiselect("Points", kinds_present, default=[k for k in kinds_present if k != "mixture:check"],
                       key="pareto_kinds", help="model: evaluated models; mixture:estimate: importance-weighted "
                       "estimates of a sweep (of π_λ at temperature 1); mixture:generated: mixtures actually "
                       "sampled and judged. Each distribution (legend group) has its own front.")

runs = runs_table()
mixing = runs.loc[runs["method"].isin(method_names(family="mixing")), "run_id"].tolist()
path_run = st.selectbox("λ path of a mixing run", [NO_PATH, *mixing], key="pareto_path_run")
path = lam = None
if path_run != NO_PATH:
    run_objectives = mixing_objectives(path_run)
    lam = lambda_path(path_run, run_objectives)
    if samples_path(path_run).exists() and set(picked) <= set(run_objectives) and len(lam):
        path = estimate_path(load_samples(path_run), lam, picked)

points = pareto_table(picked, kinds)
if points.empty:
    st.info("No point has scores on all the chosen objectives.")
else:
    chart(charts.pareto_chart(points, picked, path=path), "pareto")
    st.caption(f"{int(points['on_front'].sum())} of {len(points)} points are on a front (not dominated on "
               f"{', '.join(picked)} by a point of the same distribution: "
               f"{', '.join(sorted(points['distribution'].unique()))}).")
    table(points, "pareto_points", "pareto_points.csv")
if lam is not None:
    if len(lam):
        chart(charts.lambda_chart(lam), "lambda_path")
        if path is None:
            st.caption("The λ path is drawn on the Pareto chart when the run's samples are stored and the chosen "
                       "objectives are the run's.")
    else:
        st.info("This mixing run has logged no mirror-descent steps yet.")
