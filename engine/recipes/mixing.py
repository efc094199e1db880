"""The MixMPO job (Wang, Gui, Hu, Lin, Zhang, "MPO: post-processing framework for mixing diverse preference
alignment", ICML 2025; docs/methods/mixing_po.md), from preference files to a Pareto sweep, as one run.

1. One DPO expert per objective from the shared reference
   (engine.recipes.preference.train_preference_model), saved under
   ``<run>/experts/<name>/model`` (LoRA adapters on the base when ``model.lora`` is set), metrics prefixed
   ``<name>/``; a DPO baseline on the union of all preference sets under ``<run>/baselines/dpo_union/model``.
2. M samples per held-out prompt from the reference at temperature 1, their log-ratios
   ``ell_k = log pi_k - log pi_ref`` (teacher forcing, temperature 1) and every objective's judge score, stored in
   ``<run>/mixing/samples.npz`` (numbers; loaded without pickle) and ``samples.parquet`` (texts).
3. Batch stochastic mirror descent on the cached log-ratios (``mix/*`` metrics every step), lambda* into
   ``<run>/mixing/lambda.json`` and the ``mix/lambda_bar_<name>`` metrics, with ``mix/ref_coverage_<name>``
   (F_hat at the vertex: about 0 when the reference samples cover expert k, far below 0 when they do not).
4. Pareto sweep into the ``mixtures`` table: importance-weighted estimates over a simplex grid (kind ``estimate``),
   real generations at lambda*, each expert, the union baseline and the reference (kind ``generated``, the run's
   decode mode and temperature; texts in ``generations``, means with 95% intervals in ``evaluations``), and a
   check of the estimates against temperature-1 ``sir_token`` generations at three weights (kind ``check``).

``resume=True`` continues an expert's training from its checkpoints and keeps experts already saved; sampling,
mirror descent and the sweep run again (the dashboard reads the latest rows).

The estimates and ``balance``
need only numpy; torch-dependent modules are imported inside the functions that decode or train.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from engine.config import RunConfig, resolve_source
from engine.decoding.distributions import SEQUENCE_T1
from engine.errors import InputError
from engine.methods.mixing_po.config import UNION, expert_config
from engine.paths import RunLayout
from engine.recipes.mixing_estimates import (
    MixingSamples,
    balance,
    instant_estimate,
    mixing_run_config,
    simplex_grid,
    weight_vector,
)
from engine.store.runs import RunWriter, run_layout
from engine.theory.mixing import duality_gap, f_hat, f_hat_grad, mirror_descent_trace

Z95 = 1.959963984540054
__all__ = ["balance", "mix_generate", "train_mixing"]  # balance lives with the samples (no torch), re-exported

# ---------------------------------------------------------------------------------------------- training


class _PrefixedWriter:
    """What train_preference_model uses of a RunWriter, with files in a subfolder and metric names prefixed."""

    def __init__(self, writer: RunWriter, prefix: str, folder: Path):
        self.run_id, self.dir, self._writer, self._prefix = writer.run_id, folder, writer, prefix
        folder.mkdir(parents=True, exist_ok=True)

    def log_metrics(self, step: int, values: dict[str, float]) -> None:
        self._writer.log_metrics(step, {f"{self._prefix}/{k}": v for k, v in values.items()})

    def append(self, table: str, rows) -> None:
        self._writer.append(table, rows)


def _train_policy(cfg: RunConfig, writer: RunWriter, name: str, train: str, eval_: str | None, folder: RunLayout,
                  resume: bool, limit: int | None) -> Path:
    """One DPO policy from the run's reference and training settings; on resume a finished one is kept."""
    from engine.recipes.preference import train_preference_model  # torch and TRL only when training

    if resume and folder.has_model():
        return folder.model
    # an expert killed before its first complete checkpoint starts again, as one never started does
    has_checkpoint = bool(folder.complete_checkpoints())
    return train_preference_model(expert_config(cfg, train, eval_, limit), _PrefixedWriter(writer, name, folder.root),
                                  resume=resume and has_checkpoint)


