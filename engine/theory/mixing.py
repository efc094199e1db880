"""MixMPO mathematics (Wang, Gui, Hu, Lin, Zhang, "MPO: post-processing framework for mixing diverse
preference alignment", ICML 2025), as pure functions; docs/methods/mixing_po.md.

K experts ``pi_k`` are DPO policies sharing ``pi_ref``; with ``ell_k = log pi_k - log pi_ref`` the mixture is
``pi_lambda ∝ pi_ref exp(lambda . ell) = prod_k pi_k^lambda_k`` (lambda on the simplex). The weights minimise
``F(lambda) = E_x log E_{y~pi_ref} exp(lambda . ell)``, whose minimiser equalises the active objectives
``J_k = E_{pi_lambda} ell_k`` (KKT), i.e. the KL-regularised max-min policy. Everything here works on a cached
tensor ``logratios[N prompts, M samples from pi_ref, K]``, so moving lambda costs no model call.

Numerics: sequence log-ratios span tens of nats, so every normalisation is a log-space softmax/logsumexp and
no weight is formed by exponentiating a raw log-ratio. numpy or torch in, numpy out (``mixture_logprobs``
returns torch for torch input); torch is imported lazily so the dashboard can use the estimates without it.

Metrics of the weight search (``MirrorDescentTrace.metrics``): ``mix/lambda_k``, ``mix/g_k`` (estimated
``J_k``), ``mix/F_hat``, ``mix/ess_mean``, ``mix/ess_min`` (``1/sum_j w_j^2``), ``mix/gap``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import log_softmax, logsumexp

SIMPLEX_TOL = 1e-6

# ---------------------------------------------------------------------------------------------- validation


def _is_torch(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def _detached(x: Any) -> Any:
    """A torch tensor as a float64 numpy array; anything else unchanged."""
    return x.detach().to("cpu").double().numpy() if _is_torch(x) else x


def _to_numpy(x: Any, name: str) -> np.ndarray:
    """Float64 numpy copy of a numpy/torch/list input; rejects NaN and infinities (they poison every sum)."""
    try:
        arr = np.asarray(_detached(x), dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a numeric array (got {type(x).__name__})") from None
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values; drop or recompute those samples")
    return arr


def _logratios(logratios: Any) -> np.ndarray:
    ell = _to_numpy(logratios, "logratios")
    if ell.ndim != 3 or min(ell.shape) == 0:
        raise ValueError(
            f"logratios must have shape [N prompts, M samples, K objectives] (got {ell.shape}); "
            "add a leading axis of size 1 for a single prompt"
        )
    return ell


def _weights(weights: Any, k: int, nonneg: bool = True, simplex: bool = True) -> np.ndarray:
    """A length-K weight vector; nonnegative when ``nonneg``, summing to 1 when ``simplex``."""
    lam = _to_numpy(weights, "weights")
    if lam.shape != (k,):
        raise ValueError(f"weights must have shape [{k}], one per objective (got {lam.shape})")
    if nonneg and np.any(lam < 0):
        raise ValueError(f"weights must be nonnegative (got {lam.tolist()}); clip negatives to 0")
    if simplex and abs(lam.sum() - 1.0) > SIMPLEX_TOL:
        raise ValueError(f"weights must sum to 1 within {SIMPLEX_TOL} (sum {lam.sum():.9g}); divide by their sum")
    return lam


def _positive_float(value: Any, name: str, hint: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        out = float("nan")
    if not (np.isfinite(out) and out > 0):
        raise ValueError(f"{name} must be a positive finite number (got {value!r}); {hint}")
    return out


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer (got {value!r})")
    return int(value)


# ---------------------------------------------------------------------------------------------- F and its gradient


def _tilted(ell: np.ndarray, lam: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per prompt: scores ``h = lambda . ell`` [N, M], SNIS weights ``w = softmax_j h`` and ``log mean_j e^h`` [N]."""
    h = ell @ lam
    log_z = logsumexp(h, axis=1)
    w = np.exp(h - log_z[:, None])
    return h, w, log_z - np.log(h.shape[1])


def f_hat(weights: Any, logratios: Any) -> float:
    """``F_hat(lambda) = mean_x log mean_j exp(lambda . ell_xj)``: the sample version of MixMPO's convex objective.

    Defined for any finite lambda in R^K (convex there), so it also serves checks off the simplex.
    """
    ell = _logratios(logratios)
    lam = _weights(weights, ell.shape[2], nonneg=False, simplex=False)
    return float(_tilted(ell, lam)[2].mean())


