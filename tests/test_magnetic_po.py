"""MagMPO self-play recipe: advantages by hand, the exact token KL, log-probs against an unpadded forward, the magnet
reset, and a short run that writes every promised metric (engine/recipes/magnetic_selfplay.py). The update itself is
checked against magnetic mirror descent in tests/test_magnetic_mmd.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import LlamaConfig, LlamaForSequenceClassification

from engine.config import config_from_dict, load_config
from engine.data.demo.corpus import generate_corpus
from engine.data.demo.models import LMSpec, train_tokenizer
from engine.decoding.rollouts import response_log_probs, sample, token_logps
from engine.magnetic import cyclic_game, magnetic_mirror_descent, multiplicative_weights
from engine.methods.magnetic_po.loss import self_play_advantages, token_kl
from engine.models.loading import load_model, load_tokenizer
from engine.recipes.magnetic_selfplay import SelfPlay, log_game_trace, train_magnetic
from engine.store.runs import RunWriter
from tests.worlds import save_tiny_lm

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
SPEC = LMSpec(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, steps=40, batch_size=16,
              block_size=64, lr=3e-3, seed=0)
STEP_METRICS = ("loss", "learning_rate", "grad_norm", "magmpo/adv_std", "magmpo/kl_to_magnet", "magmpo/kl_to_sft",
                "magmpo/kl_step", "magmpo/pref_asymmetry", "magmpo/response_length")
ROUND_METRICS = ("magmpo/winrate_vs_magnet", "magmpo/winrate_vs_sft", "magmpo/exploitability")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class CharLengthJudge:
    """Longer text wins, P = sigmoid(length difference): few ties, so every step has a learning signal."""

    def prob_a_beats_b(self, prompts, a, b):
        return 1.0 / (1.0 + np.exp(-(np.array([len(x) for x in a]) - np.array([len(x) for x in b]))))


@pytest.fixture(scope="module")
def world(tmp_path_factory, one_torch_thread):
    """A tokenizer and a tiny SFT Llama trained on a few hundred demo reviews, plus train and held-out prompts."""
    root = tmp_path_factory.mktemp("magnetic_world")
    corpus = generate_corpus(300, seed=0)
    tokenizer = train_tokenizer(corpus.text.tolist(), vocab_size=350, model_max_length=128)
    save_tiny_lm(root / "models" / "sft", tokenizer, SPEC, corpus.text.tolist())
    reward = LlamaForSequenceClassification(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, num_labels=1, pad_token_id=tokenizer.pad_token_id))
    reward.save_pretrained(root / "models" / "reward")
    tokenizer.save_pretrained(root / "models" / "reward")
    (root / "demo").mkdir()
    corpus.iloc[:60].to_parquet(root / "demo" / "corpus_train.parquet")
    corpus[["prompt"]].iloc[:40].to_parquet(root / "demo" / "prompts_train.parquet")
    corpus[["prompt"]].iloc[200:206].to_parquet(root / "demo" / "prompts_heldout.parquet")
    return root


@pytest.fixture
def data(world, monkeypatch):
    monkeypatch.setenv("PREFLAB_DATA", str(world))
    return world


def _config(lora=None, **params):
    return config_from_dict({
        "method": "magnetic_po",
        "model": {"path": "models/sft", "lora": lora},
        "data": {"train": "demo/prompts_train.parquet", "eval": None, "max_length": 64},
        "training": {"learning_rate": 1e-3, "batch_size": 2, "max_steps": 4, "warmup_ratio": 0.0, "seed": 0,
                     "device": "cpu"},
        "magnetic_po": {"prompts": "demo/prompts_heldout.parquet", "judge": "bt:conciseness", "alpha": 0.1,
                        "rounds": 2, "group_size": 3, "max_new_tokens": 8, **params}})


# ---------------------------------------------------------------------------------------------- pure math


def test_advantages_match_a_hand_computed_example():
    # Diagonal deliberately not 1/2: a response against itself is a tie whatever the judge says.
    raw = np.array([[[0.9, 0.8, 0.6],
                     [0.4, 0.1, 0.9],
                     [0.2, 0.1, 0.7]]])
    # symmetrised: p01 = (.8 + 1 - .4)/2 = .7, p02 = (.6 + 1 - .2)/2 = .7, p12 = (.9 + 1 - .1)/2 = .9
    # q0 = (.7 + .7)/2 = .7, q1 = (.3 + .9)/2 = .6, q2 = (.3 + .1)/2 = .2
    q, adv, asymmetry = self_play_advantages(raw)
    np.testing.assert_allclose(q, [[0.7, 0.6, 0.2]], atol=1e-12)
    np.testing.assert_allclose(adv, [[0.2, 0.1, -0.3]], atol=1e-12)
    # |p_ij + p_ji - 1| over ordered pairs: .2, .2, .2, .2, 0, 0
    assert asymmetry == pytest.approx(0.8 / 6)


def test_advantages_average_to_zero_for_any_judge():
    # After symmetrisation sum_{i != j} p_ij = G(G-1)/2, so the 1/2 baseline makes the advantages sum to 0.
    raw = np.random.default_rng(0).uniform(size=(5, 4, 4))
    q, adv, _ = self_play_advantages(raw)
    np.testing.assert_allclose(adv.sum(axis=1), 0.0, atol=1e-12)
    np.testing.assert_allclose(q.mean(axis=1), 0.5, atol=1e-12)


def test_advantages_refuse_groups_of_one():
    with pytest.raises(ValueError, match="G >= 2"):
        self_play_advantages(np.full((2, 1, 1), 0.5))


def test_token_kl_is_the_exact_kl_of_each_next_token_distribution():
    rng = torch.Generator().manual_seed(0)
    p, q = torch.log_softmax(torch.randn(2, 3, 5, generator=rng, dtype=torch.float64), dim=-1).unbind(0)
    by_hand = [sum(p[t, v].exp() * (p[t, v] - q[t, v]) for v in range(5)) for t in range(3)]
    torch.testing.assert_close(token_kl(p, q), torch.stack(by_hand))
    assert torch.all(token_kl(p, q) > 0) and torch.equal(token_kl(p, p), torch.zeros(3, dtype=torch.float64))


# ---------------------------------------------------------------------------------------------- sampling, scoring


def test_token_logps_match_an_unpadded_forward(data):
    model, tokenizer = load_model(data / "models" / "sft"), load_tokenizer(data / "models" / "sft")
    prompts = ["The movie was", "I think this film is really", "Bad"]
    rollout = sample(model, tokenizer, prompts, max_new_tokens=10, temperature=1.0, seed=3, max_prompt_tokens=50)
    batched = token_logps(model, rollout)
    for row in range(len(prompts)):
        prompt = rollout.input_ids[row, : rollout.prompt_mask.shape[1]][rollout.prompt_mask[row].bool()]
        n = int(rollout.response_mask[row].sum())
        response = rollout.input_ids[row, rollout.prompt_mask.shape[1]:][:n]
        ids = torch.cat([prompt, response])[None]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
        alone = logp[len(prompt) - 1:].gather(-1, response[:, None]).squeeze(-1)
        torch.testing.assert_close(batched[row, :n], alone, atol=1e-4, rtol=1e-4)
        assert torch.all(batched[row, n:] == 0)
        eos_inside = (response == tokenizer.eos_token_id).nonzero()
        assert len(eos_inside) <= 1 and (len(eos_inside) == 0 or eos_inside[0, 0] == n - 1)


def test_magnet_equals_the_policy_after_a_refresh_and_sft_stays(data):
    cfg = _config()
    policy, tokenizer = load_model(data / "models" / "sft"), load_tokenizer(data / "models" / "sft")
    play = SelfPlay(policy, tokenizer, CharLengthJudge(), cfg.params, learning_rate=1e-2, total_steps=100,
                    warmup_steps=1, max_prompt_tokens=50)
    for seed in range(2):
        metrics = play.step(["The movie was", "This film"], seed=seed)
    assert metrics["magmpo/kl_to_magnet"] > 0 and metrics["magmpo/kl_step"] > 0
    moved = [not torch.equal(a, b) for a, b in zip(play.policy.parameters(), play.magnet.parameters())]
    assert any(moved)
    play.refresh_magnet()
    for p, m, s in zip(play.policy.parameters(), play.magnet.parameters(), play.sft.parameters()):
        assert torch.equal(p, m) and not m.requires_grad
    assert any(not torch.equal(p, s) for p, s in zip(play.policy.parameters(), play.sft.parameters()))
    # right after a refresh the policy is its own magnet: the KL to the magnet is exactly 0
    rollout = play.sample(play.policy, ["The movie was"], 1.0, seed=5)
    with torch.no_grad():
        kl = token_kl(response_log_probs(play.policy, rollout), response_log_probs(play.magnet, rollout))
    assert torch.equal(kl, torch.zeros_like(kl))


# ---------------------------------------------------------------------------------------------- the recipe


def test_short_run_writes_every_metric_and_a_loadable_model(data, capsys):
    writer = RunWriter("mag-short")
    out = train_magnetic(_config(), writer)
    printed = capsys.readouterr().out
    assert "round 1/2" in printed and "round 2/2" in printed and "winrate_vs_magnet" in printed
    metrics = pd.read_json(writer.dir / "metrics.jsonl", lines=True)
    names = set(metrics.name)
    assert set(STEP_METRICS + ROUND_METRICS + ("game/gap_magnet", "game/gap_mwu")) <= names
    per_step = metrics[metrics.name == "loss"].step.tolist()
    assert per_step == [1, 2, 3, 4]  # max_steps 4 over 2 rounds
    for name in ROUND_METRICS:
        assert sorted(metrics[metrics.name == name].step) == ([0, 2, 4] if name == "magmpo/exploitability" else [2, 4])
    assert metrics[metrics.name == "magmpo/exploitability"].value.between(-0.5, 0.5).all()
    evaluations = pd.read_json(writer.dir / "evaluations.jsonl", lines=True)
    assert list(zip(evaluations.model, evaluations.baseline)) == [
        ("magnetic_po/round1", "sft"), ("magnetic_po/round2", "magnetic_po/round1"), ("magnetic_po/round2", "sft")]
    assert (evaluations.n == 6).all() and ((evaluations.low <= evaluations.value)
                                          & (evaluations.value <= evaluations.high)).all()
    round1 = metrics[metrics.step == 2].set_index("name").value
    # in round 1 the magnet is the SFT model: both comparisons are the same comparison
    assert round1["magmpo/winrate_vs_magnet"] == round1["magmpo/winrate_vs_sft"]
    judgments = pd.read_json(writer.dir / "judgments.jsonl", lines=True)
    assert len(judgments) == 3 * 6 and judgments.prob_a.between(0, 1).all()
    expected = np.where(judgments.prob_a > 0.5, "a", np.where(judgments.prob_a < 0.5, "b", "tie"))
    assert (judgments.winner == expected).all()
    assert load_model(out) is not None and load_tokenizer(out).pad_token is not None


def test_resumed_run_equals_an_uninterrupted_one(data, monkeypatch):
    whole = train_magnetic(_config(), RunWriter("mag-whole"))
    real_step, calls = SelfPlay.step, []

    def crash_in_round_two(self, prompts, seed):
        calls.append(seed)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_step(self, prompts, seed)

    monkeypatch.setattr(SelfPlay, "step", crash_in_round_two)
    with pytest.raises(KeyboardInterrupt):
        train_magnetic(_config(), RunWriter("mag-resumed"))
    monkeypatch.setattr(SelfPlay, "step", real_step)
    resumed = train_magnetic(_config(), RunWriter("mag-resumed"), resume=True)
    for a, b in zip(load_model(whole).state_dict().values(), load_model(resumed).state_dict().values()):
        assert torch.equal(a, b)


def test_lora_run_saves_a_merged_model_that_changed_only_the_adapted_layers(data):
    lora = {"r": 2, "alpha": 4, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    out = train_magnetic(_config(lora=lora), RunWriter("mag-lora"))
    trained, sft = load_model(out).state_dict(), load_model(data / "models" / "sft").state_dict()
    assert trained.keys() == sft.keys()
    changed = {name for name in sft if not torch.equal(trained[name], sft[name])}
    assert changed and all(name.endswith(("q_proj.weight", "v_proj.weight")) for name in changed)


def test_bad_inputs_fail_with_the_field_named(data):
    with pytest.raises(ValueError, match="resume"):
        train_magnetic(_config(), RunWriter("mag-never-started"), resume=True)
    too_long = _config(max_new_tokens=64)
    with pytest.raises(ValueError, match="data.max_length"):
        train_magnetic(too_long, RunWriter("mag-too-long"))


def test_a_nan_loss_stops_the_run(data, monkeypatch):
    from engine.recipes.preference import TrainingDiverged

    monkeypatch.setattr(SelfPlay, "step", lambda self, prompts, seed: {"loss": float("nan")})
    with pytest.raises(TrainingDiverged, match="learning_rate"):
        train_magnetic(_config(), RunWriter("mag-nan"))


def test_game_trace_logs_both_gap_curves(data):
    # A cyclic game with unequal margins: its equilibrium (5, 2, 9) / 16 is mixed and not the uniform start.
    payoff = cyclic_game(3, [0.9, 0.5, 0.2])
    writer = RunWriter("mag-game")
    magnetic, mwu = log_game_trace(writer, payoff, steps=400, refresh_every=100)
    metrics = pd.read_json(writer.dir / "metrics.jsonl", lines=True)
    for name, values in (("game/gap_magnet", magnetic.gaps), ("game/gap_mwu", mwu.gaps)):
        logged = metrics[metrics.name == name].sort_values("step")
        assert logged.step.tolist() == list(range(1, 401))
        np.testing.assert_allclose(logged.value, values)
    np.testing.assert_allclose(magnetic.gaps, magnetic_mirror_descent(payoff, steps=400, refresh_every=100).gaps)
    np.testing.assert_allclose(mwu.gaps, multiplicative_weights(payoff, steps=400).gaps)
    # last iterates: the magnet converges, plain multiplicative weights keeps circling the equilibrium
    assert magnetic.gaps[-1] < 0.01 < 0.05 < mwu.gaps[-1]


def test_demo_configs_load_and_the_reward_model_judge_scores_by_bradley_terry(data):
    assert load_config(CONFIGS / "magnetic_demo.yaml").params.judge == "bt:sentiment"
    cfg = load_config(CONFIGS / "magnetic_reward_model.yaml")
    # the file's judge and paths, on a budget a test can afford
    cfg.training.max_steps, cfg.training.batch_size, cfg.params.group_size, cfg.params.max_new_tokens = 3, 2, 2, 6
    writer = RunWriter("mag-reward-model")
    train_magnetic(cfg, writer)
    judgments = pd.read_json(writer.dir / "judgments.jsonl", lines=True)
    assert len(judgments) == 5 * 6  # round 1 against SFT, later rounds against the previous round and SFT
    reward, tokenizer = LlamaForSequenceClassification.from_pretrained(data / "models" / "reward"), \
        load_tokenizer(data / "models" / "reward")
    with torch.no_grad():  # one unpadded text at a time: r(x, y) is the logit at the last token
        def r(text):
            return reward(**tokenizer(text, return_tensors="pt")).logits[0, 0].item()

        for row in judgments.head(4).itertuples():
            expected = 1.0 / (1.0 + np.exp(-(r(row.prompt + row.output_a) - r(row.prompt + row.output_b))))
            assert row.prob_a == pytest.approx(expected, abs=1e-5)
