"""The training recipe of the DPO family (dpo, mallows_po, mrpo): config in, trained policy and metrics out.

Everything cheap is checked before anything expensive: the config was validated on load; the tokenizer's pad
token and the preference data are checked before a model is loaded. Then TRL's loop runs with the method's
trainer, a callback streams every logged value to the store, and the final policy is saved under
`data/runs/<run_id>/model`. Checkpoints go to `data/runs/<run_id>/checkpoints`, from which `resume=True` continues.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback, set_seed

from engine.config import RunConfig, resolve_source
from engine.data.loaders import load_preferences
from engine.data.validation import check_tokenizer, truncate_pairs
from engine.errors import InputError
from engine.methods.trl_adapter import DPOConfig
from engine.models.loading import load_model, load_tokenizer, lora_config, resolve_device
from engine.paths import RunLayout
from engine.store.runs import RunWriter


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run stops and its last checkpoint is kept."""


def _check_finite(model: torch.nn.Module, step: int) -> None:
    """Refuse to save weights holding NaN or inf: a logged loss is an average, and steps between logs can diverge."""
    for name, param in model.named_parameters():
        if not torch.isfinite(param).all():
            raise TrainingDiverged(f"weights became non-finite ({name}) by step {step}; lower training.learning_rate"
                                   " or the method's beta (the last checkpoint is kept, nothing newer was saved)")


# The trainer's own token count (kept for resuming, see training_arguments) repeats num_tokens and tokens_per_s.
_COUNTED_TWICE = frozenset({"num_input_tokens_seen", "train_tokens_per_second"})


class StoreCallback(TrainerCallback):
    """Writes every value TRL logs (train and eval) to the run's metrics, adds tokens/s, stops on a NaN loss and
    before saving non-finite weights (a checkpoint, or the final model)."""

    def __init__(self, writer: RunWriter):
        self.writer = writer
        self._last: tuple[float, float] | None = None  # (time, tokens) at the previous log

    def on_log(self, args, state, control, logs: dict[str, Any] | None = None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        values = {k: float(v) for k, v in logs.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in _COUNTED_TWICE}
        if "num_tokens" in values:
            now, tokens = time.perf_counter(), values["num_tokens"]
            if self._last is not None and now > self._last[0]:
                values["tokens_per_s"] = (tokens - self._last[1]) / (now - self._last[0])
            self._last = (now, tokens)
        self.writer.log_metrics(state.global_step, values)
        for key in ("loss", "eval_loss"):
            if key in values and not math.isfinite(values[key]):
                raise TrainingDiverged(f"{key} became {values[key]} at step {state.global_step}; lower "
                                       "training.learning_rate or the method's beta (the last checkpoint is kept)")

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if control.should_save and model is not None:  # runs before the trainer writes the checkpoint
            _check_finite(model, state.global_step)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if model is not None:  # runs before the recipe saves the final model
            _check_finite(model, state.global_step)


def check_vocabulary(tokenizer, model_source: str, trust_remote_code: bool = False) -> None:
    """Refuse a tokenizer with more tokens than the model's embedding, from the model's config alone (before its
    weights load): its extra ids would fail deep inside the first forward pass. Fewer is allowed, since embeddings
    are often padded beyond the tokenizer (Qwen2.5: 151,936 rows for 151,665 tokens)."""
    from transformers import AutoConfig

    from engine.models.loading import explain_load_errors

    with explain_load_errors(model_source):
        config = AutoConfig.from_pretrained(model_source, trust_remote_code=trust_remote_code)
    rows = getattr(config.get_text_config(), "vocab_size", None)
    if rows is not None and len(tokenizer) > rows:
        raise InputError(f"model.tokenizer: {len(tokenizer)} tokens, but the model at {model_source} embeds only "
                         f"{rows}; use the model's own tokenizer (leave model.tokenizer unset)")


def training_arguments(cfg: RunConfig, output_dir: Path, has_eval: bool) -> DPOConfig:
    """TRL arguments from the run config. On CPU: no gradient checkpointing, and bf16 only if asked for (CPU bf16
    matmuls were ~17x slower). Half precision always runs as autocast over float32 master weights (`weights_dtype`).
    """
    t = cfg.training
    on_cuda = resolve_device(t.device).type == "cuda"
    half = {"bfloat16": "bf16", "float16": "fp16", "float32": None,
            "auto": "bf16" if on_cuda else None}[cfg.model.dtype]
    return DPOConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.learning_rate,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        warmup_steps=t.warmup_ratio,  # transformers 5 reads a float below 1 as a fraction of all steps
        lr_scheduler_type="linear",
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=cfg.logging.log_every,
        include_num_input_tokens_seen="non_padding",  # kept in checkpoints, so num_tokens goes on after a resume
        logging_nan_inf_filter=False,  # the default logs a NaN step's loss as the running mean: it would hide a NaN
        eval_strategy="steps" if has_eval else "no",
        eval_steps=t.eval_every,
        save_strategy="steps" if t.save_every else "no",
        save_steps=t.save_every or 500,
        beta=cfg.params.beta,
        max_length=cfg.data.max_length,
        precompute_ref_log_probs=True,  # every reference value is computed once, then no reference is held
        precompute_ref_batch_size=max(t.batch_size, 32),
        use_cpu=not on_cuda,
        bf16=half == "bf16",
        fp16=half == "fp16",
        gradient_checkpointing=False,
        torch_compile=t.compile,
        report_to=[],
        disable_tqdm=False,
        dataloader_num_workers=0,
    )


