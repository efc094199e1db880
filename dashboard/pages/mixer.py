"""Mixer: move the weights of a mixing_po run's mixture and see its estimated scores, KL and ESS at once.

The estimate is engine.recipes.mixing_estimates.instant_estimate over the run's stored reference samples (importance
weighting, no model call), so the sliders respond instantly. "Balance" reruns mirror descent on the stored
log-ratios and sets the sliders to λ*; "Generate" samples from the mixture and from each single-objective policy
(engine.recipes.mixing.mix_generate, which loads the models: the only step here that touches torch).
"""

import streamlit as st

from dashboard import charts
from dashboard.queries import mixing_lambda_star, mixing_prompts, mixing_runs, pareto_table
from dashboard.simplex import one_hot, rebalance, snap
from dashboard.widgets import chart, output_text, stop_unless
from engine.decoding.distributions import SEQUENCE_T1
from engine.recipes.mixing_estimates import balance, instant_estimate, load_samples

st.title("Mixer")
runs = mixing_runs()
stop_unless(bool(runs), "No mixing_po run with stored samples yet. Launch one from the Runs page (method "
            "mixing_po); its samples are stored once the experts are trained.")

run_id = st.selectbox("Mixing run", runs, key="mixer_run")
samples = load_samples(run_id)
objectives = samples.objectives
k = len(objectives)
keys = [f"mixer_w_{run_id}_{i}" for i in range(k)]
lam_star = mixing_lambda_star(run_id)


def _set_weights(weights: list[float]) -> None:
    for key, w in zip(keys, weights):
        st.session_state[key] = w


def _moved(index: int) -> None:
    current = [st.session_state[key] for key in keys]
    _set_weights(rebalance(current, index, current[index]))


def _balance() -> None:
    result = balance(run_id)
    _set_weights(snap([result["weights"][o] for o in objectives]))
    st.session_state["mixer_balance_result"] = {"run": run_id, "gap": result["gap"], "F_hat": result["F_hat"]}


if keys[0] not in st.session_state:
    start = [lam_star[o] for o in objectives] if lam_star else [1.0 / k] * k
    _set_weights(snap(start))

st.subheader("Weights")
for i, objective in enumerate(objectives):
    st.slider(f"λ {objective}", 0.0, 1.0, step=0.001, format="%.3f", key=keys[i], on_change=_moved, args=(i,))
weights = [st.session_state[key] for key in keys]
left, right = st.columns(2)
left.button("Balance (mirror descent → λ*)", on_click=_balance, key="mixer_balance", type="primary")
if lam_star:
    right.button("Back to the run's λ*", on_click=_set_weights, args=(snap([lam_star[o] for o in objectives]),),
                 key="mixer_reset")
balanced = st.session_state.get("mixer_balance_result")
if balanced and balanced["run"] == run_id:
    st.caption(f"Mirror descent on the stored log-ratios: at the returned λ* (the averaged iterate, all stored "
               f"prompts) the duality gap is {balanced['gap']:.4g} and F̂ {balanced['F_hat']:.4g}.")

# ---------------------------------------------------------------------------------------------- estimate

estimate = instant_estimate(samples, weights)
st.subheader("Estimated scores (no generation)")
st.caption(f"Estimates of the sequence-level mixture π_λ ∝ ∏ π_k^λ_k at temperature 1 ({SEQUENCE_T1}), the "
           "distribution λ* is optimised for, from the run's stored reference samples.")
columns = st.columns(k + 2)
for column, objective in zip(columns, objectives):
    column.metric(objective, f"{estimate['scores'][objective]:.4f}",
                  help=f"± {estimate['stderr'][objective]:.4f} (standard error)")
columns[k].metric("KL to reference", f"{estimate['kl']:.4f}", help=f"± {estimate['kl_stderr']:.4f}")
columns[k + 1].metric("ESS (mean / min)", f"{estimate['ess_mean']:.1f} / {estimate['ess_min']:.1f}",
                      help=f"of {samples.logratios.shape[1]} samples per prompt; reliable from "
                           f"{estimate['ess_required']:.0f}")
if estimate["warning"]:
    st.warning(estimate["warning"])

axes = objectives if k <= 3 else st.multiselect("Chart axes (2 or 3)", objectives, default=objectives[:2],
                                                 max_selections=3, key="mixer_axes")
if len(axes) >= 2:
    points = pareto_table(list(axes), ["mixture:estimate", "mixture:generated"], [run_id])
    current = {o: estimate["scores"][o] for o in axes}
    chart(charts.pareto_chart(points, list(axes), current=current), "mixer_pareto")

# ---------------------------------------------------------------------------------------------- generate

st.subheader("Generate")
stored = mixing_prompts(run_id)
prompts = st.multiselect("Prompts", stored, default=stored[:1], key="mixer_prompts")
typed = st.text_input("Or type a prompt", key="mixer_typed_prompt")
per_prompt = st.number_input("Samples per prompt", 1, 8, 1, key="mixer_n")
chosen = [*prompts, *([typed] if typed.strip() else [])]
if st.button("Generate", key="mixer_generate", disabled=not chosen):
    from engine.recipes.mixing import mix_generate

    n = len(chosen) * int(per_prompt)
    with st.spinner("loading the policies and sampling"):
        results = {"mixture": mix_generate(run_id, weights, chosen, n=n)}
        for i, objective in enumerate(objectives):
            results[f"only {objective}"] = mix_generate(run_id, one_hot(k, i), chosen, n=n)
    st.session_state["mixer_generations"] = {"run": run_id, "weights": weights, "results": results}

generated = st.session_state.get("mixer_generations")
if generated and generated["run"] == run_id:
    results = generated["results"]
    sampled = results["mixture"][0]["distribution"]
    st.caption("weights " + ", ".join(f"{o} {w:.3f}" for o, w in zip(objectives, generated["weights"]))
               + f"; sampled from {sampled}")
    if sampled != SEQUENCE_T1:
        st.warning(f"This run decodes {sampled}, not the distribution the estimates above describe "
                   f"({SEQUENCE_T1}): their scores need not agree. decode_mode sir_token at temperature 1 samples it.")
    for j, row in enumerate(results["mixture"]):
        st.markdown(f"**Prompt {j + 1}**")
        st.text(row["prompt"])
        for c, (column, (label, rows)) in enumerate(zip(st.columns(len(results)), results.items())):
            with column:
                st.markdown(f"**{label}**")
                output_text(rows[j]["output"], f"mixer_{c}_{j}")
                st.text(", ".join(f"{o} {s:.3f}" for o, s in rows[j]["scores"].items()))
