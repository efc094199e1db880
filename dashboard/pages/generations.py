"""Generations: outputs of 2-4 models or mixtures side by side for one prompt, with scores, the judge's verdict,
the differences between two outputs, and votes that count as human judgments.

Model output is shown as plain text (st.text) and the diff as a code block: markup in an output is never
interpreted.
"""

import pandas as pd
import streamlit as st

from dashboard.queries import (
    local_models,
    mixing_lambda_star,
    mixing_runs,
    outputs_for_prompt,
    score_objectives,
    stored_prompts,
)
from dashboard.queries import verdicts as stored_verdicts
from dashboard.textdiff import diff_text, similarity
from dashboard.votes import record_vote
from dashboard.widgets import output_text, stop_unless, table
from engine.judges import get_judge, get_scorer

STORED, NEW = "stored outputs", "new prompt"
SCORERS = ("sentiment", "vader", "conciseness")  # the scorers that load no model: cheap on every page view
MIX_PREFIX = "mix:"


@st.cache_data(show_spinner=False, max_entries=256)
def _verdict(judge: str, prompt: str, a: str, b: str) -> float:
    return float(get_judge(judge).prob_a_beats_b([prompt], [a], [b])[0])


def _generate(prompt: str, names: list[str], models: dict[str, str]) -> dict[str, str]:
    """One output per chosen model or mixture (λ* of the mixing run); loads the models, hence torch, lazily."""
    from engine.decoding.generation import SamplingParams, generate
    from engine.recipes.mixing import mix_generate

    out = {}
    for name in names:
        if name.startswith(MIX_PREFIX):
            run_id = name.removeprefix(MIX_PREFIX)
            out[name] = mix_generate(run_id, mixing_lambda_star(run_id), [prompt], n=1)[0]["output"]
        else:
            out[name] = generate(models[name], [prompt], SamplingParams()).texts[0]
    return out


st.title("Generations")
mode = st.radio("Source", [STORED, NEW], horizontal=True, key="gen_mode")
outputs: dict[str, str] = {}
prompt = ""
if mode == STORED:
    prompts = stored_prompts()
    stop_unless(bool(prompts), "No prompt has stored outputs from two models yet: evaluation runs store them. Or "
                "type a new prompt.")
    prompt = st.selectbox("Prompt", prompts, key="gen_prompt")
    stored = outputs_for_prompt(prompt)
    names = st.multiselect("Models (2-4)", stored["model"].tolist(), default=stored["model"].tolist()[:2],
                           max_selections=4, key="gen_models")
    outputs = {n: stored.set_index("model").loc[n, "output"] for n in names}
else:
    prompt = st.text_area("Prompt", key="gen_typed_prompt")
    models = local_models()
    mixtures = [f"{MIX_PREFIX}{r}" for r in mixing_runs() if mixing_lambda_star(r)]
    names = st.multiselect("Models or mixtures (2-4)", [*models, *mixtures], max_selections=4, key="gen_new_models",
                           help="local model folders, trained runs, and mixing runs at their λ*")
    ready = prompt.strip() and len(names) >= 2
    if st.button("Generate", key="gen_generate", disabled=not ready):
        with st.spinner("loading models and sampling"):
            st.session_state["gen_new"] = {"prompt": prompt, "outputs": _generate(prompt, names, models)}
    done = st.session_state.get("gen_new")
    if done and done["prompt"] == prompt:
        outputs = {n: t for n, t in done["outputs"].items() if n in names}

stop_unless(len(outputs) >= 2, "Choose at least two models to compare.")

# ---------------------------------------------------------------------------------------------- side by side

st.subheader("Prompt")
st.text(prompt)
# the store's own objectives first (the tiny world's sentiment, the SmolLM2 world's vader), in SCORERS' order
measured = [s for s in SCORERS if s in score_objectives()] or ["sentiment", "conciseness"]
scorers = st.multiselect("Scores", SCORERS, default=measured, key="gen_scorers")
texts = list(outputs.values())
scores = {s: get_scorer(s).score([prompt] * len(texts), texts) for s in scorers}
for i, (column, (name, text)) in enumerate(zip(st.columns(len(outputs)), outputs.items())):
    with column:
        st.text(name)
        output_text(text, f"gen_{i}")
        st.text(" · ".join(f"{s} {scores[s][i]:.3f}" for s in scorers))

# ---------------------------------------------------------------------------------------------- one pair

st.subheader("Compare two")
names = list(outputs)
left, right = st.columns(2)
model_a = left.selectbox("A", names, index=0, key="gen_pair_a")
model_b = right.selectbox("B", [n for n in names if n != model_a], index=0, key="gen_pair_b")
out_a, out_b = outputs[model_a], outputs[model_b]

judge = st.text_input("Judge", f"bt:{measured[0]}", key="gen_judge",
                      help="bt:<scorer>, lm:<path> or openai:<url>#<model>")
try:
    p_a = _verdict(judge, prompt, out_a, out_b)
    st.metric("Judge: P(A beats B)", f"{p_a:.3f}", help=f"{judge}; 0.5 is a tie")
except ValueError as err:
    st.error(str(err))
known = stored_verdicts(prompt, out_a, out_b)
if len(known):
    st.caption("Stored verdicts on these two outputs (seen from A):")
    table(known.assign(model_a=model_a, model_b=model_b)[["source", "model_a", "model_b", "prob_a", "winner"]],
          "gen_verdicts", "verdicts.csv")

st.markdown(f"**Differences** (word level, similarity {similarity(out_a, out_b):.2f}; `-` only in A, `+` only in B)")
with st.container(key="gen_diff"):
    st.code(diff_text(out_a, out_b) or "(identical)", language="diff", wrap_lines=True)

st.markdown("**Your vote**")
vote_a, vote_tie, vote_b = st.columns(3)
winner = None
if vote_a.button("A is better", key="vote_a"):
    winner = "a"
if vote_tie.button("Tie", key="vote_tie"):
    winner = "tie"
if vote_b.button("B is better", key="vote_b"):
    winner = "b"
if winner:
    record_vote(prompt, model_a, model_b, out_a, out_b, winner)
    st.success("Vote stored: it counts in the win rates and the leaderboard on the Compare page.")
    st.session_state.setdefault("gen_votes", []).append({"prompt": prompt, "A": model_a, "B": model_b,
                                                         "winner": winner})
if st.session_state.get("gen_votes"):
    st.caption("Your votes in this session:")
    st.dataframe(pd.DataFrame(st.session_state["gen_votes"]), hide_index=True, key="gen_vote_log")
