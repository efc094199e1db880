"""engine/losses.py against hand arithmetic (math module), brute force, TRL's own DPO code and gradcheck."""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from engine.losses import (
    arwc_weights,
    dpo_loss,
    mallows_dispersion,
    mallows_phi_log_link,
    mallows_phi_loss,
    mallows_theta_loss,
    mean_normalized_entropy,
    mrpo_loss,
    reward_stats,
    virtual_reference_logps,
)

D = torch.float64


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=D)


def log1p_exp(x: float) -> float:
    """-logsigmoid(-x) written with math only: log(1 + e^x)."""
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


# Small batch used throughout: policy/reference log-probs of chosen (w) and rejected (l) responses.
PW, PL, RW, RL = [-1.0, -4.0, -2.5], [-2.0, -1.5, -2.5], [-1.5, -3.0, -2.0], [-1.2, -2.0, -3.5]


def margins(pw=PW, pl=PL, rw=RW, rl=RL) -> list[float]:
    return [(a - c) - (b - d) for a, b, c, d in zip(pw, pl, rw, rl)]


# ------------------------------------------------------------------------------------------ DPO


def test_dpo_loss_hand_values():
    beta = 0.5
    expected = [log1p_exp(-beta * m) for m in margins()]
    got = dpo_loss(t(PW), t(PL), t(RW), t(RL), beta)
    assert got.shape == (3,)
    assert got.tolist() == pytest.approx(expected, rel=1e-12)
    assert torch.equal(dpo_loss(t(PW), t(PL), t(RW), t(RL), np.float32(0.5)), got)  # numpy scalars accepted


def _trl_sigmoid_dpo(pw: torch.Tensor, pl: torch.Tensor, rw: torch.Tensor, rl: torch.Tensor, beta: float):
    """Run TRL 1.16's real ``DPOTrainer._compute_loss`` (loss_type "sigmoid") on given log-probs.

    ``_compute_loss`` is a method, not a standalone function, so it runs unbound on a minimal stand-in for
    the trainer: a fake model whose per-token log-probs hold one completion token per sequence carrying the
    sequence log-prob, reference log-probs passed as precomputed (``precompute_ref_log_probs=True``), and an
    identity ``gather``. Returns TRL's batch-mean loss and its logged metrics.
    """
    from trl.trainer.dpo_trainer import DPOTrainer

    n = pw.shape[0]
    token_logps = torch.cat([pw, pl]).unsqueeze(1)  # [2B, 1]: TRL's batch is [chosen; rejected]

    class FakeModel:
        training = True

        def __call__(self, **kwargs):
            zeros = torch.zeros(2 * n, 1, dtype=token_logps.dtype)
            return SimpleNamespace(
                log_probs=token_logps, entropy=zeros, mean_logits=zeros, is_top1=torch.ones(2 * n, 1, dtype=torch.bool)
            )

    trainer = SimpleNamespace(
        model=FakeModel(),
        accelerator=SimpleNamespace(device=torch.device("cpu"), gather=lambda x: x, gather_for_metrics=lambda x: x),
        aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl",
        loss_types=["sigmoid"], loss_weights=[1.0], beta=beta, label_smoothing=0.0, use_weighting=False,
        _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1,
    )
    inputs = {
        "input_ids": torch.zeros(2 * n, 2, dtype=torch.long),
        "attention_mask": torch.ones(2 * n, 2, dtype=torch.long),
        "completion_mask": torch.tensor([[0, 1]] * (2 * n)),  # the prompt token, then one completion token
        "ref_chosen_logps": rw,
        "ref_rejected_logps": rl,
    }
    loss = DPOTrainer._compute_loss(trainer, trainer.model, inputs, return_outputs=False)
    return loss, trainer._metrics["train"]


