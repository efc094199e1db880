"""MagMPO's per-step objective on sampled responses: pure functions (docs/methods/magnetic_po.md, "Objective").

One magnetic mirror descent (MMD) step from the policy pi_t, on responses y ~ pi_t with win rates q(y), minimises over
theta

    L(theta) = -E_{y~pi_theta}[q(y)] + alpha KL_seq(pi_theta || rho) + (1/eta) KL_seq(pi_theta || pi_t),

whose minimiser on a finite game is engine/theory/magnetic.py's `magnetic_step`. Both KLs are over whole responses
and are computed from the EXACT per-token KL over the vocabulary at each sampled prefix,
k_t = sum_v pi(v|y_<t) (log pi(v|y_<t) - log rho(v|y_<t)): by the chain rule KL_seq(pi || rho) = E_{y~pi}[sum_t k_t].

The optimiser takes several steps on the same samples, so after the first one they no longer come from pi_theta.
Each term is therefore weighted by the likelihood ratio of the part of y it depends on: k_t depends on the prefix
y_<t only, so it gets r_{t-1} = prod_{s<t} pi_theta(y_s|y_<s) / pi_t(y_s|y_<s), and q(y) gets the whole ratio r_T.
The estimates stay unbiased at every theta, and their gradient at theta = pi_t (all ratios 1) is

    grad KL_seq = E_y[ sum_t grad k_t + sum_t grad log pi(y_t|y_<t) * sum_{s>t} k_s ]

(the second, score-function term, with the KL still to come as reward-to-go, is what makes it the sequence-level KL;
it vanishes for one-token responses) and REINFORCE, `-A grad log pi(y)`, for the q term.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import ArrayLike

from engine.errors import InputError
from engine.theory.magnetic import symmetrize_preferences


def self_play_advantages(raw: ArrayLike) -> tuple[np.ndarray, np.ndarray, float]:
    """Win rates q, advantages A = q - 1/2 and the judge's position asymmetry, from raw judge matrices [B, G, G].

    `raw[b, i, j]` is the judge's P(y_i beats y_j) for prompt b (diagonal ignored). Each matrix is symmetrised to
    `(p_ij + 1 - p_ji) / 2`, then `q_i = mean_{j != i} p_ij`. Returns q [B, G], A [B, G] and mean |p_ij + p_ji - 1|.
    The baseline 1/2 is P(pi_t beats pi_t), so A estimates P(y beats pi_t) - P(pi_t beats pi_t).
    """
    matrices = np.asarray(raw, dtype=float)
    if matrices.ndim != 3 or matrices.shape[1] != matrices.shape[2] or matrices.shape[1] < 2:
        raise InputError(f"raw must have shape [B, G, G] with G >= 2 responses per prompt, got {matrices.shape}")
    group = matrices.shape[1]
    symmetric = np.stack([symmetrize_preferences(m) for m in matrices])
    q = (symmetric.sum(axis=2) - 0.5) / (group - 1)  # the diagonal of a symmetrised matrix is exactly 1/2
    off_diagonal = ~np.eye(group, dtype=bool)
    asymmetry = np.abs(matrices + np.swapaxes(matrices, 1, 2) - 1.0)[:, off_diagonal]
    return q, q - 0.5, float(asymmetry.mean())


def token_kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Exact KL(p || q) [...] between next-token distributions given as log-probabilities [..., V] (finite)."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1)


@dataclass(frozen=True)
class StepObjective:
    """Per-response terms [N] of one MMD step's objective; the mean of `loss` is the surrogate to minimise."""

    loss: torch.Tensor  # -reward + alpha * kl_magnet + kl_start / eta
    reward: torch.Tensor  # r_T * A: estimates E_{pi_theta}[q] - 1/2
    kl_magnet: torch.Tensor  # estimates KL_seq(pi_theta || rho)
    kl_start: torch.Tensor  # estimates KL_seq(pi_theta || pi_t)


def sequence_kl(token_kls: torch.Tensor, prefix_ratio: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum_t r_{t-1} k_t over the response tokens [N]: an unbiased estimate of the sequence KL under pi_theta from
    samples of pi_t, whose gradient carries the score-function term (through r) as well as grad k_t."""
    return (prefix_ratio * token_kls * mask).sum(dim=-1)


def mmd_objective(log_pi: torch.Tensor, log_magnet: torch.Tensor, log_start: torch.Tensor, tokens: torch.Tensor,
                  mask: torch.Tensor, advantages: torch.Tensor, alpha: float, eta: float) -> StepObjective:
    """The terms of L(theta) on N sampled responses of T tokens (module docstring).

    log_pi [N, T, V]: the policy being optimised (with gradient); log_magnet, log_start [N, T, V]: the magnet rho and
    the step's start policy pi_t that sampled (constants); tokens [N, T] the sampled ids; mask [N, T] the response
    tokens; advantages [N] = q - 1/2, q measured against pi_t.
    """
    picked = log_pi.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    picked_start = log_start.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    log_ratio = (picked - picked_start) * mask
    through = log_ratio.cumsum(dim=-1)
    prefix_ratio = torch.exp(through - log_ratio)  # r_{t-1}: the ratio of y_<t, 1 at t = 1
    reward = torch.exp(through[:, -1]) * advantages
    kl_magnet = sequence_kl(token_kl(log_pi, log_magnet), prefix_ratio, mask)
    kl_start = sequence_kl(token_kl(log_pi, log_start), prefix_ratio, mask)
    return StepObjective(-reward + alpha * kl_magnet + kl_start / eta, reward, kl_magnet, kl_start)
