"""MixMPO math (engine/mixing.py) against independent truth: brute-force grids of F over the simplex,
exact expectations on enumerable response sets, hand-computed log-softmaxes and optimisation theory.

Every reference quantity here (F, its gradient J, its Hessian, exact mixtures) is recomputed in this file
from the definitions in docs/methods/mixing_po.md, not taken from the module under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import log_softmax, logsumexp, softmax

from engine import mixing as mx

GRID_STEP = 0.01

# ---------------------------------------------------------------------------------------------- reference math


def synthetic_logratios(seed: int, n: int, m: int, scales: list[float], corr: float = 0.3) -> np.ndarray:
    """Correlated rewards per sample, turned into DPO-normalised log-ratios: mean_j exp(ell_k) = 1 per prompt."""
    k = len(scales)
    cov = np.full((k, k), corr) + (1 - corr) * np.eye(k)
    r = np.random.default_rng(seed).multivariate_normal(np.zeros(k), cov, size=(n, m)) * np.asarray(scales)
    return r - (logsumexp(r, axis=1, keepdims=True) - np.log(m))


def simplex_grid(k: int, h: float) -> np.ndarray:
    """All points of the simplex whose coordinates are multiples of h."""
    n = round(1 / h)
    if k == 2:
        a = np.arange(n + 1)[:, None]
    else:
        a = np.array([(i, j) for i in range(n + 1) for j in range(n + 1 - i)])
    a = a * h
    return np.column_stack([a, 1 - a.sum(axis=1)])


def lse(x: np.ndarray, axis: int) -> np.ndarray:
    """Stable log-sum-exp (scipy's is ~10x slower on the large grid arrays here)."""
    top = x.max(axis=axis, keepdims=True)
    return np.log(np.exp(x - top).sum(axis=axis)) + np.squeeze(top, axis)


def tilt(lams: np.ndarray, ell: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per grid point and prompt: log mean_j exp(lambda . ell) [G, N] and the tilted weights [G, N, M]."""
    n, m, k = ell.shape
    h = (lams @ ell.reshape(n * m, k).T).reshape(-1, n, m)
    log_z = lse(h, axis=2)
    return log_z - np.log(ell.shape[1]), np.exp(h - log_z[..., None])


def F(lams: np.ndarray, ell: np.ndarray) -> np.ndarray:
    return tilt(lams, ell)[0].mean(axis=1)


def J(lam: np.ndarray, ell: np.ndarray) -> np.ndarray:
    """dF/dlambda_k = mean over prompts of E_{pi_lambda}[ell_k]."""
    w = tilt(lam[None], ell)[1][0]
    return np.einsum("nm,nmk->k", w, ell) / ell.shape[0]


def hessians(lams: np.ndarray, ell: np.ndarray) -> np.ndarray:
    """Hessian of F at each grid point [G, K, K]: mean over prompts of Cov_{pi_lambda}(ell)."""
    w = tilt(lams, ell)[1]
    n, m, k = ell.shape
    outer = (ell[..., :, None] * ell[..., None, :]).reshape(n, m, k * k)
    w_by_prompt = np.moveaxis(w, 1, 0)  # [N, G, M]: one BLAS product per prompt
    mean = np.moveaxis(w_by_prompt @ ell, 0, 1)  # [G, N, K]
    second = np.moveaxis(w_by_prompt @ outer, 0, 1).reshape(-1, n, k, k)
    return (second - mean[..., :, None] * mean[..., None, :]).mean(axis=1)


def curvature(lams: np.ndarray, ell: np.ndarray) -> tuple[float, float, float]:
    """(L_inf, L_2, mu) over the simplex, read on the grid with a 25% margin (H is smooth, the grid fine):
    L_inf = max |H_kl| bounds smoothness in the l1 norm (the one entropic mirror descent needs), L_2 the
    largest eigenvalue, mu the smallest eigenvalue on the tangent space {sum d = 0} (strong convexity)."""
    hs = hessians(lams, ell)
    k = ell.shape[2]
    basis = np.linalg.svd(np.eye(k) - 1.0 / k)[0][:, : k - 1]  # orthonormal basis of {d : sum d = 0}
    tangent = np.einsum("ka,gkl,lb->gab", basis, hs, basis)
    return (1.25 * np.abs(hs).max(), 1.25 * np.linalg.eigvalsh(hs).max(),
            0.8 * np.linalg.eigvalsh(tangent).min())


def grid_optimum(ell: np.ndarray) -> tuple[np.ndarray, float, float, float, float]:
    """Grid minimiser, its F, and the grid's own error bound: rounding lambda* to the grid while keeping its
    zero coordinates at zero moves it by d with g*.d = 0 and |d|^2 < K h^2, so F_grid - F* <= L_2 K h^2 / 2."""
    lams = simplex_grid(ell.shape[2], GRID_STEP)
    f = F(lams, ell)
    l_inf, l_2, mu = curvature(lams, ell)
    i = int(f.argmin())
    return lams[i], float(f[i]), l_2 * ell.shape[2] * GRID_STEP**2 / 2, l_inf, mu


def check_against_grid(lam: np.ndarray, ell: np.ndarray, eps: float, grid: tuple) -> None:
    """Theory promises F(lam) - F* <= eps; check that against the grid minimum, then lam against the grid's
    minimiser through strong convexity, |lam - lam*|^2 <= 2 (F(lam) - F*) / mu, bounding F(lam) - F* by the
    smaller of eps and the duality gap sum lam_k J_k - min J_k (a certificate: F(lam) - F* <= gap, always)."""
    lam_grid, f_grid, grid_err, _, mu = grid
    f_lam = float(F(lam[None], ell)[0])
    assert f_grid - grid_err - 1e-12 <= f_lam <= f_grid + eps
    j = J(lam, ell)
    subopt = min(eps, float(lam @ j - j.min()))
    tol = math.sqrt(2 * (subopt + grid_err) / mu) + math.sqrt(2 * grid_err / mu)
    assert np.linalg.norm(lam - lam_grid) <= tol
    assert tol < 0.2  # the check must be able to tell apart points of the simplex


# ---------------------------------------------------------------------------------------------- mirror descent


@pytest.mark.parametrize("scales", [[1.0, 2.0], [1.0, 1.5, 2.0]], ids=["K2", "K3"])
def test_full_gradient_mirror_descent_matches_grid_minimum(scales):
    # with every prompt in each step the method is deterministic entropic mirror descent; for a function that
    # is L-smooth in l1, step 1/L gives mean_t F(lambda_t) - F* <= L log K / T (Lu, Freund, Nesterov 2018)
    ell = synthetic_logratios(1, n=10, m=30, scales=scales)
    grid = grid_optimum(ell)
    l_inf = grid[3]
    steps = 3000
    lam = mx.mirror_descent_weights(ell, eta=1 / l_inf, steps=steps, prompts_per_step=10)
    assert lam.shape == (len(scales),) and abs(lam.sum() - 1) < 1e-12 and np.all(lam >= 0)
    check_against_grid(lam, ell, l_inf * math.log(len(scales)) / steps, grid)


@pytest.mark.parametrize("scales", [[1.0, 2.0], [1.0, 1.5, 2.0]], ids=["K2", "K3"])
def test_default_stochastic_mirror_descent_matches_grid_minimum(scales):
    # paper defaults (eta 0.02, one prompt per step, 2000 steps); stochastic mirror descent's bound on the
    # expected suboptimality of the average: log K / (eta T) + eta/2 * mean_t |g_t|_inf^2
    ell = synthetic_logratios(2, n=12, m=30, scales=scales)
    trace = mx.mirror_descent_trace(ell)
    eps = math.log(len(scales)) / (0.02 * 2000) + 0.01 * float((np.abs(trace.g).max(axis=1) ** 2).mean())
    check_against_grid(trace.weights, ell, eps, grid_optimum(ell))
    assert np.array_equal(trace.weights, mx.mirror_descent_weights(ell))


def inactive_objective_instance() -> np.ndarray:
    """K = 3 where objective 3 is a normalised average of the other two: E e^{avg} <= 1 (Jensen), so
    pi_lambda already does better on it than the floor and the max-min solution gives it no weight."""
    two = synthetic_logratios(3, n=10, m=30, scales=[1.0, 1.5])
    avg = two.mean(axis=2)
    third = avg - (logsumexp(avg, axis=1, keepdims=True) - np.log(30))
    return np.concatenate([two, third[..., None]], axis=2)


def test_kkt_active_objectives_equalised_inactive_above_floor():
    ell = inactive_objective_instance()
    lam_grid, _, _, l_inf, _ = grid_optimum(ell)
    assert lam_grid[2] == 0 and min(lam_grid[:2]) > 0.2  # the instance does have one inactive objective
    steps = 3000
    lam = mx.mirror_descent_weights(ell, eta=1 / l_inf, steps=steps, prompts_per_step=10, tail=True)
    j = J(lam, ell)
    # tail average: (2 / T) L log K bound; the KKT point itself is checked to solver precision
    assert F(lam[None], ell)[0] - F(lam_grid[None], ell)[0] <= 2 * l_inf * math.log(3) / steps
    assert abs(j[0] - j[1]) < 1e-6
    assert j[2] > max(j[0], j[1]) + 0.05
    assert lam[2] < 1e-6
    # duality: F(lambda*) = min_k J_k - KL(pi_lambda* || pi_ref), and the gap sum lambda J - min J vanishes
    w = tilt(lam[None], ell)[1][0]
    kl = float(np.mean(np.sum(w * np.log(w * ell.shape[1]), axis=1)))
    assert F(lam[None], ell)[0] == pytest.approx(j.min() - kl, abs=1e-6)
    assert mx.duality_gap(lam, j) < 1e-6


def test_tail_average_removes_start_up_weight_of_inactive_objective():
    ell = inactive_objective_instance()
    full = mx.mirror_descent_weights(ell)
    tail = mx.mirror_descent_weights(ell, tail=True)
    # the uniform start gives lambda_3 = 1/3 and the full average keeps part of it
    assert tail[2] < full[2] / 2
    assert F(tail[None], ell)[0] <= F(full[None], ell)[0]


def test_trace_rows_are_the_mirror_descent_recursion():
    ell = synthetic_logratios(4, n=5, m=12, scales=[1.0, 2.0, 0.5])
    eta = 0.3
    tr = mx.mirror_descent_trace(ell, eta=eta, steps=50, prompts_per_step=5)  # full batch: rows are exact
    assert np.allclose(tr.lam[0], 1 / 3)
    for t in (0, 1, 17, 49):
        lam, g = tr.lam[t], J(tr.lam[t], ell)
        assert np.allclose(tr.g[t], g, atol=1e-12)
        assert tr.f_hat[t] == pytest.approx(F(lam[None], ell)[0], abs=1e-12)
        assert tr.gap[t] == pytest.approx(lam @ g - g.min(), abs=1e-12)
        w = tilt(lam[None], ell)[1][0]
        ess = 1 / np.sum(w**2, axis=1)
        assert tr.ess_mean[t] == pytest.approx(ess.mean()) and tr.ess_min[t] == pytest.approx(ess.min())
        if t < 49:
            nxt = lam * np.exp(-eta * g)
            assert np.allclose(tr.lam[t + 1], nxt / nxt.sum(), atol=1e-12)
    last = tr.lam[-1] * np.exp(-eta * tr.g[-1])
    updated = np.vstack([tr.lam[1:], last / last.sum()])  # the paper averages the iterates after each update
    assert np.allclose(tr.weights, updated.mean(axis=0), atol=1e-12)
    row = tr.metrics(3, names=["a", "b", "c"])
    assert set(row) == {"mix/lambda_a", "mix/lambda_b", "mix/lambda_c", "mix/g_a", "mix/g_b", "mix/g_c",
                        "mix/F_hat", "mix/ess_mean", "mix/ess_min", "mix/gap"}
    assert row["mix/g_b"] == tr.g[3, 1] and row["mix/gap"] == tr.gap[3]


def test_f_hat_and_gradient_match_definitions_and_finite_differences():
    ell = synthetic_logratios(5, n=4, m=9, scales=[1.0, 3.0, 0.7])
    lam = np.array([0.2, 0.5, 0.3])
    assert mx.f_hat(lam, ell) == pytest.approx(F(lam[None], ell)[0], abs=1e-12)
    assert np.allclose(mx.f_hat_grad(lam, ell), J(lam, ell), atol=1e-12)
    step = 1e-6
    numeric = [(mx.f_hat(lam + step * e, ell) - mx.f_hat(lam - step * e, ell)) / (2 * step) for e in np.eye(3)]
    assert np.allclose(mx.f_hat_grad(lam, ell), numeric, atol=1e-7)
    assert mx.f_hat(np.zeros(3), ell) == pytest.approx(0.0, abs=1e-12)  # lambda = 0 is pi_ref itself


# ---------------------------------------------------------------------------------------------- estimates


def finite_world(seed: int, n: int = 3, r: int = 6, k: int = 2, s: int = 2, beta: float = 0.5):
    """Enumerable responses: pi_ref, experts pi_k ∝ pi_ref exp(r_k / beta), exact log-ratios, scores."""
    rng = np.random.default_rng(seed)
    log_ref = np.log(rng.dirichlet(np.ones(r), size=n))
    rewards = rng.normal(size=(n, r, k))
    log_pi = log_softmax(log_ref[..., None] + rewards / beta, axis=1)
    return log_ref, log_pi - log_ref[..., None], rng.normal(size=(n, r, s))


def sample_from_ref(log_ref: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    """[N, M] indices of M responses per prompt drawn from pi_ref."""
    return np.stack([rng.choice(log_ref.shape[1], size=m, p=np.exp(row)) for row in log_ref])


def exact_mixture(log_ref, ell, scores, lam):
    log_mix = log_softmax(log_ref + ell @ lam, axis=1)
    p = np.exp(log_mix)
    return np.einsum("nr,nrs->s", p, scores) / len(p), float(np.mean(np.sum(p * (log_mix - log_ref), axis=1)))


def test_importance_weighted_estimate_matches_exact_expectation():
    log_ref, ell, scores = finite_world(6)
    lam = np.array([0.3, 0.7])
    idx = sample_from_ref(log_ref, 4000, np.random.default_rng(7))
    est = mx.estimate_mixture(np.take_along_axis(ell, idx[..., None], 1),
                              np.take_along_axis(scores, idx[..., None], 1), lam)
    exact_scores, exact_kl = exact_mixture(log_ref, ell, scores, lam)
    assert np.all(np.abs(est.scores - exact_scores) <= 4 * est.stderr)
    assert abs(est.kl - exact_kl) <= 4 * est.kl_stderr
    assert est.reliable and est.ess.shape == (3,) and est.ess_min <= est.ess_mean <= 4000


def test_standard_errors_match_the_spread_of_repeated_estimates():
    log_ref, ell, scores = finite_world(8)
    lam = np.array([0.6, 0.4])
    rng = np.random.default_rng(9)
    runs = []
    for _ in range(300):
        idx = sample_from_ref(log_ref, 300, rng)
        runs.append(mx.estimate_mixture(np.take_along_axis(ell, idx[..., None], 1),
                                        np.take_along_axis(scores, idx[..., None], 1), lam))
    spread = np.std([r.scores for r in runs], axis=0)
    reported = np.mean([r.stderr for r in runs], axis=0)
    # 300 replicates: the sample standard deviation itself is known to about 4%
    assert np.allclose(reported, spread, rtol=0.2)
    assert np.mean([r.kl_stderr for r in runs]) == pytest.approx(np.std([r.kl for r in runs]), rel=0.2)


def test_ess_equals_m_for_lambda_zero_and_collapses_on_an_outlier():
    ell = synthetic_logratios(10, n=4, m=50, scales=[1.0, 2.0])
    scores = np.random.default_rng(11).normal(size=(4, 50, 1))
    est = mx.estimate_mixture(ell, scores, np.zeros(2))
    assert np.allclose(est.ess, 50, rtol=1e-12) and est.kl == pytest.approx(0, abs=1e-12)
    assert np.allclose(est.scores, scores.mean(axis=(0, 1)))  # pi_ref: plain averages
    ell[2, 7, 0] = 60.0  # one sample 60 nats more likely under expert 0 carries all the weight
    bad = mx.estimate_mixture(ell, scores, np.array([1.0, 0.0]))
    assert bad.ess_min == pytest.approx(1.0, abs=1e-6) and not bad.reliable
    assert bad.ess_required == 5.0


# ---------------------------------------------------------------------------------------------- decoding


def test_mixture_logprobs_matches_hand_computation():
    logits = np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    w = np.array([0.25, 0.75])
    lsm = [[z - math.log(sum(math.exp(u) for u in row)) for z in row] for row in logits]
    mixed = [w[0] * a + w[1] * b for a, b in zip(*lsm)]
    norm = math.log(sum(math.exp(v) for v in mixed))
    expected = np.array([v - norm for v in mixed])
    got = mx.mixture_logprobs(logits, w)
    assert isinstance(got, np.ndarray) and np.allclose(got, expected, atol=1e-12)
    as_torch = mx.mixture_logprobs(torch.tensor(logits), torch.tensor(w))
    assert isinstance(as_torch, torch.Tensor) and np.allclose(as_torch.numpy(), expected, atol=1e-12)


def test_one_hot_weights_return_the_expert_exactly_and_zero_weights_ignore_masks():
    logits = np.random.default_rng(12).normal(size=(3, 2, 4, 7)).astype(np.float32)
    assert np.array_equal(mx.mixture_logprobs(logits, [1.0, 0.0, 0.0]), log_softmax(logits[0], axis=-1))
    t = torch.from_numpy(logits)
    assert torch.equal(mx.mixture_logprobs(t, [1.0, 0.0, 0.0]), torch.log_softmax(t[0], dim=-1))
    masked = logits.copy()
    masked[2, ..., 0] = -np.inf  # an expert that forbids token 0 but has weight 0 must not matter
    both = mx.mixture_logprobs(masked, [0.5, 0.5, 0.0])
    assert np.allclose(both, mx.mixture_logprobs(logits[:2], [0.5, 0.5]))
    assert mx.mixture_logprobs(t.to(torch.bfloat16), [0.2, 0.3, 0.5]).dtype == torch.float32


def two_step_world(seed: int = 13, v: int = 3, k: int = 2):
    """Experts over all length-2 sequences: step-1 logits [K, V], step-2 logits [K, V(prev), V]."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(k, v)) * 2, rng.normal(size=(k, v, v)) * 2


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_token_level_sir_weights_recover_the_sequence_level_mixture(temperature):
    first, second = two_step_world()
    lam = np.array([0.35, 0.65])
    v = first.shape[1]
    seqs = [(a, b) for a in range(v) for b in range(v)]
    # target: prod_k pi_k(y)^lambda_k, normalised over all 9 sequences
    log_pk = np.array([[log_softmax(first[k])[a] + log_softmax(second[k, a])[b] for a, b in seqs] for k in (0, 1)])
    target = softmax(lam @ log_pk)
    # proposal: token-level mixing at the given temperature; SIR log-weight summed over the two steps
    log_q, log_w = [], []
    for a, b in seqs:
        mix1 = mx.mixture_logprobs(first, lam)
        mix2 = mx.mixture_logprobs(second[:, a], lam)
        log_q.append(log_softmax(mix1 / temperature)[a] + log_softmax(mix2 / temperature)[b])
        log_w.append(mx.mixture_step_log_weight(first, lam, np.array(a), temperature)
                     + mx.mixture_step_log_weight(second[:, a], lam, np.array(b), temperature))
    assert np.allclose(softmax(np.array(log_q) + np.array(log_w)), target, atol=1e-12)
    if temperature == 1.0:
        assert not np.allclose(np.exp(log_q), target, atol=1e-3)  # token-level mixing alone is biased
        assert np.all(np.array(log_w) <= 1e-12)  # Hoelder: every per-step normaliser Z_t <= 1
    batched = mx.mixture_step_log_weight(torch.tensor(second), lam, torch.tensor([0, 2, 1]), temperature)
    assert np.allclose(batched.numpy(), [mx.mixture_step_log_weight(second[:, i], lam, np.array(j), temperature)
                                         for i, j in enumerate([0, 2, 1])], atol=1e-6)


def test_sir_from_reference_recovers_the_mixture():
    log_ref, ell, _ = finite_world(14, n=2, r=5, k=3)
    lam = np.array([0.2, 0.3, 0.5])
    exact = softmax(log_ref + ell @ lam, axis=1)
    assert np.allclose(softmax(log_ref + mx.sir_ref_log_weights(ell, lam), axis=1), exact, atol=1e-12)


def test_sir_resample_frequencies_and_ess():
    probs = np.array([[0.1, 0.2, 0.0, 0.7], [0.25, 0.25, 0.25, 0.25]])
    with np.errstate(divide="ignore"):
        log_w = np.log(probs) + 40.0  # a large shared offset must not matter
    n = 20000
    res = mx.sir_resample(log_w, num_samples=n, seed=15)
    assert res.indices.shape == (2, n)
    freq = np.stack([np.bincount(row, minlength=4) / n for row in res.indices])
    assert np.all(np.abs(freq - probs) <= 5 * np.sqrt(probs * (1 - probs) / n))
    assert freq[0, 2] == 0  # zero-weight candidates are never drawn
    assert np.allclose(res.ess, [1 / np.sum(probs[0] ** 2), 4.0])
    assert np.array_equal(mx.sir_resample(log_w, 5, seed=3).indices, mx.sir_resample(log_w, 5, seed=3).indices)
    assert mx.effective_sample_size(np.log([0.5, 0.25, 0.25])) == pytest.approx(1 / 0.375)


# ---------------------------------------------------------------------------------------------- validation


GOOD = np.zeros((2, 3, 2))


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: mx.mixture_logprobs(np.zeros((2, 4)), [1.2, -0.2]), "weights"),
        (lambda: mx.mixture_logprobs(np.zeros((2, 4)), [0.5, 0.4]), "weights"),
        (lambda: mx.mixture_logprobs(np.zeros((2, 4)), [0.5, 0.25, 0.25]), "weights"),
        (lambda: mx.mixture_logprobs(np.zeros(4), [1.0]), "logits"),
        (lambda: mx.mixture_logprobs(np.full((2, 4), np.nan), [0.5, 0.5]), "logits"),
        (lambda: mx.mirror_descent_weights(np.zeros((3, 2))), "logratios"),
        (lambda: mx.mirror_descent_weights(np.full((2, 3, 2), np.nan)), "logratios"),
        (lambda: mx.mirror_descent_weights(GOOD, prompts_per_step=3), "prompts_per_step"),
        (lambda: mx.mirror_descent_weights(GOOD, eta=0.0), "eta"),
        (lambda: mx.mirror_descent_weights(GOOD, steps=0), "steps"),
        (lambda: mx.estimate_mixture(GOOD, np.zeros((2, 3)), [0.5, 0.5]), "scores"),
        (lambda: mx.estimate_mixture(GOOD, np.zeros((2, 3, 1)), [-0.5, 1.5]), "weights"),
        (lambda: mx.duality_gap([0.7, 0.7], [0.1, 0.2]), "weights"),
        (lambda: mx.f_hat([1.0], GOOD), "weights"),
        (lambda: mx.mixture_step_log_weight(np.zeros((2, 4)), [0.5, 0.5], np.array(1), 0.0), "temperature"),
        (lambda: mx.sir_resample(np.full(3, -np.inf)), "log_weights"),
    ],
)
def test_bad_input_gives_one_line_error_naming_the_argument(call, name):
    with pytest.raises(ValueError, match=name) as err:
        call()
    assert "\n" not in str(err.value)
