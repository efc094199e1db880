"""engine/theory/bandit.py: population minimisers of every loss against the closed-form optima of docs/methods.

Each expected optimum is written out here from the document's formula (numpy, probabilities), so both
``solve`` (which runs engine.losses) and ``closed_form`` are checked against it.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from engine.losses import mallows_phi_log_link
from engine.theory.bandit import (
    Bandit,
    NoClosedForm,
    closed_form,
    kendall_link,
    make_bandit,
    max_logratio_error,
    population_loss,
    preference_matrix,
    solve,
)

SEEDS = (0, 1, 2)
TOL = 1e-3


def normalise(logits: np.ndarray) -> np.ndarray:
    return logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))


def check(method: str, bandit: Bandit, expected: np.ndarray, **kwargs) -> np.ndarray:
    """solve and closed_form both match ``expected``; the optimum moved away from the primary reference."""
    solution = solve(method, bandit, **kwargs)
    assert solution.grad_max < 1e-6
    assert max_logratio_error(solution.logp, expected) < TOL
    assert max_logratio_error(closed_form(method, bandit, **kwargs), expected) < 1e-9
    assert max_logratio_error(expected, bandit.ref_logps[0]) > 0.5  # a non-trivial optimum
    return solution.logp


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_on_bradley_terry_data(seed, beta):
    b = make_bandit(5, seed)
    check("dpo", b, b.ref_logps[0] + b.reward / beta, data="bt", beta=beta)


@pytest.mark.parametrize("seed", SEEDS)
def test_mallows_theta_on_bradley_terry_data_has_temperature_beta_c(seed):
    b, beta = make_bandit(5, seed), 0.2
    expected = b.ref_logps[0] + b.reward / (beta * b.dispersion[:, None])
    logp = check("mallows_theta", b, expected, data="bt", beta=beta)
    assert max_logratio_error(logp, b.ref_logps[0] + b.reward / beta) > 0.1  # c(x) != 1 changes the answer


@pytest.mark.parametrize("seed", SEEDS)
def test_mallows_theta_removes_the_dispersion_of_theta_data(seed):
    """Data sigma(c dr): MallowsPO-theta recovers pi_ref exp(r/beta); DPO on the same data gets exp(c r/beta)."""
    b, beta = make_bandit(5, seed), 0.2
    check("mallows_theta", b, b.ref_logps[0] + b.reward / beta, data="theta", beta=beta)
    dpo = check("dpo", b, b.ref_logps[0] + b.dispersion[:, None] * b.reward / beta, data="theta", beta=beta)
    assert max_logratio_error(dpo, b.ref_logps[0] + b.reward / beta) > 0.1


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("phi", [0.05, 0.3, 0.7])
def test_mallows_phi_on_data_from_its_own_link(seed, phi):
    """Kendall-link data: every P_ij is reachable, so beta (h_i - h_j) = r_i - r_j (docs/methods/mallows_po.md)."""
    b, beta = make_bandit(4, seed), 0.5
    check("mallows_phi", b, b.ref_logps[0] + b.reward / beta, data="phi", beta=beta, phi=phi)
    # the solver's start (DPO on the same data) is elsewhere: the phi link itself moved the answer
    dpo = solve("dpo", b, data="phi", beta=beta, phi=phi).logp
    assert max_logratio_error(dpo, b.ref_logps[0] + b.reward / beta) > 1e-2


def harmonic_reference(refs: np.ndarray, alpha: list[float]) -> np.ndarray:
    """log of (sum_k a_k / pi_k)^-1 from probabilities."""
    return np.log(1 / sum(a / np.exp(r) for a, r in zip(alpha, refs)))


@pytest.mark.parametrize("seed", SEEDS)
def test_mrpo_fixed_alpha_without_clipping(seed):
    b, beta, alpha = make_bandit(5, seed), 0.1, [0.5, 0.3, 0.2]
    pi_tilde = harmonic_reference(b.ref_logps, alpha)
    logp = check("mrpo", b, pi_tilde + b.reward / beta, beta=beta, alpha=alpha, clip=False)
    assert max_logratio_error(logp, b.ref_logps[0] + b.reward / beta) > 0.1  # not plain DPO


@pytest.mark.parametrize("seed", SEEDS)
def test_mrpo_fixed_alpha_with_fixed_eps_clipping(seed):
    b, beta, alpha, eps = make_bandit(5, seed), 0.1, [0.4, 0.4, 0.2], 0.1
    primary = b.ref_logps[0]
    clipped = [primary] + [np.clip(r, primary - eps * abs(primary), primary + eps * abs(primary))
                           for r in b.ref_logps[1:]]
    assert np.mean(np.stack(clipped[1:]) != b.ref_logps[1:]) > 0.5  # clipping binds on most secondaries
    pi_tilde = harmonic_reference(np.stack(clipped), alpha)
    options = {"alpha": alpha, "eps_max": eps, "clip": True, "adaptive_eps": False}
    logp = check("mrpo", b, pi_tilde + b.reward / beta, beta=beta, **options)
    assert max_logratio_error(logp, harmonic_reference(b.ref_logps, alpha) + b.reward / beta) > 0.05


@pytest.mark.parametrize("seed", SEEDS)
def test_mrpo_geometric_virtual_reference_on_theta_data(seed):
    b, beta, alpha = make_bandit(5, seed), 0.3, [0.2, 0.3, 0.5]
    geometric = sum(a * r for a, r in zip(alpha, b.ref_logps))
    expected = geometric + b.dispersion[:, None] * b.reward / beta
    check("mrpo", b, expected, data="theta", beta=beta, alpha=alpha, clip=False, virtual_ref="geometric")


@pytest.mark.parametrize("seed", SEEDS)
def test_mrpo_adaptive_weights_and_clipping_with_identical_references_is_dpo(seed):
    """ARWC and adaptive CTRO have no closed form, but with K copies of one reference pi_tilde = pi_ref."""
    b = make_bandit(5, seed)
    same = dataclasses.replace(b, ref_logps=np.repeat(b.ref_logps[:1], 3, axis=0))
    with pytest.raises(NoClosedForm):
        closed_form("mrpo", same, beta=0.2)
    logp = solve("mrpo", same, beta=0.2).logp  # MRPO defaults: alpha=None (ARWC), adaptive clipping
    assert max_logratio_error(logp, b.ref_logps[0] + b.reward / 0.2) < TOL


def test_population_loss_is_the_weighted_sum_over_ordered_pairs():
    b, beta = make_bandit(4, 3), 0.7
    rng = np.random.default_rng(0)
    logp = normalise(rng.normal(size=b.reward.shape))
    p = preference_matrix(b, "bt")
    total = 0.0
    for x in range(2):
        for i in range(4):
            for j in range(4):
                if i != j:
                    margin = (logp[x, i] - b.ref_logps[0, x, i]) - (logp[x, j] - b.ref_logps[0, x, j])
                    total += b.mu[x, i, j] * p[x, i, j] * math.log1p(math.exp(-beta * margin))
    got = population_loss("dpo", b, torch.from_numpy(logp), data="bt", beta=beta)
    assert got.item() == pytest.approx(total / 2, rel=1e-12)


def test_preference_matrices():
    b = make_bandit(5, 4)
    diff = b.reward[0, 1] - b.reward[0, 3]
    for data, phi in [("bt", 0.05), ("theta", 0.05), ("phi", 0.05), ("phi", 0.6)]:
        p = preference_matrix(b, data, phi)
        assert np.allclose(p + np.swapaxes(p, 1, 2), 1.0)
        assert np.all((p > 0.5) == (b.reward[:, :, None] > b.reward[:, None, :]))
    assert preference_matrix(b, "bt")[0, 1, 3] == pytest.approx(1 / (1 + math.exp(-diff)))
    assert preference_matrix(b, "theta")[0, 1, 3] == pytest.approx(1 / (1 + math.exp(-b.dispersion[0] * diff)))
    # the numpy link and the log-space link of engine.losses are two implementations of one formula; the
    # direct one loses ~8 digits to cancellation in the far tail (1 - g with g ~ 1), hence rtol 1e-6
    s = np.linspace(-6, 6, 49)
    for phi in (0.05, 0.5, 0.9):
        torch_link = mallows_phi_log_link(torch.from_numpy(s), phi).exp().numpy()
        assert np.allclose(kendall_link(s, phi), torch_link, rtol=1e-6, atol=0)
    assert kendall_link(np.array([1.0, 2.0]), 0.2).tolist() == pytest.approx([1 / 1.2, 3 / (1 - 0.008) - 2 / 0.96])


def test_max_logratio_error_removes_the_best_shift():
    a = np.array([[0.0, 1.0, 3.0], [2.0, 2.0, 2.0]])
    assert max_logratio_error(a, np.zeros_like(a)) == 1.5
    assert max_logratio_error(a + 7.0, a) == 0.0
    assert max_logratio_error(np.array([0.0, -1.0]), np.array([0.0, 0.0])) == 0.5


def test_no_closed_form_cases_raise():
    b = make_bandit(4, 0)
    for method, kwargs in [
        ("mrpo", {"alpha": None, "clip": False}),
        ("mrpo", {"alpha": [0.5, 0.3, 0.2], "clip": True}),  # adaptive eps is the default
        ("mallows_phi", {"data": "bt"}),
        ("dpo", {"data": "phi"}),
        ("mallows_theta", {"data": "phi"}),
    ]:
        with pytest.raises(NoClosedForm):
            closed_form(method, b, **kwargs)


@pytest.mark.parametrize(
    "call, word",
    [
        (lambda b: solve("ipo", b), "method"),
        (lambda b: solve("dpo", b, alpha=[0.5, 0.5]), "alpha"),
        (lambda b: closed_form("dpo", b, data="hinge"), "data"),
        (lambda b: preference_matrix(b, "phi", phi=1.0), "phi"),
        (lambda b: solve("dpo", b, tol=0.0), "tol"),
        (lambda b: max_logratio_error(b.reward, b.reward[:, :2]), "logp_b"),
        (lambda b: make_bandit(1, 0), "n_responses"),
        (lambda b: dataclasses.replace(b, dispersion=np.ones(3)), "dispersion"),
        (lambda b: dataclasses.replace(b, mu=b.mu * 2), "mu"),
        (lambda b: dataclasses.replace(b, ref_logps=b.ref_logps[0]), "ref_logps"),
        (lambda b: solve("mrpo", b, alpha=[0.5, 0.5, 0.5]), "alpha"),
    ],
)
def test_bad_input_raises_value_error(call, word):
    with pytest.raises(ValueError) as info:
        call(make_bandit(4, 0))
    assert word in str(info.value) and "\n" not in str(info.value)
