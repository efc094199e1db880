"""Magnetic mirror descent on finite preference games, checked against independent truth.

Truth used here: hand-computed steps, scipy maximisation of the regularised objective over the simplex, a second
(dual) linear program, closed-form equilibria of cyclic games, and a scipy root of the regularised fixed point.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import linprog, minimize, root
from scipy.special import softmax

from engine.magnetic import (
    cyclic_game,
    duality_gap,
    magnetic_mirror_descent,
    magnetic_step,
    multiplicative_weights,
    nash_equilibrium,
    pool_exploitability,
    random_preference_game,
    symmetrize_preferences,
)

SUPPORT_TOL = 1e-9


def _gap(policy: np.ndarray, payoff: np.ndarray) -> float:
    """Exploitability written out from its definition: best pure reply's win rate, both sides."""
    best_reply_wins = max(float(payoff[i] @ policy) for i in range(len(policy)))
    worst_case_win = min(float(policy @ payoff[:, j]) for j in range(len(policy)))
    return best_reply_wins - worst_case_win


def _column_player_lp(payoff: np.ndarray) -> np.ndarray:
    """The equilibrium from the other side: min_u max_i (payoff @ u)_i, a different LP from the module's."""
    n = payoff.shape[0]
    cost = np.r_[np.zeros(n), 1.0]
    result = linprog(
        cost,
        A_ub=np.hstack([payoff, -np.ones((n, 1))]),
        b_ub=np.zeros(n),
        A_eq=np.r_[np.ones(n), 0.0][None],
        b_eq=[1.0],
        bounds=[(0, None)] * n + [(None, None)],
        method="highs-ipm",
    )
    assert result.success
    return result.x[:n]


def _well_conditioned(payoff: np.ndarray) -> bool:
    """Equilibrium margins that set the proximal-point speed, read from the LP solution only (not from any run).

    Off-support actions must lose by >= 0.02 and the linearised replicator flow diag(pi*) (P - 1/2) on the support
    must rotate at frequency >= 0.03; near-degenerate games converge, but too slowly for a unit test.
    """
    equilibrium = _column_player_lp(payoff)
    support = equilibrium > SUPPORT_TOL
    wins = payoff @ equilibrium
    if (~support).any() and (0.5 - wins[~support]).min() < 0.02:
        return False
    skew = (payoff - 0.5)[np.ix_(support, support)]
    frequencies = np.abs(np.linalg.eigvals(np.diag(equilibrium[support]) @ skew).imag)
    return bool(frequencies[frequencies > 1e-9].min() >= 0.03)


def _mixed_random_games() -> list[np.ndarray]:
    """First well-conditioned seeded games with a mixed equilibrium: three 5-action, five 7-action (support 3-5)."""
    games = []
    for n_actions, wanted in ((5, 3), (7, 5)):
        found = 0
        for seed in range(100):
            payoff = random_preference_game(n_actions, seed)
            support = int((_column_player_lp(payoff) > SUPPORT_TOL).sum())
            if 3 <= support <= 5 and _well_conditioned(payoff):
                games.append(payoff)
                found += 1
                if found == wanted:
                    break
    supports = [int((_column_player_lp(g) > SUPPORT_TOL).sum()) for g in games if len(g) == 7]
    assert len(games) == 8 and 5 in supports and 3 in supports
    return games


RANDOM_GAMES = _mixed_random_games()
CYCLIC_GAMES = [cyclic_game(3), cyclic_game(5, 0.6), cyclic_game(3, [0.2, 0.6, 1.0]), cyclic_game(7, 0.8)]
ALL_GAMES = CYCLIC_GAMES + RANDOM_GAMES


def _off_equilibrium_start(n_actions: int) -> np.ndarray:
    # The uniform start is itself the equilibrium of symmetric cyclic games, where nothing would move.
    weights = np.arange(1.0, n_actions + 1.0)
    return weights / weights.sum()


# ------------------------------------------------------------------------------------------------ one step


def test_step_matches_hand_computation_on_2x2():
    # q = P @ (1/2, 1/2) = (0.65, 0.35); with pi = rho uniform and eta = alpha = 1 the step squares-roots
    # exp(q) up to a constant, so pi'_1 / pi'_0 = exp(-0.15).
    payoff = np.array([[0.5, 0.8], [0.2, 0.5]])
    new = magnetic_step([0.5, 0.5], [0.5, 0.5], payoff, eta=1.0, alpha=1.0)
    expected_first = 1.0 / (1.0 + math.exp(-0.15))
    np.testing.assert_allclose(new, [expected_first, 1.0 - expected_first], rtol=1e-12)


