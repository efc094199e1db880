"""Magnetic mirror descent (MMD) on finite preference games: the tabular core of MagMPO.

Paper: Wang et al., "Magnetic Preference Optimization: Achieving Last-iterate Convergence for Language
Model Alignment", ICLR 2025. Math and defaults: docs/methods/magnetic_po.md.

The game. Over a finite set of responses, `payoff[i, j] = P(y_i beats y_j)` with `payoff + payoff.T = 1`
(so the diagonal is 1/2). Two players pick mixed policies and the row player wins with probability
`P(pi > pi') = pi @ payoff @ pi'`. The game is symmetric and constant-sum with value 1/2; a Nash equilibrium
`pi*` is a policy no other policy beats more than half of the time. Its distance from equilibrium is the
duality gap (exploitability) `gap(pi) = 2 max_y P(y > pi) - 1`, which is >= 0 and 0 exactly at a Nash
equilibrium.

MMD. With `q_t = payoff @ pi_t` (the win rate of each response against the current policy), one self-play step
maximises `eta <pi, q_t> - eta*alpha KL(pi || rho) - KL(pi || pi_t)`, whose solution is

    pi_{t+1}  proportional to  (pi_t * rho**(eta*alpha) * exp(eta * q_t)) ** (1 / (1 + eta*alpha)).

`rho` is the magnet. `alpha = 0` is plain multiplicative weights (MWU): in a game with a mixed equilibrium its
last iterate spirals away from the equilibrium and cycles; only its running average converges, which for an
LLM would mean keeping every past model.

Why the magnet refresh gives last-iterate convergence. For a fixed magnet the KL term makes the regularised game
strongly monotone, and MMD converges linearly, in its last iterate, to the unique regularised equilibrium
`pi_rho = softmax(log rho + payoff @ pi_rho / alpha)`. That point is biased (it leans toward `rho`), but the map
`rho -> pi_rho` is exactly a Bregman (KL) proximal-point step of size 1/alpha on the game's monotone operator,
and a Nash equilibrium is its fixed point (with `rho = pi*`, `payoff @ pi*` is constant on the support, so
`pi_rho = pi*`). Setting the magnet to the current policy every R steps therefore runs an (inexact)
proximal-point method, whose iterates -- not only their average -- converge to a Nash equilibrium of the
original game. This is what lets MagMPO keep a single final model. How many rounds it takes depends on the
game's conditioning: equilibria with a tiny probability on some action, actions off the support that lose only
barely, or slow rotation around the equilibrium make the proximal-point steps crawl (tens of thousands of steps
on some random 7-action games, against a few thousand on typical ones).

Reuse by the LLM recipe (engine/recipes/magnetic_selfplay.py): its per-step objective has `magnetic_step` as its
minimiser on a finite game (tests/test_magnetic_mmd.py runs it on one), and `pool_exploitability` estimates
`max_y P(y > pi) - 1/2` (half the duality gap) with a fixed pool of candidate responses drawn once.

Everything here is numpy, pure, and computed in log space so that policies with entries near 0 stay finite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import linprog

_PAYOFF_ATOL = 1e-6
_SIMPLEX_ATOL = 1e-6


@dataclass(frozen=True)
class MirrorDescentTrace:
    """What a solver run returns; every array is a fresh copy.

    last: [n] the final iterate, the single model a practitioner would keep.
    average: [n] the running (uniform) average of the iterates pi_1..pi_T.
    gaps: [T] duality gap of the iterate after each step (last-iterate convergence curve).
    average_gaps: [T] duality gap of the running average after each step (average-iterate curve).
    """

    last: np.ndarray
    average: np.ndarray
    gaps: np.ndarray
    average_gaps: np.ndarray


# ---------------------------------------------------------------------------------------------- validation


def validate_payoff(payoff: ArrayLike, name: str = "payoff") -> np.ndarray:
    """Return `payoff` as a float array after checking it is a preference game: square, in [0, 1], P + P^T = 1."""
    matrix = np.asarray(payoff, dtype=float)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
        raise ValueError(f"{name} must be a square [n, n] matrix of win probabilities, got shape {matrix.shape}")
    if not np.all(np.isfinite(matrix)) or matrix.min() < 0.0 or matrix.max() > 1.0:
        raise ValueError(f"{name} entries must be probabilities in [0, 1]; clip or recompute them")
    asymmetry = float(np.max(np.abs(matrix + matrix.T - 1.0)))
    if asymmetry > _PAYOFF_ATOL:
        raise ValueError(
            f"{name} must satisfy {name} + {name}.T = 1 (max deviation {asymmetry:.3g}); "
            "symmetrise a judge's raw matrix with symmetrize_preferences"
        )
    return matrix


def validate_policy(policy: ArrayLike, n_actions: int, name: str = "policy") -> np.ndarray:
    """Return `policy` as a float array after checking it is a distribution over `n_actions` actions."""
    vector = np.asarray(policy, dtype=float)
    if vector.shape != (n_actions,):
        raise ValueError(f"{name} must have shape ({n_actions},) to match the payoff matrix, got {vector.shape}")
    if not np.all(np.isfinite(vector)) or vector.min() < 0.0:
        raise ValueError(f"{name} must be on the simplex: entries finite and >= 0")
    total = float(vector.sum())
    if abs(total - 1.0) > _SIMPLEX_ATOL:
        raise ValueError(f"{name} must be on the simplex: entries sum to {total:.6g}, normalise it to sum to 1")
    return vector


def _check_rates(eta: float, alpha: float) -> None:
    if not (math.isfinite(eta) and eta > 0):
        raise ValueError(f"eta must be a finite step size > 0, got {eta}")
    if not (math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"alpha must be a finite magnet strength >= 0 (0 = plain multiplicative weights), got {alpha}")


def _check_count(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


# ---------------------------------------------------------------------------------------------- game quantities


def duality_gap(policy: ArrayLike, payoff: ArrayLike) -> float:
    """Exploitability `2 max_y P(y > policy) - 1`: how much the best response beats the policy, on both sides.

    Equals `max_pi' P(pi' > pi) - min_pi' P(pi > pi')` because `P(pi > e_j) = 1 - P(e_j > pi)`; it is 0 exactly
    at a Nash equilibrium. Works on any preference matrix, including an empirical one over sampled responses.
    """
    matrix = validate_payoff(payoff)
    vector = validate_policy(policy, matrix.shape[0])
    return _gap(vector, matrix)


def _gap(policy: np.ndarray, payoff: np.ndarray) -> float:
    return _gap_from_wins(payoff @ policy)


def _gap_from_wins(wins: np.ndarray) -> float:
    # max(0, .) only absorbs rounding: the best response always wins at least 1/2 against pi.
    return max(0.0, 2.0 * float(wins.max()) - 1.0)


def symmetrize_preferences(raw: ArrayLike) -> np.ndarray:
    """Turn a judge's raw pairwise matrix into a preference game: `(raw + 1 - raw.T) / 2`, diagonal 1/2.

    A judge shown (y_i, y_j) and (y_j, y_i) rarely gives exactly complementary answers (position bias); averaging
    the two orders restores `P + P^T = 1`, which the duality gap and the exact 1/2 self-play baseline rely on.
    The diagonal of `raw` is ignored (a response against itself is a tie).
    """
    matrix = np.asarray(raw, dtype=float)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
        raise ValueError(f"raw must be a square [G, G] matrix of judge probabilities, got shape {matrix.shape}")
    off_diagonal = matrix[~np.eye(matrix.shape[0], dtype=bool)]
    if not np.all(np.isfinite(off_diagonal)) or np.any((off_diagonal < 0.0) | (off_diagonal > 1.0)):
        raise ValueError("raw off-diagonal entries must be probabilities in [0, 1]")
    symmetric = (matrix + 1.0 - matrix.T) / 2.0
    np.fill_diagonal(symmetric, 0.5)
    return symmetric


def pool_exploitability(wins: ArrayLike) -> float:
    """Exploitability of a policy seen through a fixed candidate pool: mean over prompts of max_k mean_m w - 1/2.

    `wins[b, k, m]` is P(candidate k beats the policy's sample m) on prompt b. `mean_m` estimates P(y_k > pi), the
    best candidate stands in for the best response, so each prompt's term estimates `max_y P(y > pi) - 1/2` (half of
    `duality_gap`) with y restricted to the pool. Unlike the best response within the policy's own samples it does
    not vanish when the policy collapses: a pool drawn once, from a broader policy, keeps the responses that beat it.
    Restricting y biases it down; the max over noisy means biases it up (above 0 at an equilibrium).
    """
    matrix = np.asarray(wins, dtype=float)
    if matrix.ndim != 3 or 0 in matrix.shape:
        raise ValueError(f"wins must have shape [prompts, candidates, samples], got {matrix.shape}")
    if not np.all(np.isfinite(matrix)) or matrix.min() < 0.0 or matrix.max() > 1.0:
        raise ValueError("wins entries must be probabilities in [0, 1]")
    return float(matrix.mean(axis=2).max(axis=1).mean() - 0.5)


def nash_equilibrium(payoff: ArrayLike) -> np.ndarray:
    """A Nash equilibrium of the symmetric preference game, exactly, by linear programming.

    Solves `max_{pi, v} v` s.t. `(pi @ payoff)_j >= v` for every pure opponent j, `pi` on the simplex (HiGHS).
    The optimal v is the game value 1/2. When the equilibrium is not unique, one of them is returned.
    """
    matrix = validate_payoff(payoff)
    n = matrix.shape[0]
    # Variables [pi_0..pi_{n-1}, v]; linprog minimises, so minimise -v.
    cost = np.zeros(n + 1)
    cost[-1] = -1.0
    upper = np.hstack([-matrix.T, np.ones((n, 1))])  # v - (pi @ payoff)_j <= 0
    equality = np.hstack([np.ones((1, n)), np.zeros((1, 1))])
    bounds = [(0.0, None)] * n + [(None, None)]
    result = linprog(cost, A_ub=upper, b_ub=np.zeros(n), A_eq=equality, b_eq=[1.0], bounds=bounds, method="highs")
    if not result.success:  # cannot happen for a valid game (feasible, bounded); kept as a loud guard
        raise RuntimeError(f"linprog failed on a valid preference game: {result.message}")
    policy = np.clip(result.x[:n], 0.0, None)
    return policy / policy.sum()


# ---------------------------------------------------------------------------------------------- dynamics


def _log_step(log_policy: np.ndarray, wins: np.ndarray, log_magnet: np.ndarray, eta: float, alpha: float) -> np.ndarray:
    """One MMD step on log-probabilities, given `wins = payoff @ policy`; returns the normalised next log-policy."""
    logits = log_policy + eta * wins
    if alpha > 0:  # for alpha = 0 the magnet has no influence; skipping avoids 0 * log(0) = nan
        logits = logits + eta * alpha * log_magnet
    logits = logits / (1.0 + eta * alpha)
    top = logits.max()
    if not np.isfinite(top):
        raise ValueError("policy and magnet have disjoint supports; give the magnet mass where the policy has mass")
    # Hand-rolled logsumexp: this runs thousands of times on tiny vectors, where scipy's overhead dominates.
    shifted = logits - top
    return shifted - math.log(np.exp(shifted).sum())


def _log(vector: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):  # zero mass -> -inf is the intended log-space value
        return np.log(vector)


def magnetic_step(policy: ArrayLike, magnet: ArrayLike, payoff: ArrayLike, eta: float, alpha: float) -> np.ndarray:
    """One magnetic mirror descent step (self-play): the next policy, on the simplex.

    Returns the maximiser of `eta <pi, payoff @ policy> - eta*alpha KL(pi || magnet) - KL(pi || policy)`, i.e.
    `(policy * magnet**(eta*alpha) * exp(eta * payoff @ policy)) ** (1 / (1 + eta*alpha))` normalised,
    computed in log space. `alpha = 0` gives a plain multiplicative-weights step. Actions with zero mass in
    `policy` (or in `magnet` when alpha > 0) keep zero mass.
    """
    matrix = validate_payoff(payoff)
    n = matrix.shape[0]
    current = validate_policy(policy, n, "policy")
    pull = validate_policy(magnet, n, "magnet")
    _check_rates(eta, alpha)
    return np.exp(_log_step(_log(current), matrix @ current, _log(pull), eta, alpha))


def magnetic_mirror_descent(
    payoff: ArrayLike,
    eta: float = 1.0,
    alpha: float = 0.05,
    steps: int = 2000,
    refresh_every: int | None = 200,
    start: ArrayLike | None = None,
    magnet: ArrayLike | None = None,
) -> MirrorDescentTrace:
    """Iterate `magnetic_step` from `start`, moving the magnet to the current policy every `refresh_every` steps.

    Defaults (eta = 1, alpha = 0.05, refresh every 200 steps) are the paper's simulation
    (docs/methods/magnetic_po.md). They
    lie outside MMD's guarantee (which wants eta small relative to alpha) but reach a last-iterate gap below 1e-3
    within a few thousand steps on well-conditioned 7-action games; near-degenerate games need many more
    rounds (see the module docstring). `refresh_every=None` keeps the magnet fixed: the last
    iterate then converges to the regularised equilibrium `softmax(log magnet + payoff @ pi / alpha)`, not to
    the Nash equilibrium. `start` and `magnet` default to uniform; with refreshes, `magnet` is only the magnet of
    the first R steps. Zero entries in `start` stay zero forever (mirror descent never leaves a face).
    """
    matrix = validate_payoff(payoff)
    n = matrix.shape[0]
    _check_rates(eta, alpha)
    _check_count(steps, "steps")
    if refresh_every is not None:
        _check_count(refresh_every, "refresh_every")
    uniform = np.full(n, 1.0 / n)
    log_policy = _log(uniform if start is None else validate_policy(start, n, "start"))
    log_magnet = _log(uniform if magnet is None else validate_policy(magnet, n, "magnet"))
    wins = matrix @ np.exp(log_policy)

    running_sum = np.zeros(n)
    running_wins = np.zeros(n)  # payoff @ running_sum, kept by linearity to save a product per step
    gaps = np.empty(steps)
    average_gaps = np.empty(steps)
    for t in range(steps):
        if refresh_every is not None and t > 0 and t % refresh_every == 0:
            log_magnet = log_policy
        log_policy = _log_step(log_policy, wins, log_magnet, eta, alpha)
        policy = np.exp(log_policy)
        wins = matrix @ policy  # reused by the next step and by this step's gap
        running_sum += policy
        running_wins += wins
        gaps[t] = _gap_from_wins(wins)
        average_gaps[t] = _gap_from_wins(running_wins / (t + 1))
    return MirrorDescentTrace(
        last=np.exp(log_policy), average=running_sum / steps, gaps=gaps, average_gaps=average_gaps
    )


def multiplicative_weights(
    payoff: ArrayLike, eta: float = 1.0, steps: int = 2000, start: ArrayLike | None = None
) -> MirrorDescentTrace:
    """Plain self-play multiplicative weights (MMD with alpha = 0): the contrast whose last iterate cycles.

    The default step equals the magnetic solver's, so a comparison isolates the magnet. In a game with a mixed
    equilibrium the last iterate spirals out toward the boundary (KL(pi* || pi_t) grows) and keeps a large gap;
    only the running average approaches the equilibrium (no-regret), which is why this baseline would need every
    past model kept. A start exactly at the equilibrium stays there. Same return shape as the magnetic solver.
    """
    return magnetic_mirror_descent(payoff, eta=eta, alpha=0.0, steps=steps, refresh_every=None, start=start)


# ---------------------------------------------------------------------------------------------- game generators


def cyclic_game(n_actions: int = 3, margin: float | ArrayLike = 1.0) -> np.ndarray:
    """Rock-paper-scissors-like game: action i beats the next (n_actions - 1) / 2 actions around a circle.

    `margin` in (0, 1] is how decisively a winner wins: P(i beats j) = (1 + margin_i) / 2 when i is the winner of
    the pair; a scalar applies to every action. With one margin for all, the unique equilibrium is uniform (a
    regular tournament); for three actions with margins (a, b, c) it is proportional to (b, c, a).
    """
    _check_count(n_actions, "n_actions")
    if n_actions < 3 or n_actions % 2 == 0:
        raise ValueError(f"n_actions must be an odd integer >= 3 (every pair needs a winner), got {n_actions!r}")
    margins = np.asarray(margin, dtype=float)
    if margins.ndim == 0:
        margins = np.full(n_actions, float(margins))
    if margins.shape != (n_actions,) or not np.all((margins > 0) & (margins <= 1)):
        raise ValueError(f"margin must be a number or {n_actions} numbers in (0, 1], got {margin!r}")
    payoff = np.full((n_actions, n_actions), 0.5)
    for i in range(n_actions):
        for k in range(1, (n_actions - 1) // 2 + 1):
            j = (i + k) % n_actions
            payoff[i, j] = (1.0 + margins[i]) / 2.0
            payoff[j, i] = (1.0 - margins[i]) / 2.0
    return payoff


def random_preference_game(n_actions: int, seed: int = 0) -> np.ndarray:
    """A random symmetric preference game: P(i beats j) ~ Uniform(0, 1) for i < j, complement below, 1/2 diagonal.

    Generic draws have a unique equilibrium, often mixed (odd support), sometimes pure (a Condorcet winner).
    """
    _check_count(n_actions, "n_actions")
    upper = np.random.default_rng(seed).uniform(size=(n_actions, n_actions))
    payoff = np.triu(upper, k=1)
    payoff = payoff + np.tril(1.0 - payoff.T, k=-1)
    np.fill_diagonal(payoff, 0.5)
    return payoff