def _union_files(cfg: RunConfig, layout: RunLayout) -> tuple[str, str | None]:
    """The objectives' preference sets concatenated (each cut to data.limit first) as parquet files."""
    from engine.data.loaders import load_preferences

    layout.baselines.mkdir(parents=True, exist_ok=True)
    objectives, paths = cfg.params.objectives, {}
    for split, files in (("train", [o.train for o in objectives]), ("test", [o.eval for o in objectives])):
        if any(f is None for f in files):
            continue
        frames = [load_preferences(resolve_source(f), split=split, subset=cfg.data.subset, limit=cfg.data.limit)
                  .to_pandas()[["prompt", "chosen", "rejected"]] for f in files]
        paths[split] = layout.union_pairs(split)
        pd.concat(frames, ignore_index=True).to_parquet(paths[split], index=False)
    return str(paths["train"]), (str(paths["test"]) if "test" in paths else None)


def train_experts(cfg: RunConfig, writer: RunWriter, resume: bool = False) -> dict[str, Path]:
    """Every objective's DPO expert and (if asked) the union baseline; name -> saved model folder."""
    layout = writer.layout  # objective names were checked against the reserved ones on load
    saved = {o.name: _train_policy(cfg, writer, o.name, o.train, o.eval, layout.expert(o.name), resume,
                                   cfg.data.limit) for o in cfg.params.objectives}
    if cfg.params.union_baseline:
        train, eval_ = _union_files(cfg, layout)
        saved[UNION] = _train_policy(cfg, writer, UNION, train, eval_, layout.baseline(UNION), resume, None)
    return saved


def run_policies(cfg: RunConfig, layout: RunLayout):
    """The reference, experts and baseline of a run folder as one engine.decoding.mixture.PolicySet."""
    from engine.decoding.mixture import load_policies
    from engine.models.loading import load_tokenizer

    saved = {o.name: layout.expert(o.name).model for o in cfg.params.objectives}
    union = layout.baseline(UNION).model
    if union.exists():
        saved[UNION] = union
    missing = [str(p) for p in saved.values() if not p.exists()]
    if missing:
        raise InputError(f"run folder {layout.root}: missing trained policies {missing}; rerun with --resume")
    tokenizer = load_tokenizer(resolve_source(cfg.model.tokenizer or cfg.model.path))
    return load_policies(resolve_source(cfg.model.path), {k: str(v) for k, v in saved.items()}, tokenizer,
                         backend=cfg.params.decode_backend, device=cfg.training.device,
                         dtype=cfg.model.dtype)


def run_prompts(cfg: RunConfig, limit: int | None) -> list[str]:
    from engine.data.loaders import load_prompts

    return list(load_prompts(resolve_source(cfg.params.prompts), limit=limit)["prompt"])


def draw_samples(policies, objectives: Sequence[str], judges: Sequence[str], prompts: Sequence[str], m: int,
                 max_new_tokens: int, seed: int, batch_size: int = 64) -> tuple[MixingSamples, pd.DataFrame]:
    """M reference samples per prompt at temperature 1, their log-ratios, judge scores; plus their texts."""
    from engine.decoding.generation import SamplingParams
    from engine.decoding.mixture import REFERENCE, logratios, sample
    from engine.judges import get_scorer

    repeated = [p for p in prompts for _ in range(m)]
    drawn = sample(policies, [REFERENCE], [1.0], repeated, SamplingParams(max_new_tokens, 1.0, 1.0, seed),
                   batch_size)
    ell, ref_logps = logratios(policies, objectives, repeated, drawn.token_ids, batch_size)
    scores = np.stack([get_scorer(j).score(repeated, drawn.texts) for j in judges], axis=1)
    n = len(prompts)
    samples = MixingSamples(list(objectives), list(judges), ell.reshape(n, m, -1), scores.reshape(n, m, -1),
                            ref_logps.reshape(n, m), np.asarray(drawn.num_tokens).reshape(n, m))
    texts = pd.DataFrame({"prompt_id": np.repeat(np.arange(n), m), "sample_id": np.tile(np.arange(m), n),
                          "prompt": repeated, "response": drawn.texts})
    return samples, texts


