"""Stored samples of a MixMPO run and everything computed from them alone: instant estimates for any weights,
the simplex grid of the Pareto sweep, and ``balance`` (mirror descent rerun on the cached log-ratios).

Kept free of torch and transformers so that the dashboard's mixer can import it cheaply: moving the weights costs
one importance-weighted average over the stored samples (engine.theory.mixing.estimate_mixture), never a model call.

Files of a run (written by engine.recipes.mixing.train_mixing): ``<run>/mixing/samples.npz`` with ``logratios``
[N, M, K] (``log pi_k - log pi_ref`` of M reference samples per prompt), ``scores`` [N, M, K] (each objective's
judge), ``ref_logps`` and ``num_tokens`` [N, M], ``objectives`` and ``judges`` (string arrays; no pickle);
``samples.parquet`` with the texts; ``lambda.json`` with lambda*.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.config import RunConfig, config_from_dict
from engine.errors import InputError
from engine.methods import get_method, method_names
from engine.store.runs import read_run, run_layout
from engine.theory.mixing import duality_gap, estimate_mixture, f_hat, f_hat_grad, mirror_descent_trace

# ---------------------------------------------------------------------------------------------- stored samples


@dataclass(frozen=True)
class MixingSamples:
    """The reference samples of a mixing run: log-ratios [N, M, K], judge scores [N, M, K] (one judge per
    objective), reference log-probs and response lengths [N, M]."""

    objectives: list[str]
    judges: list[str]
    logratios: np.ndarray
    scores: np.ndarray
    ref_logps: np.ndarray
    num_tokens: np.ndarray

    def save(self, path: Path) -> Path:
        """Write to `path` (a run's RunLayout.samples) atomically: a reader never sees half a file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".npz.tmp")
        with open(tmp, "wb") as handle:
            np.savez(handle, objectives=np.array(self.objectives), judges=np.array(self.judges),
                     logratios=self.logratios, scores=self.scores, ref_logps=self.ref_logps,
                     num_tokens=self.num_tokens)
        tmp.replace(path)
        return path

    @functools.cached_property
    def _stacked(self) -> np.ndarray:
        # judge scores and log-ratios weighted in one pass: E_lambda[score_k] and J_k = E_lambda[ell_k]
        return np.concatenate([self.scores, self.logratios], axis=2)


def samples_path(run_id: str) -> Path:
    return run_layout(run_id).samples


@functools.lru_cache(maxsize=8)
def _load(path: str, mtime_ns: int) -> MixingSamples:
    with np.load(path, allow_pickle=False) as data:
        return MixingSamples([str(x) for x in data["objectives"]], [str(x) for x in data["judges"]],
                             data["logratios"], data["scores"], data["ref_logps"], data["num_tokens"])


def load_samples(run_id: str) -> MixingSamples:
    """The stored samples of a mixing run (cached in memory until the file changes)."""
    path = samples_path(run_id)
    if not path.exists():
        raise InputError(f"run {run_id}: no mixing samples at {path}; is it a finished mixing_po run?")
    return _load(str(path), path.stat().st_mtime_ns)


def instant_estimate(samples: MixingSamples, weights: Sequence[float] | dict[str, float],
                     prompts: slice = slice(None)) -> dict[str, Any]:
    """What ``pi_lambda`` would score, from the stored samples alone (self-normalised importance weights).

    For the dashboard's mixer: per objective the expected judge score with its standard error and the expected
    log-ratio ``J_k``; the KL to the reference; the ESS. ``reliable`` is False (and ``warning`` says why) when
    some prompt's ESS is below ``ess_required``: the numbers then rest on a few samples. ``weights`` is a list in
    objective order or a dict by name; nonnegative, summing to less than 1 moves toward the reference.
    """
    lam = weight_vector(samples.objectives, weights)
    est = estimate_mixture(samples.logratios[prompts], samples._stacked[prompts], lam)
    k = len(samples.objectives)
    warning = None if est.reliable else (
        f"low ESS: the smallest per-prompt ESS is {est.ess_min:.1f} of {samples.logratios.shape[1]} samples "
        f"(need {est.ess_required:.0f}); the estimate rests on a few samples, generate to confirm")
    return {"weights": dict(zip(samples.objectives, lam.tolist())),
            "scores": dict(zip(samples.objectives, est.scores[:k].tolist())),
            "stderr": dict(zip(samples.objectives, est.stderr[:k].tolist())),
            "rewards": dict(zip(samples.objectives, est.scores[k:].tolist())),
            "kl": est.kl, "kl_stderr": est.kl_stderr, "ess_mean": est.ess_mean, "ess_min": est.ess_min,
            "ess_required": est.ess_required, "reliable": est.reliable, "warning": warning}


def weight_vector(objectives: list[str], weights: Sequence[float] | dict[str, float]) -> np.ndarray:
    """Weights in objective order from a list or a dict by name (missing names weigh 0)."""
    if isinstance(weights, dict):
        unknown = sorted(set(weights) - set(objectives))
        if unknown:
            raise InputError(f"weights: unknown objective(s) {unknown}; this run has {objectives}")
        weights = [weights.get(name, 0.0) for name in objectives]
    lam = np.asarray(weights, dtype=np.float64)
    if lam.shape != (len(objectives),):
        raise InputError(f"weights: need one per objective {objectives} (got {list(weights)})")
    return lam


def simplex_grid(k: int, resolution: int) -> np.ndarray:
    """Every point of the simplex in R^k whose coordinates are multiples of 1/resolution, [G, k]."""
    points = [c for c in itertools.product(range(resolution + 1), repeat=k - 1) if sum(c) <= resolution]
    return np.array([[*c, resolution - sum(c)] for c in points], dtype=np.float64) / resolution


def mixing_run_config(run_id: str) -> RunConfig:
    cfg = config_from_dict(read_run(run_id)["config"], f"run {run_id}")
    if get_method(cfg.method).family != "mixing":
        raise InputError(f"run {run_id} is a {cfg.method} run; balance and mix need a run of the mixing family "
                         f"({', '.join(method_names(family='mixing'))})")
    return cfg


def balance(run_id: str, *, eta: float | None = None, steps: int | None = None, seed: int | None = None) -> dict:
    """Rerun mirror descent on a run's stored log-ratios (no model call): lambda* (the averaged iterate), the
    estimate there, and the duality gap and ``F_hat`` of lambda* itself on all stored prompts (the trace's last
    row describes the last iterate on one batch, not the result). ``eta``/``steps``/``seed`` override the run's
    settings."""
    cfg = mixing_run_config(run_id)
    params = cfg.params
    samples = load_samples(run_id)
    trace = mirror_descent_trace(samples.logratios, eta=params.eta if eta is None else eta,
                                 steps=params.md_steps if steps is None else steps,
                                 prompts_per_step=min(params.prompts_per_step, samples.logratios.shape[0]),
                                 seed=cfg.training.seed if seed is None else seed,
                                 tail=params.tail_average)
    estimate = instant_estimate(samples, trace.weights)
    return {"weights": estimate["weights"], "scores": estimate["scores"], "rewards": estimate["rewards"],
            "estimate": estimate, "gap": duality_gap(trace.weights, f_hat_grad(trace.weights, samples.logratios)),
            "F_hat": f_hat(trace.weights, samples.logratios)}
