"""The sections every run config shares: model (with LoRA), data, training and logging.

Each field documents itself in `metadata["help"]`, as TRL's configs do: the launch form, `config check` and the CLI
show that text (`engine.config.field_help`). `validate(where)` raises a one-line ConfigError naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from engine.config.checks import (
    MAX_SEED,
    ConfigError,
    check_data_ref,
    check_model_ref,
    check_names,
    in_range,
    nonnegative,
    positive,
)


@dataclass
class LoraSection:
    """LoRA adapters through peft (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models")."""

    r: int = field(default=16, metadata={"help": "rank of the low-rank update"})
    alpha: int = field(default=32, metadata={"help": "scale: the update is multiplied by alpha / r"})
    dropout: float = field(default=0.05, metadata={"help": "dropout on the adapter input, in [0, 1)"})
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"], metadata={
        "help": "names of the linear layers to adapt (Llama-style attention projections)"})

    def validate(self, where: str) -> None:
        positive(where, "r", self.r)
        positive(where, "alpha", self.alpha)
        if not 0.0 <= self.dropout < 1.0:  # a dropout of 1 zeroes every adapter input: nothing would train
            raise ConfigError(f"{where}.dropout: must lie in [0, 1) (got {self.dropout})")
        check_names(f"{where}.target_modules", self.target_modules, "q_proj, v_proj")


@dataclass
class ModelSection:
    """The policy's start model: the primary reference of every method."""

    path: str = field(default="models/sft", metadata={
        "help": "local folder saved with save_pretrained (relative to the data folder), or a hub name owner/name"})
    tokenizer: str | None = field(default=None, metadata={"help": "tokenizer folder or hub name; unset: the model's"})
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = field(default="auto", metadata={
        "help": "compute dtype; auto: bfloat16 on CUDA, float32 on CPU"})
    lora: LoraSection | None = field(default=None, metadata={"help": "LoRA adapters; unset: full fine-tuning"})
    trust_remote_code: bool = field(default=False, metadata={
        "help": "run the model repository's own Python code (only for repositories you trust)"})

    def validate(self, where: str) -> None:
        check_model_ref(f"{where}.path", self.path)
        if self.tokenizer is not None:
            check_model_ref(f"{where}.tokenizer", self.tokenizer)


@dataclass
class DataSection:
    """Preference pairs (prompt, chosen, rejected), or prompts for self-play."""

    train: str = field(default="demo/prefs_sentiment_train.parquet", metadata={
        "help": "parquet/jsonl with prompt, chosen, rejected columns, or a hub dataset name"})
    eval: str | None = field(default="demo/prefs_sentiment_test.parquet", metadata={
        "help": "held-out pairs, evaluated every training.eval_every steps; unset: none"})
    subset: str | None = field(default=None, metadata={"help": "hub data_dir, e.g. helpful-base for Anthropic/hh-rlhf"})
    max_length: int = field(default=128, metadata={
        "help": "prompt + response tokens; longer pairs are truncated (the start kept) and counted"})
    limit: int | None = field(default=None, metadata={"help": "use only the first N pairs; unset: all"})

    def validate(self, where: str) -> None:
        check_data_ref(f"{where}.train", self.train)
        if self.eval is not None:
            check_data_ref(f"{where}.eval", self.eval)
        positive(where, "max_length", self.max_length)
        if self.limit is not None:
            positive(where, "limit", self.limit)


@dataclass
class TrainingSection:
    """The optimisation loop (TRL's): schedule, batch, seed, device and processes."""

    epochs: float = field(default=1.0, metadata={"help": "passes over the training data (unless max_steps is set)"})
    max_steps: int = field(default=-1, metadata={"help": "optimizer steps; > 0 overrides epochs, -1 uses epochs"})
    batch_size: int = field(default=8, metadata={"help": "preference pairs per device and step"})
    grad_accum: int = field(default=1, metadata={"help": "batches accumulated into one optimizer step"})
    learning_rate: float = field(default=1e-6, metadata={
        "help": "AdamW peak learning rate; DPO full fine-tuning uses 5e-7..1e-6, LoRA about 1e-5"})
    warmup_ratio: float = field(default=0.1, metadata={"help": "fraction of the steps with a linear warm-up, [0, 1)"})
    seed: int = field(default=0, metadata={"help": "seed of data order, initialisation and sampling"})
    device: Literal["auto", "cpu", "cuda"] = field(default="auto", metadata={"help": "auto: CUDA when present"})
    num_processes: int = field(default=1, metadata={"help": "> 1 launches one process per GPU through accelerate"})
    save_every: int = field(default=0, metadata={"help": "checkpoint every N steps (for --resume); 0: only the end"})
    eval_every: int = field(default=50, metadata={"help": "steps between evaluations on data.eval"})
    num_threads: int | None = field(default=None, metadata={"help": "torch CPU threads; unset: torch's default"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the policy: for long runs on a GPU"})

    def validate(self, where: str) -> None:
        positive(where, "epochs", self.epochs)
        if self.max_steps == 0 or self.max_steps < -1:
            raise ConfigError(f"{where}.max_steps: must be a positive number of steps, or -1 to use epochs")
        if self.max_steps > 0:
            positive(where, "max_steps", self.max_steps)
        for name in ("batch_size", "grad_accum", "learning_rate", "num_processes", "eval_every"):
            positive(where, name, getattr(self, name))
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"{where}.warmup_ratio: must lie in [0, 1) (got {self.warmup_ratio})")
        nonnegative(where, "save_every", self.save_every, "0 saves only at the end")
        in_range(where, "seed", self.seed, 0, MAX_SEED)
        if self.num_threads is not None:
            positive(where, "num_threads", self.num_threads)


@dataclass
class LoggingSection:
    """How the run shows in the store and the dashboard."""

    run_name: str | None = field(default=None, metadata={"help": "name shown in the dashboard; unset: the run id"})
    log_every: int = field(default=1, metadata={"help": "steps between logged metrics"})

    def validate(self, where: str) -> None:
        positive(where, "log_every", self.log_every)