def weights_dtype(cfg: RunConfig) -> str:
    """float32 master weights for full fine-tuning, whatever the compute dtype: pure bf16 weights drop AdamW updates
    at small learning rates (an update of 1e-6 is far below bf16's resolution). LoRA keeps the base in the config's
    dtype, since the base is frozen and peft keeps the adapters in float32.
    """
    return "float32" if cfg.model.lora is None else cfg.model.dtype


def _load_pairs(cfg: RunConfig, source: str, split: str, tokenizer) -> tuple[Any, dict[str, float]]:
    """Load and validate preference pairs, fit them into max_length; returns them with the counts to log."""
    pairs = load_preferences(resolve_source(source), split=split, subset=cfg.data.subset, limit=cfg.data.limit)
    pairs, report = truncate_pairs(pairs, tokenizer, cfg.data.max_length)
    print(f"{split} data {source}: {report.summary()}", flush=True)
    return pairs, {f"data/{split}_pairs": report.n_output, f"data/{split}_truncated": report.n_truncated}


def train_preference_model(cfg: RunConfig, writer: RunWriter, resume: bool = False) -> Path:
    """Train one DPO-family policy; returns the folder of the saved model."""
    from engine.methods import get_method

    layout = RunLayout(writer.dir)
    checkpoint = layout.last_checkpoint() if resume else None
    set_seed(cfg.training.seed)
    tokenizer = load_tokenizer(resolve_source(cfg.model.tokenizer or cfg.model.path),
                               trust_remote_code=cfg.model.trust_remote_code)
    check_tokenizer(tokenizer)
    check_vocabulary(tokenizer, resolve_source(cfg.model.path), cfg.model.trust_remote_code)
    train_set, counts = _load_pairs(cfg, cfg.data.train, "train", tokenizer)
    eval_set = None
    if cfg.data.eval is not None:
        eval_set, eval_counts = _load_pairs(cfg, cfg.data.eval, "test", tokenizer)
        counts |= eval_counts
    device = resolve_device(cfg.training.device)
    model = load_model(resolve_source(cfg.model.path), dtype=weights_dtype(cfg), device=device,
                       trust_remote_code=cfg.model.trust_remote_code)
    writer.log_metrics(0, counts)  # only once every input has loaded: a bad input leaves no rows behind
    trainer = get_method(cfg.method).load_trainer()(
        model=model, args=training_arguments(cfg, layout.checkpoints, eval_set is not None),
        train_dataset=train_set, eval_dataset=eval_set, processing_class=tokenizer,
        peft_config=None if cfg.model.lora is None else lora_config(cfg.model.lora),
        callbacks=[StoreCallback(writer)], method_params=cfg.params)
    if checkpoint is not None:  # TRL counts num_tokens from 0 in every process; the checkpoint has the count so far
        state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
        trainer.train_tokens = int(state.get("num_input_tokens_seen", 0))
    trainer.train(resume_from_checkpoint=None if checkpoint is None else str(checkpoint))
    if eval_set is not None:
        trainer.evaluate()
    out = layout.model
    trainer.save_model(str(out))
    tokenizer.save_pretrained(str(out))
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out

