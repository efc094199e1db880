"""The MixMPO job end to end on a miniature world built here (tiny tokenizer and SFT model, preference pairs labelled
by the demo judges), plus the stored-sample estimates against brute force."""

import json
import time

import numpy as np
import pandas as pd
import pytest
import torch

from engine.config import config_from_dict, config_to_dict
from engine.data.demo.corpus import generate_corpus
from engine.data.demo.models import LMSpec, train_tokenizer
from engine.judges import ConcisenessScorer, SentimentScorer
from engine.mixing import mirror_descent_weights
from engine.paths import RunLayout
from engine.recipes.mixing_estimates import MixingSamples, balance, instant_estimate, load_samples, simplex_grid
from engine.store.runs import RunWriter, StoreReader
from tests.worlds import save_tiny_lm

OBJECTIVES = ("sentiment", "conciseness")
EXTRAS = {"num_prompts": 6, "eval_prompts": 4, "eval_samples_per_prompt": 3, "grid_size": 4, "sir_candidates": 3,
          "batch_size": 64}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A data folder with models/sft, the two objectives' preference sets and held-out prompts."""
    from engine.data.demo.preferences import build_preference_sets

    root = tmp_path_factory.mktemp("data")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: a second thread only adds synchronisation on a shared machine
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PREFLAB_DATA", str(root))
        corpus = generate_corpus(500, seed=0)
        tokenizer = train_tokenizer(corpus["text"].tolist(), vocab_size=400)
        spec = LMSpec(hidden_size=48, num_layers=1, num_heads=2, intermediate_size=96, steps=80, batch_size=16,
                      block_size=64, lr=1e-2)
        model = save_tiny_lm(root / "models" / "sft", tokenizer, spec, corpus["text"].tolist()[:400])
        prompts = corpus["prompt"].tolist()
        build_preference_sets(model, tokenizer, {"train": prompts[:48], "test": prompts[48:56]}, root / "demo",
                              max_new_tokens=12, progress=False)
        pd.DataFrame({"prompt": prompts[400:406]}).to_parquet(root / "demo" / "prompts_heldout.parquet")
        yield root
    torch.set_num_threads(threads)


def _config():
    objectives = [{"name": n, "train": f"demo/prefs_{n}_train.parquet", "eval": f"demo/prefs_{n}_test.parquet",
                   "judge": n} for n in OBJECTIVES]
    cfg = config_from_dict({
        "method": "mixing_po", "model": {"path": "models/sft"},
        "data": {"train": "demo/prefs_sentiment_train.parquet", "eval": None, "max_length": 32},
        "training": {"max_steps": 4, "batch_size": 8, "learning_rate": 2e-3, "eval_every": 100, "device": "cpu",
                     "warmup_ratio": 0.0},
        "mixing_po": {"objectives": objectives, "beta": 0.1, "samples_per_prompt": 16, "md_steps": 300, "eta": 0.05,
                      "max_new_tokens": 8, **EXTRAS}})
    return cfg


@pytest.fixture(scope="module")
def run(world):
    from engine.recipes.mixing import train_mixing

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PREFLAB_DATA", str(world))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        cfg = _config()
        writer = RunWriter.create("mix-test", method="mixing_po", name="mix-test", config=config_to_dict(cfg))
        train_mixing(cfg, writer)
        torch.set_num_threads(threads)
        yield cfg, writer


@pytest.fixture
def in_world(world, monkeypatch):
    monkeypatch.setenv("PREFLAB_DATA", str(world))
    return world


def test_pipeline_trains_experts_and_baseline_with_prefixed_metrics(run, in_world):
    cfg, writer = run
    for folder in ("experts/sentiment", "experts/conciseness", "baselines/dpo_union"):
        assert (writer.dir / folder / "model" / "config.json").exists()
    union = pd.read_parquet(writer.dir / "baselines" / "union_train.parquet")
    sizes = [len(pd.read_parquet(in_world / "demo" / f"prefs_{n}_train.parquet")) for n in OBJECTIVES]
    assert len(union) == sum(sizes)
    names = set(StoreReader().metric_names(["mix-test"]))
    assert {"sentiment/loss", "conciseness/loss", "dpo_union/loss"} <= names
    assert "loss" not in names  # every expert metric carries its prefix


