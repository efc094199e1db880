"""Exact finite-response lab: each pairwise loss minimised at the population level, compared to theory.

A bandit is a few prompts, each with ``n`` candidate responses, K reference policies (row 0 the primary),
a reward per response, a pair-sampling distribution ``mu`` and a MallowsPO dispersion ``c(x)`` per prompt.
Preference data (``preference_matrix``) follow one of three links, ``P_ij = P(i beats j)``:

- ``"bt"``    Bradley-Terry, ``sigma(r_i - r_j)``;
- ``"theta"`` MallowsPO's theta-model, ``sigma(c(x) (r_i - r_j))``;
- ``"phi"``   the Kendall-tau Mallows link ``g_phi(r_i - r_j)`` used by MallowsPO-phi.

``solve`` minimises the POPULATION loss of docs/methods/README.md (the bandit lab),
``sum_x sum_{i != j} mu_ij P_ij f(h_i - h_j)``, over a tabular softmax policy, calling the loss functions
of ``engine.methods.losses`` on every ordered pair (so the lab exercises them), with torch L-BFGS in float64 (a
deterministic optimiser). ``closed_form`` returns the optimum given in each method's docs/methods page, computed with
numpy from the definitions (probabilities, not log-space tricks) so that it is independent of the losses
module; it raises ``NoClosedForm`` where the document says none exists. ``max_logratio_error`` compares
the two after removing each prompt's constant shift.

The policy is parametrised as ``log pi = log_softmax(log pi_primary + z / beta)``: ``z`` is the implicit
reward, so the curvature does not shrink with ``beta`` and a gradient tolerance means the same accuracy
for every ``beta``. This is only a reparametrisation of the same softmax policy.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from engine.methods.losses import dpo_loss, mallows_phi_loss, mallows_theta_loss, mrpo_loss

METHODS = ("dpo", "mallows_theta", "mallows_phi", "mrpo")
DATA = ("bt", "theta", "phi")
_MRPO_OPTIONS = {"alpha", "eps_max", "clip", "adaptive_eps", "virtual_ref", "arwc_convention"}


class NoClosedForm(ValueError):
    """docs/methods gives no closed-form optimum for this method / data / option combination."""


@dataclass(frozen=True)
class Bandit:
    """One finite problem. Arrays (float64): ``ref_logps`` [K, X, n] normalised log-probs of the K references
    (row 0 the primary: the policy's start and DPO's reference), ``reward`` [X, n], ``mu`` [X, n, n] symmetric
    pair-sampling distribution per prompt (zero diagonal, each prompt sums to 1), ``dispersion`` [X] c(x) > 0."""

    ref_logps: np.ndarray
    reward: np.ndarray
    mu: np.ndarray
    dispersion: np.ndarray

    def __post_init__(self) -> None:
        if self.ref_logps.ndim != 3:
            raise ValueError(f"ref_logps must have shape [K, X, n] (got {self.ref_logps.shape})")
        _, x, n = self.ref_logps.shape
        if self.reward.shape != (x, n) or self.mu.shape != (x, n, n) or self.dispersion.shape != (x,):
            raise ValueError(
                f"Bandit arrays disagree: ref_logps {self.ref_logps.shape} needs reward ({x}, {n}), "
                f"mu ({x}, {n}, {n}), dispersion ({x},)"
            )
        if not np.allclose(self.mu, np.swapaxes(self.mu, 1, 2)) or not np.allclose(self.mu.sum(axis=(1, 2)), 1):
            raise ValueError("mu must be symmetric and sum to 1 per prompt (a pair-sampling distribution)")
        if np.any(self.dispersion <= 0):
            raise ValueError("dispersion must be > 0 for every prompt (MallowsPO c(x) = -log phi(x))")


def make_bandit(
    n_responses: int = 5, seed: int = 0, *, n_prompts: int = 2, n_refs: int = 3, ref_spread: float = 1.0
) -> Bandit:
    """A random bandit: Gaussian reference logits, secondaries = primary + N(0, ref_spread) logit noise,
    N(0, 1) rewards, a random positive symmetric ``mu`` (every pair compared, so the comparison graph is
    connected and the optimum unique up to a shift) and ``c(x)`` uniform in [0.5, 2]."""
    if n_responses < 2 or n_prompts < 1 or n_refs < 1:
        raise ValueError(f"need n_responses >= 2, n_prompts >= 1, n_refs >= 1 "
                         f"(got {n_responses}, {n_prompts}, {n_refs})")
    rng = np.random.default_rng(seed)
    primary = rng.normal(size=(n_prompts, n_responses))
    logits = np.stack([primary] + [primary + ref_spread * rng.normal(size=primary.shape) for _ in range(n_refs - 1)])
    ref_logps = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    upper = np.triu(rng.uniform(0.2, 1.0, size=(n_prompts, n_responses, n_responses)), k=1)
    mu = upper + np.swapaxes(upper, 1, 2)
    mu /= mu.sum(axis=(1, 2), keepdims=True)
    return Bandit(ref_logps, rng.normal(size=(n_prompts, n_responses)), mu, rng.uniform(0.5, 2.0, size=n_prompts))


def kendall_link(s: np.ndarray, phi: float) -> np.ndarray:
    """``g_phi(s)`` from its formula: ``(d+1)/(1-phi^(d+1)) - d/(1-phi^d)`` for s > 0, ``1 - g(-s)``, 1/2 at 0."""
    d = np.abs(s)
    d_safe = np.where(d > 0, d, 1.0)
    g = (d_safe + 1) / (1 - phi ** (d_safe + 1)) - d_safe / (1 - phi**d_safe)
    return np.where(s > 0, g, np.where(s < 0, 1 - g, 0.5))


def preference_matrix(bandit: Bandit, data: str = "bt", phi: float = 0.05) -> np.ndarray:
    """``P[x, i, j] = P(i beats j)`` under the ``data`` link (see the module docstring); ``P + P^T = 1``."""
    diff = bandit.reward[:, :, None] - bandit.reward[:, None, :]
    if data == "bt":
        return 1 / (1 + np.exp(-diff))
    if data == "theta":
        return 1 / (1 + np.exp(-bandit.dispersion[:, None, None] * diff))
    if data == "phi":
        if not 0 < phi < 1:
            raise ValueError(f"phi must lie strictly between 0 and 1 (got {phi!r})")
        return kendall_link(diff, phi)
    raise ValueError(f"data must be one of {DATA} (got {data!r})")


def _check_call(method: str, options: dict[str, Any]) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS} (got {method!r})")
    allowed = _MRPO_OPTIONS if method == "mrpo" else set()
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"options {unknown} do not apply to {method!r}; MRPO takes {sorted(_MRPO_OPTIONS)}")


def _log_softmax(logits: torch.Tensor) -> torch.Tensor:
    # torch.log_softmax enters the OpenMP pool even for ten numbers (~20 ms per call on a loaded 2-core
    # machine, 3 us single-threaded); logsumexp does not
    return logits - torch.logsumexp(logits, dim=-1, keepdim=True)


@contextmanager
def _single_thread() -> Iterator[None]:
    """Run torch single-threaded inside the block and restore the caller's setting afterwards.

    The lab's tensors hold tens of numbers, yet some CPU kernels (log_sigmoid) still wake the thread pool
    on every call, which costs ~20 ms per call on a busy machine: threads only slow these problems down.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass(frozen=True)