def f_hat_grad(weights: Any, logratios: Any) -> np.ndarray:
    """Exact gradient of ``f_hat``: ``g_k = mean_x sum_j w_xj ell_xjk`` [K], the SNIS estimate of ``J_k(lambda)``."""
    ell = _logratios(logratios)
    lam = _weights(weights, ell.shape[2], nonneg=False, simplex=False)
    w = _tilted(ell, lam)[1]
    return np.einsum("nm,nmk->k", w, ell) / ell.shape[0]


def duality_gap(weights: Any, grad: Any) -> float:
    """``sum_k lambda_k g_k - min_k g_k >= 0``: zero exactly at the optimum and an upper bound on
    ``F(lambda) - min F`` (Frank-Wolfe gap of a convex function on the simplex), hence a stopping criterion."""
    g = _to_numpy(grad, "grad")
    if g.ndim != 1:
        raise ValueError(f"grad must be a vector [K] (got shape {g.shape})")
    lam = _weights(weights, g.shape[0])
    return float(lam @ g - g.min())


def effective_sample_size(log_weights: Any, axis: int = -1) -> np.ndarray:
    """Kish ESS ``1/sum w^2`` of self-normalised weights ``w = softmax(log_weights)`` along ``axis``.

    ``exp(2 logsumexp(a) - logsumexp(2a))`` never exponentiates a raw log-weight; ``-inf`` entries are
    allowed (zero weight), NaN is not.
    """
    a = np.asarray(_detached(log_weights), dtype=np.float64)
    if np.any(np.isnan(a)) or np.any(a == np.inf) or np.any(np.all(a == -np.inf, axis=axis)):
        raise ValueError("log_weights must be finite or -inf with at least one finite entry per row")
    return np.exp(2.0 * logsumexp(a, axis=axis) - logsumexp(2.0 * a, axis=axis))


# ---------------------------------------------------------------------------------------------- mirror descent


@dataclass(frozen=True)
class MirrorDescentTrace:
    """Batch stochastic mirror descent run (docs/methods/mixing_po.md). Row t of each array is step t+1's batch
    estimate at ``lam[t]``, the weights *before* that step's update (so ``gap[t]`` certifies ``lam[t]``)."""

    weights: np.ndarray  # [K] averaged iterate: the result
    lam: np.ndarray  # [T, K]
    g: np.ndarray  # [T, K] batch estimate of J_k
    f_hat: np.ndarray  # [T] batch mean of log mean_j exp(lambda . ell)
    ess_mean: np.ndarray  # [T] over the batch's prompts
    ess_min: np.ndarray  # [T]
    gap: np.ndarray  # [T] sum_k lambda_k g_k - min_k g_k with the batch g

    def metrics(self, step: int, names: Sequence[str] | None = None) -> dict[str, float]:
        """Log row of 0-based ``step`` under the ``mix/*`` keys; objectives named by ``names`` or by index."""
        k = self.lam.shape[1]
        labels = [str(i) for i in range(k)] if names is None else [str(n) for n in names]
        if len(labels) != k:
            raise ValueError(f"names must list {k} objectives (got {len(labels)})")
        row = {f"mix/lambda_{n}": float(self.lam[step, i]) for i, n in enumerate(labels)}
        row.update({f"mix/g_{n}": float(self.g[step, i]) for i, n in enumerate(labels)})
        row.update({"mix/F_hat": float(self.f_hat[step]), "mix/ess_mean": float(self.ess_mean[step]),
                    "mix/ess_min": float(self.ess_min[step]), "mix/gap": float(self.gap[step])})
        return row