def test_dpo_loss_equals_trl_sigmoid_loss_and_its_logged_rewards():
    gen = torch.Generator().manual_seed(0)
    pw, pl = ((torch.randn(6, generator=gen, dtype=D) * 20 - 150).requires_grad_() for _ in range(2))
    rw, rl = (torch.randn(6, generator=gen, dtype=D) * 20 - 150 for _ in range(2))
    beta = 0.1
    ours = dpo_loss(pw, pl, rw, rl, beta).mean()
    (ours_grad_w, ours_grad_l) = torch.autograd.grad(ours, (pw, pl))
    trl_loss, metrics = _trl_sigmoid_dpo(pw, pl, rw, rl, beta)
    trl_grad_w, trl_grad_l = torch.autograd.grad(trl_loss, (pw, pl))
    assert ours.item() == pytest.approx(trl_loss.item(), rel=1e-12)
    assert torch.allclose(ours_grad_w, trl_grad_w, rtol=1e-12, atol=0)
    assert torch.allclose(ours_grad_l, trl_grad_l, rtol=1e-12, atol=0)
    for i in range(6):  # per example: a batch of one each
        single, _ = _trl_sigmoid_dpo(pw[i : i + 1], pl[i : i + 1], rw[i : i + 1], rl[i : i + 1], beta)
        assert dpo_loss(pw, pl, rw, rl, beta)[i].item() == pytest.approx(single.item(), rel=1e-12)
    logs = reward_stats(pw, pl, rw, rl, beta).as_log_dict()
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert logs[key] == pytest.approx(metrics[key][0], rel=1e-12, abs=1e-15), key


def test_reward_stats_hand_values():
    beta = 0.2
    stats = reward_stats(t(PW), t(PL), t(RW), t(RL), beta)
    chosen = [beta * (a - b) for a, b in zip(PW, RW)]
    rejected = [beta * (a - b) for a, b in zip(PL, RL)]
    assert stats.chosen.tolist() == pytest.approx(chosen)
    assert stats.rejected.tolist() == pytest.approx(rejected)
    assert stats.margins.tolist() == pytest.approx([a - b for a, b in zip(chosen, rejected)])
    assert stats.accuracies.tolist() == [float(a > b) for a, b in zip(chosen, rejected)]
    assert not stats.chosen.requires_grad


# ------------------------------------------------------------------------------------------ MallowsPO


def test_mean_normalized_entropy_hand_values():
    # example 0: two response tokens then padding; example 1: one token whose distribution has a -inf logit
    logits = torch.tensor(
        [
            [[0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [50.0, -7.0, 9.0]],
            [[0.5, float("-inf"), -0.5], [9.0, 9.0, 9.0], [9.0, 9.0, 9.0]],
        ]
    )
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])

    def entropy(row):
        z = sum(math.exp(v) for v in row)
        return -sum((math.exp(v) / z) * (v - math.log(z)) for v in row if v != float("-inf"))

    expected = [
        (entropy([0.0, 0.0, 0.0]) + entropy([1.0, 2.0, 3.0])) / 2 / math.log(3),
        entropy([0.5, float("-inf"), -0.5]) / math.log(3),
    ]
    got = mean_normalized_entropy(logits, mask)
    assert got.dtype == torch.float32
    assert got.tolist() == pytest.approx(expected, rel=1e-6)
    assert got[0].item() > got[1].item()  # uniform first token: more uncertain reference


def test_mallows_dispersion_hand_values_and_clamp():
    hw, hl = t([0.2, 0.5, 0.0]), t([0.4, 0.5, 0.0])
    got = mallows_dispersion(hw, hl)
    assert got.tolist() == pytest.approx([-0.29 * math.log(0.3), -0.29 * math.log(0.5), -0.29 * math.log(1e-6)])
    assert mallows_dispersion(t([1.0]), t([1.0]), phi_star=0.5).item() == 0.0


def test_mallows_theta_loss_hand_values():
    beta, c = 0.1, [2.0, 0.5, 1.3]
    expected = [log1p_exp(-ci * beta * m) for ci, m in zip(c, margins())]
    assert mallows_theta_loss(t(PW), t(PL), t(RW), t(RL), beta, t(c)).tolist() == pytest.approx(expected, rel=1e-12)
    # a constant dispersion is DPO at temperature beta * c
    const = mallows_theta_loss(t(PW), t(PL), t(RW), t(RL), beta, 3.0)
    assert torch.allclose(const, dpo_loss(t(PW), t(PL), t(RW), t(RL), 0.3))


def g_kendall(d: float, phi: float) -> float:
    """The Kendall-tau Mallows pairwise law for d > 0, straight from its formula."""
    return (d + 1) / (1 - phi ** (d + 1)) - d / (1 - phi**d)


