"""The evaluation job: generate, judge, score and rate models, and write the numbers to the store.

What lands where (tables of engine/store/runs.py; every row carries the eval run's id):

* ``generations``: one row per model and prompt, through ``cached_generate`` (a comparison already generated with
  the same model name, prompt set, sampling parameters and backend is read back, never generated again).
* ``judgments``: one row per prompt and (model, baseline) pair, ``source`` = the judge's name, ``model_a`` the
  model, ``model_b`` the baseline, ``position`` where the model's text was shown: ``"ab"`` for every judge of
  engine/judges.py, which sees both orders and averages them (position bias cancels in every verdict, so win rates,
  LC and Bradley-Terry carry none, and a model against itself ties). A verdict already stored for the same judge,
  models, texts and position is reused.
* ``evaluations`` (``model``, ``baseline``, ``metric``, ``value``, ``low``, ``high``, ``n``), metrics:
  ``win_rate`` (95% percentile bootstrap over prompts), ``lc_win_rate`` (AlpacaEval 2 length control, lengths in
  tokens), ``mean_length`` (tokens), ``score/<scorer>`` (mean per-objective score), ``margin/<scorer>`` (paired
  mean of score(model) - score(baseline) per prompt: with ``reward_model:<path>`` this is the reward-model margin),
  ``pareto_front`` (1 when no other model of the same evaluation is at least as good on every scorer and better on
  one), and from ``reward_margins``: ``reward_margin`` and ``reward_accuracy`` (Rafailov et al. 2023, as TRL logs
  ``rewards/margins`` and ``rewards/accuracies``; plain ``beta * Delta`` for every DPO-family method).
* ``metrics``: ``reward_margin/<model>`` and ``reward_accuracy/<model>`` at the training step of each checkpoint,
  so ``StoreReader.curve`` draws margins over steps.

The dashboard reads these tables through engine/standings.py (the leaderboard and the Pareto table).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from engine.config import config_from_dict, is_local_ref, resolve_path, resolve_source
from engine.data.loaders import load_preferences, load_prompts
from engine.decoding.distributions import distribution_name
from engine.decoding.generation import SamplingParams, cached_generate
from engine.errors import InputError
from engine.judges import get_judge, get_scorer
from engine.methods import family_of, method_names
from engine.paths import RunLayout, runs_dir
from engine.store.jobs import RUN_ID_ENV
from engine.store.runs import RunWriter, StoreReader, new_run_id, read_run, run_context, run_layout
from engine.theory.statistics import (
    implicit_reward_margins,
    length_controlled_win_rate,
    outcomes_from_probabilities,
    pareto_front,
    win_rate,
)

DEFAULT_SCORERS = ("sentiment", "conciseness")
N_RESAMPLES = 1000


def mean_ci(values: Any, n_resamples: int = N_RESAMPLES, confidence: float = 0.95,
            seed: int = 0) -> tuple[float, float, float]:
    """Mean with an equal-tailed percentile bootstrap interval over the entries (prompts or pairs).

    ``win_rate`` covers three-valued outcomes only; scores, lengths and margins are continuous.
    """
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr)):
        raise InputError("values must be a non-empty 1-D array of finite numbers, one per prompt")
    rng = np.random.default_rng(seed)
    # In chunks: a [n_resamples, N] index array would take gigabytes on large prompt sets.
    means = np.concatenate([arr[rng.integers(0, arr.size, (min(256, n_resamples - i), arr.size))].mean(axis=1)
                            for i in range(0, n_resamples, 256)])
    tail = (1.0 - confidence) / 2.0
    return float(arr.mean()), float(np.quantile(means, tail)), float(np.quantile(means, 1.0 - tail))


def _row(model: str, baseline: str, metric: str, stats: tuple[float, float, float] | float, n: int,
         distribution: str | None = None) -> dict:
    value, low, high = stats if isinstance(stats, tuple) else (stats, None, None)
    return {"model": model, "baseline": baseline, "metric": metric, "value": float(value),
            "low": None if low is None else float(low), "high": None if high is None else float(high), "n": int(n),
            "distribution": distribution}


def prompt_set_name(source: str, prompts: Sequence[str]) -> str:
    """Source name plus a digest of the exact prompts: another limit or file content is another cache entry."""
    return f"{source}@{hashlib.sha256(json.dumps(list(prompts)).encode()).hexdigest()[:10]}"


# ---------------------------------------------------------------------------------------------- model comparison


def _judge_pair(judge, judge_name: str, model: str, baseline: str, prompts: Sequence[str], out_a: Sequence[str],
                out_b: Sequence[str], writer: RunWriter, reader: StoreReader) -> np.ndarray:
    """P(model beats baseline) per prompt: stored verdicts for identical texts are reused, the rest judged and stored.

    A verdict is reused only if it was judged with the texts in the same positions (``judge.positions``): a verdict
    stored before positions were recorded showed the model first only, and would bring its position bias back.
    """
    stored = reader.query("SELECT prompt, output_a, output_b, prob_a FROM judgments WHERE source = ? AND model_a = ?"
                          " AND model_b = ? AND position = ? AND prob_a IS NOT NULL",
                          [judge_name, model, baseline, judge.positions])
    known = {(r.prompt, r.output_a, r.output_b): r.prob_a for r in stored.itertuples()}
    keys = list(zip(prompts, out_a, out_b))
    todo = sorted({i for i, k in enumerate(keys) if k not in known})
    if todo:
        fresh = judge.prob_a_beats_b([prompts[i] for i in todo], [out_a[i] for i in todo], [out_b[i] for i in todo])
        winners = np.where(fresh > 0.5, "a", np.where(fresh < 0.5, "b", "tie"))
        writer.append("judgments", ({"source": judge_name, "prompt": keys[i][0], "model_a": model,
                                     "model_b": baseline, "output_a": keys[i][1], "output_b": keys[i][2],
                                     "prob_a": float(p), "winner": str(w), "position": judge.positions}
                                    for i, p, w in zip(todo, fresh, winners)))
        known.update({keys[i]: float(p) for i, p in zip(todo, fresh)})
    return np.array([known[k] for k in keys], dtype=np.float64)


def evaluate_models(models: Mapping[str, str], prompts_source: str, judge: str, writer: RunWriter, *,
                    baseline: str, scorers: Sequence[str] = DEFAULT_SCORERS, params: SamplingParams = SamplingParams(),
                    backend: str = "transformers", limit: int | None = None, progress: bool = True,
                    reader: StoreReader | None = None, distribution: str | None = None) -> pd.DataFrame:
    """Compare every model with ``baseline`` on one prompt set; write judgments and evaluations; one row per model.

    ``models`` maps display names (the cache identity of their generations: a name must always mean the same
    weights) to local paths or hub names. ``judge`` is a ``get_judge`` name (``bt:sentiment``, ``lm:<path>``,
    ``openai:<url>#<model>``), ``scorers`` are ``get_scorer`` names. Returns columns model, n, win_rate, win_low,
    win_high, lc_win_rate, mean_length, score/<scorer>, margin/<scorer>, pareto_front (NaN for the baseline's own
    comparisons). Every row names the ``distribution`` sampled (engine.decoding.distributions; default: plain
    sampling at ``params.temperature``), so the Pareto views put scores on a front only with points of the same one.
    """
    if not models:
        raise InputError("models: give at least one model (name -> path)")
    if baseline not in models:
        raise InputError(f"baseline: {baseline!r} is not one of the models {list(models)}; name one of them")
    judge_fn, scorer_fns = get_judge(judge), {s: get_scorer(s) for s in scorers}
    distribution = distribution or distribution_name(params.temperature, None)
    prompts = list(load_prompts(resolve_source(prompts_source), limit=limit)["prompt"])
    prompt_set = prompt_set_name(prompts_source, prompts)
    reader = StoreReader() if reader is None else reader
    outputs = {name: cached_generate(name, path, prompt_set, prompts, writer, reader, params, backend)
               for name, path in tqdm(models.items(), desc="models", disable=not progress)}
    scores = {name: {s: np.asarray(fn.score(prompts, outputs[name].texts), dtype=np.float64)
                     for s, fn in scorer_fns.items()} for name in models}
    n, rows, table = len(prompts), [], []
    base_len = np.asarray(outputs[baseline].num_tokens, dtype=np.float64)
    for name in models:
        length = np.asarray(outputs[name].num_tokens, dtype=np.float64)
        record: dict[str, Any] = {"model": name, "n": n, "mean_length": float(length.mean())}
        rows.append(_row(name, baseline, "mean_length", mean_ci(length), n, distribution))
        for s, values in scores[name].items():
            stats = mean_ci(values)
            record[f"score/{s}"] = stats[0]
            rows.append(_row(name, baseline, f"score/{s}", stats, n, distribution))
        if name != baseline:
            prob = _judge_pair(judge_fn, judge, name, baseline, prompts, outputs[name].texts, outputs[baseline].texts,
                               writer, reader)
            outcomes = outcomes_from_probabilities(prob)
            rate = win_rate(outcomes, n_resamples=N_RESAMPLES)
            record.update(win_rate=rate[0], win_low=rate[1], win_high=rate[2],
                          lc_win_rate=length_controlled_win_rate(outcomes, length, base_len))
            rows += [_row(name, baseline, "win_rate", rate, n, distribution),
                     _row(name, baseline, "lc_win_rate", record["lc_win_rate"], n, distribution)]
            for s, values in scores[name].items():
                stats = mean_ci(values - scores[baseline][s])
                record[f"margin/{s}"] = stats[0]
                rows.append(_row(name, baseline, f"margin/{s}", stats, n, distribution))
        table.append(record)
    frame = pd.DataFrame(table)
    if scorers:
        front = pareto_front(frame[[f"score/{s}" for s in scorers]].to_numpy())
        frame["pareto_front"] = front
        rows += [_row(name, baseline, "pareto_front", float(on), len(models), distribution)
                 for name, on in zip(models, front)]
    writer.append("evaluations", rows)
    if progress:
        for record in frame.to_dict("records"):
            print(_summary(record, baseline, scorers), flush=True)
    return frame


def _summary(record: dict, baseline: str, scorers: Sequence[str]) -> str:
    versus = ("baseline" if record["model"] == baseline else
              f"win rate {record['win_rate']:.3f} [{record['win_low']:.3f}, {record['win_high']:.3f}] vs {baseline}, "
              f"LC {record['lc_win_rate']:.3f}")
    objectives = ", ".join(f"{s} {record[f'score/{s}']:.3f}" for s in scorers)
    front = " (Pareto front)" if record.get("pareto_front") else ""
    return f"{record['model']}: {versus}, length {record['mean_length']:.1f} tokens, {objectives}{front}"


# ---------------------------------------------------------------------------------------------- implicit rewards


class _HeldOutPairs:
    """Held-out pairs tokenized once, and the reference's log-probs computed once for every policy scored."""

    def __init__(self, ref_path: str, pairs_source: str, tokenizer_path: str | None, limit: int | None,
                 max_length: int | None, batch_size: int) -> None:
        from engine.models.loading import load_tokenizer
        from engine.models.logprobs import tokenize_pairs

        pairs = load_preferences(resolve_source(pairs_source), split="test", limit=limit)
        tokenizer = load_tokenizer(tokenizer_path or ref_path)
        prompt_ids, self.chosen = tokenize_pairs(tokenizer, list(pairs["prompt"]), list(pairs["chosen"]))
        _, self.rejected = tokenize_pairs(tokenizer, list(pairs["prompt"]), list(pairs["rejected"]))
        self.prompts = prompt_ids + prompt_ids
        self.pad_id, self.max_length, self.batch_size = tokenizer.pad_token_id, max_length, batch_size
        self.ref = self.logps(ref_path)

    def logps(self, path: str) -> np.ndarray:
        """Summed log-probs of the chosen then the rejected responses under the model at ``path``, [2N]."""
        from engine.models.loading import load_model
        from engine.models.logprobs import score_responses, with_fused_head

        model = with_fused_head(load_model(path))
        logps, _ = score_responses(model, self.prompts, self.chosen + self.rejected, self.pad_id,
                                   max_length=self.max_length, batch_size=self.batch_size,
                                   desc=f"scoring {Path(path).name}")
        return logps.numpy().astype(np.float64)

    def margins(self, path: str, beta: float) -> tuple[np.ndarray, float]:
        pol, half = self.logps(path), len(self.chosen)
        return implicit_reward_margins(pol[:half], pol[half:], self.ref[:half], self.ref[half:], beta)


def _write_margins(writer: RunWriter, pairs: _HeldOutPairs, path: str, beta: float, model: str, baseline: str,
                   step: int | None) -> dict[str, Any]:
    margins, _ = pairs.margins(path, beta)
    margin, acc = mean_ci(margins), win_rate((margins > 0).astype(float), n_resamples=N_RESAMPLES)
    label = model if step is None else f"{model}/checkpoint-{step}"
    writer.append("evaluations", [_row(label, baseline, "reward_margin", margin, margins.size),
                                  _row(label, baseline, "reward_accuracy", acc, margins.size)])
    if step is not None:
        writer.log_metrics(step, {f"reward_margin/{model}": margin[0], f"reward_accuracy/{model}": acc[0]})
    return {"model": label, "step": step, "reward_margin": margin[0], "low": margin[1], "high": margin[2],
            "reward_accuracy": acc[0], "n": margins.size}


def reward_margins(policy_path: str, ref_path: str, pairs_source: str, beta: float, writer: RunWriter,
                   step: int | None = None, *, model: str | None = None, baseline: str | None = None,
                   limit: int | None = None, max_length: int | None = None, batch_size: int = 32) -> dict[str, Any]:
    """DPO implicit reward margins ``beta * ((log pi - log ref)(y_w) - (log pi - log ref)(y_l))`` on held-out pairs.

    Both models score the pairs as tokenized by the reference's tokenizer (policies share it). Writes
    ``reward_margin`` (mean, bootstrap CI) and ``reward_accuracy`` evaluations rows for ``model`` (default: the
    policy path; ``<model>/checkpoint-<step>`` when ``step`` is given, which also logs both to ``metrics``).
    """
    if not np.isfinite(beta) or beta <= 0:
        raise InputError(f"beta: must be a positive number (got {beta}); use the beta the policy was trained with")
    pairs = _HeldOutPairs(ref_path, pairs_source, None, limit, max_length, batch_size)
    return _write_margins(writer, pairs, policy_path, beta, model or str(policy_path), baseline or str(ref_path),
                          step)


def run_reward_margins(run_id: str, writer: RunWriter, pairs_source: str | None = None, limit: int | None = None,
                       *, model: str | None = None, reader: StoreReader | None = None) -> pd.DataFrame:
    """Implicit reward margins of a DPO-family run: every checkpoint (margins over steps) and the final model.

    Reference, beta, tokenizer and max_length come from the run's config; pairs default to its ``data.eval``.
    Rows are labelled ``model`` (default: the run id), checkpoints ``<model>/checkpoint-<step>``.
    """
    label, layout = model or run_id, run_layout(run_id)
    cfg = config_from_dict(read_run(run_id)["config"], f"run {run_id}")
    if family_of(cfg.method) != "preference":
        raise InputError(f"run {run_id}: implicit reward margins need a DPO-family run "
                         f"({', '.join(method_names(family='preference'))}), not {cfg.method}")
    pairs_source = pairs_source or cfg.data.eval
    if pairs_source is None:
        raise InputError(f"pairs_source: run {run_id} has no data.eval; pass held-out preference pairs")
    ref = resolve_source(cfg.model.path)
    tokenizer = resolve_source(cfg.model.tokenizer) if cfg.model.tokenizer else None
    pairs = _HeldOutPairs(ref, pairs_source, tokenizer, limit, cfg.data.max_length, 32)
    reader = StoreReader() if reader is None else reader
    last = reader.query("SELECT max(step) AS step FROM metrics WHERE run_id = ?", [run_id])["step"].iloc[0]
    final_step = None if pd.isna(last) else int(last)
    rows = [_write_margins(writer, pairs, str(path), cfg.params.beta, label, cfg.model.path, step)
            for step, path in layout.complete_checkpoints() if step != final_step]
    final = layout.model
    if final.is_dir():
        row = _write_margins(writer, pairs, str(final), cfg.params.beta, label, cfg.model.path, None)
        if final_step is not None:  # the final weights are the curve's last point
            writer.log_metrics(final_step, {f"reward_margin/{label}": row["reward_margin"],
                                            f"reward_accuracy/{label}": row["reward_accuracy"]})
        rows.append({**row, "step": final_step})
    if not rows:
        raise InputError(f"run {run_id}: no saved model and no checkpoints under {layout.root}; nothing to score")
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------- command line


def resolve_models(spec: str | Iterable[str]) -> dict[str, str]:
    """Names and paths from ``name=path``, a run id (its ``data/runs/<id>/model``, named by the id) or a path
    (relative to the data folder or here, named by its folder: ``models/sft`` is ``sft``,
    the name training jobs give the SFT baseline).
    """
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not items:
        raise InputError("models: give at least one model, e.g. --models sft=models/sft,<run_id>")
    models: dict[str, str] = {}
    for item in items:
        name, _, ref = item.partition("=") if "=" in item else ("", "", item)
        ref = ref.rstrip("/")
        if not ref:
            raise InputError(f"models: {item!r} names no model; write name=path")
        run_model = run_layout(ref).model if _is_run_id(ref) else None
        if run_model is not None and run_model.is_dir():
            path = str(run_model)
        elif Path(ref).expanduser().is_dir() and not resolve_path(ref).is_dir():
            path = str(Path(ref).expanduser().resolve())
        else:
            path = resolve_source(ref)
            if is_local_ref(ref) and not Path(path).is_dir():
                raise InputError(f"models: {ref!r} is neither a run with a saved model nor a model folder; give "
                                 "name=path, a run id from `python -m engine runs list`, or an existing folder")
        name = name or (run_of(path) or Path(ref).name)
        if name in models:
            raise InputError(f"models: the name {name!r} is given twice; name them apart with name=path")
        models[name] = path
    return models


def _is_run_id(ref: str) -> bool:
    return bool(ref) and "/" not in ref and not ref.startswith(".")


def run_of(path: str) -> str | None:
    """The run id whose saved model ``path`` is (``data/runs/<id>/model``), else None."""
    folder = Path(path)
    return folder.parent.name if RunLayout(folder.parent).model == folder and folder.parent.parent == runs_dir() \
        else None


def eval_command(models: str, prompts: str, judge: str, *, baseline: str | None = None,
                 scorers: str = ",".join(DEFAULT_SCORERS), pairs: str | None = None, max_new_tokens: int = 128,
                 temperature: float = 0.5, seed: int = 0, backend: str = "transformers", limit: int | None = None,
                 name: str | None = None, progress: bool = True) -> str:
    """``python -m engine eval``: an eval run comparing the models, plus implicit reward margins of trained runs.

    Models that are run ids of DPO-family runs also get ``run_reward_margins`` on ``pairs`` (default: the run's
    own held-out pairs). Returns the eval run's id; its status shows in the runs list.
    """
    resolved = resolve_models(models)
    baseline = baseline or next(iter(resolved))
    if baseline not in resolved:
        raise InputError(f"baseline: {baseline!r} is not among the model names {list(resolved)}")
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    config = {"models": resolved, "prompts": prompts, "judge": judge, "baseline": baseline, "scorers": scorers,
              "pairs": pairs, "params": asdict(params), "backend": backend, "limit": limit}
    run_id = os.environ.get(RUN_ID_ENV)  # started by the runner (dashboard): the run exists already
    if run_id is None:
        run_id = new_run_id("eval")
        RunWriter.create(run_id, method="eval", name=name or f"eval vs {baseline}", config=config, kind="eval")
    with run_context(run_id) as writer:
        reader = StoreReader()
        evaluate_models(resolved, prompts, judge, writer, baseline=baseline,
                        scorers=[s for s in scorers.split(",") if s], params=params, backend=backend, limit=limit,
                        progress=progress, reader=reader)
        for model, path in resolved.items():
            trained = run_of(path)
            run_config = read_run(trained)["config"] if trained else {}
            if family_of(run_config.get("method", "")) != "preference":
                continue
            if pairs is None and not run_config.get("data", {}).get("eval"):
                print(f"{model}: no held-out pairs (data.eval) in its config and no --pairs; margins skipped")
                continue
            table = run_reward_margins(trained, writer, pairs, model=model, reader=reader)
            for row in table.to_dict("records"):
                print(f"{row['model']}: reward margin {row['reward_margin']:.3f} [{row['low']:.3f}, "
                      f"{row['high']:.3f}], accuracy {row['reward_accuracy']:.3f} (step {row['step']})", flush=True)
    return run_id
