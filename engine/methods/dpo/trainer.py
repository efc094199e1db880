"""DPO (Rafailov et al. 2023, "Direct Preference Optimization"), the baseline: L = -logsigmoid(beta * Delta).

Config: `DPOParams.beta` (0.1). Logs loss, rewards/{chosen,rejected,margins,accuracies}, logps/{chosen,rejected},
grad_norm, learning_rate.
"""

from __future__ import annotations

import torch

from engine.methods.losses import dpo_loss, reward_stats
from engine.methods.preference_trainer import PreferenceTrainer


class DPOMethodTrainer(PreferenceTrainer):
    def preference_loss(self, policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
                        batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        beta = self.method_params.beta
        refs = batch["ref_chosen_logps"], batch["ref_rejected_logps"]
        losses = dpo_loss(policy_chosen, policy_rejected, *refs, beta)
        return losses, reward_stats(policy_chosen, policy_rejected, *refs, beta).as_log_dict()
