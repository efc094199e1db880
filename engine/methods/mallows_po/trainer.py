"""MallowsPO (Chen et al., ICLR 2025): DPO whose inverse temperature varies per prompt with the reference's entropy.

theta variant (the official code's): L = -logsigmoid(c(x) * beta * Delta), c(x) = -phi_star * log Hbar(x), with
Hbar(x) the mean over chosen and rejected of each response's mean next-token entropy / log V under the reference,
capped at `c_max`. phi variant: L = -log g_phi(beta * Delta) with the Mallows-phi link (docs/methods/mallows_po.md).
The entropies are precomputed with the reference log-probs (`needs_entropy`).

The policy starts at its reference, where every margin is 0 and the phi loss has zero gradient (its link jumps at
0), so a phi run takes its first ceil(dpo_warmup_ratio * max_steps) training steps with the DPO loss, as the bandit
lab starts phi from the DPO solution; evaluation always reports the phi loss.

Config: `MallowsPOParams` (beta 0.1, variant theta, phi_star 0.29 or "auto" for a dataset mean c of 1, phi 0.05,
c_max 10, dpo_warmup_ratio 0.1). Logs the DPO keys (rewards unscaled by c, as the official code) plus, for theta,
mallows/c_mean, mallows/c_std, mallows/c_min, mallows/c_max, mallows/ref_entropy_mean and rewards_scaled/margins =
mean(beta * c * Delta); for phi, whose loss uses no c, mallows/dpo_warmup (1 while the DPO warm start runs).
"""

from __future__ import annotations

import math

import torch
from datasets import Dataset

from engine.methods.losses import dpo_loss, mallows_dispersion, mallows_phi_loss, mallows_theta_loss, reward_stats
from engine.methods.preference_trainer import PreferenceTrainer


class MallowsPOTrainer(PreferenceTrainer):
    needs_entropy = True

    def __init__(self, *args, method_params, **kwargs):
        self.phi_star = method_params.phi_star  # "auto" is replaced during the train-set precompute
        super().__init__(*args, method_params=method_params, **kwargs)

    def add_reference_columns(self, dataset: Dataset, name: str, batch_size: int) -> Dataset:
        # phi_star "auto": chosen on the training set so that the mean dispersion c is 1 (beta keeps its meaning).
        if name == "train" and self.method_params.phi_star == "auto":
            hbar = [(a + b) / 2 for a, b in zip(dataset["ref_chosen_entropy"], dataset["ref_rejected_entropy"])]
            mean_neg_log = sum(-math.log(min(max(h, 1e-6), 1.0)) for h in hbar) / len(hbar)
            self.phi_star = 1.0 / mean_neg_log
        return dataset

    def preference_loss(self, policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
                        batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        # Each branch logs the quantities its own loss uses, beyond the DPO keys: c belongs to theta only.
        params = self.method_params
        pairs = policy_chosen, policy_rejected, batch["ref_chosen_logps"], batch["ref_rejected_logps"]
        stats = reward_stats(*pairs, params.beta)
        if params.variant == "phi":
            warmup = self._in_dpo_warmup()
            losses = dpo_loss(*pairs, params.beta) if warmup else mallows_phi_loss(*pairs, params.beta, params.phi)
            return losses, stats.as_log_dict() | {"mallows/dpo_warmup": float(warmup)}
        entropy_w, entropy_l = batch["ref_chosen_entropy"], batch["ref_rejected_entropy"]
        c = mallows_dispersion(entropy_w, entropy_l, self.phi_star).clamp(max=params.c_max)
        losses = mallows_theta_loss(*pairs, params.beta, c)
        return losses, stats.as_log_dict() | {
            "mallows/c_mean": c.mean().item(), "mallows/c_std": c.std(unbiased=False).item(),
            "mallows/c_min": c.min().item(), "mallows/c_max": c.max().item(),
            "mallows/ref_entropy_mean": ((entropy_w + entropy_l) / 2).mean().item(),
            "rewards_scaled/margins": (c * stats.margins).mean().item()}

    def _in_dpo_warmup(self) -> bool:
        """A training step among the first ceil(dpo_warmup_ratio * max_steps) (counted in optimizer steps, so a
        resumed run picks up where it was)."""
        warmup_steps = math.ceil(self.method_params.dpo_warmup_ratio * self.state.max_steps)
        return self.model.training and self.state.global_step < warmup_steps
