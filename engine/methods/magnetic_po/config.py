"""Magnetic Preference Optimization's config section (Wang et al., ICLR 2025); math: docs/methods/magnetic_po.md."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Literal

from engine.config.checks import ConfigError, check_data_ref, nonnegative, positive


@dataclass
class MagneticPOParams:
    """Magnetic Preference Optimization (Wang et al., "Magnetic Preference Optimization: Achieving Last-iterate
    Convergence for Language Model Alignment", ICLR 2025): self-play with a magnet refreshed every round.

    Self-play prompts come from `data.train` (any prompt set); `prompts` is the held-out set on which each round's
    policy is judged against the previous round's and against the SFT model. Each step is one magnetic mirror descent
    step, `inner_steps` optimiser steps on `-E[q] + alpha KL(pi || magnet) + KL(pi || pi_t) / eta`. Logs loss,
    grad_norm, magmpo/adv_std, magmpo/kl_to_magnet, magmpo/kl_to_sft, magmpo/kl_step, magmpo/pref_asymmetry,
    magmpo/response_length, and per round magmpo/round, magmpo/winrate_vs_magnet, magmpo/winrate_vs_sft,
    magmpo/exploitability.

    `generation_backend` samples the self-play responses with transformers' `generate` or with vLLM (Kwon et al.,
    SOSP 2023): one engine for the whole job, beside the policy, its weights replaced by the policy's (LoRA merged)
    after every update, as TRL's GRPO colocate mode does. Same sampling either way; see engine/decoding/rollouts.py.
    """

    prompts: str = field(default="demo/prompts_heldout.parquet", metadata={
        "help": "held-out prompts on which each round's policy is judged"})
    judge: str = field(default="bt:sentiment", metadata={
        "help": "pairwise judge of engine/judges.py: bt:<scorer>, lm:<path> or openai:<url>#<model>"})
    alpha: float = field(default=0.1, metadata={"help": "weight of KL(pi || magnet); 0 drops the magnet"})
    eta: float = field(default=1.0, metadata={
        "help": "MMD step size: the pull to the step's start policy pi_t is KL(pi || pi_t) / eta"})
    inner_steps: int = field(default=4, metadata={
        "help": "optimiser steps that minimise one MMD step's objective on the same samples"})
    rounds: int = field(default=3, metadata={"help": "rounds; the magnet is refreshed at the end of each"})
    group_size: int = field(default=4, metadata={"help": "G: responses sampled per prompt (at least 2)"})
    max_new_tokens: int = field(default=48, metadata={"help": "new tokens per self-play response"})
    temperature: float = field(default=1.0, metadata={
        "help": "self-play sampling temperature; must be 1 (the gradient estimators assume samples from pi)"})
    generation_backend: Literal["auto", "transformers", "vllm"] = field(default="auto", metadata={
        "help": "auto: vLLM when it is installed and training runs on CUDA, else transformers"})

    def validate(self, where: str) -> None:
        check_data_ref(f"{where}.prompts", self.prompts)
        nonnegative(where, "alpha", self.alpha, "0 drops the pull towards the magnet")
        positive(where, "rounds", self.rounds)
        if self.group_size < 2:
            raise ConfigError(f"{where}.group_size: self-play needs at least 2 responses per prompt")
        positive(where, "group_size", self.group_size)
        positive(where, "max_new_tokens", self.max_new_tokens)
        positive(where, "eta", self.eta)
        positive(where, "inner_steps", self.inner_steps)
        positive(where, "temperature", self.temperature)
        if self.temperature != 1.0:  # REINFORCE and the KL estimators are unbiased only for samples of pi itself
            raise ConfigError(f"{where}.temperature: self-play must sample from the policy at temperature 1 (got "
                              f"{self.temperature}); set it to 1.0 or remove it")
        self.sampling_backend(cuda=False, where=where)  # asking for vllm without it fails here, at load time

    def sampling_backend(self, cuda: bool, where: str = "magnetic_po") -> str:
        """The backend that samples on this machine: "vllm" or "transformers" (ConfigError if vllm is asked and
        missing). `find_spec` looks for vLLM without importing it, so checking a config stays light."""
        installed = importlib.util.find_spec("vllm") is not None
        if self.generation_backend == "vllm" and not installed:
            raise ConfigError(f"{where}.generation_backend: vllm is not installed; `pip install -r "
                              "requirements-gpu.txt` on a CUDA machine, or set it to auto or transformers")
        if self.generation_backend == "auto":
            return "vllm" if installed and cuda else "transformers"
        return self.generation_backend
