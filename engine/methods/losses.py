"""Pure preference-optimization losses on sequence log-probabilities.

Every loss takes summed response log-probs of shape ``[B]`` (policy and reference) and returns the
per-example loss ``[B]``; callers take the mean. Gradients flow only into the policy log-probs: every
reference-side quantity (reference log-probs, dispersions, ARWC weights, clip windows) is detached, as
the shared conventions of ``docs/methods/README.md`` require.
Everything stays in log space (``logsigmoid``, ``logsumexp``,
``log1p``/``expm1``) because sequence log-probs of -100 to -5000 underflow when exponentiated.

Notation: ``h(y) = log pi(y|x) - log pi_ref(y|x)``, margin ``Delta = h(y_w) - h(y_l)``.

- ``dpo_loss`` -- DPO, Rafailov et al. 2023, "Direct Preference Optimization":
  ``L = -logsigmoid(beta * Delta)``. Identical to TRL 1.16 ``loss_type="sigmoid"``.
- ``mallows_theta_loss`` -- MallowsPO-theta, Chen et al., ICLR 2025 (official code ``mallows_dpo``):
  ``L = -logsigmoid(c(x) * beta * Delta)`` with the per-pair dispersion ``c(x)`` from
  ``mallows_dispersion``: ``c = -phi_star * log(Hbar)``, ``Hbar`` the mean of the two responses'
  ``mean_normalized_entropy`` under the reference model (``phi_star = 0.29`` in the code).
- ``mallows_phi_loss`` -- MallowsPO-phi (Kendall-tau Mallows link; not in the official code):
  ``L = -log g_phi(beta * Delta)`` with ``g_phi(d) = (d+1)/(1-phi^(d+1)) - d/(1-phi^d)`` for ``d > 0``,
  ``1 - g_phi(-d)`` for ``d < 0`` and ``1/2`` at 0 (real-valued extension, docs/methods/mallows_po.md [recon];
  it jumps at 0, so near-zero margins are ill-defined).
- ``mrpo_loss`` -- MRPO, Le et al., "Multi-Reference Preference Optimization", AAAI 2025:
  DPO against the virtual reference ``pi_tilde = (sum_k a_k / pi_k)^-1``
  (``virtual_reference_logps``: ``log pi_tilde = -logsumexp_k(log a_k - log pi_k)``), after CTRO
  clipping of the secondary references into ``[L_0 - eps|L_0|, L_0 + eps|L_0|]`` around the primary
  ``L_0`` (adaptive ``eps_w + eps_l = eps_max`` split by the mean reference log-probs) and with ARWC
  weights ``a_k = |L_k^w - L_k^l| / sum_j |L_j^w - L_j^l|`` from the unclipped values when ``alpha`` is
  None. Pipeline order exactly as docs/methods/mrpo.md.

``reward_stats`` gives the DPO-family logging statistics (TRL's ``rewards/*`` keys); ``mrpo_loss(...,
return_stats=True)`` also returns an ``MRPOStats`` with the weights, clip windows and clipped fractions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

# ---------------------------------------------------------------------------------------------- validation


def _check_number(name: str, value: float, hint: str, allow_zero: bool = False) -> float:
    """A finite number > 0 (>= 0 with ``allow_zero``), as a float; numpy and 0-d torch scalars welcome."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number (got {value!r}); {hint}") from None
    if not (math.isfinite(number) and (number >= 0 if allow_zero else number > 0)):
        raise ValueError(f"{name} must be a finite number {'>=' if allow_zero else '>'} 0 (got {value!r}); {hint}")
    return number


def _check_beta(beta: float) -> float:
    return _check_number("beta", beta, "DPO uses 0.1")


def _check_same_1d(**tensors: Tensor) -> None:
    """All named tensors must be 1-D with the shape of the first one ([B] per-example log-probs)."""
    first_name, first = next(iter(tensors.items()))
    for name, t in tensors.items():
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor of shape [B] (got {type(t).__name__})")
        if t.dim() != 1 or t.shape != first.shape:
            raise ValueError(
                f"{name} has shape {tuple(t.shape)} but {first_name} has {tuple(first.shape)}; "
                "pass one summed log-prob per example, shape [B]"
            )


def _per_example(value: float | Tensor, name: str, batch: int, like: Tensor) -> Tensor:
    """A scalar or [B] reference-side hyper-parameter as a detached [B] tensor."""
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device).detach()
    if t.dim() == 0:
        return t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"{name} must be a number or a tensor of shape [{batch}] (got {tuple(t.shape)})")
    return t


# ---------------------------------------------------------------------------------------------- DPO