def test_mallows_phi_link_matches_permutation_enumeration():
    """P(item a before item b) under a Mallows-Kendall law on 5 items equals g_phi(b - a)."""
    phi, n = 0.3, 5
    perms = list(itertools.permutations(range(n)))
    weights = [phi ** sum(p[i] > p[j] for i in range(n) for j in range(i + 1, n)) for p in perms]
    total = sum(weights)
    for a, b in [(0, 1), (2, 3), (0, 2), (1, 4), (0, 4)]:
        prob = sum(w for w, p in zip(weights, perms) if p.index(a) < p.index(b)) / total
        assert math.exp(mallows_phi_log_link(t([float(b - a)]), phi).item()) == pytest.approx(prob, rel=1e-10)


def test_mallows_phi_link_real_valued_extension():
    phi = 0.05
    s = [-3.0, -0.7, 0.0, 1e-7, 0.7, 3.0]
    expected = [1 - g_kendall(3.0, phi), 1 - g_kendall(0.7, phi), 0.5, 1 / (1 - phi) + 1 / math.log(phi)]
    expected += [g_kendall(0.7, phi), g_kendall(3.0, phi)]
    got = mallows_phi_log_link(t(s), phi).exp().tolist()
    assert got == pytest.approx(expected, rel=1e-6)
    assert 0.718 < got[3] < 0.719  # the documented jump g(0+) for phi = 0.05
    far = mallows_phi_log_link(t([-1e4, 1e4]), phi)
    assert far[0].item() == pytest.approx(1e4 * math.log(phi) + math.log(1e4 * (1 - phi) - phi), rel=1e-9)
    assert -1e-300 < far[1].item() <= 0.0
    per_example = mallows_phi_log_link(t([0.7, 0.7]), t([0.05, 0.9])).exp().tolist()
    assert per_example == pytest.approx([g_kendall(0.7, 0.05), g_kendall(0.7, 0.9)], rel=1e-9)


def test_mallows_phi_loss_hand_values():
    beta, phi = 2.0, 0.2
    expected = []
    for m in margins():
        s = beta * m
        expected.append(-math.log(g_kendall(s, phi) if s > 0 else 1 - g_kendall(-s, phi)))
    assert mallows_phi_loss(t(PW), t(PL), t(RW), t(RL), beta, phi).tolist() == pytest.approx(expected, rel=1e-9)


# ------------------------------------------------------------------------------------------ MRPO