def train_mixing(cfg: RunConfig, writer: RunWriter, resume: bool = False) -> Path:
    """The whole MixMPO job (module docstring); returns the run folder."""
    params, layout = cfg.params, writer.layout
    train_experts(cfg, writer, resume)
    policies = run_policies(cfg, layout)
    prompts = run_prompts(cfg, params.num_prompts)
    names = [o.name for o in params.objectives]
    samples, texts = draw_samples(policies, names, [o.judge for o in params.objectives], prompts,
                                  params.samples_per_prompt, params.max_new_tokens, cfg.training.seed,
                                  params.batch_size)
    samples.save(layout.samples)
    texts.to_parquet(layout.sample_texts, index=False)
    trace = mirror_descent_trace(samples.logratios, params.eta, params.md_steps,
                                 min(params.prompts_per_step, len(prompts)), cfg.training.seed, params.tail_average)
    for step in range(params.md_steps):
        writer.log_metrics(step, trace.metrics(step, names))
    final = {f"mix/lambda_bar_{n}": float(w) for n, w in zip(names, trace.weights)}
    # F_hat at a vertex is mean_x log mean_j exp(ell_k): about 0 when the reference samples cover expert k (since
    # E_ref exp(ell_k) = 1), far below 0 when they miss its typical responses and estimates near it are unusable
    final.update({f"mix/ref_coverage_{n}": f_hat(np.eye(len(names))[i], samples.logratios)
                  for i, n in enumerate(names)})
    # the trace certifies each iterate on its batch; the result is the average, measured here on every prompt
    final.update({"mix/F_hat_bar": f_hat(trace.weights, samples.logratios),
                  "mix/gap_bar": duality_gap(trace.weights, f_hat_grad(trace.weights, samples.logratios))})
    writer.log_metrics(params.md_steps, final)
    layout.lambda_star.write_text(json.dumps(dict(zip(names, trace.weights.tolist()))), encoding="utf-8")
    pareto_sweep(cfg, writer, policies, samples, trace.weights, prompts)
    return writer.dir


# ---------------------------------------------------------------------------------------------- evaluation


def _judge(judges: Sequence[str], prompts: Sequence[str], texts: Sequence[str]) -> np.ndarray:
    from engine.judges import get_scorer

    return np.stack([get_scorer(j).score(prompts, texts) for j in judges], axis=1)


def _mean_se(values: np.ndarray) -> tuple[float, float]:
    """Mean of [P prompts, g samples] and its standard error given the prompts (within-prompt sampling noise
    only: the same prompts are compared across policies and with the estimates)."""
    p, g = values.shape
    if g == 1:
        return float(values.mean()), float(values.std(ddof=1) / np.sqrt(p)) if p > 1 else float("nan")
    return float(values.mean()), float(np.sqrt(values.var(axis=1, ddof=1).sum() / g) / p)


def _generate(policies, names, weights, prompts, g, params, mode, candidates, batch_size):
    """g responses per prompt (prompt-major) from one mixture, with the per-prompt SIR ESS if any."""
    from engine.decoding.mixture import sample_mixture

    repeated = [p for p in prompts for _ in range(g)]
    mode = mode if len(names) > 1 else "token"  # a single policy is sampled exactly
    return repeated, sample_mixture(policies, list(names), list(weights), repeated, params, mode, candidates,
                                    batch_size)


