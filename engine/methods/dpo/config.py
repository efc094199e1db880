"""DPO's config section (Rafailov et al. 2023, "Direct Preference Optimization"); math: docs/methods/dpo.md."""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.config.checks import positive


@dataclass
class DPOParams:
    """DPO (Rafailov et al. 2023), the baseline: L = -logsigmoid(beta * Delta) against one reference.

    Logs loss, rewards/{chosen,rejected,margins,accuracies}, logps/{chosen,rejected}, grad_norm, learning_rate.
    """

    beta: float = field(default=0.1, metadata={"help": "inverse temperature: strength of the KL pull to the reference"})

    def validate(self, where: str) -> None:
        positive(where, "beta", self.beta)