def test_virtual_reference_hand_values():
    refs = [[-1.0, -2.0], [-1.5, -0.5], [-3.0, -1.0]]  # [K=3, B=2]
    alpha = [0.5, 0.3, 0.2]
    expected = [math.log(1 / sum(a / math.exp(r[b]) for a, r in zip(alpha, refs))) for b in range(2)]
    assert virtual_reference_logps(t(refs), t(alpha)).tolist() == pytest.approx(expected, rel=1e-12)
    # a zero weight drops that reference; per-example weights [K, B]
    assert virtual_reference_logps(t(refs), [0.0, 1.0, 0.0]).tolist() == pytest.approx(refs[1])
    per_b = t([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    assert virtual_reference_logps(t(refs), per_b).tolist() == pytest.approx([-1.0, -1.0])
    # sequence-scale log-probs: exp would underflow; the result shifts with the inputs
    shifted = virtual_reference_logps(t(refs) - 4000.0, t(alpha))
    assert torch.allclose(shifted + 4000.0, t(expected), rtol=0, atol=1e-9)


def mrpo_by_hand(pw, pl, rw, rl, beta, alpha=None, eps_max=0.1, clip=True, adaptive=True, geometric=False):
    """MRPO for one pair, following docs/methods/mrpo.md step by step with plain floats."""
    k = len(rw)
    if alpha is None:
        m = [abs(a - b) for a, b in zip(rw, rl)]
        alpha = [x / sum(m) for x in m] if sum(m) > 0 else [1 / k] * k
    if clip:
        if adaptive:
            bw, bl = abs(sum(rw) / k), abs(sum(rl) / k)
            eps_w, eps_l = eps_max * bw / (bw + bl), eps_max * bl / (bw + bl)
        else:
            eps_w = eps_l = eps_max
        rw = [rw[0]] + [min(max(x, rw[0] - eps_w * abs(rw[0])), rw[0] + eps_w * abs(rw[0])) for x in rw[1:]]
        rl = [rl[0]] + [min(max(x, rl[0] - eps_l * abs(rl[0])), rl[0] + eps_l * abs(rl[0])) for x in rl[1:]]
    if geometric:
        tw, tl = sum(a * x for a, x in zip(alpha, rw)), sum(a * x for a, x in zip(alpha, rl))
    else:
        tw = -math.log(sum(a / math.exp(x) for a, x in zip(alpha, rw)))
        tl = -math.log(sum(a / math.exp(x) for a, x in zip(alpha, rl)))
    return log1p_exp(-beta * ((pw - tw) - (pl - tl)))


REFS_W = [[-1.5, -3.0, -2.0], [-1.0, -2.9, -3.0], [-2.6, -3.1, -1.0]]  # [K=3, B=3]
REFS_L = [[-1.2, -2.0, -3.5], [-2.0, -2.5, -3.4], [-1.1, -1.0, -3.6]]


@pytest.mark.parametrize(
    "kwargs",
    [
        {},  # MRPO defaults: ARWC + adaptive CTRO
        {"alpha": [0.6, 0.3, 0.1], "clip": False},
        {"alpha": [0.6, 0.3, 0.1], "eps_max": 0.2, "adaptive": False},
        {"eps_max": 0.0},
        {"alpha": [0.2, 0.5, 0.3], "geometric": True},
    ],
)
def test_mrpo_loss_hand_values(kwargs):
    beta = 0.7
    expected = [
        mrpo_by_hand(PW[b], PL[b], [r[b] for r in REFS_W], [r[b] for r in REFS_L], beta, **kwargs) for b in range(3)
    ]
    call = dict(kwargs)
    call["adaptive_eps"] = call.pop("adaptive", True)
    call["virtual_ref"] = "geometric" if call.pop("geometric", False) else "harmonic"
    got = mrpo_loss(t(PW), t(PL), t(REFS_W), t(REFS_L), beta, **call)
    assert got.tolist() == pytest.approx(expected, rel=1e-12)


def test_mrpo_official_k2_convention_matches_the_official_formula():
    """trainer_mref.py: log pi_tilde = L_s + L_p - log(a e^L_s + (1-a) e^L_p), a = m_s / (m_s + m_p + 1e-6)."""
    beta, refs_w, refs_l = 0.5, [REFS_W[0], REFS_W[2]], [REFS_L[0], REFS_L[2]]
    expected = []
    for b in range(3):
        lpw, lsw, lpl, lsl = refs_w[0][b], refs_w[1][b], refs_l[0][b], refs_l[1][b]
        a = abs(lsw - lsl) / (abs(lsw - lsl) + abs(lpw - lpl) + 1e-6)
        tw = lsw + lpw - math.log(a * math.exp(lsw) + (1 - a) * math.exp(lpw))
        tl = lsl + lpl - math.log(a * math.exp(lsl) + (1 - a) * math.exp(lpl))
        expected.append(log1p_exp(-beta * ((PW[b] - tw) - (PL[b] - tl))))
    got = mrpo_loss(t(PW), t(PL), t(refs_w), t(refs_l), beta, clip=False, arwc_convention="official_k2")
    assert got.tolist() == pytest.approx(expected, rel=1e-5)
    paper = mrpo_loss(t(PW), t(PL), t(refs_w), t(refs_l), beta, clip=False)
    assert not torch.allclose(got, paper)  # the two conventions differ unless the weights are 1/2


def test_mrpo_stats():
    loss, stats = mrpo_loss(t(PW), t(PL), t(REFS_W), t(REFS_L), 0.1, eps_max=0.1, return_stats=True)
    assert torch.equal(loss, mrpo_loss(t(PW), t(PL), t(REFS_W), t(REFS_L), 0.1))
    assert torch.allclose(stats.alpha.sum(0), torch.ones(3, dtype=D))
    assert torch.allclose(stats.alpha, arwc_weights(t(REFS_W), t(REFS_L)))
    m0 = [abs(a - b) for a, b in zip(REFS_W[0], REFS_L[0])]
    totals = [sum(abs(REFS_W[k][b] - REFS_L[k][b]) for k in range(3)) for b in range(3)]
    assert stats.alpha[0].tolist() == pytest.approx([m / s for m, s in zip(m0, totals)])
    assert torch.allclose(stats.eps_chosen + stats.eps_rejected, torch.full((3,), 0.1, dtype=D))
    # example 0, chosen: primary -1.5, eps_w = 0.1 * 1.6667 / (1.6667 + 1.4333); both secondaries outside the window
    eps_w0 = 0.1 * (5.1 / 3) / (5.1 / 3 + 4.3 / 3)
    assert stats.eps_chosen[0].item() == pytest.approx(eps_w0)
    assert stats.clip_frac_chosen[0].item() == 1.0
    # example 2, chosen: window -2 +- 0.2 * eps-share; -3.0 and -1.0 are both far outside -> clipped
    assert stats.clip_frac_chosen[2].item() == 1.0
    # nothing clipped when the window is wide
    _, wide = mrpo_loss(t(PW), t(PL), t(REFS_W), t(REFS_L), 0.1, eps_max=5.0, adaptive_eps=False, return_stats=True)
    assert wide.clip_frac_chosen.tolist() == [0.0, 0.0, 0.0]
    assert wide.clip_frac_rejected.tolist() == [0.0, 0.0, 0.0]
    logs = stats.as_log_dict()
    assert set(logs) == {"mrpo/alpha_0", "mrpo/alpha_1", "mrpo/alpha_2", "mrpo/eps_w", "mrpo/eps_l",
                         "mrpo/clip_frac_w", "mrpo/clip_frac_l"}
    assert logs["mrpo/eps_w"] + logs["mrpo/eps_l"] == pytest.approx(0.1)
    # the stats' virtual reference is what the loss used: DPO against it reproduces the loss
    assert torch.allclose(loss, dpo_loss(t(PW), t(PL), stats.ref_chosen, stats.ref_rejected, 0.1))


def test_mrpo_stable_at_sequence_scale_log_probs():
    shift = -3000.0
    pw, rw = t(PW) + shift, t(REFS_W) + shift
    small = mrpo_loss(t(PW), t(PL), t(REFS_W), t(REFS_L), 0.1, clip=False)
    large = mrpo_loss(pw, t(PL), rw, t(REFS_L), 0.1, clip=False)
    assert torch.isfinite(large).all()
    # ARWC weights depend on L_w - L_l, which the shift changes; with fixed weights the loss is shift-invariant
    fixed_small = mrpo_loss(t(PW), t(PL), t(REFS_W), t(REFS_L), 0.1, alpha=[0.5, 0.25, 0.25], clip=False)
    fixed_large = mrpo_loss(pw, t(PL), rw, t(REFS_L), 0.1, alpha=[0.5, 0.25, 0.25], clip=False)
    assert torch.allclose(fixed_small, fixed_large, rtol=0, atol=1e-9)
    assert not torch.allclose(small, large)
    assert torch.isfinite(dpo_loss(pw, t(PL) - 5000, rw[0], t(REFS_L)[0] - 5000, 0.1)).all()


# ------------------------------------------------------------------------------------------ gradients


def _policy_inputs(seed: int, n: int = 4):
    gen = torch.Generator().manual_seed(seed)
    pw, pl = (torch.randn(n, generator=gen, dtype=D).requires_grad_() for _ in range(2))
    rw, rl = (torch.randn(n, generator=gen, dtype=D) - 1 for _ in range(2))
    refs_w = torch.stack([rw, rw + torch.randn(n, generator=gen, dtype=D), rw + 0.01])
    refs_l = torch.stack([rl, rl - torch.randn(n, generator=gen, dtype=D), rl - 0.01])
    return pw, pl, rw, rl, refs_w, refs_l


LOSSES = {
    "dpo": lambda pw, pl, rw, rl, Rw, Rl: dpo_loss(pw, pl, rw, rl, 0.3),
    "mallows_theta": lambda pw, pl, rw, rl, Rw, Rl: mallows_theta_loss(pw, pl, rw, rl, 0.3, (rw.abs() + 0.5)),
    "mallows_phi": lambda pw, pl, rw, rl, Rw, Rl: mallows_phi_loss(pw, pl, rw, rl, 0.3, 0.4),
    "mrpo": lambda pw, pl, rw, rl, Rw, Rl: mrpo_loss(pw, pl, Rw, Rl, 0.3),
    "mrpo_fixed": lambda pw, pl, rw, rl, Rw, Rl: mrpo_loss(pw, pl, Rw, Rl, 0.3, [0.2, 0.3, 0.5], 0.05,
                                                           adaptive_eps=False),
    "mrpo_geometric": lambda pw, pl, rw, rl, Rw, Rl: mrpo_loss(pw, pl, Rw, Rl, 0.3, virtual_ref="geometric"),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradcheck_every_loss(name):
    pw, pl, rw, rl, refs_w, refs_l = _policy_inputs(seed=1)
    fn = LOSSES[name]
    assert torch.autograd.gradcheck(lambda a, b: fn(a, b, rw, rl, refs_w, refs_l), (pw, pl))
    # the reference side never receives a gradient
    rw_g, rl_g = rw.clone().requires_grad_(), rl.clone().requires_grad_()
    refs_w_g, refs_l_g = refs_w.clone().requires_grad_(), refs_l.clone().requires_grad_()
    out = fn(pw, pl, rw_g, rl_g, refs_w_g, refs_l_g).sum()
    assert out.grad_fn is not None
    out.backward()
    assert all(x.grad is None for x in (rw_g, rl_g, refs_w_g, refs_l_g))


def test_gradcheck_virtual_reference():
    refs = torch.randn(3, 4, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda r: virtual_reference_logps(r, t([0.2, 0.3, 0.5])), (refs,))


def test_dpo_gradient_formula():
    """dL/dlogp(y_w) = -beta * sigmoid(-beta * Delta) (docs/methods/dpo.md)."""
    pw, pl, rw, rl, _, _ = _policy_inputs(seed=2)
    beta = 0.3
    (grad_w,) = torch.autograd.grad(dpo_loss(pw, pl, rw, rl, beta).sum(), pw)
    delta = [(a - c) - (b - d) for a, b, c, d in zip(pw.tolist(), pl.tolist(), rw.tolist(), rl.tolist())]
    assert grad_w.tolist() == pytest.approx([-beta / (1 + math.exp(beta * m)) for m in delta], rel=1e-12)


# ------------------------------------------------------------------------------------------ bad input

X3, X2 = t([-1.0, -2.0, -3.0]), t([-1.0, -2.0])
R2 = t([[-1.0, -2.0, -3.0], [-1.5, -2.5, -3.5]])


@pytest.mark.parametrize(
    "call, argument",
    [
        (lambda: dpo_loss(X3, X2, X3, X3, 0.1), "policy_rejected"),
        (lambda: dpo_loss(X3, X3, X3, X3, 0.0), "beta"),
        (lambda: dpo_loss(X3, X3, X3, X3, -1.0), "beta"),
        (lambda: reward_stats(X3, X3, X3, X2, 0.1), "ref_rejected"),
        (lambda: mallows_theta_loss(X3, X3, X3, X3, 0.1, t([1.0, -1.0, 1.0])), "dispersion"),
        (lambda: mallows_theta_loss(X3, X3, X3, X3, 0.1, X2), "dispersion"),
        (lambda: mallows_phi_loss(X3, X3, X3, X3, 0.1, 1.0), "phi"),
        (lambda: mallows_dispersion(X3, X3, phi_star=0.0), "phi_star"),
        (lambda: mean_normalized_entropy(torch.zeros(2, 3), torch.ones(2, 3)), "ref_logits"),
        (lambda: mean_normalized_entropy(torch.zeros(2, 3, 4), torch.ones(2, 2)), "mask"),
        (lambda: mean_normalized_entropy(torch.zeros(1, 3, 4), torch.zeros(1, 3)), "mask"),
        (lambda: virtual_reference_logps(R2, t([0.5, 0.6])), "alpha"),
        (lambda: virtual_reference_logps(R2, t([0.5, 0.25, 0.25])), "alpha"),
        (lambda: mrpo_loss(X3, X3, R2, R2, 0.1, alpha=[0.3, 0.3]), "alpha"),
        (lambda: mrpo_loss(X3, X3, R2, R2, 0.1, alpha=[1.5, -0.5]), "alpha"),
        (lambda: mrpo_loss(X3, X3, R2[:1], R2[:1], 0.1), "refs_chosen"),
        (lambda: mrpo_loss(X3, X3, R2, R2[:, :2], 0.1), "refs_rejected"),
        (lambda: mrpo_loss(X3, X3, R2, R2, 0.0), "beta"),
        (lambda: mrpo_loss(X3, X3, R2, R2, 0.1, eps_max=-0.1), "eps_max"),
        (lambda: mrpo_loss(X3, X3, R2, R2, "0.1x"), "beta"),
        (lambda: mrpo_loss(X3, X3, R2, R2, 0.1, virtual_ref="arithmetic"), "virtual_ref"),
        (lambda: mrpo_loss(X3, X3, torch.cat([R2, R2]), torch.cat([R2, R2]), 0.1, arwc_convention="official_k2"),
         "arwc_convention"),
    ],
)
def test_bad_input_raises_one_line_value_error_naming_the_argument(call, argument):
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    assert argument in message and "\n" not in message