def _prompt_batches(n: int, batch: int, steps: int, rng: np.random.Generator) -> np.ndarray:
    """[steps, batch] prompt indices taken in order from reshuffled epochs: every prompt is used equally
    often, and ``batch == n`` gives the full (deterministic) gradient at every step."""
    epochs = -(-steps * batch // n)
    order = np.concatenate([rng.permutation(n) for _ in range(epochs)])
    return order[: steps * batch].reshape(steps, batch)


def mirror_descent_trace(
    logratios: Any, eta: float = 0.02, steps: int = 2000, prompts_per_step: int = 1, seed: int = 0,
    tail: bool = False,
) -> MirrorDescentTrace:
    """Minimise ``f_hat`` over the simplex by batch stochastic mirror descent (the paper's Algorithm 2).

    Start uniform; each step takes ``prompts_per_step`` prompts, estimates ``g_k`` with log-space SNIS
    weights over their M cached reference samples, and updates ``lambda_k ∝ lambda_k exp(-eta g_k)``
    (kept as log-weights so no coordinate underflows). The result averages the updated iterates over all
    steps or, with ``tail=True``, over the second half only: the full average keeps the start-up bias
    when some ``lambda*_k = 0``. Prompts are sampled per step, so the optimum found is that of the pooled
    ``f_hat`` over all N prompts; its finite-M bias is O(1/M) (ratio of averages).
    """
    ell = _logratios(logratios)
    n, m, k = ell.shape
    steps = _positive_int(steps, "steps")
    batch = _positive_int(prompts_per_step, "prompts_per_step")
    if batch > n:
        raise ValueError(f"prompts_per_step must be at most the number of prompts N={n} (got {batch})")
    eta = _positive_float(eta, "eta", "the paper uses 0.02")
    batches = _prompt_batches(n, batch, steps, np.random.default_rng(seed))

    log_lam = np.full(k, -np.log(k))
    lam_rows, g_rows = np.empty((steps, k)), np.empty((steps, k))
    f_rows, ess_mean, ess_min = np.empty(steps), np.empty(steps), np.empty(steps)
    acc, acc_from = np.zeros(k), steps // 2 if tail else 0
    # plain max/exp/sum instead of scipy's logsumexp: this loop is sequential and its overhead dominates
    for t in range(steps):
        lam = np.exp(log_lam)
        x = ell[batches[t]]  # [B, M, K]
        h = x @ lam
        h_max = h.max(axis=1, keepdims=True)
        e = np.exp(h - h_max)
        z = e.sum(axis=1, keepdims=True)
        w = e / z
        g = (w.reshape(-1) @ x.reshape(-1, k)) / batch
        ess = 1.0 / (w * w).sum(axis=1)
        lam_rows[t], g_rows[t] = lam, g
        f_rows[t] = (h_max + np.log(z)).mean() - np.log(m)
        ess_mean[t], ess_min[t] = ess.mean(), ess.min()
        log_lam = log_lam - eta * g
        log_lam -= log_lam.max()
        log_lam -= np.log(np.exp(log_lam).sum())
        if t >= acc_from:
            acc += np.exp(log_lam)
    gap = np.einsum("tk,tk->t", lam_rows, g_rows) - g_rows.min(axis=1)
    return MirrorDescentTrace(acc / acc.sum(), lam_rows, g_rows, f_rows, ess_mean, ess_min, gap)


def mirror_descent_weights(
    logratios: Any, eta: float = 0.02, steps: int = 2000, prompts_per_step: int = 1, seed: int = 0,
    tail: bool = False,
) -> np.ndarray:
    """MixMPO weights ``lambda_bar`` [K] on the simplex; see ``mirror_descent_trace`` (same arguments)."""
    return mirror_descent_trace(logratios, eta, steps, prompts_per_step, seed, tail).weights


# ---------------------------------------------------------------------------------------------- instant estimates


@dataclass(frozen=True)
class MixtureEstimate:
    """What ``pi_lambda`` would score, estimated from cached reference samples (no decoding).

    ``stderr``/``kl_stderr`` are delta-method standard errors of the self-normalised estimates given the
    N prompts (prompt-to-prompt variation is not included: they measure how far the numbers are from
    decoding ``pi_lambda`` on these prompts). ``reliable`` is False when some prompt's ESS is below
    ``ess_required = max(5, 0.1 M)``: then a few samples carry the estimate and both the value and its
    standard error can be badly off (the delta method itself needs many effective samples).
    """

    scores: np.ndarray  # [S] mean over prompts of E_{pi_lambda}[score]
    stderr: np.ndarray  # [S]
    kl: float  # mean over prompts of KL(pi_lambda || pi_ref)
    kl_stderr: float
    ess: np.ndarray  # [N] per prompt, 1/sum_j w_j^2
    ess_mean: float
    ess_min: float
    ess_required: float
    reliable: bool


def estimate_mixture(logratios: Any, scores: Any, weights: Any) -> MixtureEstimate:
    """Per-objective expected score, KL to the reference and ESS of ``pi_lambda`` by self-normalised
    importance weighting of the M stored reference samples per prompt.

    ``scores`` [N, M, S] are the judges' scores of those samples. ``weights`` may be any nonnegative [K]
    vector: ``lambda = 0`` is ``pi_ref`` itself (ESS = M) and ``sum < 1`` moves toward ``pi_ref``
    (``pi_ref^(1 - sum) prod pi_k^lambda_k``). The KL uses ``E_{pi_lambda}[h] - log E_ref[e^h]`` with
    ``h = lambda . ell``. Trust it only when ``reliable`` (see ``MixtureEstimate``): with long responses the
    log-ratios span tens of nats and the ESS can collapse to about 1.
    """
    ell = _logratios(logratios)
    n, m, k = ell.shape
    s = _to_numpy(scores, "scores")
    if s.ndim != 3 or s.shape[:2] != (n, m):
        raise ValueError(f"scores must have shape [{n}, {m}, S] matching logratios (got {s.shape}); "
                         "add a trailing axis of size 1 for one scorer")
    lam = _weights(weights, k, simplex=False)
    h, w, log_mean = _tilted(ell, lam)
    mean_s = np.einsum("nm,nms->ns", w, s)
    var_s = np.einsum("nm,nms->ns", w * w, (s - mean_s[:, None, :]) ** 2)
    mean_h = np.einsum("nm,nm->n", w, h)
    # influence of sample j on (mean_w h - log mean e^h): M w_j (h_j - mean_w h - 1) + 1, variance sum/M^2
    psi = m * w * (h - mean_h[:, None] - 1.0) + 1.0
    var_kl = np.einsum("nm,nm->n", psi, psi) / m**2
    ess = 1.0 / np.einsum("nm,nm->n", w, w)
    required = max(5.0, 0.1 * m)
    return MixtureEstimate(
        scores=mean_s.mean(axis=0), stderr=np.sqrt(var_s.sum(axis=0)) / n,
        kl=float((mean_h - log_mean).mean()), kl_stderr=float(np.sqrt(var_kl.sum()) / n),
        ess=ess, ess_mean=float(ess.mean()), ess_min=float(ess.min()), ess_required=required,
        reliable=bool(ess.min() >= required),
    )


# ---------------------------------------------------------------------------------------------- decoding


def _expert_mix(logits: Any, weights: Any) -> tuple[Any, bool]:
    """``sum_k w_k log_softmax(logits_k)`` [..., V] (unnormalised) and whether the weights are one-hot.

    Experts with weight 0 are dropped, so their ``-inf`` logits (masked tokens) cannot produce ``0 * -inf``.
    Same backend as ``logits``; torch computes in float32 at least, because bf16/fp16 log_softmax loses the
    small differences that mixing relies on.
    """
    if _is_torch(logits):
        import torch

        if logits.dim() < 2:
            raise ValueError(f"logits must have shape [K, ..., V] (got {tuple(logits.shape)})")
        if torch.isnan(logits).any():
            raise ValueError("logits contain NaN; check the models' forward pass")
        lam = _weights(weights, logits.shape[0])
        x = logits if logits.dtype == torch.float64 else logits.float()
        keep = np.flatnonzero(lam > 0)
        ls = torch.log_softmax(x[torch.as_tensor(keep, device=x.device)], dim=-1)
        w = torch.as_tensor(lam[keep], dtype=x.dtype, device=x.device).reshape(-1, *[1] * (x.dim() - 1))
        return (ls[0] if len(keep) == 1 else (w * ls).sum(dim=0)), len(keep) == 1
    x = np.asarray(logits)
    if x.ndim < 2 or not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"logits must be a numeric array of shape [K, ..., V] (got shape {x.shape})")
    if np.any(np.isnan(x)):
        raise ValueError("logits contain NaN; check the models' forward pass")
    lam = _weights(weights, x.shape[0])
    keep = np.flatnonzero(lam > 0)
    ls = log_softmax(x[keep].astype(np.result_type(x.dtype, np.float32)), axis=-1)
    return (ls[0] if len(keep) == 1 else np.tensordot(lam[keep].astype(ls.dtype), ls, axes=1)), len(keep) == 1