def dpo_loss(
    policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor, beta: float
) -> Tensor:
    """Per-example DPO loss ``-logsigmoid(beta * Delta)`` (Rafailov et al. 2023), shape [B]."""
    _check_same_1d(
        policy_chosen=policy_chosen, policy_rejected=policy_rejected, ref_chosen=ref_chosen, ref_rejected=ref_rejected
    )
    margin = _margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    return -F.logsigmoid(_check_beta(beta) * margin)


def _margin(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor) -> Tensor:
    return (policy_chosen - ref_chosen.detach()) - (policy_rejected - ref_rejected.detach())


@dataclass(frozen=True)
class RewardStats:
    """Implicit-reward statistics of a DPO-family batch, each a detached [B] tensor.

    ``chosen = beta * h(y_w)``, ``rejected = beta * h(y_l)``, ``margins = chosen - rejected``,
    ``accuracies = 1.0 where chosen > rejected`` (strict, as TRL). MallowsPO logs them unscaled by c
    (as its code does); MRPO logs them against the virtual reference.
    """

    chosen: Tensor
    rejected: Tensor
    margins: Tensor
    accuracies: Tensor

    def as_log_dict(self, prefix: str = "rewards") -> dict[str, float]:
        """Batch means under TRL's key names (``rewards/chosen``, ... ``rewards/accuracies``)."""
        fields = {"chosen": self.chosen, "rejected": self.rejected, "margins": self.margins}
        fields["accuracies"] = self.accuracies
        # float64 means: bf16/fp32 batch means of small rewards lose digits
        return {f"{prefix}/{k}": v.to(torch.float64).mean().item() for k, v in fields.items()}


def reward_stats(
    policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor, beta: float
) -> RewardStats:
    """The ``rewards/*`` statistics TRL's DPOTrainer logs, per example and detached."""
    _check_same_1d(
        policy_chosen=policy_chosen, policy_rejected=policy_rejected, ref_chosen=ref_chosen, ref_rejected=ref_rejected
    )
    beta = _check_beta(beta)
    chosen = beta * (policy_chosen - ref_chosen).detach()
    rejected = beta * (policy_rejected - ref_rejected).detach()
    return RewardStats(chosen, rejected, chosen - rejected, (chosen > rejected).to(chosen.dtype))


# ---------------------------------------------------------------------------------------------- MallowsPO


@torch.no_grad()
def mean_normalized_entropy(ref_logits: Tensor, mask: Tensor) -> Tensor:
    """Token-mean reference entropy over response tokens divided by ``log V``, in [0, 1], shape [B].

    MallowsPO's dispersion proxy (official code): full-vocabulary entropy per position, averaged over the
    positions where ``mask`` is 1, normalised by the logits width ``V``. ``ref_logits[b, t]`` must be the
    distribution that predicts response token ``t`` (already shifted). Computed in float32 (float64 if the
    logits are float64) one example at a time so that only one [T, V] float copy is alive.
    """
    if ref_logits.dim() != 3:
        raise ValueError(f"ref_logits must have shape [B, T, V] (got {tuple(ref_logits.shape)})")
    if mask.shape != ref_logits.shape[:2]:
        raise ValueError(f"mask has shape {tuple(mask.shape)} but ref_logits needs [B, T] = "
                         f"{tuple(ref_logits.shape[:2])}")
    vocab = ref_logits.shape[-1]
    if vocab < 2:
        raise ValueError(f"ref_logits needs a vocabulary of at least 2 (got V = {vocab})")
    counts = mask.sum(dim=1)
    if bool((counts <= 0).any()):
        raise ValueError("mask has an example without response tokens; every row needs at least one 1")
    dtype = torch.float64 if ref_logits.dtype == torch.float64 else torch.float32
    out = torch.empty(ref_logits.shape[0], dtype=dtype, device=ref_logits.device)
    for b in range(ref_logits.shape[0]):
        logp = torch.log_softmax(ref_logits[b].to(dtype), dim=-1)
        # entr(p) = -p log p with entr(0) = 0, so -inf logits (masked vocabulary) give no nan
        entropy = torch.special.entr(logp.exp()).sum(dim=-1)
        out[b] = (entropy * mask[b].to(dtype)).sum() / counts[b].to(dtype)
    return (out / math.log(vocab)).clamp(0.0, 1.0)


