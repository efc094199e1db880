"""Magnetic Preference Optimization (Wang et al., "Magnetic Preference Optimization: Achieving Last-iterate
Convergence for Language Model Alignment", ICLR 2025): LLM self-play with a magnet refreshed every round.

Algorithm (docs/methods/magnetic_po.md). Training prompts (from `data.train`) are split evenly into `rounds` rounds.
Each step is one magnetic mirror descent (MMD) step from the current policy pi_t: G = `group_size` responses per
prompt are sampled from pi_t at temperature 1 with no other logits processor (engine/decoding/rollouts.py); the judge
scores every ordered pair, the matrix is symmetrised (removing position bias), `q_i = mean_{j != i} p_ij` estimates
P(y_i beats pi_t) and `A_i = q_i - 1/2` is the advantage. Then `inner_steps` AdamW steps on the same samples minimise

    L(theta) = -E_{y~pi_theta}[q(y)] + alpha KL_seq(pi_theta || magnet) + (1/eta) KL_seq(pi_theta || pi_t),

whose minimiser on a finite game is `magnetic_step` (engine/theory/magnetic.py); the KLs are exact per-token KLs over
the vocabulary, summed along the response with the score-function term that makes them sequence KLs
(engine/methods/magnetic_po/loss.py). At the end of each round the magnet becomes a frozen copy of the policy (the
proximal-point reset that turns MMD's regularised equilibrium into the Nash equilibrium of the original game).

Why a loop of our own and not TRL's GRPOTrainer. GRPO can reproduce the advantage (a reward function that sees
the group, `scale_rewards="none"`, group mean = 1/2 exactly after symmetrisation) and the magnet reset
(`sync_ref_model` with mixup 1 every round), but: its reward functions run on each process's slice of the
generations, so a group split across processes cannot be judged pairwise; its loss normalises per token (or by
`max_completion_length`), so the KL weight would not be the summed sequence KL of the method; and the per-round
evaluation (win rates against the previous round and SFT, the exploitability) lives outside its loop anyway. On the
demo's ~1M-parameter model TRL's per-step overhead dominates (stack notes: a plain loop 1.9-2.7x faster). The loop
here is short, single-process, seeded, and deterministic on CPU; `training.num_processes` must be 1.

Config: `MagneticPOParams` (engine/methods/magnetic_po/config.py): prompts = held-out prompts for the per-round
measures, judge, alpha, eta, inner_steps, rounds, group_size, max_new_tokens, temperature (must be 1),
generation_backend (transformers or one vLLM engine kept for the job); `training.batch_size` = prompts per step,
`training.epochs` = passes over a round's prompts (or `max_steps` in total), `learning_rate`, `warmup_ratio`, seed.

Metrics, every step: loss, learning_rate, grad_norm, magmpo/adv_std, magmpo/kl_to_magnet, magmpo/kl_to_sft,
magmpo/kl_step, magmpo/pref_asymmetry (mean |p_ij + p_ji - 1|), magmpo/response_length. Every round:
magmpo/winrate_vs_magnet (against the previous round's policy) and magmpo/winrate_vs_sft (the judge's decisions on
held-out prompts, ties half; intervals in the `evaluations` table, verdicts in `judgments`); magmpo/exploitability
(the best of a fixed pool of SFT responses against the policy's samples, minus 1/2, on fixed held-out prompts) and
magmpo/round, both also at step 0 for the SFT model. Once: game/gap_magnet, game/gap_mwu, game/gap_mwu_average per
iteration of the tabular solvers on the judge's empirical game of one prompt's pool (`log_game_trace`).
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from numpy.typing import ArrayLike

from engine.config import RunConfig, resolve_source
from engine.data.loaders import load_prompts
from engine.decoding.generation import SamplingParams, derived_seed
from engine.decoding.rollouts import Rollout, VLLMEngine, engine_checkpoint, response_log_probs, response_tokens, sample
from engine.errors import InputError
from engine.judges import Judge, get_single_order_judge
from engine.methods.magnetic_po.config import MagneticPOParams
from engine.methods.magnetic_po.loss import mmd_objective, self_play_advantages, token_kl
from engine.models.loading import load_model, load_tokenizer, resolve_device, resolve_dtype
from engine.paths import RunLayout
from engine.recipes.preference import TrainingDiverged, weights_dtype
from engine.store.runs import RunWriter
from engine.theory.magnetic import (
    MirrorDescentTrace,
    magnetic_mirror_descent,
    multiplicative_weights,
    pool_exploitability,
    symmetrize_preferences,
)
from engine.theory.statistics import outcomes_from_probabilities, win_rate

EVAL_TEMPERATURE = SamplingParams().temperature  # held-out comparisons decode as every other evaluation does
EXPLOIT_PROMPTS = 16  # fixed held-out prompts of magmpo/exploitability
POOL_SIZE = 8  # candidate responses per prompt in its reference pool, drawn once from the SFT policy
EXPLOIT_SAMPLES = 8  # policy samples per prompt each time magmpo/exploitability is measured
GENERATION_BATCH = 64


# ---------------------------------------------------------------------------------------------- scoring


def judge_groups(judge: Judge, prompts: list[str], texts: list[str], group: int) -> np.ndarray:
    """Raw judge matrices [B, G, G] over every ordered pair within each prompt's group (diagonal 1/2)."""
    index = [(b, i, j) for b in range(len(prompts)) for i in range(group) for j in range(group) if i != j]
    probs = judge.prob_a_beats_b([prompts[b] for b, _, _ in index], [texts[b * group + i] for b, i, _ in index],
                                 [texts[b * group + j] for b, _, j in index])
    raw = np.full((len(prompts), group, group), 0.5)
    for (b, i, j), p in zip(index, probs):
        raw[b, i, j] = p
    return raw