def _lse(x: Any) -> Any:
    """Last-axis logsumexp with the axis kept, numpy or torch."""
    return x.logsumexp(dim=-1, keepdim=True) if _is_torch(x) else logsumexp(x, axis=-1, keepdims=True)


def mixture_logprobs(logits: Any, weights: Any) -> Any:
    """Token-level geometric mixture ``log_softmax(sum_k w_k log_softmax(logits_k))`` [..., V].

    ``logits`` [K, ..., V] from K experts on the same vocabulary; ``weights`` [K] on the simplex; numpy in,
    numpy out, torch in, torch out (decoding loops stay on the device). Apply temperature and logits
    processors to the result, not to the experts. One-hot weights return that expert's log_softmax
    exactly: the mixture is then that expert. This samples ``pi_lambda`` only approximately
    (docs/methods/mixing_po.md); ``mixture_step_log_weight`` gives the SIR correction.
    """
    mixed, one_hot = _expert_mix(logits, weights)
    return mixed if one_hot else mixed - _lse(mixed)


def mixture_step_log_weight(logits: Any, weights: Any, tokens: Any, temperature: float = 1.0) -> Any:
    """One decoding step's term of the ``sir_token`` log-weight ``log prod_k pi_k(y_t)^w_k - log q_t(y_t)``.

    ``logits`` [K, ..., V], ``tokens`` [...] the ids sampled from ``q_t = softmax(mixed / temperature)``.
    Summed over a candidate's response tokens (padding masked) it is ``log p~(y) - log q(y)`` with
    ``p~ = prod_k pi_k^w_k``, so resampling by it targets ``pi_lambda`` exactly as the number of candidates
    grows. At temperature 1 it is ``log Z_t = logsumexp_v mixed`` whatever the token (Hoelder: <= 0).
    Valid for plain temperature sampling only: top-k/top-p change q. Same backend as ``logits``.
    """
    temperature = _positive_float(temperature, "temperature", "1.0 samples the plain token-level mixture")
    mixed, _ = _expert_mix(logits, weights)
    if _is_torch(mixed):
        import torch

        tok = torch.as_tensor(tokens, device=mixed.device).long().unsqueeze(-1)
        if tok.shape[:-1] != mixed.shape[:-1]:
            raise ValueError(f"tokens must have shape {tuple(mixed.shape[:-1])} (got {tuple(tok.shape[:-1])})")
        scaled = mixed / temperature
        return (mixed.gather(-1, tok) - scaled.gather(-1, tok) + _lse(scaled)).squeeze(-1)
    tok = np.asarray(tokens)
    if tok.shape != mixed.shape[:-1] or not np.issubdtype(tok.dtype, np.integer):
        raise ValueError(f"tokens must be integer ids of shape {mixed.shape[:-1]} (got {tok.dtype} {tok.shape})")
    scaled = mixed / temperature
    pick = np.take_along_axis
    t = tok[..., None]
    return (pick(mixed, t, -1) - pick(scaled, t, -1) + _lse(scaled))[..., 0]


