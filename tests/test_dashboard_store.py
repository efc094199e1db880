"""A small store filled through RunWriter for the dashboard's AppTest tests, and the queries read back from it.

`fill_store` is imported by the page tests (tests/test_dashboard_pages.py) and by the no-torch subprocess check.
Every number here is chosen by hand so that the tests can state what the pages must show.
"""

import json

import numpy as np
import pandas as pd

from engine.config import config_from_dict, config_to_dict
from engine.paths import data_dir
from engine.recipes.mixing_estimates import MixingSamples
from engine.store.runs import RunWriter, run_dir, run_layout

PROMPT = "The film"
SCRIPT_OUTPUT = "<script>alert(1)</script> and **bold** and <b>tag</b>"
OUTPUTS = {"sft": "a plain movie with a plot", "dpo": "a wonderful movie with a great plot", "mallows": SCRIPT_OUTPUT}
STEPS = 20
# Judge verdicts dpo vs sft: 6 wins for dpo, 2 for sft; and mallows vs ref, a second group that never meets them.
JUDGE_WINS = {("dpo", "sft"): (6, 2), ("mallows", "ref"): (3, 1)}
WIN_RATES = {"dpo": (0.7, 0.6, 0.8, 0.66), "mallows": (0.55, 0.45, 0.65, 0.5)}  # value, low, high, LC
SCORES = {"sft": (0.1, 0.5), "dpo": (0.6, 0.3), "mallows": (0.4, 0.2)}  # (sentiment, conciseness): mallows dominated
OBJECTIVES = ["sentiment", "conciseness"]
MIX_N, MIX_M = 4, 8


def make_files() -> None:
    """The model folders and preference files a config must point at to validate."""
    root = data_dir()
    for folder in ("models/sft", "models/ref2"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "demo").mkdir(parents=True, exist_ok=True)
    for name in ("prefs_sentiment_train", "prefs_sentiment_test", "prefs_conciseness_train", "prefs_conciseness_test",
                 "prompts_heldout"):
        (root / "demo" / f"{name}.parquet").write_bytes(b"")


def train_config(method: str = "dpo", **params) -> dict:
    raw = {"method": method, "training": {"learning_rate": 5e-4}, method: params}
    return config_to_dict(config_from_dict(raw))


def mixing_config(md_steps: int = 2000) -> dict:
    objectives = [{"name": "sentiment", "train": "demo/prefs_sentiment_train.parquet", "judge": "sentiment"},
                  {"name": "conciseness", "train": "demo/prefs_conciseness_train.parquet", "judge": "conciseness"}]
    raw = {"method": "mixing_po", "mixing_po": {"objectives": objectives, "eta": 0.5, "md_steps": md_steps,
                                                "prompts_per_step": MIX_N}}
    return config_to_dict(config_from_dict(raw))


def mixing_samples(seed: int = 0) -> MixingSamples:
    """Log-ratios and scores of M reference samples on N prompts: objective 0's log-ratio rewards high scores on
    objective 0, objective 1's on objective 1, so the weights trade the two off."""
    rng = np.random.default_rng(seed)
    scores = rng.uniform(0, 1, size=(MIX_N, MIX_M, 2))
    logratios = np.stack([2.0 * scores[..., 0] - 1.0, 1.5 * scores[..., 1] - 0.5], axis=2)
    logratios += rng.normal(0, 0.1, size=logratios.shape)
    return MixingSamples(list(OBJECTIVES), list(OBJECTIVES), logratios, scores, rng.normal(-20, 2, (MIX_N, MIX_M)),
                         np.full((MIX_N, MIX_M), 12))


def finished(run_id: str, method: str, name: str, config: dict, kind: str = "train") -> RunWriter:
    writer = RunWriter.create(run_id, method=method, name=name, config=config, kind=kind)
    writer.set_status("running")
    writer.set_status("finished")
    return writer


def fill_store() -> None:
    make_files()
    for run_id, beta, slope in (("run-dpo", 0.1, 0.01), ("run-dpo2", 0.2, 0.02)):
        writer = finished(run_id, "dpo", f"dpo beta {beta}", train_config("dpo", beta=beta))
        for step in range(STEPS):
            writer.log_metrics(step, {"loss": 0.7 - slope * step, "rewards/margins": slope * 5 * step,
                                      "rewards/accuracies": min(1.0, 0.5 + slope * step)})
    (run_dir("run-dpo") / "log.txt").write_text("".join(f"line {i}\n" for i in range(100)), encoding="utf-8")

    evaluation = finished("run-eval", "eval", "eval vs sft", {"judge": "bt:sentiment", "models": {
        "sft": "models/sft", "dpo": "runs/run-dpo/model", "mallows": "runs/run-mallows/model"}}, kind="eval")
    rows = []
    for model, (value, low, high, lc) in WIN_RATES.items():
        rows += [{"model": model, "baseline": "sft", "metric": "win_rate", "value": value, "low": low, "high": high,
                  "n": 32},
                 {"model": model, "baseline": "sft", "metric": "lc_win_rate", "value": lc, "low": None, "high": None,
                  "n": 32}]
    for model, values in SCORES.items():
        rows += [{"model": model, "baseline": "sft", "metric": f"score/{o}", "value": v, "low": v - 0.05,
                  "high": v + 0.05, "n": 32} for o, v in zip(OBJECTIVES, values)]
    evaluation.append("evaluations", rows)
    evaluation.append("generations", [{"cache_key": m, "model": m, "prompt_set": "demo", "prompt_id": 0,
                                       "prompt": PROMPT, "output": text, "num_tokens": len(text.split())}
                                      for m, text in OUTPUTS.items()])
    verdicts = []
    for (a, b), (wins, losses) in JUDGE_WINS.items():
        verdicts += [{"source": "bt:sentiment", "prompt": f"p{i}", "model_a": a, "model_b": b, "output_a": "x",
                      "output_b": "y", "prob_a": 0.9 if i < wins else 0.1, "winner": "a" if i < wins else "b"}
                     for i in range(wins + losses)]
    evaluation.append("judgments", verdicts)

    fill_mixing_run("run-mix")


