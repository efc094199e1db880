"""MagMPO's LLM update is magnetic mirror descent: the recipe's own update (SelfPlay.update, the real loss, sampler
and AdamW) on a finite preference game dressed as a language model, against engine/theory/magnetic.py; and the
sequence-KL estimator against the exact KL of an enumerable two-token model.

The game: 3 actions of a weighted rock-paper-scissors, single-token responses of a logits-table LM (tests/
logits_table.py) whose first-token distribution is the policy, and exact payoffs q_t = P pi_t (the win rate of each
action against the policy that sampled). One MMD step has the closed form `magnetic_step`; with a fixed magnet the
iterates converge to the regularised equilibrium softmax(log rho + P pi / alpha). The former k3 loss pulled on
KL(rho || pi) instead, whose fixed point alpha rho / (alpha + v - P pi) lies 0.037 away here (checked below), far
outside the tolerances.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import brentq

from engine.decoding.rollouts import response_tokens
from engine.methods.magnetic_po.config import MagneticPOParams
from engine.methods.magnetic_po.loss import mmd_objective
from engine.recipes.magnetic_selfplay import SelfPlay
from engine.theory.magnetic import cyclic_game, duality_gap, magnetic_mirror_descent, magnetic_step, nash_equilibrium
from tests.logits_table import table_model, table_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PAYOFF = cyclic_game(3, [0.9, 0.5, 0.2])  # equilibrium (5, 2, 9) / 16
START = np.array([0.6, 0.3, 0.1])  # the SFT policy, and the first magnet
SAMPLES = 4096  # single-token responses per step
# Why 0.01: the samples' action counts n_a stand in for N pi_t(a); the importance-weighted payoff of action a is off by
# a relative sqrt((1 - pi_a) / (N pi_a)) <= 0.05 (pi_a >= 0.1), i.e. by <= 0.02 on |A| <= 0.4, which moves the step's
# probabilities by well under 0.01; 60 AdamW steps at lr 0.05 solve the 3-parameter inner problem to ~1e-3.
TOL = 0.01
INNER_STEPS, LR = 60, 0.05


def _play(alpha: float, eta: float, start=START, magnet=None) -> SelfPlay:
    """A SelfPlay on the table LM at `start`, its magnet at `magnet` (default: the start), constant learning rate."""
    model = table_model(np.log(start).tolist())
    params = MagneticPOParams(alpha=alpha, eta=eta, inner_steps=INNER_STEPS, max_new_tokens=1)
    play = SelfPlay(model, table_tokenizer(["rock", "paper", "scissors"]), judge=None, params=params,
                    learning_rate=LR, total_steps=10**9, warmup_steps=1, max_prompt_tokens=4)
    if magnet is not None:
        with torch.no_grad():
            play.magnet.table.copy_(torch.log(torch.as_tensor(magnet, dtype=torch.float32)))
    return play


def _policy(play: SelfPlay) -> np.ndarray:
    return play.policy.policy().numpy()


def _mmd_step(play: SelfPlay, seed: int) -> dict[str, float]:
    """One step of the recipe's update with exact payoffs: sample from pi_t, A = (P pi_t)[y] - 1/2, update."""
    rollout = play.rollout(["play"], SAMPLES, play.params.temperature, seed)
    actions = response_tokens(rollout)[:, 0].numpy()
    assert rollout.response_mask.all() and actions.max() < 3  # every response is one action token
    wins = PAYOFF @ _policy(play)
    return play.update(rollout, torch.as_tensor(wins[actions] - 0.5, dtype=torch.float32))


def _k3_fixed_point(magnet: np.ndarray, alpha: float) -> np.ndarray:
    """The old loss's fixed point: pi = alpha rho / (alpha + v - P pi), v normalising, by damped iteration."""
    policy = magnet.copy()
    for _ in range(3000):
        wins = PAYOFF @ policy

        def excess(v, wins=wins):
            return (alpha * magnet / (alpha + v - wins)).sum() - 1

        v = brentq(excess, wins.max() - alpha + 1e-12, 10.0)
        policy = 0.9 * policy + 0.1 * alpha * magnet / (alpha + v - wins)
    return policy


@pytest.mark.parametrize("eta, alpha", [(2.0, 0.25), (0.5, 1.0)])
def test_one_update_is_the_magnetic_mirror_descent_step(eta, alpha):
    magnet = np.array([0.1, 0.2, 0.7])  # rho != pi_t: both KL terms pull, in different directions
    play = _play(alpha, eta, magnet=magnet)
    metrics = _mmd_step(play, seed=0)
    expected = magnetic_step(START, magnet, PAYOFF, eta, alpha)
    assert np.abs(expected - START).max() > 5 * TOL  # the step moves far more than the tolerance
    np.testing.assert_allclose(_policy(play), expected, atol=TOL)
    # the logged KL to the magnet is the exact KL(pi_t || rho) of one-token responses (up to the special token)
    assert metrics["magmpo/kl_to_magnet"] == pytest.approx(float(np.sum(START * np.log(START / magnet))), abs=1e-4)
    assert metrics["magmpo/kl_step"] > 0