def sir_ref_log_weights(logratios: Any, weights: Any) -> np.ndarray:
    """``sir_ref`` log-weights ``lambda . ell`` [..., C] of candidates drawn from ``pi_ref`` at temperature 1
    (``logratios`` [..., C, K]): ``pi_lambda / pi_ref`` up to a constant. Poorer overlap than ``sir_token``."""
    ell = _to_numpy(logratios, "logratios")
    if ell.ndim < 2:
        raise ValueError(f"logratios must have shape [..., C candidates, K] (got {ell.shape})")
    return ell @ _weights(weights, ell.shape[-1])


@dataclass(frozen=True)
class SIRResult:
    """Resampled candidate indices [..., num_samples] and the candidates' ESS [...] (log it: near 1 means
    one candidate dominates and the draw is no better than the proposal)."""

    indices: np.ndarray
    ess: np.ndarray


def sir_resample(log_weights: Any, num_samples: int = 1, seed: int = 0) -> SIRResult:
    """Sampling-importance-resampling: draw ``num_samples`` candidates (with replacement) per row of
    ``log_weights`` [..., C] with probability ``softmax(log_weights)``; seeded, log-space throughout."""
    num_samples = _positive_int(num_samples, "num_samples")
    a = np.asarray(_detached(log_weights), dtype=np.float64)
    if a.ndim < 1 or a.shape[-1] == 0:
        raise ValueError(f"log_weights must have shape [..., C candidates] (got {a.shape})")
    ess = effective_sample_size(a)  # also rejects NaN and rows without a finite weight
    cdf = np.cumsum(np.exp(a - logsumexp(a, axis=-1, keepdims=True)), axis=-1)
    cdf /= cdf[..., -1:]  # last entry exactly 1, so a uniform u in [0, 1) never runs past the last candidate
    u = np.random.default_rng(seed).random((*a.shape[:-1], num_samples))
    # inverse CDF: the number of cumulative weights <= u; zero-weight candidates add no width and are never hit
    return SIRResult((cdf[..., None, :] <= u[..., None]).sum(axis=-1), ess)