def mallows_dispersion(entropy_chosen: Tensor, entropy_rejected: Tensor, phi_star: float = 0.29) -> Tensor:
    """Neg-log dispersion ``c(x) = -phi_star * log(mean(Hbar_w, Hbar_l))``, [B], detached.

    ``phi(x) = Hbar(x) ** phi_star`` is MallowsPO's proxy for the Mallows dispersion; ``Hbar`` is clamped to
    [1e-6, 1] (docs/methods/mallows_po.md) so a zero-entropy reference gives a large but finite ``c``.
    """
    _check_same_1d(entropy_chosen=entropy_chosen, entropy_rejected=entropy_rejected)
    phi_star = _check_number("phi_star", phi_star, "the MallowsPO code uses 0.29")
    hbar = ((entropy_chosen + entropy_rejected) / 2).detach().clamp(1e-6, 1.0)
    return -phi_star * torch.log(hbar)


def mallows_theta_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float,
    dispersion: Tensor | float,
) -> Tensor:
    """Per-example MallowsPO-theta loss ``-logsigmoid(c * beta * Delta)``; ``dispersion`` c is [B] or a number >= 0."""
    _check_same_1d(
        policy_chosen=policy_chosen, policy_rejected=policy_rejected, ref_chosen=ref_chosen, ref_rejected=ref_rejected
    )
    c = _per_example(dispersion, "dispersion", policy_chosen.shape[0], policy_chosen)
    if bool((c < 0).any()) or not bool(torch.isfinite(c).all()):
        raise ValueError("dispersion must be finite and >= 0 (c = -phi_star * log Hbar); see mallows_dispersion")
    margin = _margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    return -F.logsigmoid(c * _check_beta(beta) * margin)


def mallows_phi_log_link(s: Tensor, phi: Tensor | float) -> Tensor:
    """``log g_phi(s)``, the Kendall-tau Mallows pairwise law extended to real ``s`` (docs/methods/mallows_po.md).

    Uses the inversion probability ``u(d) = 1 - g_phi(d) = phi^d * (d/(1-phi^d) - (d+1) phi/(1-phi^(d+1)))``
    in log space (float64 inside, to limit the cancellation when phi is near 1): ``log g = log1p(-u(s))`` for
    ``s > 0``, ``log u(-s)`` for ``s < 0``, ``log 1/2`` at 0. Finite for margins of +-1e4.
    """
    phi_t = torch.as_tensor(phi, dtype=torch.float64, device=s.device).detach()
    if bool((phi_t <= 0).any()) or bool((phi_t >= 1).any()):
        raise ValueError(f"phi must lie strictly between 0 and 1 (got {phi!r}); the paper's bandit uses 0.05")
    log_phi = torch.log(phi_t)
    s64 = s.to(torch.float64)
    d = s64.abs()
    # the s == 0 branch is constant; a safe d keeps its 0/0 out of the backward pass of torch.where
    d_safe = torch.where(d > 0, d, torch.ones_like(d))
    inner = d_safe / -torch.expm1(d_safe * log_phi) - (d_safe + 1) * phi_t / -torch.expm1((d_safe + 1) * log_phi)
    log_u = d_safe * log_phi + torch.log(inner)
    log_g = torch.where(s64 > 0, torch.log1p(-torch.exp(log_u)), log_u)
    log_g = torch.where(s64 == 0, torch.full_like(log_g, -math.log(2.0)), log_g)
    return log_g.to(s.dtype)


def mallows_phi_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float,
    phi: Tensor | float,
) -> Tensor:
    """Per-example MallowsPO-phi loss ``-log g_phi(beta * Delta)``; ``phi`` in (0, 1), a number or [B].

    The real-valued link jumps at 0 (``g(0+) = 1/(1-phi) + 1/log phi``): the loss is discontinuous at
    zero margin, so starting exactly at the reference gives a zero gradient [recon, docs/methods/mallows_po.md].
    """
    _check_same_1d(
        policy_chosen=policy_chosen, policy_rejected=policy_rejected, ref_chosen=ref_chosen, ref_rejected=ref_rejected
    )
    phi_b = _per_example(phi, "phi", policy_chosen.shape[0], policy_chosen)
    margin = _margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    return -mallows_phi_log_link(_check_beta(beta) * margin, phi_b)


# ---------------------------------------------------------------------------------------------- MRPO


def virtual_reference_logps(ref_logps: Tensor, alpha: Tensor | Sequence[float]) -> Tensor:
    """``log pi_tilde = -logsumexp_k(log alpha_k - ref_logps_k)``: the weighted harmonic mean of K references.

    ``ref_logps`` [K, B]; ``alpha`` [K] or [K, B], non-negative and summing to 1 over K. Zero weights are
    fine (``log 0 = -inf`` drops out of the logsumexp). Pure math: ``mrpo_loss`` detaches the inputs.
    """
    if ref_logps.dim() != 2:
        raise ValueError(f"ref_logps must have shape [K, B] (got {tuple(ref_logps.shape)})")
    a = _check_weights(alpha, ref_logps)
    if a.dim() == 1:
        a = a.unsqueeze(1)
    return -torch.logsumexp(torch.log(a) - ref_logps, dim=0)