def symmetric_preference(judge: Judge, prompts: list[str], a: list[str], b: list[str]) -> np.ndarray:
    """P(a beats b) with both presentation orders averaged, so that the comparison has no position bias."""
    return (judge.prob_a_beats_b(prompts, a, b) + 1.0 - judge.prob_a_beats_b(prompts, b, a)) / 2.0


def pool_wins(judge: Judge, prompts: list[str], pool: list[str], samples: list[str]) -> np.ndarray:
    """[B, K, M]: P(pool response k beats policy sample m) on prompt b, both presentation orders averaged; `pool` and
    `samples` hold K and M texts per prompt, prompt by prompt."""
    n_pool, n_samples = len(pool) // len(prompts), len(samples) // len(prompts)
    index = [(b, k, m) for b in range(len(prompts)) for k in range(n_pool) for m in range(n_samples)]
    probs = symmetric_preference(judge, [prompts[b] for b, _, _ in index], [pool[b * n_pool + k] for b, k, _ in index],
                                 [samples[b * n_samples + m] for b, _, m in index])
    return np.asarray(probs, dtype=float).reshape(len(prompts), n_pool, n_samples)


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A detached copy in eval mode with gradients off: the magnet and the SFT anchor."""
    twin = copy.deepcopy(model).eval()
    twin.requires_grad_(False)
    return twin


# ---------------------------------------------------------------------------------------------- the game trace


def log_game_trace(writer: RunWriter, payoff: ArrayLike, eta: float = 1.0, alpha: float = 0.05, steps: int = 500,
                   refresh_every: int | None = 100) -> tuple[MirrorDescentTrace, MirrorDescentTrace]:
    """Run magnetic mirror descent and plain MWU on a finite game and log their duality gaps per iteration.

    Logs game/gap_magnet (MMD's last iterate, magnet refreshed every `refresh_every` steps), game/gap_mwu (MWU's
    last iterate) and game/gap_mwu_average (MWU's running average) at steps 1..`steps`: the dashboard's picture of
    why the magnet lets one final model converge. Returns both traces (magnetic, MWU).
    """
    magnetic = magnetic_mirror_descent(payoff, eta=eta, alpha=alpha, steps=steps, refresh_every=refresh_every)
    mwu = multiplicative_weights(payoff, eta=eta, steps=steps)
    writer.append("metrics", (
        {"step": t + 1, "name": name, "value": float(values[t])}
        for t in range(steps)
        for name, values in (("game/gap_magnet", magnetic.gaps), ("game/gap_mwu", mwu.gaps),
                             ("game/gap_mwu_average", mwu.average_gaps))))
    return magnetic, mwu


# ---------------------------------------------------------------------------------------------- self-play


class SelfPlay:
    """Policy, magnet, SFT anchor, judge and optimiser of one run; `step` is one MMD step (`update` its optimisation).

    With a vLLM `engine` the policy's samples come from it; its weights are pushed again before any sampling that
    follows an optimiser step (as TRL's GRPO syncs whenever the global step changed): a step starts from samples of
    the policy pi_t it updates, which its likelihood ratios (1 at the first inner step) are taken against.
    """

    def __init__(self, policy, tokenizer, judge: Judge, params: MagneticPOParams, *, learning_rate: float,
                 total_steps: int, warmup_steps: int, max_prompt_tokens: int, autocast=nullcontext,
                 engine: VLLMEngine | None = None) -> None:
        self.policy = policy.eval()  # eval mode: no dropout in the policy either (docs/methods/README.md,
                                     # shared conventions)
        self.engine, self.updates, self.synced_at = engine, 0, None  # optimiser steps taken, engine's copy of them
        self.magnet, self.sft = frozen_copy(policy), frozen_copy(policy)
        self.tokenizer, self.judge, self.params = tokenizer, judge, params
        self.max_prompt_tokens, self.autocast = max_prompt_tokens, autocast
        trainable = [p for p in policy.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=learning_rate, weight_decay=0.0)

        def factor(step: int) -> float:  # linear warmup, then linear decay to 0, as the TRL recipes
            if step < warmup_steps:
                return (step + 1) / warmup_steps
            return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)

    def sample(self, model, prompts: list[str], temperature: float, seed: int) -> Rollout:
        with self.autocast():
            return sample(model, self.tokenizer, prompts, self.params.max_new_tokens, temperature, seed,
                          self.max_prompt_tokens)

    def rollout(self, prompts: list[str], n: int, temperature: float, seed: int) -> Rollout:
        """`n` policy samples per prompt (rows prompt by prompt), through the engine when there is one."""
        if self.engine is None:
            return self.sample(self.policy, [p for p in prompts for _ in range(n)], temperature, seed)
        if self.synced_at != self.updates:
            self.engine.sync(self.policy)
            self.synced_at = self.updates
        return self.engine.sample(prompts, n, temperature, self.params.max_new_tokens, seed, self.max_prompt_tokens,
                                  next(self.policy.parameters()).device)

    def step(self, prompts: list[str], seed: int) -> dict[str, float]:
        """Sample G responses per prompt from pi_t, judge them pairwise, take one MMD step; returns its metrics."""
        group = self.params.group_size
        rollout = self.rollout(prompts, group, self.params.temperature, seed)
        _, adv, asymmetry = self_play_advantages(judge_groups(self.judge, prompts, rollout.texts, group))
        advantages = torch.as_tensor(adv.reshape(-1), dtype=torch.float32, device=rollout.input_ids.device)
        return {**self.update(rollout, advantages), "magmpo/adv_std": float(adv.std()),
                "magmpo/pref_asymmetry": asymmetry, "magmpo/response_length": rollout.lengths.float().mean().item()}

    def update(self, rollout: Rollout, advantages: torch.Tensor) -> dict[str, float]:
        """One MMD step from the policy pi_t that sampled `rollout`: `inner_steps` AdamW steps on its objective
        (engine/methods/magnetic_po/loss.py), `advantages` [N] = q - 1/2 with q measured against pi_t."""
        tokens, mask, params = response_tokens(rollout), rollout.response_mask, self.params
        lr = self.scheduler.get_last_lr()[0]
        with torch.no_grad(), self.autocast():
            log_magnet = response_log_probs(self.magnet, rollout)
        for inner in range(params.inner_steps):
            with self.autocast():
                log_pi = response_log_probs(self.policy, rollout)
            if inner == 0:  # pi_t, the sampler, stays the proximal centre for the whole step: keep its distributions
                log_start = log_pi.detach()
                with torch.no_grad(), self.autocast():
                    kl_sft = (token_kl(log_start, response_log_probs(self.sft, rollout)) * mask).sum(-1).mean().item()
            terms = mmd_objective(log_pi, log_magnet, log_start, tokens, mask, advantages, params.alpha, params.eta)
            if inner == 0:
                kl_magnet = terms.kl_magnet.mean().item()
            loss = terms.loss.mean()
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), 1.0)
            self.optimizer.step()
            self.updates += 1
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        # loss and kl_step are those of the last inner step's forward, after inner_steps - 1 updates
        return {"loss": loss.item(), "learning_rate": lr, "grad_norm": float(grad_norm),
                "magmpo/kl_to_magnet": kl_magnet, "magmpo/kl_to_sft": kl_sft,
                "magmpo/kl_step": terms.kl_start.mean().item()}

    def refresh_magnet(self) -> None:
        """End of a round: the magnet becomes the current policy (frozen)."""
        self.magnet.load_state_dict(self.policy.state_dict())

    def exploitability(self, prompts: list[str], pool: list[str], seed: int) -> float:
        """magmpo/exploitability: `pool_exploitability` of EXPLOIT_SAMPLES policy samples per prompt against `pool`."""
        samples = self.rollout(prompts, EXPLOIT_SAMPLES, self.params.temperature, seed).texts
        return pool_exploitability(pool_wins(self.judge, prompts, pool, samples))


# ---------------------------------------------------------------------------------------------- the recipe


def _resolve_judge(name: str) -> str:
    """Resolve the local model path inside a judge name (bt:reward_model:<path>, lm:<path>) like model paths."""
    match = re.fullmatch(r"(bt:reward_model:|lm:)(.+)", name)
    return match.group(1) + resolve_source(match.group(2)) if match else name


def _round_schedule(cfg: RunConfig, n_prompts: int) -> tuple[list[np.ndarray], int]:
    """Prompt indices of each round (an even split of a seeded shuffle) and the number of steps per round."""
    rounds, batch = cfg.params.rounds, cfg.training.batch_size
    if n_prompts < rounds:
        raise InputError(f"data.train: {n_prompts} prompts cannot be split into magnetic_po.rounds={rounds} rounds;"
                         " give more prompts or fewer rounds")
    order = np.random.default_rng(cfg.training.seed).permutation(n_prompts)
    chunks = np.array_split(order, rounds)
    if cfg.training.max_steps > 0:
        return chunks, math.ceil(cfg.training.max_steps / rounds)
    return chunks, max(1, math.ceil(cfg.training.epochs * math.ceil(len(chunks[0]) / batch)))


def _batches(chunk: np.ndarray, batch: int, steps: int, seed: int):
    """`steps` batches of prompt indices cycling through `chunk`, reshuffled (seeded) at every pass."""
    rng, queue = np.random.default_rng(seed), []
    for _ in range(steps):
        while len(queue) < batch:
            queue.extend(rng.permutation(chunk).tolist())
        yield queue[:batch]
        queue = queue[batch:]


def _evaluate(writer: RunWriter, judge_name: str, judge: Judge, prompts: list[str], texts: list[str],
              baseline_texts: list[str], model: str, baseline: str, seed: int) -> float:
    """Held-out win rate of `texts` against `baseline_texts` under the judge; stores the verdicts and the CI."""
    probs = symmetric_preference(judge, prompts, texts, baseline_texts)
    outcomes = outcomes_from_probabilities(probs)
    rate, low, high = win_rate(outcomes, seed=seed)
    writer.append("evaluations", [{"model": model, "baseline": baseline, "metric": "win_rate", "value": rate,
                                   "low": low, "high": high, "n": len(prompts)}])
    writer.append("judgments", ({"source": judge_name, "prompt": p, "model_a": model, "model_b": baseline,
                                 "output_a": a, "output_b": b, "prob_a": float(pr),
                                 "winner": "a" if o == 1 else "b" if o == 0 else "tie"}
                                for p, a, b, pr, o in zip(prompts, texts, baseline_texts, probs, outcomes)))
    return rate


def _heldout_texts(play: SelfPlay, prompts: list[str], seed: int) -> list[str]:
    texts: list[str] = []
    for start in range(0, len(prompts), GENERATION_BATCH):
        texts += play.rollout(prompts[start:start + GENERATION_BATCH], 1, EVAL_TEMPERATURE, seed + start).texts
    return texts


def _save_checkpoint(play: SelfPlay, layout: RunLayout, state: dict) -> None:
    layout.selfplay_state.parent.mkdir(parents=True, exist_ok=True)
    tmp = layout.selfplay_state.with_suffix(".pt.tmp")
    torch.save({"policy": play.policy.state_dict(), "optimizer": play.optimizer.state_dict(),
                "scheduler": play.scheduler.state_dict()}, tmp)
    tmp.replace(layout.selfplay_state)
    layout.selfplay_progress.write_text(json.dumps(state), encoding="utf-8")


def _load_checkpoint(play: SelfPlay, layout: RunLayout) -> dict:
    if not layout.selfplay_progress.is_file():
        raise InputError(f"resume: no magnetic_po checkpoint at {layout.selfplay_progress.parent}; start a new run "
                         "instead of resuming")
    tensors = torch.load(layout.selfplay_state, map_location=next(play.policy.parameters()).device, weights_only=True)
    play.policy.load_state_dict(tensors["policy"])
    play.optimizer.load_state_dict(tensors["optimizer"])
    play.scheduler.load_state_dict(tensors["scheduler"])
    play.refresh_magnet()  # checkpoints are taken right after a refresh
    progress = json.loads(layout.selfplay_progress.read_text(encoding="utf-8"))
    if "reference_pool" not in progress:
        raise InputError(f"resume: the checkpoint at {layout.selfplay_progress.parent} predates the reference pool of "
                         "magmpo/exploitability; start a new run instead of resuming")
    return progress


def train_magnetic(cfg: RunConfig, writer: RunWriter, resume: bool = False) -> Path:
    """Run MagMPO self-play for `cfg.params.rounds` rounds; saves the final policy under writer.dir / "model"."""
    params, t = cfg.params, cfg.training
    if t.num_processes != 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise InputError("training.num_processes: magnetic_po runs in a single process; set it to 1")
    max_prompt_tokens = cfg.data.max_length - params.max_new_tokens
    if max_prompt_tokens < 1:
        raise InputError(f"data.max_length ({cfg.data.max_length}) must exceed magnetic_po.max_new_tokens "
                         f"({params.max_new_tokens}); raise it or generate fewer tokens")
    device = resolve_device(t.device)
    on_cuda = device.type == "cuda"
    backend = params.sampling_backend(cuda=on_cuda)  # before any model is loaded: a missing vLLM fails at once
    torch.manual_seed(t.seed)
    judge = get_single_order_judge(_resolve_judge(params.judge))
    train_prompts = load_prompts(resolve_source(cfg.data.train), limit=cfg.data.limit, seed=t.seed)["prompt"]
    heldout = list(load_prompts(resolve_source(params.prompts), seed=t.seed)["prompt"])
    chunks, steps_per_round = _round_schedule(cfg, len(train_prompts))
    tokenizer_path = resolve_source(cfg.model.tokenizer or cfg.model.path)
    tokenizer = load_tokenizer(tokenizer_path)
    # fp32 master weights for full fine-tuning (bf16 autocast for the matmuls on CUDA), as the DPO-family recipe
    policy = load_model(resolve_source(cfg.model.path), dtype=weights_dtype(cfg), device=device, lora=cfg.model.lora,
                        trust_remote_code=cfg.model.trust_remote_code)
    # one engine for the whole job (building one takes minutes on a GPU); the policy's weights replace its own
    engine = None if backend == "transformers" else VLLMEngine(
        engine_checkpoint(resolve_source(cfg.model.path)), tokenizer, tokenizer_path=tokenizer_path,
        dtype=resolve_dtype(cfg.model.dtype, device), max_model_len=cfg.data.max_length, seed=t.seed,
        trust_remote_code=cfg.model.trust_remote_code)
    total = params.rounds * steps_per_round * params.inner_steps  # the schedule counts optimiser steps
    play = SelfPlay(policy, tokenizer, judge, params, learning_rate=t.learning_rate, total_steps=total,
                    warmup_steps=max(1, math.ceil(t.warmup_ratio * total)), max_prompt_tokens=max_prompt_tokens,
                    autocast=(lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if on_cuda else nullcontext,
                    engine=engine)
    eval_seed, layout, probe = derived_seed(t.seed, 1), RunLayout(writer.dir), heldout[:EXPLOIT_PROMPTS]
    if resume:
        progress = _load_checkpoint(play, layout)
        first_round, previous = progress["round"] + 1, progress["previous_texts"]
        sft_texts, pool = progress["sft_texts"], progress["reference_pool"]
    else:
        first_round = 1
        sft_texts = previous = _heldout_texts(play, heldout, eval_seed)
        # the reference pool: drawn once from the SFT policy, so that a policy that collapses is still exploitable
        pool = play.rollout(probe, POOL_SIZE, params.temperature, derived_seed(t.seed, 5)).texts
        exploit = play.exploitability(probe, pool, derived_seed(t.seed, 2, 0))
        writer.log_metrics(0, {"magmpo/exploitability": exploit, "magmpo/round": 0})
        log_game_trace(writer, symmetrize_preferences(judge_groups(judge, probe[:1], pool[:POOL_SIZE], POOL_SIZE)[0]))
        print(f"round 0 (sft): exploitability {exploit:.3f}, sampling with {backend}", flush=True)
    for r in range(first_round, params.rounds + 1):
        started, step = time.perf_counter(), (r - 1) * steps_per_round
        for batch in _batches(chunks[r - 1], t.batch_size, steps_per_round, derived_seed(t.seed, 3, r)):
            step += 1
            metrics = play.step([train_prompts[i] for i in batch], derived_seed(t.seed, 4, step))
            if not math.isfinite(metrics["loss"]):
                raise TrainingDiverged(f"loss became {metrics['loss']} at step {step}; lower "
                                       "training.learning_rate or raise magnetic_po.alpha (the last round's "
                                       "checkpoint is kept)")
            if step % cfg.logging.log_every == 0 or step == r * steps_per_round:
                writer.log_metrics(step, metrics)
        texts = _heldout_texts(play, heldout, eval_seed)
        name, previous_name = f"magnetic_po/round{r}", "sft" if r == 1 else f"magnetic_po/round{r - 1}"
        vs_magnet = _evaluate(writer, params.judge, judge, heldout, texts, previous, name, previous_name, t.seed)
        # in round 1 the magnet was the SFT model: the same comparison, stored once
        vs_sft = vs_magnet if r == 1 else _evaluate(writer, params.judge, judge, heldout, texts, sft_texts, name,
                                                    "sft", t.seed)
        exploit = play.exploitability(probe, pool, derived_seed(t.seed, 2, r))
        writer.log_metrics(step, {"magmpo/winrate_vs_magnet": vs_magnet, "magmpo/winrate_vs_sft": vs_sft,
                                  "magmpo/exploitability": exploit, "magmpo/round": r})
        play.refresh_magnet()
        previous = texts
        _save_checkpoint(play, layout, {"round": r, "step": step, "previous_texts": texts, "sft_texts": sft_texts,
                                        "reference_pool": pool})
        print(f"round {r}/{params.rounds}: step {step} winrate_vs_magnet {vs_magnet:.3f} winrate_vs_sft {vs_sft:.3f}"
              f" exploitability {exploit:.3f} kl_to_sft {metrics['magmpo/kl_to_sft']:.2f}"
              f" ({time.perf_counter() - started:.0f} s)", flush=True)
    out = layout.model
    final = play.policy.merge_and_unload() if cfg.model.lora is not None else play.policy
    final.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    if on_cuda:
        torch.cuda.empty_cache()
    return out