class _Pairs:
    """Every ordered pair (x, i, j), i != j, as a batch: i chosen, j rejected, weight ``mu_ij P_ij / X``."""

    xs: torch.Tensor
    ii: torch.Tensor
    jj: torch.Tensor
    weight: torch.Tensor


def _pairs(bandit: Bandit, data: str, phi: float) -> _Pairs:
    n_prompts, n = bandit.reward.shape
    xs, ii, jj = np.nonzero(np.broadcast_to(~np.eye(n, dtype=bool), (n_prompts, n, n)))
    weight = bandit.mu[xs, ii, jj] * preference_matrix(bandit, data, phi)[xs, ii, jj] / n_prompts
    return _Pairs(*(torch.from_numpy(a) for a in (xs, ii, jj, weight)))


def _pair_loss(
    method: str, bandit: Bandit, logp: torch.Tensor, pairs: _Pairs, beta: float, phi: float, options: dict[str, Any]
) -> torch.Tensor:
    xs, ii, jj = pairs.xs, pairs.ii, pairs.jj
    refs = torch.from_numpy(bandit.ref_logps)
    chosen, rejected = logp[xs, ii], logp[xs, jj]
    if method == "mrpo":
        per_pair = mrpo_loss(chosen, rejected, refs[:, xs, ii], refs[:, xs, jj], beta, **options)
    else:
        args = (chosen, rejected, refs[0, xs, ii], refs[0, xs, jj], beta)
        if method == "dpo":
            per_pair = dpo_loss(*args)
        elif method == "mallows_theta":
            per_pair = mallows_theta_loss(*args, torch.from_numpy(bandit.dispersion)[xs])
        else:
            per_pair = mallows_phi_loss(*args, phi)
    return (pairs.weight * per_pair).sum()