def pareto_sweep(cfg: RunConfig, writer: RunWriter, policies, samples: MixingSamples, lam_star: np.ndarray,
                 prompts: Sequence[str]) -> pd.DataFrame:
    """Estimates over the simplex grid and at the named points, real generations at the named points; rows of
    ``mixtures`` (also returned), ``evaluations`` and ``generations``.

    Every row names its distribution (engine.decoding.distributions): the estimates describe ``pi_lambda`` at
    temperature 1, the generations the run's decode mode at its temperature, mixtures and comparators alike.
    """
    from engine.decoding.generation import SamplingParams, cache_key
    from engine.decoding.mixture import REFERENCE

    params = cfg.params
    names, k = samples.objectives, len(samples.objectives)
    one_hot = {n: np.eye(k)[i] for i, n in enumerate(names)}
    named = {"lambda*": (names, lam_star), **{f"expert:{n}": ([n], [1.0]) for n in names},
             "reference": ([REFERENCE], [1.0])}
    rows = []
    estimated = [("grid", w) for w in simplex_grid(k, params.grid_size)]
    estimated += [("lambda*", lam_star), *((f"expert:{n}", one_hot[n]) for n in names), ("reference", np.zeros(k))]
    for label, w in estimated:
        est = instant_estimate(samples, w)
        weights = json.dumps([round(float(x), 6) for x in w])
        point = {"label": label, "weights": weights, "kind": "estimate", "ess": est["ess_mean"],
                 "distribution": SEQUENCE_T1}
        rows += [{**point, "objective": n, "score": est["scores"][n]} for n in names]
        rows.append({**point, "objective": "kl", "score": est["kl"]})
    if UNION in policies.names:
        named[UNION] = ([UNION], [1.0])
    sampling = SamplingParams(params.max_new_tokens, params.temperature, 1.0, cfg.training.seed)
    eval_prompts, g = list(prompts[: params.eval_prompts]), params.eval_samples_per_prompt
    judges, distribution = [o.judge for o in params.objectives], params.decoded_distribution()
    maxmin = {}
    for label, (members, w) in named.items():
        repeated, out = _generate(policies, members, w, eval_prompts, g, sampling, params.decode_mode,
                                  params.sir_candidates, params.batch_size)
        scores = _judge(judges, repeated, out.texts).reshape(len(eval_prompts), g, k)
        full = one_hot[members[0]] if label.startswith("expert:") else (np.zeros(k) if label == "reference" else w)
        weights = "[]" if label == UNION else json.dumps([round(float(x), 6) for x in full])
        ess = None if out.ess is None else float(out.ess.mean())
        evaluations = []
        for i, n in enumerate(names):
            mean, se = _mean_se(scores[:, :, i])
            rows.append({"label": label, "weights": weights, "objective": n, "score": mean, "kind": "generated",
                         "ess": ess, "distribution": distribution})
            evaluations.append(_evaluation(label, f"score/{n}", mean, se, len(repeated), distribution))
        rewards, kl = _decoded_rewards(policies, names, label, full, repeated, out.token_ids, samples, params)
        for i, n in enumerate(names):
            evaluations.append(_evaluation(label, f"implicit_reward/{n}", *_mean_se(rewards[:, :, i]),
                                           len(repeated), distribution))
        if distribution == SEQUENCE_T1:
            maxmin[label] = float(rewards.mean(axis=(0, 1)).min() - kl)
            evaluations.append(_evaluation(label, "maxmin_value", maxmin[label], float("nan"), len(repeated),
                                           distribution))
        writer.append("evaluations", evaluations)
        key = cache_key(f"{writer.run_id}:{label}:{weights}", params.prompts, sampling, f"mixed:{params.decode_mode}")
        writer.append("generations", ({"cache_key": key, "model": label, "prompt_set": params.prompts,
                                       "prompt_id": i // g, "prompt": p, "output": t, "num_tokens": c}
                                      for i, (p, t, c) in enumerate(zip(repeated, out.texts, out.num_tokens))))
    if maxmin:
        best_other = max(v for label, v in maxmin.items() if label != "lambda*")
        writer.log_metrics(params.md_steps, {"check/maxmin_margin": maxmin["lambda*"] - best_other})
    if params.check_estimates:
        checks = {"lambda*": lam_star, "uniform": np.full(k, 1.0 / k), f"expert:{names[0]}": one_hot[names[0]]}
        check = estimate_check(policies, samples, eval_prompts, checks, judges, g, params.sir_candidates,
                               params.max_new_tokens, cfg.training.seed, params.batch_size)
        check.to_parquet(writer.layout.estimate_check, index=False)
        rows += [{"label": r.label, "weights": r.weights, "objective": r.objective, "score": r.generated,
                  "kind": "check", "ess": r.ess_sir, "distribution": SEQUENCE_T1} for r in check.itertuples()]
        writer.log_metrics(params.md_steps, {"check/within_ci_frac": float(check["within_ci"].mean())})
    writer.append("mixtures", rows)
    return pd.DataFrame(rows)


def _evaluation(label: str, metric: str, mean: float, se: float, n: int, distribution: str) -> dict:
    return {"model": label, "baseline": "", "metric": metric, "value": mean, "low": mean - Z95 * se,
            "high": mean + Z95 * se, "n": n, "distribution": distribution}


def _decoded_rewards(policies, names: Sequence[str], label: str, weights: np.ndarray, prompts: Sequence[str],
                     token_ids: Sequence[list[int]], samples: MixingSamples, params) -> tuple[np.ndarray, float]:
    """The implicit rewards ``ell_k`` of one point's decoded responses [P, g, K], and its KL to the reference.

    The KL is exact for the union baseline (the mean of its own log-ratio) and, for a point of the sequence mixture
    (lambda*, an expert, the reference), ``E_lambda[lambda . ell] - log Z(lambda)`` with ``log Z`` estimated by
    ``F_hat`` on the same prompts' stored reference samples; it is meaningful only when the run decodes
    ``pi_lambda`` itself (``sequence T=1``).
    """
    from engine.decoding.mixture import logratios

    scored = [*names, UNION] if label == UNION else list(names)
    ell, _ = logratios(policies, scored, prompts, token_ids, params.batch_size)
    p = len(prompts) // params.eval_samples_per_prompt
    rewards = ell[:, : len(names)].reshape(p, params.eval_samples_per_prompt, len(names))
    if label == UNION:
        return rewards, float(ell[:, -1].mean())
    kl = float(rewards.mean(axis=(0, 1)) @ weights - f_hat(weights, samples.logratios[:p]))
    return rewards, kl


def estimate_check(policies, samples: MixingSamples, prompts: Sequence[str], points: dict[str, np.ndarray],
                   judges: Sequence[str], g: int, candidates: int, max_new_tokens: int, seed: int,
                   batch_size: int = 64) -> pd.DataFrame:
    """Importance-weighted estimates against real generations from ``pi_lambda`` on the same prompts.

    ``prompts`` must be the first prompts of ``samples``. The real generations are ``sir_token`` draws at
    temperature 1 (``candidates`` per response), the distribution the estimates describe; ``within_ci`` says
    whether the estimate lies in the generations' 95% interval, ``within_combined_ci`` uses both errors.
    """
    from engine.decoding.generation import SamplingParams

    names, p = samples.objectives, len(prompts)
    params = SamplingParams(max_new_tokens, 1.0, 1.0, seed)
    rows = []
    for label, w in points.items():
        est = instant_estimate(samples, w, prompts=slice(0, p))
        members = [n for n, x in zip(names, w) if x > 0]
        repeated, out = _generate(policies, members, [x for x in w if x > 0], prompts, g, params, "sir_token",
                                  candidates, batch_size)
        scores = _judge(judges, repeated, out.texts).reshape(p, g, len(names))
        for i, n in enumerate(names):
            mean, se = _mean_se(scores[:, :, i])
            gap = abs(est["scores"][n] - mean)
            rows.append({"label": label, "weights": json.dumps([round(float(x), 6) for x in w]), "objective": n,
                         "estimate": est["scores"][n], "estimate_se": est["stderr"][n], "generated": mean,
                         "generated_se": se, "ess_estimate": est["ess_mean"],
                         "ess_sir": None if out.ess is None else float(out.ess.mean()),
                         "within_ci": bool(gap <= Z95 * se),
                         "within_combined_ci": bool(gap <= Z95 * np.hypot(se, est["stderr"][n]))})
    return pd.DataFrame(rows)


@functools.lru_cache(maxsize=1)
def _run_policies(run_id: str):
    return run_policies(mixing_run_config(run_id), run_layout(run_id))


def mix_generate(run_id: str, weights: Sequence[float] | dict[str, float], prompts: Sequence[str] | None = None,
                 n: int = 8, seed: int = 0) -> list[dict]:
    """``n`` responses from a mixing run's mixture with ``weights`` (list in objective order or dict by name, on the
    simplex), decoded with the run's decode mode, temperature and length, each scored by every objective's judge.
    Each row names the distribution sampled (``sequence T=1`` is the one the instant estimates describe).

    Prompts cycle through ``prompts`` (default: the run's prompt set from its start), so ``prompts=["The film"]``
    gives n samples of one prompt. Rows: prompt, output, num_tokens, scores {objective: score}, ess (SIR modes).
    """
    from engine.decoding.generation import SamplingParams

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"n: must be a positive integer (got {n!r})")
    cfg = mixing_run_config(run_id)
    params = cfg.params
    names = [o.name for o in params.objectives]
    lam = weight_vector(names, weights)
    pool = list(prompts) if prompts is not None else run_prompts(cfg, n)
    if not pool:
        raise InputError("prompts: empty; give at least one prompt or None for the run's prompts")
    chosen = [pool[i % len(pool)] for i in range(n)]
    members = [m for m, x in zip(names, lam) if x > 0]
    _, out = _generate(_run_policies(run_id), members, [x for x in lam if x > 0], chosen, 1,
                       SamplingParams(params.max_new_tokens, params.temperature, 1.0, seed), params.decode_mode,
                       params.sir_candidates, params.batch_size)
    scores = _judge([o.judge for o in params.objectives], chosen, out.texts)
    return [{"prompt": p, "output": t, "num_tokens": c, "scores": dict(zip(names, map(float, s))),
             "ess": None if out.ess is None else float(out.ess[i]), "distribution": params.decoded_distribution()}
            for i, (p, t, c, s) in enumerate(zip(chosen, out.texts, out.num_tokens, scores))]
