"""The evaluation job against recomputation from what it stored: judge probabilities and scores by hand, statistics
through engine/evaluation.py, log-probs by an unbatched forward pass, Bradley-Terry against its closed form."""

import json
import math
import re
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from engine.config import config_from_dict, config_to_dict
from engine.data.demo.corpus import generate_corpus
from engine.data.demo.models import LMSpec, train_tokenizer
from engine.decoding import generation
from engine.decoding.distributions import distribution_name
from engine.evaluation import ELO_PER_LOGIT, bradley_terry, length_controlled_win_rate, win_rate
from engine.judges import lexicon_polarity
from engine.recipes.evaluation import eval_command, evaluate_models, mean_ci, resolve_models, reward_margins
from engine.store.runs import RunWriter, StoreReader, read_run, run_dir
from engine.store.standings import leaderboard, pareto_table
from tests.worlds import save_tiny_lm

PARAMS = generation.SamplingParams(max_new_tokens=10, temperature=1.0, seed=3)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Two tiny Llamas sharing a tokenizer (different seeds and sizes), 12 prompts and 16 held-out pairs."""
    root = tmp_path_factory.mktemp("eval_world")
    corpus = generate_corpus(240, seed=0)
    tokenizer = train_tokenizer(corpus.text.tolist(), vocab_size=320, model_max_length=96)
    paths = {}
    for name, hidden, seed in (("sft", 32, 0), ("policy", 24, 1)):
        spec = LMSpec(hidden_size=hidden, num_layers=1, num_heads=2, intermediate_size=64, steps=15,
                      batch_size=8, block_size=48, seed=seed)
        paths[name] = root / name
        save_tiny_lm(paths[name], tokenizer, spec, corpus.text.tolist())
    short = corpus[corpus.continuation.str.split().str.len() <= 14]  # short pairs keep the scoring passes cheap
    pos, neg = short[short.label == 1].reset_index(), short[short.label == 0].reset_index()
    pairs = pd.DataFrame({"prompt": pos.prompt[:12], "chosen": pos.continuation[:12],
                          "rejected": neg.continuation[:12]})
    pairs.to_parquet(root / "pairs.parquet")
    corpus[["prompt"]].drop_duplicates().iloc[:12].to_parquet(root / "prompts.parquet")
    return {**{k: str(v) for k, v in paths.items()}, "pairs": str(root / "pairs.parquet"),
            "prompts": str(root / "prompts.parquet")}


def _evaluate(world, writer, reader, **kw):
    return evaluate_models({"sft": world["sft"], "policy": world["policy"]}, world["prompts"], "bt:conciseness", writer,
                           baseline="sft", scorers=["sentiment", "conciseness"], params=PARAMS, progress=False,
                           reader=reader, **kw)


def test_evaluate_models_rows_equal_recomputation_from_stored_generations(world, data_root):
    writer, reader = RunWriter.create("ev1", method="eval", name="e", config={}, kind="eval"), StoreReader()
    frame = _evaluate(world, writer, reader)
    prompts = pd.read_parquet(world["prompts"])["prompt"].tolist()
    gens = {m: reader.query("SELECT * FROM generations WHERE model = ? ORDER BY prompt_id", [m])
            for m in ("sft", "policy")}
    for model, g in gens.items():  # the stored texts are the model's own samples, in prompt order
        direct = generation.generate(world[model], prompts, PARAMS)
        assert g["prompt"].tolist() == prompts and g["output"].tolist() == direct.texts
        assert g["num_tokens"].tolist() == direct.num_tokens
    a, b = gens["policy"], gens["sft"]
    sent = {m: 1 / (1 + np.exp(-0.5 * np.array([lexicon_polarity(p + o) for p, o in zip(prompts, g["output"])])))
            for m, g in gens.items()}
    concise = {m: -np.array([len(o.split()) for o in g["output"]], float) for m, g in gens.items()}
    prob = 1 / (1 + np.exp(-(concise["policy"] - concise["sft"])))  # Bradley-Terry judge on the word count
    outcomes = np.where(prob > 0.5, 1.0, np.where(prob < 0.5, 0.0, 0.5))
    assert len(set(outcomes)) > 1  # the comparison is not degenerate, so the win-rate checks below can fail

    judged = reader.query("SELECT * FROM judgments ORDER BY prompt")
    assert len(judged) == len(prompts) and set(judged["source"]) == {"bt:conciseness"}
    by_prompt = judged.set_index("prompt").loc[prompts]
    np.testing.assert_allclose(by_prompt["prob_a"], prob, rtol=1e-9)
    assert by_prompt["output_a"].tolist() == a["output"].tolist() and \
        by_prompt["output_b"].tolist() == b["output"].tolist()
    assert by_prompt["winner"].tolist() == ["a" if o == 1 else "b" if o == 0 else "tie" for o in outcomes]

    ev = reader.query("SELECT * FROM evaluations").set_index(["model", "metric"])
    rate = win_rate(outcomes, n_resamples=1000)
    assert tuple(ev.loc[("policy", "win_rate"), ["value", "low", "high"]]) == pytest.approx(rate, abs=1e-12)
    lc = length_controlled_win_rate(outcomes, a["num_tokens"], b["num_tokens"])
    assert ev.loc[("policy", "lc_win_rate"), "value"] == pytest.approx(lc, abs=1e-12)
    for m in ("sft", "policy"):
        assert ev.loc[(m, "score/sentiment"), "value"] == pytest.approx(sent[m].mean(), abs=1e-12)
        assert ev.loc[(m, "score/conciseness"), "value"] == pytest.approx(concise[m].mean(), abs=1e-12)
        assert ev.loc[(m, "mean_length"), "value"] == pytest.approx(gens[m]["num_tokens"].mean(), abs=1e-12)
        assert ev.loc[(m, "score/sentiment"), "low"] <= sent[m].mean() <= ev.loc[(m, "score/sentiment"), "high"]
    assert ev.loc[("policy", "margin/sentiment"), "value"] == pytest.approx((sent["policy"] - sent["sft"]).mean())
    # Two points: each is on the front unless the other is >= in both objectives and > in one.
    pts = {m: np.array([sent[m].mean(), concise[m].mean()]) for m in gens}
    for m, other in (("sft", "policy"), ("policy", "sft")):
        dominated = np.all(pts[other] >= pts[m]) and np.any(pts[other] > pts[m])
        assert ev.loc[(m, "pareto_front"), "value"] == float(not dominated)
    assert frame.set_index("model").loc["policy", "win_rate"] == pytest.approx(rate[0])
    # every number describes texts sampled plainly at the evaluation's temperature, and says so
    assert set(ev["distribution"]) == {distribution_name(PARAMS.temperature, None)}


def test_second_evaluation_reuses_generations_and_verdicts(world, data_root, monkeypatch):
    writer, reader = RunWriter.create("ev1", method="eval", name="e", config={}, kind="eval"), StoreReader()
    first = _evaluate(world, writer, reader)
    counts = reader.query("SELECT (SELECT count(*) FROM generations) AS g, (SELECT count(*) FROM judgments) AS j")

    def no_generation(*args, **kwargs):
        raise AssertionError("generate called although the comparison is cached")

    monkeypatch.setattr(generation, "generate", no_generation)
    second = _evaluate(world, RunWriter.create("ev2", method="eval", name="e", config={}, kind="eval"), reader)
    assert reader.query("SELECT (SELECT count(*) FROM generations) AS g, (SELECT count(*) FROM judgments) AS j"
                        ).equals(counts)
    pd.testing.assert_frame_equal(first, second)
    # A smaller prompt set is another comparison: it must generate again (a cache hit would be wrong).
    with pytest.raises(AssertionError, match="generate called"):
        _evaluate(world, RunWriter.create("ev3", method="eval", name="e", config={}, kind="eval"), reader, limit=5)


def test_leaderboard_rates_judge_and_human_votes_together(data_root):
    judge, human = RunWriter("j"), RunWriter("h")
    # A beats B 3:1 by the judge, B beats C 3:1 by people (one vote stored only as a probability), D and E meet
    # nobody else.
    judge.append("judgments", [{"source": "bt:x", "model_a": "A", "model_b": "B", "prob_a": p, "winner": w}
                               for p, w in [(0.9, "a")] * 30 + [(0.2, "b")] * 10])
    human.append("judgments", [{"source": "human", "model_a": "B", "model_b": "C", "winner": "a"}] * 29
                 + [{"source": "human", "model_a": "B", "model_b": "C", "prob_a": 1.0}]
                 + [{"source": "human", "model_a": "C", "model_b": "B", "winner": "a"}] * 10
                 + [{"source": "human", "model_a": "D", "model_b": "E", "winner": w} for w in ("a", "tie", "b", "a")])
    board = leaderboard(StoreReader(), n_resamples=50)
    main = board[board.group == 0].set_index("model")
    hand = pd.DataFrame({"model_a": ["A"] * 40 + ["B"] * 30 + ["C"] * 10,
                         "model_b": ["B"] * 40 + ["C"] * 30 + ["B"] * 10,
                         "winner": ["a"] * 30 + ["b"] * 10 + ["a"] * 40})  # sorted as leaderboard reads them
    expected = bradley_terry(hand, n_resamples=50).set_index("model")
    pd.testing.assert_frame_equal(main[["rating", "low", "high"]], expected[["rating", "low", "high"]])
    # Closed form: a 3:1 record is a log(3) logit gap, 400 log10(3) = 190.8 Elo (the weak prior moves it < 1).
    assert main.loc["A", "rating"] - main.loc["B", "rating"] == pytest.approx(ELO_PER_LOGIT * np.log(3), abs=1.0)
    assert main.loc["B", "rating"] - main.loc["C", "rating"] == pytest.approx(ELO_PER_LOGIT * np.log(3), abs=1.0)
    assert main.loc["B", "battles"] == 80
    side = board[board.group == 1].set_index("model")  # D: 2.5 of 4 against E, rated on its own scale
    assert side.loc["D", "rating"] - side.loc["E", "rating"] == pytest.approx(ELO_PER_LOGIT * np.log(2.5 / 1.5), abs=2)
    assert set(leaderboard(StoreReader(), sources=["bt:x"], n_resamples=10)["model"]) == {"A", "B"}


def test_pareto_table_marks_non_dominated_models_and_mixtures(data_root):
    rng = np.random.default_rng(0)
    points = {f"m{i}": rng.integers(0, 4, size=2).astype(float) for i in range(8)}
    RunWriter("e").append("evaluations", [{"model": m, "baseline": "m0", "metric": f"score/{o}", "value": v[k]}
                                          for m, v in list(points.items())[:5] for k, o in enumerate(("x", "y"))])
    mix = RunWriter("mix")
    mix.append("mixtures", [{"label": m, "weights": "[0.5, 0.5]", "objective": o, "score": v[k], "kind": "sampled"}
                            for m, v in list(points.items())[5:] for k, o in enumerate(("x", "y"))])
    # A mixing run also reports its points as evaluations rows; they must not count twice.
    mix.append("evaluations", [{"model": m, "metric": f"score/{o}", "value": v[k]}
                               for m, v in list(points.items())[5:] for k, o in enumerate(("x", "y"))])
    table = pareto_table(StoreReader()).set_index("label")
    assert table.index.is_unique and len(table) == len(points)
    for m, p in points.items():  # brute force: dominated by any other point?
        dominated = any(np.all(q >= p) and np.any(q > p) for n, q in points.items() if n != m)
        assert table.loc[m, "on_front"] == (not dominated)
        assert table.loc[m, "kind"] == ("model" if int(m[1:]) < 5 else "mixture:sampled")


def _hand_logp(model, tokenizer, prompt, response):
    """Summed log-prob of the response (and its EOS) after the prompt, one unpadded sequence at a time."""
    p = tokenizer(prompt)["input_ids"]
    r = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([p + r])).logits[0].double(), -1)
    return sum(logp[len(p) + i - 1, t].item() for i, t in enumerate(r))


def test_reward_margins_equal_hand_computation(world, data_root):
    from engine.models.loading import load_model, load_tokenizer

    tok = load_tokenizer(world["sft"])
    pol, ref = load_model(world["policy"]), load_model(world["sft"])
    pairs = pd.read_parquet(world["pairs"])
    h = [[_hand_logp(m, tok, p, r) for m in (pol, ref)] for p, r in
         [(row.prompt, row.chosen) for row in pairs.itertuples()]
         + [(row.prompt, row.rejected) for row in pairs.itertuples()]]
    h = np.array(h)
    n, beta = len(pairs), 0.3
    margins = beta * ((h[:n, 0] - h[:n, 1]) - (h[n:, 0] - h[n:, 1]))
    writer = RunWriter("m")
    out = reward_margins(world["policy"], world["sft"], world["pairs"], beta, writer, step=7, model="pol")
    ev = StoreReader().query("SELECT * FROM evaluations").set_index("metric")
    assert ev.loc["reward_margin", "value"] == pytest.approx(margins.mean(), abs=1e-4 * beta * np.abs(h).mean())
    assert ev.loc["reward_accuracy", "value"] == np.mean(margins > 0) == out["reward_accuracy"]
    assert ev.loc["reward_margin", "model"] == "pol/checkpoint-7" and ev.loc["reward_margin", "n"] == n
    assert ev["distribution"].isna().all()  # teacher-forced on stored pairs: no sampled distribution
    logged = StoreReader().query("SELECT step, name, value FROM metrics").set_index("name")
    assert logged.loc["reward_margin/pol", "step"] == 7
    with pytest.raises(ValueError, match="beta"):
        reward_margins(world["policy"], world["sft"], world["pairs"], 0.0, writer)


def _fake_dpo_run(world, run_id):
    """A finished DPO run: checkpoint-2 holds the policy, checkpoint-4 the reference itself,
    the final model the policy."""
    cfg = config_from_dict({"method": "dpo", "model": {"path": world["sft"]}, "dpo": {"beta": 0.2},
                            "data": {"train": world["pairs"], "eval": world["pairs"]}})
    writer = RunWriter.create(run_id, method="dpo", name=run_id, config=config_to_dict(cfg))
    for step, src in ((2, "policy"), (4, "sft")):
        checkpoint = run_dir(run_id) / "checkpoints" / f"checkpoint-{step}"
        shutil.copytree(world[src], checkpoint)
        (checkpoint / "trainer_state.json").write_text("{}", encoding="utf-8")  # written last: a complete one
    shutil.copytree(world["policy"], run_dir(run_id) / "model")
    writer.log_metrics(6, {"loss": 0.5})
    writer.set_status("finished")


def test_eval_command_records_an_eval_run_with_margins_over_checkpoints(world, data_root):
    _fake_dpo_run(world, "r1")
    run_id = eval_command(f"base={world['sft']},r1", world["prompts"], "bt:conciseness", scorers="sentiment",
                          max_new_tokens=6, limit=4, progress=False)
    run = read_run(run_id)
    assert (run["kind"], run["status"], run["config"]["baseline"]) == ("eval", "finished", "base")
    assert run["config"]["models"]["r1"] == str(run_dir("r1") / "model")
    reader = StoreReader()
    ev = reader.query("SELECT model, metric, value FROM evaluations WHERE run_id = ?", [run_id])
    assert {"win_rate", "lc_win_rate", "score/sentiment"} <= set(ev[ev.model == "r1"].metric)
    margin = ev[ev.metric == "reward_margin"].set_index("model")["value"]
    accuracy = ev[ev.metric == "reward_accuracy"].set_index("model")["value"]
    assert margin["r1/checkpoint-4"] == 0.0 and accuracy["r1/checkpoint-4"] == 0.0  # policy == reference
    assert margin["r1/checkpoint-2"] == pytest.approx(margin["r1"], abs=1e-6)  # the same weights as the final model
    direct = reward_margins(world["policy"], world["sft"], world["pairs"], 0.2, RunWriter("d"), max_length=128)
    assert margin["r1"] == pytest.approx(direct["reward_margin"], abs=1e-6)
    curve = reader.query("SELECT step FROM metrics WHERE name = 'reward_margin/r1' ORDER BY step")
    assert curve["step"].tolist() == [2, 4, 6]  # checkpoints, then the final model at the last training step


def test_models_are_named_by_folder_run_id_or_given_name(world, data_root):
    _fake_dpo_run(world, "r1")
    shutil.copytree(world["policy"], data_root / "models" / "sft")
    assert resolve_models(f"models/sft,r1,mine={world['policy']}") == {
        "sft": str(data_root / "models" / "sft"), "r1": str(run_dir("r1") / "model"), "mine": world["policy"]}
    with pytest.raises(ValueError, match="given twice"):
        resolve_models(f"models/sft,{world['sft']}")  # both folders are called sft


def test_bad_inputs_are_named(world, data_root):
    with pytest.raises(ValueError, match="models"):
        resolve_models("models/nothing_here")
    with pytest.raises(ValueError, match="names no model"):
        resolve_models("a=")
    with pytest.raises(ValueError, match="baseline"):
        evaluate_models({"a": world["sft"]}, world["prompts"], "bt:sentiment", RunWriter("x"), baseline="b")
    with pytest.raises(ValueError, match="scorer"):
        evaluate_models({"a": world["sft"]}, world["prompts"], "bt:sentiment", RunWriter("x"), baseline="a",
                        scorers=["nope"])


def test_mean_ci_matches_scipy_percentile_bootstrap():
    values = np.random.default_rng(1).gamma(2.0, size=150)
    mean, low, high = mean_ci(values, n_resamples=4000)
    ref = stats.bootstrap((values,), np.mean, n_resamples=9999, method="percentile", random_state=2).confidence_interval
    assert mean == pytest.approx(values.mean()) and low == pytest.approx(ref.low, rel=0.02)
    assert high == pytest.approx(ref.high, rel=0.02)


# ---------------------------------------------------------------------------------------------- position bias

POSITION_BIAS, PER_WORD = 2.0, 3.0  # logits: the first text shown gets +2; each word fewer +3 (it decides a pair)
_SHOWN = re.compile(r"\nA: (.*)\nB: (.*)\nWhich continuation", re.DOTALL)


def _biased_logit(first: str, second: str) -> float:
    """The fake judge's logit that the text shown first wins: a position bias plus a real taste for brevity."""
    return POSITION_BIAS + PER_WORD * (len(second.split()) - len(first.split()))