def fill_mixing_run(run_id: str) -> MixingSamples:
    writer = finished(run_id, "mixing_po", "mix sentiment+conciseness", mixing_config())
    samples = mixing_samples()
    layout = run_layout(run_id)
    samples.save(layout.samples)
    pd.DataFrame({"prompt_id": np.repeat(np.arange(MIX_N), MIX_M), "sample_id": np.tile(np.arange(MIX_M), MIX_N),
                  "prompt": np.repeat([f"prompt {i}" for i in range(MIX_N)], MIX_M),
                  "response": ["r"] * (MIX_N * MIX_M)}).to_parquet(layout.sample_texts, index=False)
    layout.lambda_star.write_text(json.dumps({"sentiment": 0.6, "conciseness": 0.4}), encoding="utf-8")
    for step in range(30):
        lam = 0.5 + 0.1 * step / 29
        writer.log_metrics(step, {"mix/lambda_sentiment": lam, "mix/lambda_conciseness": 1 - lam})
    # Mixture points: two grid estimates, one of them dominated, and lambda* as generated.
    points = [("grid", "estimate", [1.0, 0.0], (0.7, 0.1)), ("grid", "estimate", [0.5, 0.5], (0.3, 0.15)),
              ("lambda*", "generated", [0.6, 0.4], (0.5, 0.45))]
    writer.append("mixtures", [{"label": label, "weights": json.dumps(w), "objective": o, "score": s,
                                "kind": kind, "ess": 5.0} for label, kind, w, scores in points
                               for o, s in zip(OBJECTIVES, scores)])
    return samples


def test_fill_store_reads_back_through_the_dashboard_queries(data_root):
    from dashboard import queries

    fill_store()
    runs = queries.runs_table().set_index("run_id")
    assert set(runs.index) == {"run-dpo", "run-dpo2", "run-eval", "run-mix"}
    assert runs.loc["run-dpo", "steps"] == STEPS - 1 and runs.loc["run-dpo", "model"] == "models/sft"
    assert runs.loc["run-dpo", "objective"] == "prefs_sentiment_train"
    assert runs.loc["run-mix", "objective"] == "sentiment, conciseness"
    assert runs.loc["run-eval", "model"] == "sft, dpo, mallows"
    assert queries.stored_prompts() == [PROMPT]
    outputs = queries.outputs_for_prompt(PROMPT).set_index("model")["output"].to_dict()
    assert outputs == OUTPUTS
    points = queries.pareto_table(OBJECTIVES)
    models = points[points["kind"] == "model"].set_index("name")
    assert {m: tuple(models.loc[m, OBJECTIVES]) for m in models.index} == SCORES
    grid = points[points["kind"] == "mixture:estimate"].set_index("weights")
    assert {w: tuple(grid.loc[w, OBJECTIVES]) for w in grid.index} == {"[1.0, 0.0]": (0.7, 0.1),
                                                                        "[0.5, 0.5]": (0.3, 0.15)}  # kept apart
    assert queries.score_objectives() == sorted(OBJECTIVES)
    path = queries.lambda_path("run-mix", OBJECTIVES)
    assert len(path) == 60 and path[path["step"] == 29].set_index("objective")["weight"].round(9).to_dict() == {
        "sentiment": 0.6, "conciseness": 0.4}
    assert queries.mixing_runs() == ["run-mix"] and queries.mixing_prompts("run-mix")[0] == "prompt 0"


def test_verdicts_are_seen_from_the_side_asked_for(data_root):
    from dashboard import queries

    writer = RunWriter.create("r", method="eval", name="r", config={}, kind="eval")
    writer.append("judgments", [{"source": "j", "prompt": "p", "model_a": "m1", "model_b": "m2", "output_a": "one",
                                 "output_b": "two", "prob_a": 0.8, "winner": "a"}])
    same = queries.verdicts("p", "one", "two")
    swapped = queries.verdicts("p", "two", "one")
    assert same[["prob_a", "winner"]].values.tolist() == [[0.8, "a"]]
    assert swapped["prob_a"].iloc[0] == 1 - 0.8 and swapped["winner"].iloc[0] == "b"
    assert queries.verdicts("other prompt", "one", "two").empty