def test_pipeline_stores_samples_lambda_and_mirror_descent_metrics(run, in_world):
    cfg, writer = run
    samples = load_samples("mix-test")
    assert samples.logratios.shape == (6, 16, 2) and samples.scores.shape == (6, 16, 2)
    texts = pd.read_parquet(writer.dir / "mixing" / "samples.parquet")
    # the stored scores are the judges' scores of the stored texts
    sentiment = SentimentScorer().score(texts["prompt"].tolist(), texts["response"].tolist())
    concise = ConcisenessScorer().score(texts["prompt"].tolist(), texts["response"].tolist())
    np.testing.assert_allclose(samples.scores.reshape(-1, 2), np.stack([sentiment, concise], 1))
    lam = json.loads((writer.dir / "mixing" / "lambda.json").read_text())
    expected = mirror_descent_weights(samples.logratios, eta=0.05, steps=300, prompts_per_step=1, seed=0)
    np.testing.assert_allclose([lam[n] for n in OBJECTIVES], expected, atol=1e-12)
    assert balance("mix-test")["weights"] == pytest.approx(lam, abs=1e-12)
    reader = StoreReader()
    steps = reader.query("SELECT count(*) AS n FROM metrics WHERE name = 'mix/lambda_sentiment'")["n"][0]
    assert steps == 300
    final = reader.query("SELECT name, value FROM metrics WHERE name LIKE 'mix/lambda_bar_%'")
    assert dict(zip(final["name"], final["value"])) == pytest.approx(
        {f"mix/lambda_bar_{n}": lam[n] for n in OBJECTIVES}, abs=1e-12)
    coverage = reader.query("SELECT name, value FROM metrics WHERE name LIKE 'mix/ref_coverage_%'")
    ell = samples.logratios
    expected = {f"mix/ref_coverage_{n}": np.mean(np.log(np.mean(np.exp(ell[:, :, i]), axis=1)))
                for i, n in enumerate(OBJECTIVES)}  # plain exp is safe here: tiny log-ratios
    assert dict(zip(coverage["name"], coverage["value"])) == pytest.approx(expected, abs=1e-9)


def test_pipeline_writes_pareto_sweep_rows(run, in_world):
    mixtures = StoreReader().query("SELECT * FROM mixtures")
    grid = mixtures[mixtures["label"] == "grid"]
    assert len(grid) == len(simplex_grid(2, 4)) * 3  # two objectives plus the KL per grid point
    generated = mixtures[mixtures["kind"] == "generated"]
    assert set(generated["label"]) == {"lambda*", "expert:sentiment", "expert:conciseness", "reference", "dpo_union"}
    assert set(generated["objective"]) == set(OBJECTIVES)
    # at weights 0 the estimate is the plain mean of the stored judge scores of the reference samples
    samples = load_samples("mix-test")
    ref = mixtures[(mixtures["label"] == "reference") & (mixtures["kind"] == "estimate")].set_index("objective")
    for i, name in enumerate(OBJECTIVES):
        assert ref.loc[name, "score"] == pytest.approx(samples.scores[:, :, i].mean())
    assert ref.loc["kl", "score"] == pytest.approx(0.0, abs=1e-12)
    generations = StoreReader().query("SELECT model, count(*) AS n FROM generations GROUP BY model")
    assert dict(zip(generations["model"], generations["n"])) == {label: 4 * 3 for label in set(generated["label"])}
    # the default decode (sir_token at temperature 1) samples the distribution the estimates describe
    assert set(mixtures["distribution"]) == {"sequence T=1"}
    evaluations = StoreReader().query("SELECT metric, distribution FROM evaluations")
    assert set(evaluations["distribution"]) == {"sequence T=1"}  # every number of a generated point names it too