def population_loss(
    method: str,
    bandit: Bandit,
    logp: torch.Tensor,
    *,
    data: str = "bt",
    beta: float = 0.1,
    phi: float = 0.05,
    **options: Any,
) -> torch.Tensor:
    """``sum_x sum_{i != j} mu_ij P_ij f(h_i - h_j) / X`` for policy log-probs ``logp`` [X, n] (float64 tensor).

    Every ordered pair (i, j) is one example of the batch, chosen i and rejected j, weighted by
    ``mu_ij P_ij``; ``f`` is the per-example loss of ``engine.methods.losses``. ``phi`` is the Kendall link's
    parameter for both the ``"phi"`` data and ``mallows_phi``; ``options`` go to ``mrpo_loss``.
    """
    _check_call(method, options)
    return _pair_loss(method, bandit, logp, _pairs(bandit, data, phi), beta, phi, options)


@dataclass(frozen=True)
class Solution:
    """``logp`` [X, n] normalised log-probs of the minimiser, its population ``loss``, the final max-abs
    gradient w.r.t. the implicit reward ``z`` (``grad_max``; ~0 at a stationary point) and L-BFGS ``rounds``."""

    logp: np.ndarray
    loss: float
    grad_max: float
    rounds: int


def solve(
    method: str,
    bandit: Bandit,
    *,
    data: str = "bt",
    beta: float = 0.1,
    phi: float = 0.05,
    tol: float = 1e-9,
    max_rounds: int = 50,
    **options: Any,
) -> Solution:
    """Minimise the population loss over the softmax policy with float64 L-BFGS (strong-Wolfe line search).

    Starts from the primary reference (``z = 0``), as training does. MallowsPO-phi is the exception: its
    loss has zero gradient at zero margins and jumps there (non-convex), so it starts from the DPO solution
    on the same data, which orders the responses like the data do. Stops when ``max|grad| < tol``.
    """
    _check_call(method, options)
    if not (tol > 0 and max_rounds >= 1):
        raise ValueError(f"tol must be > 0 and max_rounds >= 1 (got tol={tol!r}, max_rounds={max_rounds!r})")
    if method == "mallows_phi":
        start = solve("dpo", bandit, data=data, beta=beta, phi=phi, tol=1e-8, max_rounds=max_rounds)
        z0 = beta * (start.logp - bandit.ref_logps[0])
    else:
        z0 = np.zeros_like(bandit.reward)
    z = torch.tensor(z0, dtype=torch.float64, requires_grad=True)
    base = torch.from_numpy(bandit.ref_logps[0])
    pairs = _pairs(bandit, data, phi)

    def objective() -> torch.Tensor:
        return _pair_loss(method, bandit, _log_softmax(base + z / beta), pairs, beta, phi, options)

    optimizer = torch.optim.LBFGS(
        [z], lr=1.0, max_iter=200, tolerance_grad=tol, tolerance_change=0.0, history_size=50,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    rounds, grad_max = 0, float("inf")
    with _single_thread():
        while rounds < max_rounds and grad_max >= tol:
            optimizer.step(closure)
            rounds += 1
            loss = closure()
            grad_max = z.grad.abs().max().item()
    with torch.no_grad():
        logp = _log_softmax(base + z / beta).numpy()
    return Solution(logp, loss.item(), grad_max, rounds)


def _normalise(logits: np.ndarray) -> np.ndarray:
    top = logits.max(axis=-1, keepdims=True)
    return logits - top - np.log(np.exp(logits - top).sum(axis=-1, keepdims=True))


def _virtual_reference(bandit: Bandit, options: dict[str, Any]) -> np.ndarray:
    """MRPO's pi_tilde per response [X, n] for fixed weights and no / fixed-eps clipping, from probabilities."""
    alpha = options.get("alpha")
    clip, adaptive = options.get("clip", True), options.get("adaptive_eps", True)
    if alpha is None or (clip and adaptive):
        raise NoClosedForm("MRPO has a closed form only with fixed alpha and no clipping or fixed-eps clipping")
    a = np.asarray(alpha, dtype=np.float64)
    if options.get("arwc_convention", "paper") == "official_k2":
        a = a[::-1]
    refs = bandit.ref_logps.copy()
    if clip:
        eps = options.get("eps_max", 0.1)
        low, high = refs[0] - eps * np.abs(refs[0]), refs[0] + eps * np.abs(refs[0])
        refs[1:] = np.clip(refs[1:], low, high)
    if options.get("virtual_ref", "harmonic") == "geometric":
        return np.tensordot(a, refs, axes=1)
    probs = np.exp(refs)  # bandit probabilities are O(1/n): no underflow here
    return np.log(1 / np.tensordot(a, 1 / probs, axes=1))


def closed_form(
    method: str, bandit: Bandit, *, data: str = "bt", beta: float = 0.1, phi: float = 0.05, **options: Any
) -> np.ndarray:
    """The population optimum of docs/methods (dpo, mallows_po, mrpo: closed-form checks), normalised log-probs [X, n].

    - DPO: ``pi_ref exp(s r / beta)`` with data scale ``s = 1`` (BT) or ``c(x)`` (theta data);
    - MallowsPO-theta: ``pi_ref exp(s r / (beta c))``: BT -> ``exp(r/(beta c))``, theta data -> ``exp(r/beta)``;
    - MallowsPO-phi with data from the same Kendall link: ``pi_ref exp(r / beta)`` (every ``P_ij`` is then
      reachable by the link, so each pair's cross-entropy is minimised at ``beta Delta = r_i - r_j``);
    - MRPO, fixed alpha, no clip or fixed-eps clip: ``pi_tilde exp(s r / beta)``.
    Raises ``NoClosedForm`` otherwise (ARWC, adaptive eps, phi link against other data, sigmoid link on phi data).
    """
    _check_call(method, options)
    if data not in DATA:
        raise ValueError(f"data must be one of {DATA} (got {data!r})")
    if (method == "mallows_phi") != (data == "phi"):
        raise NoClosedForm(f"no closed form for {method} on {data!r} data: the link differs from the data's")
    scale = bandit.dispersion[:, None] if data == "theta" else np.ones((bandit.reward.shape[0], 1))
    temperature = beta * bandit.dispersion[:, None] if method == "mallows_theta" else beta
    base = _virtual_reference(bandit, options) if method == "mrpo" else bandit.ref_logps[0]
    return _normalise(base + scale * bandit.reward / temperature)


def max_logratio_error(logp_a: np.ndarray, logp_b: np.ndarray) -> float:
    """``max_x min_C max_i |log pi_a(i|x) - log pi_b(i|x) - C|``: the largest log-ratio error once each
    prompt's best constant shift is removed (half the range of the difference)."""
    logp_a, logp_b = np.asarray(logp_a, dtype=np.float64), np.asarray(logp_b, dtype=np.float64)
    if logp_a.shape != logp_b.shape:
        raise ValueError(f"logp_b has shape {logp_b.shape} but logp_a has {logp_a.shape}; compare [X, n] with [X, n]")
    diff = logp_a - logp_b
    if diff.ndim == 1:
        diff = diff[None]
    return float(((diff.max(axis=-1) - diff.min(axis=-1)) / 2).max())