def _check_weights(alpha: Tensor | Sequence[float], ref_logps: Tensor) -> Tensor:
    a = torch.as_tensor(alpha, dtype=ref_logps.dtype, device=ref_logps.device)
    k = ref_logps.shape[0]
    if a.shape not in {(k,), tuple(ref_logps.shape)}:
        raise ValueError(f"alpha must have shape [{k}] or {list(ref_logps.shape)} (got {list(a.shape)})")
    if bool((a < 0).any()) or not bool(torch.isfinite(a).all()):
        raise ValueError("alpha must be finite and non-negative (weights of the references)")
    total = a.sum(dim=0)
    if bool(((total - 1).abs() > 1e-5).any()):
        raise ValueError(f"alpha must sum to 1 over the K references (sums: {total.flatten()[:4].tolist()}); "
                         "normalize it")
    return a


@dataclass(frozen=True)
class MRPOStats:
    """Per-example MRPO diagnostics, all detached (docs/methods/mrpo.md, metrics).

    ``alpha`` [K, B]: reference weights used (ARWC or the fixed ones, after ``arwc_convention``).
    ``eps_chosen``/``eps_rejected`` [B]: CTRO clip rates (0 when ``clip=False``).
    ``clip_frac_chosen``/``clip_frac_rejected`` [B]: fraction of secondary references moved by clipping.
    ``ref_chosen``/``ref_rejected`` [B]: ``log pi_tilde`` of each response, the reference that
    ``reward_stats`` should be given to log MRPO rewards.
    """

    alpha: Tensor
    eps_chosen: Tensor
    eps_rejected: Tensor
    clip_frac_chosen: Tensor
    clip_frac_rejected: Tensor
    ref_chosen: Tensor
    ref_rejected: Tensor

    def as_log_dict(self) -> dict[str, float]:
        """Batch means under the keys of docs/methods/mrpo.md: ``mrpo/alpha_k``, ``mrpo/eps_w``,
        ``mrpo/clip_frac_w``..."""
        logs = {f"mrpo/alpha_{k}": row.mean().item() for k, row in enumerate(self.alpha)}
        logs |= {"mrpo/eps_w": self.eps_chosen.mean().item(), "mrpo/eps_l": self.eps_rejected.mean().item()}
        logs["mrpo/clip_frac_w"] = self.clip_frac_chosen.mean().item()
        logs["mrpo/clip_frac_l"] = self.clip_frac_rejected.mean().item()
        return logs


def arwc_weights(refs_chosen: Tensor, refs_rejected: Tensor) -> Tensor:
    """ARWC weights ``a_k = m_k / sum_j m_j``, ``m_k = |L_k^w - L_k^l|``, [K, B]; uniform where all m_k = 0.

    The official code divides by ``sum + 1e-6``; exact normalisation differs from it only by a per-pair
    factor on ``pi_tilde``, which cancels in the margin, so the loss is the same.
    """
    m = (refs_chosen - refs_rejected).abs()
    total = m.sum(dim=0, keepdim=True)
    uniform = torch.full_like(m, 1.0 / m.shape[0])
    return torch.where(total > 0, m / torch.where(total > 0, total, torch.ones_like(total)), uniform)


def _clip_to_primary(refs: Tensor, eps: Tensor) -> Tensor:
    """CTRO: clamp rows k >= 1 into ``[L_0 - eps|L_0|, L_0 + eps|L_0|]`` (|L_0| keeps the window right for L_0 < 0)."""
    primary = refs[0]
    low, high = primary - eps * primary.abs(), primary + eps * primary.abs()
    secondaries = torch.minimum(torch.maximum(refs[1:], low), high)
    return torch.cat([refs[:1], secondaries], dim=0)


def _ctro_rates(refs_chosen: Tensor, refs_rejected: Tensor, eps_max: float) -> tuple[Tensor, Tensor]:
    """Adaptive CTRO rates: ``eps_w + eps_l = eps_max``, the lower-probability response gets the wider window."""
    b_w, b_l = refs_chosen.mean(dim=0).abs(), refs_rejected.mean(dim=0).abs()
    total = b_w + b_l
    safe = torch.where(total > 0, total, torch.ones_like(total))
    half = torch.full_like(total, eps_max / 2)
    return torch.where(total > 0, eps_max * b_w / safe, half), torch.where(total > 0, eps_max * b_l / safe, half)


def mrpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    refs_chosen: Tensor,
    refs_rejected: Tensor,
    beta: float,
    alpha: Tensor | Sequence[float] | None = None,
    eps_max: float = 0.1,
    clip: bool = True,
    *,
    adaptive_eps: bool = True,
    virtual_ref: str = "harmonic",
    arwc_convention: str = "paper",
    return_stats: bool = False,
) -> Tensor | tuple[Tensor, MRPOStats]:
    """Per-example MRPO loss [B] (Le et al.): DPO against the virtual reference of K references.

    ``refs_*`` [K, B], row 0 the primary reference (the model the policy starts from). ``alpha=None``: ARWC
    weights per pair from the unclipped values; else fixed weights [K] summing to 1. ``clip``: CTRO clipping
    of the secondaries around the primary with adaptive rates (``adaptive_eps=True``, MRPO default) or
    ``eps_w = eps_l = eps_max``. ``virtual_ref``: ``"harmonic"`` (MRPO's pi_tilde) or ``"geometric"``
    (``sum_k a_k log pi_k``, the exact multi-KL optimum) [recon]. ``arwc_convention="official_k2"`` swaps the
    two weights for K = 2, reproducing ``trainer_mref.py`` (its secondary weight multiplies 1/pi_primary).
    ``return_stats=True`` returns ``(loss, MRPOStats)``.
    """
    _check_same_1d(policy_chosen=policy_chosen, policy_rejected=policy_rejected)
    for name, refs in (("refs_chosen", refs_chosen), ("refs_rejected", refs_rejected)):
        if refs.dim() != 2 or refs.shape[1:] != policy_chosen.shape:
            raise ValueError(f"{name} must have shape [K, {policy_chosen.shape[0]}] (got {tuple(refs.shape)})")
    if refs_chosen.shape != refs_rejected.shape:
        raise ValueError(f"refs_rejected has shape {tuple(refs_rejected.shape)} but "
                         f"refs_chosen has {tuple(refs_chosen.shape)}")
    k = refs_chosen.shape[0]
    if k < 2:
        raise ValueError(f"refs_chosen must hold K >= 2 references (got K = {k}); use dpo_loss for one reference")
    beta = _check_beta(beta)
    eps_max = _check_number("eps_max", eps_max, "MRPO uses 0.1", allow_zero=True)
    if virtual_ref not in ("harmonic", "geometric"):
        raise ValueError(f"virtual_ref must be 'harmonic' or 'geometric' (got {virtual_ref!r})")
    if arwc_convention not in ("paper", "official_k2") or (arwc_convention == "official_k2" and k != 2):
        raise ValueError(f"arwc_convention must be 'paper', or 'official_k2' with K = 2 "
                         f"(got {arwc_convention!r}, K = {k})")

    lw, ll = refs_chosen.detach(), refs_rejected.detach()
    if alpha is None:
        a = arwc_weights(lw, ll)  # from the unclipped values, before CTRO
    else:
        a = _check_weights(alpha, lw)
        if a.shape != (k,):
            raise ValueError(f"alpha must be None (ARWC) or fixed weights of shape [{k}] (got {list(a.shape)})")
        a = a.unsqueeze(1).expand(k, lw.shape[1])
    if arwc_convention == "official_k2":
        a = a.flip(0)

    zeros = torch.zeros_like(lw[0])
    eps_w, eps_l, frac_w, frac_l = zeros, zeros, zeros, zeros
    if clip:
        eps_w, eps_l = _ctro_rates(lw, ll, eps_max) if adaptive_eps else (zeros + eps_max, zeros + eps_max)
        clipped_w, clipped_l = _clip_to_primary(lw, eps_w), _clip_to_primary(ll, eps_l)
        frac_w = (clipped_w[1:] != lw[1:]).to(lw.dtype).mean(dim=0)
        frac_l = (clipped_l[1:] != ll[1:]).to(ll.dtype).mean(dim=0)
        lw, ll = clipped_w, clipped_l

    if virtual_ref == "harmonic":
        tilde_w, tilde_l = virtual_reference_logps(lw, a), virtual_reference_logps(ll, a)
    else:
        tilde_w, tilde_l = (a * lw).sum(dim=0), (a * ll).sum(dim=0)
    loss = -F.logsigmoid(beta * _margin(policy_chosen, policy_rejected, tilde_w, tilde_l))
    if not return_stats:
        return loss
    return loss, MRPOStats(a, eps_w, eps_l, frac_w, frac_l, tilde_w, tilde_l)