def test_updates_with_a_fixed_magnet_reach_the_regularised_equilibrium_and_exploitability_falls():
    alpha, eta = 0.25, 1.0
    play = _play(alpha, eta)
    exploitability = [duality_gap(START, PAYOFF) / 2]
    for step in range(30):
        _mmd_step(play, seed=step)
        exploitability.append(duality_gap(_policy(play), PAYOFF) / 2)
    last = _policy(play)
    regularised = magnetic_mirror_descent(PAYOFF, eta=eta, alpha=alpha, steps=3000, refresh_every=None, start=START,
                                          magnet=START).last
    fixed_point = np.exp(np.log(START) + PAYOFF @ regularised / alpha)
    np.testing.assert_allclose(regularised, fixed_point / fixed_point.sum(), atol=1e-9)
    np.testing.assert_allclose(last, regularised, atol=TOL / 2)
    assert np.abs(_k3_fixed_point(START, alpha) - regularised).max() > 3 * TOL  # the old direction's answer
    # max_y P(y > pi) - 1/2 falls from 0.125 to the regularised equilibrium's 0.052
    assert exploitability[-1] == pytest.approx(duality_gap(regularised, PAYOFF) / 2, abs=TOL / 2)
    assert exploitability[-1] < 0.5 * exploitability[0] and max(exploitability[1:]) < exploitability[0]


def test_magnet_refresh_rounds_follow_tabular_mmd_toward_the_equilibrium():
    alpha, eta, steps_per_round, rounds = 0.25, 2.0, 10, 3
    play, equilibrium = _play(alpha, eta), nash_equilibrium(PAYOFF)

    def kl_from_equilibrium(policy):
        return float(np.sum(equilibrium * np.log(equilibrium / policy)))

    distances = [kl_from_equilibrium(START)]
    for r in range(1, rounds + 1):
        for step in range(steps_per_round):
            _mmd_step(play, seed=100 * r + step)
        play.refresh_magnet()
        tabular = magnetic_mirror_descent(PAYOFF, eta=eta, alpha=alpha, steps=r * steps_per_round,
                                          refresh_every=steps_per_round, start=START, magnet=START).last
        np.testing.assert_allclose(_policy(play), tabular, atol=TOL)
        distances.append(kl_from_equilibrium(_policy(play)))
    # each refresh is a KL proximal-point step: the distance to the equilibrium shrinks every round
    assert all(b < a for a, b in itertools.pairwise(distances)), distances


# ---------------------------------------------------------------------------------------------- the sequence KL


def _bigram(table: torch.Tensor, sequences: torch.Tensor) -> torch.Tensor:
    """log pi(. | y_<t) [N, T, V] of a bigram model: row 0 of `table` for the first token, row 1 + y_{t-1} after."""
    context = torch.cat([torch.zeros_like(sequences[:, :1]), sequences[:, :-1] + 1], dim=1)
    return torch.log_softmax(table[context], dim=-1)


def _sequence_logp(table: torch.Tensor, sequences: torch.Tensor) -> torch.Tensor:
    return _bigram(table, sequences).gather(-1, sequences.unsqueeze(-1)).squeeze(-1).sum(-1)


def test_the_objective_is_unbiased_for_the_exact_sequence_objective_in_value_and_gradient():
    vocab, length = 3, 3
    generator = torch.Generator().manual_seed(0)
    magnet = torch.randn(vocab + 1, vocab, generator=generator, dtype=torch.float64)
    start = torch.randn(vocab + 1, vocab, generator=generator, dtype=torch.float64)
    sequences = torch.tensor(list(itertools.product(range(vocab), repeat=length)))  # every response, once
    mask = torch.ones(len(sequences), length, dtype=torch.float64)
    payoff = torch.rand(len(sequences), generator=generator, dtype=torch.float64)  # q(y), any values
    alpha, eta = 0.3, 0.7
    start_probs = _sequence_logp(start, sequences).exp()  # the sampler pi_t: E_{y~pi_t}[f] = sum_y pi_t(y) f(y)

    def exact(theta):  # -E_theta[q] + alpha KL(pi_theta || rho) + KL(pi_theta || pi_t) / eta, by enumeration
        logp = _sequence_logp(theta, sequences)
        kl = (logp.exp() * (logp - _sequence_logp(magnet, sequences))).sum()
        kl_start = (logp.exp() * (logp - _sequence_logp(start, sequences))).sum()
        return -(logp.exp() * (payoff - 0.5)).sum() + alpha * kl + kl_start / eta

    def estimated(theta):  # the expectation under pi_t of the per-sample objective
        terms = mmd_objective(_bigram(theta, sequences), _bigram(magnet, sequences), _bigram(start, sequences),
                              sequences, mask, payoff - 0.5, alpha, eta)
        return (start_probs * terms.loss).sum()

    moved = start + 0.4 * torch.randn(start.shape, generator=generator, dtype=torch.float64)
    for theta in (start, moved):  # at pi_t (all ratios 1) and after the policy moved (importance weights)
        a, b = theta.clone().requires_grad_(True), theta.clone().requires_grad_(True)
        truth, estimate = exact(a), estimated(b)
        truth.backward()
        estimate.backward()
        assert estimate.item() == pytest.approx(truth.item(), abs=1e-12)
        torch.testing.assert_close(b.grad, a.grad, atol=1e-12, rtol=1e-10)

    # the score-function term matters here: per-token KL gradients alone (prefix ratios held at 1) are wrong
    theta = start.clone().requires_grad_(True)
    log_theta = _bigram(theta, sequences)
    token_only = (start_probs[:, None] * (log_theta.exp() * (log_theta - _bigram(magnet, sequences))).sum(-1)).sum()
    token_only.backward()
    full = start.clone().requires_grad_(True)
    terms = mmd_objective(_bigram(full, sequences), _bigram(magnet, sequences), _bigram(start, sequences), sequences,
                          mask, torch.zeros(len(sequences), dtype=torch.float64), 1.0, 1.0)
    (start_probs * terms.kl_magnet).sum().backward()
    assert (theta.grad - full.grad).abs().max() > 0.01