def test_the_result_is_certified_at_lambda_bar_on_every_prompt(run, in_world):
    """balance() and the run's final metrics give F_hat and the duality gap of the returned average lambda_bar,
    recomputed here from the stored log-ratios with plain numpy, not of the trace's last iterate on one prompt."""
    samples = load_samples("mix-test")
    result = balance("mix-test")
    lam = np.array([result["weights"][n] for n in OBJECTIVES])
    ell = samples.logratios.astype(np.float64)
    h = ell @ lam
    w = np.exp(h - h.max(axis=1, keepdims=True))
    w /= w.sum(axis=1, keepdims=True)
    j = np.einsum("nm,nmk->k", w, ell) / ell.shape[0]
    f = np.mean(np.log(np.mean(np.exp(h), axis=1)))  # tiny log-ratios: plain exp is safe
    assert result["F_hat"] == pytest.approx(f, abs=1e-10)
    assert result["gap"] == pytest.approx(lam @ j - j.min(), abs=1e-10)
    final = StoreReader().query("SELECT name, value FROM metrics WHERE name IN ('mix/F_hat_bar', 'mix/gap_bar')")
    assert dict(zip(final["name"], final["value"])) == pytest.approx({"mix/F_hat_bar": f,
                                                                      "mix/gap_bar": lam @ j - j.min()}, abs=1e-10)


def test_decoded_points_report_implicit_rewards_and_the_max_min_value(run, in_world):
    """Each generated point's implicit rewards J_k are the means of ell_k over its decoded responses, and its max-min
    value is min_k J_k - KL; the reference has KL 0, so its value is min_k J_k exactly."""
    rows = StoreReader().query("SELECT model, metric, value FROM evaluations WHERE run_id = 'mix-test'")
    table = rows.pivot_table(index="model", columns="metric", values="value")
    assert set(table.index) == {"lambda*", "expert:sentiment", "expert:conciseness", "reference", "dpo_union"}
    rewards = table[[f"implicit_reward/{n}" for n in OBJECTIVES]]
    assert table.loc["reference", "maxmin_value"] == pytest.approx(rewards.loc["reference"].min(), abs=1e-9)
    # an expert is the sequence mixture at a vertex: KL = J_k - log Z(e_k), log Z from the eval prompts' samples
    ell = load_samples("mix-test").logratios[: EXTRAS["eval_prompts"]]
    for i, n in enumerate(OBJECTIVES):
        log_z = np.mean(np.log(np.mean(np.exp(ell[:, :, i]), axis=1)))
        kl = rewards.loc[f"expert:{n}", f"implicit_reward/{n}"] - log_z
        assert table.loc[f"expert:{n}", "maxmin_value"] == pytest.approx(rewards.loc[f"expert:{n}"].min() - kl,
                                                                         abs=1e-9)
    margin = StoreReader().query("SELECT value FROM metrics WHERE name = 'check/maxmin_margin'")["value"]
    others = table.drop(index="lambda*")["maxmin_value"].max()
    assert margin.iloc[0] == pytest.approx(table.loc["lambda*", "maxmin_value"] - others, abs=1e-9)


def test_estimates_agree_with_real_mixed_generations(run, in_world):
    """Acceptance check at small scale: at lambda*, uniform and one-hot, the importance-weighted estimate lies in
    the 95% interval of temperature-1 sir_token generations from the mixture on the same prompts."""
    check = pd.read_parquet(run[1].dir / "mixing" / "estimate_check.parquet")
    assert set(check["label"]) == {"lambda*", "uniform", "expert:sentiment"}
    assert check["within_ci"].all(), check.to_string()


def test_mix_generate_scores_its_outputs(run, in_world):
    from engine.recipes.mixing import mix_generate

    rows = mix_generate("mix-test", {"sentiment": 0.5, "conciseness": 0.5}, prompts=["The movie"], n=3, seed=1)
    assert [r["prompt"] for r in rows] == ["The movie"] * 3
    outputs = [r["output"] for r in rows]
    np.testing.assert_allclose([r["scores"]["conciseness"] for r in rows],
                               ConcisenessScorer().score(["The movie"] * 3, outputs))
    assert all(r["num_tokens"] <= 8 for r in rows)
    assert {r["distribution"] for r in rows} == {"sequence T=1"}
    with pytest.raises(ValueError, match="unknown objective"):
        mix_generate("mix-test", {"humor": 1.0})


