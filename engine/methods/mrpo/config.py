"""MRPO's config section (Le et al., AAAI 2025); math: docs/methods/mrpo.md."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

from engine.config.checks import ConfigError, check_model_ref, check_simplex, in_range, positive, resolve_path


@dataclass
class MRPOParams:
    """Multi-Reference PO (Le et al., "Multi-Reference Preference Optimization for Large Language Models", AAAI 2025):
    DPO against a virtual reference pooled from K models.

    references[0] is the primary reference (the model the policy starts from); the others are secondaries.
    Logs the DPO keys plus mrpo/alpha_k, mrpo/eps_w, mrpo/eps_l, mrpo/clip_frac_w, mrpo/clip_frac_l.
    """

    references: list[str] = field(default_factory=lambda: ["models/sft", "models/ref2"], metadata={
        "help": "reference models, the primary (= model.path) first; each a folder or a hub name"})
    beta: float = field(default=0.1, metadata={"help": "inverse temperature, as in DPO"})
    alpha: list[float] | None = field(default=None, metadata={
        "help": "fixed weights of the references on the simplex; unset: adaptive weights (ARWC)"})
    eps_max: float = field(default=0.1, metadata={"help": "CTRO clip window around the primary reference, in [0, 1]"})
    clip: bool = field(default=True, metadata={"help": "clip the secondary references' log-probs (CTRO)"})
    adaptive_eps: bool = field(default=True, metadata={
        "help": "split eps_max between chosen and rejected by their log-prob scale"})
    virtual_ref: Literal["harmonic", "geometric"] = field(default="harmonic", metadata={
        "help": "harmonic: MRPO's (sum_k a_k / pi_k)^-1 (paper and code); geometric: sum_k a_k log pi_k, the exact "
                "optimum of the weighted multi-KL objective (not in the paper)"})
    arwc_convention: Literal["paper", "official_k2"] = field(default="paper", metadata={
        "help": "paper: weight a_k on 1/pi_k; official_k2: the official K = 2 code's placement (the two weights "
                "swapped), exactly 2 references"})

    def validate(self, where: str) -> None:
        if len(self.references) < 2:
            raise ConfigError(f"{where}.references: mrpo needs at least 2 references (got {len(self.references)})")
        seen: dict[str, int] = {}
        for i, ref in enumerate(self.references):
            check_model_ref(f"{where}.references[{i}]", ref)
            key = os.path.normpath(ref)
            if key in seen:  # a repeat only re-weights that model, at the cost of a whole scoring pass
                raise ConfigError(f"{where}.references[{i}]: {ref!r} is already references[{seen[key]}]; list each "
                                  "reference model once (use alpha to weight one more)")
            seen[key] = i
        positive(where, "beta", self.beta)
        if self.alpha is not None:
            if len(self.alpha) != len(self.references):
                raise ConfigError(f"{where}.alpha: needs one weight per reference ({len(self.references)})")
            check_simplex(f"{where}.alpha", self.alpha)
        in_range(where, "eps_max", self.eps_max, 0.0, 1.0)
        if self.arwc_convention == "official_k2" and len(self.references) != 2:
            raise ConfigError(f"{where}.arwc_convention: official_k2 needs exactly 2 references (got "
                              f"{len(self.references)}); it is the official K = 2 code's rule, use paper for K > 2")


def check_primary_reference(params: MRPOParams, model) -> None:
    """references[0] must be the policy's start model: the common precompute scores it as the primary."""
    if resolve_path(params.references[0]) != resolve_path(model.path):
        raise ConfigError(f"mrpo.references[0]: the primary reference must be the model the policy starts from"
                          f" (model.path = {model.path!r}); list the other references after it")
