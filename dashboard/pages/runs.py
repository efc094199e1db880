"""Runs: every job with its status, a launch form for each method, live metric charts, cancel, logs, config diff."""

import zlib

import streamlit as st

from dashboard import charts
from dashboard.launch import launch_form, show_first_run_if_needed
from dashboard.queries import is_active, metric_curves, metric_names, run_info, runs_table
from dashboard.tables import config_diff
from dashboard.widgets import chart, table, terminal_text, untrusted
from engine.store.jobs import cancel, tail_log
from engine.store.runs import StoreError

LIVE_SECONDS = 3.0
PREFERRED_METRICS = ("loss", "train/loss", "rewards/margins", "mix/F_hat")
METRIC_PICK = "live_metric_pick"  # the metric a person chose, kept across runs and refreshes

st.title("Runs")
runs = runs_table()
show_first_run_if_needed(runs)


@st.fragment(run_every=LIVE_SECONDS if runs["status"].map(is_active).any() else None)
def runs_list() -> None:
    """The table, refreshed while some run is active so that status, steps and duration move."""
    current = runs_table()
    if current.empty:
        st.info("No runs yet. Launch one below; jobs started from the command line appear here too.")
        return
    left, middle, right = st.columns(3)
    statuses = left.multiselect("Status", sorted(current["status"].unique()), key="runs_status")
    methods = middle.multiselect("Method", sorted(current["method"].unique()), key="runs_method")
    search = right.text_input("Name or id contains", key="runs_search")
    if statuses:
        current = current[current["status"].isin(statuses)]
    if methods:
        current = current[current["method"].isin(methods)]
    if search:
        hit = current["name"].str.contains(search, case=False, regex=False)
        current = current[hit | current["run_id"].str.contains(search, case=False, regex=False)]
    table(current, "runs", "runs.csv")


runs_list()



def _follow(run_id: str) -> None:
    """After a launch, show the new run in the metric chart and the run details below."""
    st.session_state["live_runs"] = [run_id]
    st.session_state["detail_run"] = run_id


# A switch rather than an expander: a collapsed expander still draws its ~40 inputs, which slowed every visit.
if st.toggle("Launch a training run", value=runs.empty, key="launch_open"):
    with st.container(border=True):
        launch_form(on_launch=_follow)

if runs.empty:
    st.stop()

labels = dict(zip(runs["run_id"], runs["name"]))
active_ids = runs.loc[runs["status"].map(is_active), "run_id"].tolist()


def _label(run_id: str) -> str:
    return f"{labels.get(run_id, run_id)} ({run_id})" if labels.get(run_id) != run_id else run_id


# ---------------------------------------------------------------------------------------------- live metrics

st.header("Metrics")
# The default (the running jobs) only seeds the first view; afterwards the selection (or a launch, via _follow)
# decides. Nothing is charted by default when nothing runs: the chart library is most of a visit's cost in the
# browser (bench/dashboard.py: 3.1 s with a chart, 1.0 s without, on the 2-core machine).
chosen = st.multiselect("Runs", runs["run_id"].tolist(), format_func=_label, key="live_runs",
                        default=None if "live_runs" in st.session_state else active_ids,
                        placeholder="pick runs to chart (running jobs are picked for you)")
smoothing = st.slider("Smoothing", 0.0, 0.99, 0.0, 0.01, key="live_smoothing",
                      help="exponential moving average weight; 0 shows the raw values")
live = any(r in active_ids for r in chosen)


def _remember_pick(key: str, start: str) -> None:
    # A selector reports its starting value once when it first appears (seen in the browser): that is no pick.
    if st.session_state[key] != start:
        st.session_state[METRIC_PICK] = st.session_state[key]


@st.fragment(run_every=LIVE_SECONDS if live else None)
def live_metrics() -> None:
    """Metric names and curves re-read on every tick: a run that just started gains metrics as it logs them."""
    if not chosen:
        st.info("Pick one or more runs to overlay their metrics.")
        return
    names = metric_names(chosen)
    if not names:
        st.info("The chosen runs have logged no metrics yet" + (" (refreshing)." if live else "."))
        return
    # Until someone picks a metric, follow the loss: a starting run logs bookkeeping numbers before its first loss.
    # The selector is a new widget whenever the names change, starting at the pick or the loss; its value is never
    # written from here, since a refresh carrying the old value then looked like a pick (seen in the browser).
    pick = st.session_state.get(METRIC_PICK)
    first = pick if pick in names else next((n for n in PREFERRED_METRICS if n in names), names[0])
    key = f"live_metric_{zlib.crc32(chr(0).join(names).encode()):08x}"
    metric = st.selectbox("Metric", names, index=names.index(first), key=key, on_change=_remember_pick,
                          args=(key, first))
    chart(charts.metric_curves(metric_curves(metric, chosen), metric, smoothing, labels), "live_metrics")
    if live:
        st.caption(f"refreshing every {LIVE_SECONDS:.0f} s while a chosen run is active")


live_metrics()

# ---------------------------------------------------------------------------------------------- one run

st.header("Run details")
detail = st.selectbox("Run", runs["run_id"].tolist(), format_func=_label, key="detail_run")
st.number_input("Log lines", 10, 2000, 50, 10, key="log_lines")
notice = st.session_state.pop("run_notice", None)
if notice:
    st.success(notice)
was_active = detail in active_ids


@st.fragment(run_every=LIVE_SECONDS if was_active else None)
def run_details() -> None:
    """Status, cancel and the end of the log, refreshed while the run is active."""
    info = run_info(detail)
    running = is_active(info["status"])
    st.write(f"Status: **{info['status']}** · method {info['method']} · kind {info['kind']}")
    if info["message"]:
        untrusted(info["message"])
    if running and st.button("Cancel run", type="primary", key="cancel_run"):
        try:
            st.session_state["run_notice"] = f"Run {detail}: {cancel(detail)['status']}"
        except StoreError as err:
            st.session_state["run_notice"] = str(err)
        st.rerun()
    with st.container(key="log_tail"):
        st.code(terminal_text(tail_log(detail, st.session_state["log_lines"])) or "(the log is empty)",
                language=None, wrap_lines=True)
    if was_active and not running:
        st.rerun()  # the run ended: refresh the whole page (table, metric choices)


run_details()

# ---------------------------------------------------------------------------------------------- config diff

st.header("Config diff")
ids = runs["run_id"].tolist()
if len(ids) < 2:
    st.info("Two runs are needed to compare their configs.")
else:
    left, right = st.columns(2)
    run_a = left.selectbox("Run A", ids, index=0, format_func=_label, key="diff_a")
    run_b = right.selectbox("Run B", ids, index=1, format_func=_label, key="diff_b")
    everything = st.toggle("Show equal fields too", key="diff_all")
    diff = config_diff(run_info(run_a)["config"], run_info(run_b)["config"], only_different=not everything)
    if diff.empty:
        st.success("The two configs are identical.")
    else:
        table(diff, "config_diff", f"config_diff_{run_a}_{run_b}.csv")
