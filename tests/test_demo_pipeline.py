"""The end-to-end demo at test scale: every method trained as its own run, evaluated against SFT, reused on a second
call; the dry runs of both specs print a plan without loading a model; bad specs and failed stages stop with a clear
message. The shortened pipeline runs once per module (about a minute on a quiet 2-core machine)."""

import contextlib
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from engine.config import LoraSection
from engine.judges import ConcisenessScorer, SentimentScorer
from engine.paths import REPO_ROOT
from engine.recipes.demo_run import StageFailed, demo_run, vllm_ready
from engine.recipes.demo_spec import DemoError, load_plan
from engine.store.jobs import refresh_status
from engine.store.runs import StoreReader, list_run_ids, read_run, run_dir
from engine.store.standings import pareto_table

METHODS = ("dpo", "mallows_po", "mrpo", "magnetic_po", "mixing_po")
EVAL_LIMIT = yaml.safe_load((REPO_ROOT / "configs" / "demo.yaml").read_text())["scales"]["test"]["eval"]["limit"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """Two calls of the test-scale demo in a fresh data folder: the store, both results, the first call's log."""
    root = tmp_path_factory.mktemp("demo_data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PREFLAB_DATA", str(root))
        mp.delenv("PREFLAB_RUN_ID", raising=False)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            first = demo_run(scale="test")
        runs_after_first = set(list_run_ids())
        second = demo_run(scale="test")
        yield {"root": root, "first": first, "second": second, "log": out.getvalue(),
               "runs_after_first": runs_after_first, "runs_after_second": set(list_run_ids())}


def _runs(kind: str) -> list[dict]:
    return [refresh_status(r) for r in list_run_ids() if read_run(r)["kind"] == kind]


def test_every_method_has_a_finished_run(demo):
    trained = _runs("train")
    finished = {r["method"] for r in trained if r["status"] == "finished"}
    assert finished == set(METHODS)
    stages = demo["first"]["stages"]
    assert {read_run(stages[s])["method"] for s in ("dpo_sentiment", "dpo_conciseness")} == {"dpo"}
    assert all((run_dir(run_id) / "model").is_dir() for name, run_id in stages.items() if name != "mixing")


def test_the_dashboard_tour_shows_the_demo(demo):
    """Every page opened in Chromium on the demo's store (dashboard/tour.py, which also takes the README's shots):
    no page fails, and what is drawn equals the store: the newest training run's loss curve, a win-rate bar of
    every evaluated model, every Pareto point with the same front, the current mixture on the Mixer's chart."""
    from dashboard.server import serve
    from dashboard.tour import tour

    shots = REPO_ROOT / "artifacts" / "tour"
    with serve(demo["root"], demo["root"].parent / "tour_streamlit.log") as url:
        seen = tour(url, shots)
    assert {page: facts["errors"] for page, facts in seen.items()} == {page: [] for page in seen}
    assert all((shots / f"{page.lower()}.png").stat().st_size > 10_000 for page in seen)
    reader = StoreReader()

    runs_chart = seen["Runs"]["chart"]
    (curve,) = runs_chart["traces"].values()
    newest = _runs("train")[0]  # runs are listed newest first
    assert curve["name"] == newest["name"] and runs_chart["title"] == "loss"
    loss = reader.query("SELECT step, value FROM metrics WHERE run_id = ? AND name = 'loss' ORDER BY step",
                        [newest["run_id"]])
    assert len(loss) > 1
    assert curve["x"] == loss.step.tolist() and np.allclose(curve["y"], loss.value)

    bars = seen["Compare"]["chart"]["traces"]["win rate"]
    rates = reader.query("SELECT model, value FROM evaluations WHERE metric = 'win_rate' AND run_id = ?",
                         [_runs("eval")[0]["run_id"]])  # the page starts on the newest evaluation
    assert sorted(bars["x"]) == sorted(f"{m} vs sft" for m in rates.model)
    assert sorted(bars["y"]) == pytest.approx(sorted(rates.value))

    traces = seen["Pareto"]["chart"]["traces"]
    every = pareto_table(reader, ["conciseness", "sentiment"])
    shown = sorted(set(every.kind) - {"mixture:check"})  # the page leaves the SIR check points out until asked
    table = pareto_table(reader, ["conciseness", "sentiment"], kinds=shown)
    assert sum(len(t["x"]) for name, t in traces.items() if name != "Pareto front") == len(table)
    front = table[table.on_front]
    assert sorted(traces["Pareto front"]["x"]) == pytest.approx(sorted(front.conciseness))
    assert "current mixture" in seen["Mixer"]["chart"]["traces"]


def test_win_rates_against_sft_match_the_stored_verdicts(demo):
    """Each evaluated policy and mixture has a win rate vs SFT with an interval, equal to the mean outcome of the
    judge's stored verdicts, and per-objective scores equal to the scorers applied to the stored generations."""
    reader = StoreReader()
    eval_ids = demo["first"]["evals"]
    assert len(eval_ids) == 2  # one per judge
    rates = reader.query("SELECT run_id, model, baseline, value, low, high, n FROM evaluations WHERE metric = "
                         "'win_rate' AND list_contains(?, run_id)", [eval_ids])
    expected_models = {"dpo_sentiment", "dpo_conciseness", "mallows", "mrpo", "magnetic", "mixing:union",
                       "mixing:lambda*", "mixing:w=0.50,0.50"}
    for run_id in eval_ids:
        judge = read_run(run_id)["config"]["judge"]
        part = rates[rates.run_id == run_id].set_index("model")
        assert set(part.index) == expected_models and set(part.baseline) == {"sft"}
        assert (part.n == EVAL_LIMIT).all()
        assert ((part.low <= part.value) & (part.value <= part.high) & (part.low >= 0) & (part.high <= 1)).all()
        verdicts = reader.query("SELECT model_a, prob_a FROM judgments WHERE run_id = ? AND source = ?",
                                [run_id, judge])
        for model, row in part.iterrows():
            prob = verdicts[verdicts.model_a == model].prob_a.to_numpy()
            assert len(prob) == EVAL_LIMIT
            outcome = np.where(prob > 0.5, 1.0, np.where(prob < 0.5, 0.0, 0.5))
            assert row.value == pytest.approx(outcome.mean())
    lc = reader.query("SELECT count(*) AS n FROM evaluations WHERE metric = 'lc_win_rate' AND list_contains(?, "
                      "run_id)", [eval_ids])
    assert lc.n.iloc[0] == 2 * len(expected_models)
    scores = reader.query("SELECT model, metric, value FROM evaluations WHERE run_id = ? AND starts_with(metric, "
                          "'score/')", [eval_ids[0]])
    texts = reader.query("SELECT DISTINCT ON (model, prompt_id) model, prompt, output FROM generations WHERE "
                         "list_contains(?, run_id) ORDER BY model, prompt_id", [eval_ids])
    for model in ["sft", "mixing:lambda*", "magnetic"]:
        rows = texts[texts.model == model]
        assert len(rows) == EVAL_LIMIT
        for scorer, name in ((SentimentScorer(), "score/sentiment"), (ConcisenessScorer(), "score/conciseness")):
            value = scores[(scores.model == model) & (scores.metric == name)].value.iloc[0]
            assert value == pytest.approx(scorer.score(list(rows.prompt), list(rows.output)).mean())


def test_reward_margins_for_the_dpo_family(demo):
    reader = StoreReader()
    margins = reader.query("SELECT model, value, low, high FROM evaluations WHERE metric = 'reward_margin' AND "
                           "run_id = ?", [demo["first"]["evals"][-1]])
    assert {"dpo_sentiment", "dpo_conciseness", "mallows", "mrpo", "mixing:union"} <= set(margins.model)
    assert ((margins.low <= margins.value) & (margins.value <= margins.high)).all()


def test_mixing_run_has_lambda_star_and_a_pareto_sweep(demo):
    mixing = demo["first"]["stages"]["mixing"]
    star = json.loads((run_dir(mixing) / "mixing" / "lambda.json").read_text())
    assert set(star) == {"sentiment", "conciseness"}
    assert min(star.values()) >= 0 and sum(star.values()) == pytest.approx(1.0)
    reader = StoreReader()
    grid = reader.query("SELECT weights, objective, score FROM mixtures WHERE run_id = ? AND label = 'grid' AND "
                        "kind = 'estimate' AND objective <> 'kl'", [mixing])
    points = grid.pivot_table(index="weights", columns="objective", values="score")
    assert len(points) >= 5 and not points.isna().any().any()
    # the dashboard's front over every model and mixture: brute-force dominance over the same points
    table = pareto_table(reader, ["sentiment", "conciseness"])
    values = table[["sentiment", "conciseness"]].to_numpy()
    dominated = [any((o >= v).all() and (o > v).any() for o in values) for v in values]
    assert list(table.on_front) == [not d for d in dominated]
    assert (table.run_id == mixing).sum() >= len(points)


def test_mixing_experts_are_the_dpo_runs(demo):
    """The DPO baselines double as the mixing run's experts: the same weight files, byte for byte."""
    stages = demo["first"]["stages"]
    for objective in ("sentiment", "conciseness"):
        expert = run_dir(stages["mixing"]) / "experts" / objective / "model" / "model.safetensors"
        dpo = run_dir(stages[f"dpo_{objective}"]) / "model" / "model.safetensors"
        assert expert.read_bytes() == dpo.read_bytes()


def test_demo_run_logs_every_step_with_its_time(demo):
    run = refresh_status(demo["first"]["run_id"])
    assert (run["kind"], run["status"]) == ("demo", "finished")
    steps = ["prepare", *demo["first"]["stages"], "eval", "total"]
    last = StoreReader().last_values([run["run_id"]]).set_index("name")["value"]
    assert set(last.index) == {f"demo/seconds/{s}" for s in steps}
    assert last["demo/seconds/total"] >= last.drop("demo/seconds/total").max() > 0
    for stage, run_id in demo["first"]["stages"].items():
        assert f"{stage}: finished run {run_id} in " in demo["log"]


def test_second_call_reuses_every_step(demo):
    assert demo["runs_after_second"] - demo["runs_after_first"] == {demo["second"]["run_id"]}
    assert demo["second"]["stages"] == demo["first"]["stages"]
    assert demo["second"]["evals"] == demo["first"]["evals"]
    assert all(demo["second"]["seconds"][s] == 0.0 for s in demo["first"]["stages"])


@pytest.mark.parametrize("spec", ["demo.yaml", "demo_real.yaml"])
def test_dry_run_prints_the_plan_and_loads_nothing(spec, tmp_path):
    """In a fresh data folder (no demo world yet): a plan naming every stage and model, no torch import, no file."""
    code = ("import sys; from engine.recipes.demo_run import demo_run; "
            f"demo_run({str(REPO_ROOT / 'configs' / spec)!r}, dry_run=True); "
            "print('LOADED', sorted(m for m in ('torch', 'transformers', 'vllm') if m in sys.modules))")
    env = {**os.environ, "PREFLAB_DATA": str(tmp_path / "data")}
    env.pop("PREFLAB_RUN_ID", None)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "LOADED []" in out.stdout
    assert not (tmp_path / "data").exists()
    for word in ("dpo_", "mixing_po", "mallows_po", "mrpo", "magnetic_po", "mixing:lambda*", "win_rate"):
        assert word in out.stdout
    if spec == "demo_real.yaml":
        assert "Qwen/Qwen2.5-0.5B-Instruct, LoRA r=16" in out.stdout and "backend vllm" in out.stdout
    else:
        assert "not prepared yet" in out.stdout


def _spec(tmp_path, **changes) -> str:
    doc = yaml.safe_load((REPO_ROOT / "configs" / "demo.yaml").read_text())
    doc.update(changes)
    for stage in doc["stages"]:
        if "config" in stage:
            stage["config"] = str(REPO_ROOT / "configs" / stage["config"])
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_bad_specs_name_the_field(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFLAB_DATA", str(tmp_path / "data"))
    with pytest.raises(DemoError, match=r"^stages\[0\]\.confg: unknown key"):
        load_plan(_spec(tmp_path, stages=[{"name": "x", "confg": "dpo_demo.yaml"}]))
    with pytest.raises(DemoError, match="scale: 'huge' is not defined"):
        load_plan(_spec(tmp_path), scale="huge")
    with pytest.raises(ValueError, match=r"eval\.mixtures\[0\]: weights must be >= 0 and sum to 1"):
        load_plan(_spec(tmp_path, eval={"mixtures": [[0.7, 0.7]]}))
    with pytest.raises(ValueError, match=r"stage mallows: training\.learning_rate: must be > 0"):
        load_plan(_spec(tmp_path, stages=[{"name": "mallows", "config": "mallows_demo.yaml",
                                           "overrides": {"training": {"learning_rate": -1.0}}}]))
    assert not (tmp_path / "data").exists()


def test_a_failed_stage_stops_the_demo(demo, monkeypatch, tmp_path):
    """A stage that fails at run time (valid config, impossible schedule) stops the pipeline before the next
    stage starts, with the stage and its run named."""
    monkeypatch.setenv("PREFLAB_DATA", str(demo["root"]))
    monkeypatch.delenv("PREFLAB_RUN_ID", raising=False)
    spec = _spec(tmp_path, parallel=1, world={"prepare": True, "scale": "test"}, scales={}, stages=[
        {"name": "selfplay", "config": "magnetic_demo.yaml", "overrides": {"data": {"limit": 1}}},  # 1 prompt, 3 rounds
        {"name": "mallows", "config": "mallows_demo.yaml", "overrides": {"training": {"max_steps": 1}}}])
    before = set(list_run_ids())
    with pytest.raises(StageFailed, match=r"selfplay \(.*magnetic_po.*\) failed: InputError: data\.train"):
        demo_run(spec)
    new = [read_run(r) for r in set(list_run_ids()) - before]
    assert sorted(r["method"] for r in new) == ["demo", "magnetic_po"]
    assert {refresh_status(r["run_id"])["status"] for r in new} == {"failed"}


def test_vllm_ready_merges_lora_adapters(tmp_path):
    """An adapter folder becomes a full model whose logits equal the adapter model's; full models pass through."""
    import torch
    from peft import PeftModel

    from engine.data.demo.models import LMSpec, tiny_llama, train_tokenizer
    from engine.models.loading import load_model

    tokenizer = train_tokenizer(["a good film", "a bad film"] * 20, vocab_size=300)
    base = tiny_llama(tokenizer, LMSpec(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64))
    base.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    adapted = load_model(tmp_path / "base", lora=LoraSection(r=2, alpha=4, dropout=0.0,
                                                                 target_modules=["q_proj"]))
    with torch.no_grad():
        for name, param in adapted.named_parameters():
            if "lora_B" in name:
                param.normal_()  # B starts at zero: make the adapter change the model
    adapted.save_pretrained(tmp_path / "adapter")
    tokenizer.save_pretrained(tmp_path / "adapter")
    ready = vllm_ready({"a": str(tmp_path / "adapter"), "b": str(tmp_path / "base")}, tmp_path / "merged")
    assert ready["b"] == str(tmp_path / "base") and (tmp_path / "merged" / "a" / "config.json").exists()
    ids = torch.tensor([tokenizer("a good film")["input_ids"]])
    with torch.no_grad():
        expected = PeftModel.from_pretrained(load_model(tmp_path / "base"), tmp_path / "adapter")(ids).logits
        merged = load_model(ready["a"])(ids).logits
        plain = load_model(tmp_path / "base")(ids).logits
    assert torch.allclose(merged, expected, atol=1e-5) and not torch.allclose(merged, plain, atol=1e-3)


def test_demo_run_command_reports_the_wall_time(monkeypatch, capsys):
    """The stages run side by side, so their seconds overlap: the command reports the pipeline's own wall time."""
    import engine.recipes.demo_run
    from engine.__main__ import main

    seconds = {"prepare": 40.0, "dpo_sentiment": 70.0, "mixing": 250.0, "eval": 20.0, "total": 310.0}
    monkeypatch.setattr(engine.recipes.demo_run, "demo_run",
                        lambda *args, **kwargs: {"run_id": "r1", "seconds": seconds})
    assert main(["demo", "run"]) == 0
    assert "demo finished in 310 s as run r1" in capsys.readouterr().out
