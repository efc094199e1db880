"""Which distribution a set of generations samples, named in one place so that estimates, generations and evaluated
models are compared only with points of the same distribution (docs/methods/mixing_po.md, "Decoding modes").

A mixing run's instant estimates and its lambda* describe the sequence-level mixture
``pi_lambda ∝ prod_k pi_k^lambda_k`` at temperature 1. The SIR modes sample that distribution, and plain sampling
of one policy at temperature 1 samples that policy exactly. Token-level mixing samples a different distribution
at every temperature, and a temperature other than 1 changes every policy, mixed or not.
"""

from __future__ import annotations

DECODE_MODES = ("token", "sir_token", "sir_ref")
SIR_MODES = ("sir_token", "sir_ref")
SEQUENCE_T1 = "sequence T=1"  # the distribution the estimates describe and lambda* is optimised for


def mixture_mode(decode_mode: str, temperature: float) -> str:
    """How mixtures are decoded at ``temperature``: the SIR modes target temperature 1, so at any other temperature a
    mixture is mixed token by token at that temperature, as every other model of the comparison is sampled."""
    return decode_mode if temperature == 1.0 else "token"


def distribution_name(temperature: float, mode: str | None) -> str:
    """``sequence T=1`` when every policy is sampled exactly at temperature 1 (mixtures, if any, through a SIR
    ``mode``); otherwise ``token T=<temperature>``: token-level mixing or tempered sampling."""
    if temperature == 1.0 and (mode is None or mode in SIR_MODES):
        return SEQUENCE_T1
    return f"token T={temperature:g}"
