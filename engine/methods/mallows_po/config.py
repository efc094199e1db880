"""MallowsPO's config section (Chen et al., ICLR 2025); math: docs/methods/mallows_po.md."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from engine.config.checks import ConfigError, positive


@dataclass
class MallowsPOParams:
    """MallowsPO (Chen et al., "MallowsPO: Fine-Tune Your LLM with Preference Dispersions", ICLR 2025): DPO with a
    per-prompt dispersion c(x) from the reference model's entropy.

    Logs the DPO keys plus, for theta, mallows/c_mean, mallows/c_std, mallows/c_min, mallows/c_max,
    mallows/ref_entropy_mean and rewards_scaled/margins; for phi (whose loss uses no c), mallows/dpo_warmup.
    """

    beta: float = field(default=0.1, metadata={"help": "inverse temperature, as in DPO"})
    variant: Literal["theta", "phi"] = field(default="theta", metadata={
        "help": "theta: beta scaled by c(x) (what the official code implements); phi: the Mallows-phi link"})
    phi_star: float | Literal["auto"] = field(default=0.29, metadata={
        "help": "c(x) = -phi_star * log Hbar(x); auto: chosen so that the training set's mean c is 1"})
    phi: float = field(default=0.05, metadata={"help": "dispersion of the phi variant, in (0, 1)"})
    c_max: float = field(default=10.0, metadata={"help": "cap on c(x): as Hbar goes to 0, c goes to infinity"})
    # The policy starts at its reference, where every margin is 0 and the phi loss has zero gradient; the bandit lab
    # (engine/theory/bandit.py) starts phi from the DPO solution, training from a few DPO steps.
    dpo_warmup_ratio: float = field(default=0.1, metadata={
        "help": "phi variant: fraction of the training steps (rounded up) taken with the DPO loss before the phi "
                "loss, which has zero gradient at the reference the policy starts from; in (0, 1)"})

    def validate(self, where: str) -> None:
        positive(where, "beta", self.beta)
        if self.phi_star != "auto":
            positive(where, "phi_star", self.phi_star)
        if not 0.0 < self.phi < 1.0:
            raise ConfigError(f"{where}.phi: must lie strictly between 0 and 1 (got {self.phi})")
        positive(where, "c_max", self.c_max)
        if not 0.0 <= self.dpo_warmup_ratio < 1.0:
            raise ConfigError(f"{where}.dpo_warmup_ratio: must lie in [0, 1) (got {self.dpo_warmup_ratio})")
        if self.variant == "phi" and self.dpo_warmup_ratio == 0:
            raise ConfigError(f"{where}.dpo_warmup_ratio: the phi variant needs > 0 (e.g. 0.1): its loss has zero "
                              "gradient at the reference the policy starts from, so the run would never move")