@pytest.mark.parametrize("eta, alpha", [(0.5, 0.2), (1.0, 0.05), (2.0, 1.5)])
def test_step_is_argmax_of_regularised_objective(eta, alpha):
    payoff = random_preference_game(3, seed=11)
    policy = np.array([0.6, 0.3, 0.1])
    magnet = np.array([0.2, 0.2, 0.6])
    wins = payoff @ policy

    def negative_objective(logits):
        candidate = softmax(logits)
        kl_magnet = np.sum(candidate * np.log(candidate / magnet))
        kl_policy = np.sum(candidate * np.log(candidate / policy))
        return -(eta * candidate @ wins - eta * alpha * kl_magnet - kl_policy)

    best = softmax(minimize(negative_objective, np.zeros(3), method="BFGS", options={"gtol": 1e-11}).x)
    np.testing.assert_allclose(magnetic_step(policy, magnet, payoff, eta, alpha), best, atol=1e-6)


def test_step_without_magnet_is_multiplicative_weights_and_ignores_the_magnet():
    payoff = random_preference_game(4, seed=2)
    policy = np.array([0.1, 0.2, 0.3, 0.4])
    unnormalised = policy * np.exp(0.7 * payoff @ policy)
    for magnet in ([0.25] * 4, [1.0, 0.0, 0.0, 0.0]):
        np.testing.assert_allclose(
            magnetic_step(policy, magnet, payoff, eta=0.7, alpha=0.0), unnormalised / unnormalised.sum(), rtol=1e-12
        )


def test_step_is_stable_for_extreme_steps_and_tiny_masses():
    payoff = cyclic_game(3)
    policy = np.array([1e-300, 0.5, 0.5 - 1e-300])
    # eta = 1e4 makes exp(eta * q) overflow in linear space; in log space the result is the argmax of the logits.
    new = magnetic_step(policy, [1 / 3] * 3, payoff, eta=1e4, alpha=0.01)
    logits = np.log(policy) + 1e4 * 0.01 * np.log(1 / 3) + 1e4 * payoff @ policy
    assert np.all(np.isfinite(new)) and new.sum() == pytest.approx(1.0)
    assert int(np.argmax(new)) == int(np.argmax(logits))


def test_zero_mass_stays_zero_and_disjoint_supports_are_rejected():
    payoff = cyclic_game(3)
    new = magnetic_step([0.0, 0.5, 0.5], [0.2, 0.3, 0.5], payoff, eta=1.0, alpha=0.1)
    assert new[0] == 0.0 and new.sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="disjoint supports"):
        magnetic_step([1.0, 0.0, 0.0], [0.0, 0.5, 0.5], payoff, eta=1.0, alpha=0.1)


# ------------------------------------------------------------------------------------------------ equilibrium


@pytest.mark.parametrize("payoff", ALL_GAMES, ids=lambda p: f"n{len(p)}")
def test_lp_equilibrium_is_unexploitable_and_matches_dual_lp(payoff):
    equilibrium = nash_equilibrium(payoff)
    assert equilibrium.min() >= 0.0 and equilibrium.sum() == pytest.approx(1.0)
    assert _gap(equilibrium, payoff) < 1e-9
    assert duality_gap(equilibrium, payoff) < 1e-9
    np.testing.assert_allclose(equilibrium, _column_player_lp(payoff), atol=1e-7)


@pytest.mark.parametrize("n_actions", [3, 5, 7])
def test_symmetric_cyclic_game_has_uniform_equilibrium(n_actions):
    np.testing.assert_allclose(nash_equilibrium(cyclic_game(n_actions)), np.full(n_actions, 1 / n_actions), atol=1e-9)


def test_weighted_rock_paper_scissors_equilibrium_closed_form():
    # 0 beats 1 by a, 1 beats 2 by b, 2 beats 0 by c: the skew part [[0,a,-c],[-a,0,b],[c,-b,0]] kills (b, c, a).
    a, b, c = 0.2, 0.6, 1.0
    expected = np.array([b, c, a]) / (a + b + c)
    np.testing.assert_allclose(nash_equilibrium(cyclic_game(3, [a, b, c])), expected, atol=1e-9)


