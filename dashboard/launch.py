"""The launch form and the first-run screen of the Runs page.

A run is launched the way `python -m engine train --config FILE --detach` does it: the validated config is stored
with the run (engine.store.jobs.launch writes run.json) and the job `python -m engine train --run RUN_ID` reads it back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd
import streamlit as st

from dashboard.forms import FORM_SOURCE, error_field, form_fields, initial_values, method_doc, raw_config
from dashboard.queries import DEMO_KIND, config_presets, demo_ready, is_active
from dashboard.widgets import terminal_text, untrusted
from engine.config import ConfigError, config_from_dict, config_to_dict
from engine.data.worlds import WORLDS
from engine.methods import method_names
from engine.store.jobs import launch, tail_log
from engine.store.runs import new_run_id

DEFAULTS, EXAMPLE = "defaults", "example"
FORM_COLUMNS = 3
_OBJECTIVES_HELP = "one objective per line: name, train file, judge[, eval file]"


def launch_training(method: str, values: dict) -> str:
    """Validate the form values with config_from_dict and start the job; returns the run id (ConfigError if bad)."""
    cfg = config_from_dict(raw_config(method, values), FORM_SOURCE)
    run_id = new_run_id(cfg.method)
    launch(["train", "--run", run_id], method=cfg.method, name=cfg.logging.run_name or run_id,
           config=config_to_dict(cfg), num_processes=cfg.training.num_processes, run_id=run_id)
    return run_id


def field_key(method: str, start: str, path: str) -> str:
    """Widget key of a form field, e.g. launch-dpo-example-training-max_steps (CSS-friendly: no dots)."""
    return f"launch-{method}-{start}-{path.replace('.', '-')}"


def _field(spec, value, key: str) -> None:
    label = spec.label
    if spec.widget == "bool":
        st.checkbox("use LoRA" if spec.path.endswith(".lora") else label, value=value, key=key,
                    help=spec.tooltip)
    elif spec.widget == "choice":
        st.selectbox(label, spec.choices, index=spec.choices.index(value), key=key, help=spec.tooltip)
    elif spec.widget == "objectives":
        st.text_area(label, value=value, key=key, help=f"{spec.tooltip}. {_OBJECTIVES_HELP}")
    else:
        st.text_input(label, value=value, key=key, help=spec.tooltip)


def launch_form(on_launch: Callable[[str], None] | None = None) -> None:
    """Method picker, then one input per config field (defaults filled), errors next to the field they name.

    ``on_launch(run_id)`` runs after a successful launch, before the page reruns (e.g. to select the new run)."""
    launched = st.session_state.get("launched_run")  # kept: the page may rerun again as the job starts or ends
    if launched:
        st.success(f"Started run {launched}; follow it in the table above and under Metrics.")
    method = st.selectbox("Method", method_names(), key="launch_method")
    presets = config_presets()
    starts = [EXAMPLE, DEFAULTS] if method in presets else [DEFAULTS]
    start = st.radio("Start from", starts, horizontal=True, key=f"launch_start_{method}",
                     format_func=lambda s: "example config (configs/)" if s == EXAMPLE else "config defaults")
    st.caption(method_doc(method))
    initial = initial_values(method, presets[method] if start == EXAMPLE else None)
    specs = form_fields(method)
    slots = {}
    with st.form(key=f"launch_form_{method}"):
        section, row, filled = None, [], 0
        for spec in specs:
            head = spec.path.split(".")[0]
            if head != section:
                section, filled = head, 0
                st.markdown(f"**{section}**")
            # Short fields side by side, a row at a time, keep the form about a screen tall; an objectives list
            # needs the whole width.
            wide = spec.widget == "objectives"
            if not wide and filled % FORM_COLUMNS == 0:
                row = st.columns(FORM_COLUMNS, vertical_alignment="bottom")  # checkboxes level with inputs
            with st.container() if wide else row[filled % FORM_COLUMNS]:
                _field(spec, initial[spec.path], field_key(method, start, spec.path))
                slots[spec.path] = st.empty()  # its error goes right under it
            filled = 0 if wide else filled + 1
        general = st.empty()
        submitted = st.form_submit_button("Launch", type="primary", key=f"launch_submit_{method}")
    if not submitted:
        return
    values = {spec.path: st.session_state[field_key(method, start, spec.path)] for spec in specs}
    try:
        run_id = launch_training(method, values)
    except ConfigError as err:
        field = error_field(str(err), [s.path for s in specs])
        (slots[field] if field else general).error(str(err), icon="⚠️")
        return
    st.session_state["launched_run"] = run_id
    if on_launch is not None:
        on_launch(run_id)
    st.rerun()  # the table above then lists the new run


def first_run_screen(job: Mapping[str, Any] | None) -> None:
    """Shown until the demo has run: offers, for the chosen demo world (engine/data/worlds.py), `demo prepare` (the
    world only) or `demo run` (every method trained, evaluated and compared) as a job, and follows the newest such
    job (``job``)."""
    running = job is not None and is_active(job["status"])
    with st.container(border=True, key="first_run"):
        st.subheader("Welcome to PrefLab")
        st.write("The offline demo builds a world with no download: a model, prompts and preference sets for two "
                 "objectives (sentiment, conciseness). **Run the whole demo** then trains every method on it, mixes "
                 "the objectives and evaluates everything against the starting model; each finished step is reused.")
        name = st.radio("Demo world", list(WORLDS), key="demo_world", disabled=running,
                        format_func=lambda w: f"{w}: {WORLDS[w].summary} ({WORLDS[w].duration})")
        run_col, prepare_col = st.columns(2)
        if run_col.button("Run the whole demo", type="primary", disabled=running, key="run_demo"):
            launch(["demo", "run", "--world", name], method=DEMO_KIND, name=f"demo run {name}", kind=DEMO_KIND)
            st.rerun()
        built = WORLDS[name].manifest().exists()
        if prepare_col.button("Only prepare the demo world", disabled=running or built, key="prepare_demo"):
            launch(["demo", "prepare", "--world", name], method=DEMO_KIND, name=f"demo prepare {name}",
                   kind=DEMO_KIND)
            st.rerun()
        if job is not None:
            _demo_progress(job["run_id"], job["name"], running)


def _demo_progress(run_id: str, name: str, running: bool) -> None:
    @st.fragment(run_every=2.0 if running else None)
    def progress() -> None:
        from dashboard.queries import run_info

        job = run_info(run_id)
        st.write(f"{name.capitalize()}: **{job['status']}**")
        if job["message"]:
            untrusted(job["message"])
        st.code(terminal_text(tail_log(run_id, 30)) or "(no output yet)", language=None, wrap_lines=True)
        if running and not is_active(job["status"]):
            st.rerun()  # the whole page: the models now exist, or the failure is final

    progress()


def show_first_run_if_needed(runs: pd.DataFrame) -> bool:
    """The first-run screen while no demo model or no training run exists yet, or a demo job runs; True if shown.

    ``runs``: the page's runs table (queries.runs_table, newest first), so the runs are listed once per page run."""
    demo_jobs = runs[runs["kind"] == DEMO_KIND]
    job = demo_jobs.iloc[0] if len(demo_jobs) else None
    trained = bool((runs["kind"] != DEMO_KIND).any())
    if demo_ready() and trained and not (job is not None and is_active(job["status"])):
        return False
    first_run_screen(job)
    return True
