"""One config dataclass per training method, with the defaults of ../shared/algorithms.md and the paper of each.

Each dataclass documents its fields and the metrics its method logs; `validate(where)` raises a one-line
ConfigError naming the field. `engine.config` builds them from YAML/JSON.
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass, field
from typing import Literal

from engine.config_checks import (ConfigError, check_data_ref, check_model_ref, check_simplex, in_range, nonnegative,
                                  positive)

@dataclass
class DPOParams:
    """DPO (Rafailov et al. 2023). Logs loss, rewards/{chosen,rejected,margins,accuracies}, logps/*."""

    beta: float = 0.1

    def validate(self, where: str) -> None:
        positive(where, "beta", self.beta)


@dataclass
class MallowsPOParams:
    """MallowsPO (Chen et al., ICLR 2025): DPO with a per-prompt dispersion c(x) from the reference's entropy.

    Logs the DPO keys plus mallows/c_mean, mallows/c_std, mallows/ref_entropy_mean, rewards_scaled/margins.
    """

    beta: float = 0.1
    variant: Literal["theta", "phi"] = "theta"  # theta is what the official code implements
    phi_star: float | Literal["auto"] = 0.29  # c(x) = -phi_star * log Hbar(x); "auto": dataset mean of c is 1
    phi: float = 0.05  # dispersion of the phi variant (the paper's synthetic bandit)
    c_max: float = 10.0  # cap on c(x): Hbar -> 0 sends c to infinity

    def validate(self, where: str) -> None:
        positive(where, "beta", self.beta)
        if self.phi_star != "auto":
            positive(where, "phi_star", self.phi_star)
        if not 0.0 < self.phi < 1.0:
            raise ConfigError(f"{where}.phi: must lie strictly between 0 and 1 (got {self.phi})")
        positive(where, "c_max", self.c_max)


@dataclass
class MRPOParams:
    """Multi-Reference PO (Le et al., AAAI 2025): DPO against a virtual reference pooled from K models.

    references[0] is the primary reference (the model the policy starts from); the others are secondaries.
    Logs the DPO keys plus mrpo/alpha_k, mrpo/eps_w, mrpo/eps_l, mrpo/clip_frac_w, mrpo/clip_frac_l.
    """

    references: list[str] = field(default_factory=lambda: ["models/sft", "models/ref2"])
    beta: float = 0.1
    alpha: list[float] | None = None  # None: adaptive weights (ARWC); else fixed weights on the simplex
    eps_max: float = 0.1  # CTRO clip window around the primary reference
    clip: bool = True
    adaptive_eps: bool = True  # split eps_max between chosen and rejected by their log-prob scale

    def validate(self, where: str) -> None:
        if len(self.references) < 2:
            raise ConfigError(f"{where}.references: mrpo needs at least 2 references (got {len(self.references)})")
        # references[0] must be the policy's start model: checked against model.path in _config_from_dict.
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


@dataclass
class ObjectiveSpec:
    """One preference dimension of a mixing run: its preference data and the judge that scores it."""

    name: str
    train: str
    judge: str  # scorer name in engine/judges.py, e.g. sentiment, conciseness, reward_model:<path>
    eval: str | None = None

    def validate(self, where: str) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", self.name):
            raise ConfigError(f"{where}.name: use letters, digits, '_' or '-' (got {self.name!r})")
        check_data_ref(f"{where}.train", self.train)
        if self.eval is not None:
            check_data_ref(f"{where}.eval", self.eval)


@dataclass
class MixingPOParams:
    """MPO mixing (Wang et al., ICML 2025): one DPO policy per objective, then weights by mirror descent.

    Logs each expert's DPO keys (prefixed with the objective's name) plus mix/lambda_k, mix/g_k, mix/F_hat,
    mix/ess_mean, mix/ess_min, mix/gap and mix/ref_coverage_k (mean log-ratio of expert k on reference samples,
    near 0 when the estimates around that expert can be trusted).
    """

    objectives: list[ObjectiveSpec] = field(default_factory=list)
    beta: float = 0.1
    eta: float = 0.02  # mirror-descent step (paper)
    samples_per_prompt: int = 40  # m: reference samples per prompt for the gradient estimate (paper)
    md_steps: int = 2000  # T
    prompts_per_step: int = 1  # B
    tail_average: bool = False  # average only the second half of the mirror-descent iterates
    decode_mode: Literal["token", "sir_token", "sir_ref"] = "token"
    decode_backend: Literal["auto", "separate", "lora_batch"] = "auto"  # K KV caches, or one base with K adapters
    temperature: float = 0.5  # evaluation decoding (paper)
    max_new_tokens: int = 128  # (paper)
    prompts: str = "demo/prompts_heldout.parquet"  # prompts for the weight search and the evaluation
    num_prompts: int | None = None  # prompts used for mirror descent (None: all)
    eval_prompts: int = 32  # the first prompts, used for real generations
    eval_samples_per_prompt: int = 4
    grid_size: int = 10  # estimated Pareto sweep over the simplex grid of step 1/grid_size
    union_baseline: bool = True  # also train DPO on the union of the preference sets
    sir_candidates: int = 8  # candidates per response in the sir_* modes and the estimate check
    check_estimates: bool = True  # compare instant estimates with real generations at three weights
    batch_size: int = 64  # sequences per decoding / scoring batch

    def validate(self, where: str) -> None:
        if len(self.objectives) < 2:
            raise ConfigError(f"{where}.objectives: mixing needs at least 2 objectives (got {len(self.objectives)})")
        names = [o.name for o in self.objectives]
        if len(set(names)) != len(names):
            raise ConfigError(f"{where}.objectives: names must be unique (got {names})")
        reserved = {"dpo_union", "reference"} & set(names)
        if reserved:
            raise ConfigError(f"{where}.objectives: {sorted(reserved)[0]!r} is a reserved name; rename the objective")
        check_data_ref(f"{where}.prompts", self.prompts)
        for name in ("beta", "eta", "samples_per_prompt", "md_steps", "prompts_per_step", "temperature",
                     "max_new_tokens", "eval_prompts", "eval_samples_per_prompt", "grid_size", "sir_candidates",
                     "batch_size"):
            positive(where, name, getattr(self, name))
        if self.num_prompts is not None:
            positive(where, "num_prompts", self.num_prompts)


@dataclass
class MagneticPOParams:
    """Magnetic Preference Optimization (Wang et al., ICLR 2025): self-play with a magnet refreshed every round.

    Self-play prompts come from `data.train` (any prompt set); `prompts` is the held-out set on which each round's
    policy is judged against the previous round's and against the SFT model. Logs loss, grad_norm, magmpo/adv_mean,
    magmpo/adv_std, magmpo/kl_to_magnet, magmpo/kl_to_sft, magmpo/winrate_self, magmpo/pref_asymmetry,
    magmpo/response_length, and per round magmpo/round, magmpo/winrate_vs_magnet, magmpo/winrate_vs_sft, magmpo/gap.

    `generation_backend` samples the self-play responses with transformers' `generate` or with vLLM (Kwon et al.,
    SOSP 2023): one engine for the whole job, beside the policy, its weights replaced by the policy's (LoRA merged)
    after every update, as TRL's GRPO colocate mode does. Same sampling either way; see engine/rollouts.py.
    """

    prompts: str = "demo/prompts_heldout.parquet"
    judge: str = "bt:sentiment"  # pairwise judge name in engine/judges.py
    alpha: float = 0.1  # weight of KL(pi || magnet)
    rounds: int = 3  # magnet refreshed at the end of each round
    group_size: int = 4  # G responses per prompt
    max_new_tokens: int = 48
    temperature: float = 1.0
    # auto: vLLM when it is installed and training runs on CUDA, else transformers; vllm: always vLLM
    generation_backend: Literal["auto", "transformers", "vllm"] = "auto"

    def validate(self, where: str) -> None:
        check_data_ref(f"{where}.prompts", self.prompts)
        nonnegative(where, "alpha", self.alpha, "0 drops the pull towards the magnet")
        positive(where, "rounds", self.rounds)
        if self.group_size < 2:
            raise ConfigError(f"{where}.group_size: self-play needs at least 2 responses per prompt")
        positive(where, "group_size", self.group_size)
        positive(where, "max_new_tokens", self.max_new_tokens)
        positive(where, "temperature", self.temperature)
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


METHOD_PARAMS: dict[str, type] = {
    "dpo": DPOParams,
    "mallows_po": MallowsPOParams,
    "mrpo": MRPOParams,
    "mixing_po": MixingPOParams,
    "magnetic_po": MagneticPOParams,
}