def test_gap_of_pure_strategy_in_rock_paper_scissors_is_one():
    # Against pure rock, paper wins with probability 1, so gap = 2 * 1 - 1.
    assert duality_gap([1.0, 0.0, 0.0], cyclic_game(3)) == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------------ dynamics


@pytest.mark.parametrize("payoff", ALL_GAMES, ids=lambda p: f"n{len(p)}")
def test_magnet_refresh_last_iterate_reaches_nash_while_mwu_cycles(payoff):
    start = _off_equilibrium_start(len(payoff))
    equilibrium = nash_equilibrium(payoff)

    magnetic = magnetic_mirror_descent(payoff, eta=1.0, alpha=0.05, steps=5000, refresh_every=200, start=start)
    assert magnetic.gaps[-1] < 1e-3
    assert _gap(magnetic.last, payoff) < 1e-3
    assert np.abs(magnetic.last - equilibrium).sum() < 1e-2

    steps = 3000
    plain = multiplicative_weights(payoff, eta=1.0, steps=steps, start=start)
    last_quarter = plain.gaps[-steps // 4 :]
    assert _gap(plain.last, payoff) > 0.05 and np.median(last_quarter) > 0.05
    # The running average does converge (no regret): small, and well below where it stood early on.
    assert plain.average_gaps[-1] < 0.02 and plain.average_gaps[-1] < plain.average_gaps[steps // 20] / 2
    assert _gap(plain.average, payoff) == pytest.approx(plain.average_gaps[-1])


def test_solver_iterates_the_public_step_with_periodic_magnet_refresh():
    payoff = random_preference_game(4, seed=5)
    start = np.array([0.4, 0.3, 0.2, 0.1])
    magnet = np.array([0.1, 0.2, 0.3, 0.4])
    trace = magnetic_mirror_descent(payoff, eta=0.8, alpha=0.3, steps=35, refresh_every=10, start=start, magnet=magnet)

    policy, iterates = start, []
    for t in range(35):
        if t > 0 and t % 10 == 0:
            magnet = policy
        policy = magnetic_step(policy, magnet, payoff, eta=0.8, alpha=0.3)
        iterates.append(policy)
    iterates = np.array(iterates)
    np.testing.assert_allclose(trace.last, iterates[-1], rtol=1e-10)
    np.testing.assert_allclose(trace.average, iterates.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(trace.gaps, [_gap(p, payoff) for p in iterates], atol=1e-12)
    running = np.cumsum(iterates, axis=0) / np.arange(1, 36)[:, None]
    np.testing.assert_allclose(trace.average_gaps, [_gap(p, payoff) for p in running], atol=1e-12)


@pytest.mark.parametrize("payoff", [random_preference_game(5, seed=3), cyclic_game(3, [0.2, 0.6, 1.0])])
def test_fixed_magnet_converges_to_the_regularised_fixed_point(payoff):
    n = len(payoff)
    magnet = _off_equilibrium_start(n)
    alpha = 0.5

    def residual(policy):
        return policy - softmax(np.log(magnet) + payoff @ policy / alpha)

    fixed_point = root(residual, magnet, method="hybr", tol=1e-14).x
    assert np.abs(residual(fixed_point)).max() < 1e-12

    trace = magnetic_mirror_descent(payoff, eta=0.5, alpha=alpha, steps=600, refresh_every=None, magnet=magnet)
    np.testing.assert_allclose(trace.last, fixed_point, atol=1e-9)
    # The regularisation bias: the fixed point is not the Nash equilibrium, so the gap does not vanish.
    assert _gap(trace.last, payoff) > 0.01
    assert trace.gaps[-1] == pytest.approx(_gap(fixed_point, payoff), abs=1e-8)


# ------------------------------------------------------------------------------------------- generators, empirical use


def test_random_game_is_a_seeded_preference_game():
    payoff = random_preference_game(6, seed=4)
    np.testing.assert_allclose(payoff + payoff.T, np.ones((6, 6)), atol=1e-15)
    np.testing.assert_array_equal(np.diag(payoff), np.full(6, 0.5))
    assert payoff.min() >= 0.0 and payoff.max() <= 1.0
    np.testing.assert_array_equal(payoff, random_preference_game(6, seed=4))
    assert not np.allclose(payoff, random_preference_game(6, seed=5))


def test_cyclic_game_structure():
    payoff = cyclic_game(5, 0.6)
    np.testing.assert_allclose(payoff + payoff.T, np.ones((5, 5)), atol=1e-15)
    # Action 0 beats 1 and 2, loses to 3 and 4, each by P = (1 + 0.6) / 2.
    np.testing.assert_allclose(payoff[0], [0.5, 0.8, 0.8, 0.2, 0.2])


def test_symmetrize_removes_constant_position_bias():
    payoff = 0.1 + 0.8 * random_preference_game(4, seed=8)  # still P + P^T = 1, entries in [0.1, 0.9]
    biased = payoff + 0.1  # judge favours whichever response is shown first
    np.fill_diagonal(biased, 0.9)  # a self-comparison is meaningless and must be ignored
    np.testing.assert_allclose(symmetrize_preferences(biased), payoff, atol=1e-12)


def test_pool_exploitability_by_hand():
    # prompt 0: candidates win .8 and .3 on average, prompt 1: .5 and .8; the best are .8 and .8
    wins = [[[0.9, 0.7], [0.2, 0.4]], [[0.5, 0.5], [0.6, 1.0]]]
    assert pool_exploitability(wins) == pytest.approx(0.3, abs=1e-12)
    with pytest.raises(ValueError, match="wins"):
        pool_exploitability([[0.5, 0.5]])


def test_pool_exploitability_with_every_response_in_the_pool_is_half_the_gap():
    payoff = cyclic_game(3, [0.2, 0.6, 1.0])
    samples = [0, 0, 1, 2, 2, 2]  # the policy (2, 1, 3) / 6 as samples, repeats included
    wins = payoff[np.ix_([0, 1, 2], samples)][None]
    assert pool_exploitability(wins) == pytest.approx(_gap(np.array([2, 1, 3]) / 6, payoff) / 2, abs=1e-12)
    # a policy collapsed onto response 0: the best of its own samples only ties it, the pool's response 2 beats it
    collapsed = payoff[np.ix_([0, 1, 2], [0, 0, 0])][None]
    assert pool_exploitability(collapsed) == pytest.approx(payoff[2, 0] - 0.5, abs=1e-12) and payoff[2, 0] > 0.5


# ------------------------------------------------------------------------------------------------ validation


RPS = cyclic_game(3)
UNIFORM = [1 / 3] * 3


@pytest.mark.parametrize(
    "call, argument",
    [
        (lambda: magnetic_step(UNIFORM, UNIFORM, np.full((3, 2), 0.5), 1.0, 0.1), "payoff"),
        (lambda: magnetic_step(UNIFORM, UNIFORM, np.array([[0.5, 0.9], [0.3, 0.5]]), 1.0, 0.1), "payoff"),
        (lambda: magnetic_step(UNIFORM, UNIFORM, RPS * 2, 1.0, 0.1), "payoff"),
        (lambda: magnetic_step([0.5, 0.6, -0.1], UNIFORM, RPS, 1.0, 0.1), "policy"),
        (lambda: magnetic_step([0.5, 0.6, 0.1], UNIFORM, RPS, 1.0, 0.1), "policy"),
        (lambda: magnetic_step([0.5, 0.5], UNIFORM, RPS, 1.0, 0.1), "policy"),
        (lambda: magnetic_step(UNIFORM, [0.2, 0.2, 0.2], RPS, 1.0, 0.1), "magnet"),
        (lambda: magnetic_step(UNIFORM, UNIFORM, RPS, 0.0, 0.1), "eta"),
        (lambda: magnetic_step(UNIFORM, UNIFORM, RPS, -1.0, 0.1), "eta"),
        (lambda: magnetic_step(UNIFORM, UNIFORM, RPS, 1.0, -0.1), "alpha"),
        (lambda: magnetic_mirror_descent(RPS, steps=0), "steps"),
        (lambda: magnetic_mirror_descent(RPS, refresh_every=0), "refresh_every"),
        (lambda: magnetic_mirror_descent(RPS, start=[1.0, 0.0]), "start"),
        (lambda: duality_gap([0.2, 0.2, 0.2], RPS), "policy"),
        (lambda: nash_equilibrium(np.full((2, 3), 0.5)), "payoff"),
        (lambda: cyclic_game(4), "n_actions"),
        (lambda: cyclic_game(3, [0.5, 1.5, 0.5]), "margin"),
        (lambda: symmetrize_preferences(np.full((2, 2), 1.5)), "raw"),
    ],
)
def test_bad_input_gives_one_line_error_naming_the_argument(call, argument):
    with pytest.raises(ValueError, match=argument) as error:
        call()
    assert "\n" not in str(error.value)