class _BiasedJudge(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint whose top log-probs favour position A (a chat judge's usual position bias)."""

    def do_POST(self):  # noqa: N802  (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        first, second = _SHOWN.search(body["messages"][0]["content"]).groups()
        self.server.shown.append((first, second))
        z = _biased_logit(first, second)
        top = [{"token": "A", "logprob": -math.log1p(math.exp(-z))},
               {"token": "B", "logprob": -math.log1p(math.exp(z))}]
        payload = json.dumps({"choices": [{"message": {"content": "A"}, "logprobs": {"content": [
            {"token": "A", "logprob": top[0]["logprob"], "top_logprobs": top}]}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def biased_judge():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _BiasedJudge)
    server.shown = []
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield server, f"openai:http://127.0.0.1:{server.server_address[1]}/v1#judge"
    server.shutdown()
    server.server_close()


def _sigmoid(z):
    return 1 / (1 + np.exp(-np.asarray(z, dtype=float)))


def test_a_position_biased_judge_gives_a_model_against_itself_one_half(world, data_root, biased_judge):
    server, judge = biased_judge
    writer, reader = RunWriter.create("evb", method="eval", name="e", config={}, kind="eval"), StoreReader()
    frame = evaluate_models({"sft": world["sft"], "twin": world["sft"], "policy": world["policy"]}, world["prompts"],
                            judge, writer, baseline="sft", scorers=[], params=PARAMS, progress=False, reader=reader)
    gens = {m: reader.query("SELECT output FROM generations WHERE model = ? ORDER BY prompt_id", [m])["output"]
            .tolist() for m in ("sft", "twin", "policy")}
    assert gens["twin"] == gens["sft"]  # the same weights and seed: the same texts, so only position can decide
    rates = frame.set_index("model")["win_rate"]
    # Shown once, twin first, every pair would be a win (sigmoid(2) > 1/2): a win rate of 1. Both orders: 1/2.
    assert _sigmoid(_biased_logit(gens["sft"][0], gens["sft"][0])) > 0.5
    assert rates["twin"] == 0.5

    # The policy against the sft model, by hand from the judge's rule and the stored texts, both orders averaged.
    first = _sigmoid([_biased_logit(p, s) for p, s in zip(gens["policy"], gens["sft"])])
    second = _sigmoid([_biased_logit(s, p) for p, s in zip(gens["policy"], gens["sft"])])
    fair = (first + 1 - second) / 2
    words = np.array([len(s.split()) - len(p.split()) for p, s in zip(gens["policy"], gens["sft"])])
    expected = np.mean(np.where(words > 0, 1.0, np.where(words < 0, 0.0, 0.5)))  # the brevity taste alone
    assert expected > 0.5 and rates["policy"] == pytest.approx(expected, abs=1e-12)  # the more concise model wins
    assert np.mean(np.where(first > 0.5, 1.0, np.where(first < 0.5, 0.0, 0.5))) != expected  # bias would show
    assert len(server.shown) == 2 * 2 * len(gens["sft"])  # two comparisons, each pair in both orders

    # Stored with the order it was judged in, and read back through DuckDB from Parquet after compaction.
    writer.compact()
    stored = StoreReader().query("SELECT model_a, prompt, prob_a, winner, position FROM judgments WHERE model_a = "
                                 "'policy' ORDER BY prompt")
    prompts = pd.read_parquet(world["prompts"])["prompt"].tolist()
    assert set(stored["position"]) == {"ab"} and len(stored) == len(prompts)
    by_prompt = dict(zip(prompts, fair))
    np.testing.assert_allclose(stored["prob_a"], [by_prompt[p] for p in stored["prompt"]], rtol=1e-9)


def test_stored_verdicts_are_reused_only_for_the_same_order(world, data_root, biased_judge):
    server, judge = biased_judge
    models = {"sft": world["sft"], "twin": world["sft"]}
    reader = StoreReader()
    first = evaluate_models(models, world["prompts"], judge, RunWriter.create("e1", method="eval", name="e", config={},
                            kind="eval"), baseline="sft", scorers=[], params=PARAMS, progress=False, reader=reader)
    texts = reader.query("SELECT prompt, output FROM generations WHERE model = 'twin'")
    # A verdict stored before positions were recorded (position NULL: twin shown first only) is not reused.
    RunWriter("legacy").append("judgments", [{"source": judge, "prompt": p, "model_a": "twin", "model_b": "sft",
                                              "output_a": o, "output_b": o, "prob_a": 1.0, "winner": "a"}
                                             for p, o in zip(texts["prompt"], texts["output"])])
    calls = len(server.shown)
    again = evaluate_models(models, world["prompts"], judge, RunWriter.create("e2", method="eval", name="e",
                            config={}, kind="eval"), baseline="sft", scorers=[], params=PARAMS, progress=False,
                            reader=reader)
    assert len(server.shown) == calls  # the both-orders verdicts of e1 were reused: no request
    assert first.set_index("model")["win_rate"]["twin"] == again.set_index("model")["win_rate"]["twin"] == 0.5
    positions = reader.query("SELECT run_id, count(*) AS n FROM judgments WHERE position = 'ab' GROUP BY run_id")
    assert positions.set_index("run_id")["n"].to_dict() == {"e1": len(texts)}