def _brute_force(ell, scores, lam):
    """Per prompt: w_j = exp(lam . ell_j) / sum; mean over prompts of sum_j w_j s_j, computed in float128 loops."""
    out = np.zeros(scores.shape[2])
    for x in range(ell.shape[0]):
        h = [np.longdouble(sum(lam[k] * ell[x, j, k] for k in range(ell.shape[2]))) for j in range(ell.shape[1])]
        top = max(h)
        e = [np.exp(v - top) for v in h]
        w = [v / sum(e) for v in e]
        for s in range(scores.shape[2]):
            out[s] += float(sum(w[j] * scores[x, j, s] for j in range(ell.shape[1])))
    return out / ell.shape[0]


def test_instant_estimate_matches_brute_force_and_flags_low_ess():
    rng = np.random.default_rng(0)
    ell = rng.normal(0, 1, (5, 7, 2))
    scores = rng.normal(0, 1, (5, 7, 2))
    samples = MixingSamples(list(OBJECTIVES), list(OBJECTIVES), ell, scores, np.zeros((5, 7)), np.ones((5, 7)))
    for lam in ([0.3, 0.7], [1.0, 0.0], {"conciseness": 0.2}):
        vec = [lam.get(n, 0.0) for n in OBJECTIVES] if isinstance(lam, dict) else lam
        est = instant_estimate(samples, lam)
        expected = _brute_force(ell, scores, vec)
        assert [est["scores"][n] for n in OBJECTIVES] == pytest.approx(expected, abs=1e-10)
        assert [est["rewards"][n] for n in OBJECTIVES] == pytest.approx(_brute_force(ell, ell, vec), abs=1e-10)
    sharp = MixingSamples(list(OBJECTIVES), list(OBJECTIVES), ell * 40, scores, np.zeros((5, 7)), np.ones((5, 7)))
    est = instant_estimate(sharp, [1.0, 0.0])
    assert not est["reliable"] and "low ESS" in est["warning"]
    assert instant_estimate(samples, [0.0, 0.0])["reliable"]
    with pytest.raises(ValueError, match="one per objective"):
        instant_estimate(samples, [1.0])


def test_instant_estimate_is_fast_on_ten_thousand_samples():
    rng = np.random.default_rng(1)
    samples = MixingSamples(["a", "b", "c"], ["a", "b", "c"], rng.normal(0, 3, (250, 40, 3)),
                            rng.normal(0, 1, (250, 40, 3)), np.zeros((250, 40)), np.ones((250, 40)))
    instant_estimate(samples, [0.2, 0.3, 0.5])  # builds the cached stacked array once
    start = time.perf_counter()
    for lam in rng.dirichlet(np.ones(3), size=20):
        instant_estimate(samples, lam)
    assert (time.perf_counter() - start) / 20 < 0.05



def test_resume_trains_an_expert_again_when_its_only_checkpoint_was_cut_short(in_world, tmp_path, monkeypatch):
    """A checkpoint folder without trainer_state.json (killed while saving) is no resume point: that expert starts
    again; once a complete checkpoint exists, it resumes."""
    import engine.recipes.preference
    from engine.recipes.mixing import _train_policy

    asked = []
    monkeypatch.setattr(engine.recipes.preference, "train_preference_model",
                        lambda cfg, writer, resume: asked.append(resume) or tmp_path)
    writer = RunWriter.create("mix-resume", method="mixing_po", name="resume", config={}, kind="train")
    folder = RunLayout(tmp_path / "expert")
    checkpoint = folder.checkpoints / "checkpoint-3"
    checkpoint.mkdir(parents=True)
    train = "demo/prefs_sentiment_train.parquet"
    _train_policy(_config(), writer, "sentiment", train, None, folder, resume=True, limit=None)
    (checkpoint / "trainer_state.json").write_text("{}", encoding="utf-8")
    _train_policy(_config(), writer, "sentiment", train, None, folder, resume=True, limit=None)
    assert asked == [False, True]
