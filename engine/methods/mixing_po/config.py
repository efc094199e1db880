"""MPO mixing's config section (Wang et al., ICML 2025); math: docs/methods/mixing_po.md."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Literal

from engine.config.checks import ConfigError, check_data_ref, positive
from engine.decoding.distributions import SIR_MODES, distribution_name

UNION = "dpo_union"  # the DPO baseline trained on the union of the objectives' preference sets
REFERENCE = "reference"  # the shared reference policy, beside the experts in a mixing run's policy set
RESERVED_NAMES = (UNION, REFERENCE)


@dataclass
class ObjectiveSpec:
    """One preference dimension of a mixing run: its preference data and the judge that scores it."""

    name: str = field(metadata={"help": "name of the objective: letters, digits, '_' or '-'"})
    train: str = field(metadata={"help": "its preference pairs: parquet/jsonl path or hub dataset"})
    judge: str = field(metadata={
        "help": "scorer of engine/judges.py that measures it: sentiment, conciseness, reward_model:<path>"})
    eval: str | None = field(default=None, metadata={"help": "held-out pairs of the objective; unset: none"})

    def validate(self, where: str) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", self.name):
            raise ConfigError(f"{where}.name: use letters, digits, '_' or '-' (got {self.name!r})")
        if self.name in RESERVED_NAMES:
            raise ConfigError(f"{where}.name: {self.name!r} is a reserved name; rename the objective")
        check_data_ref(f"{where}.train", self.train)
        if self.eval is not None:
            check_data_ref(f"{where}.eval", self.eval)


@dataclass
class MixingPOParams:
    """MPO mixing (Wang, Gui, Hu, Lin, Zhang, "MPO: An Efficient Post-Processing Framework for Mixing Diverse
    Preference Alignment", ICML 2025): one DPO policy per objective, then mixture weights by mirror descent.

    Logs each expert's DPO keys (prefixed with the objective's name) plus mix/lambda_k, mix/g_k, mix/F_hat,
    mix/ess_mean, mix/ess_min, mix/gap and mix/ref_coverage_k (F_hat at the vertex of expert k: near 0 when the
    reference samples cover that expert, so the estimates around it can be trusted).
    """

    objectives: list[ObjectiveSpec] = field(default_factory=list, metadata={
        "help": "two or more objectives, each {name, train, judge, eval}"})
    beta: float = field(default=0.1, metadata={"help": "DPO beta of every expert (and of the mixture's KL term)"})
    eta: float = field(default=0.02, metadata={"help": "mirror-descent step size (paper)"})
    samples_per_prompt: int = field(default=40, metadata={
        "help": "m: reference samples per prompt for the gradient estimate (paper)"})
    md_steps: int = field(default=2000, metadata={"help": "T: mirror-descent steps"})
    prompts_per_step: int = field(default=1, metadata={"help": "B: prompts per mirror-descent step"})
    tail_average: bool = field(default=False, metadata={"help": "average only the second half of the iterates"})
    decode_mode: Literal["token", "sir_token", "sir_ref"] = field(default="sir_token", metadata={
        "help": "sir_token / sir_ref: the sequence mixture pi_lambda at temperature 1, the distribution the estimates "
                "describe and lambda* is optimised for; token: a token-level geometric mixture (another "
                "distribution, shown apart)"})
    decode_backend: Literal["auto", "separate", "lora_batch"] = field(default="auto", metadata={
        "help": "separate: one model and KV cache per policy; lora_batch: one base with K adapters"})
    temperature: float = field(default=1.0, metadata={
        "help": "decoding temperature of every generated point (mixtures and comparators); the sir_* modes need 1, "
                "token mode takes any (the paper evaluates at 0.5)"})
    max_new_tokens: int = field(default=128, metadata={"help": "new tokens per generation (paper)"})
    prompts: str = field(default="demo/prompts_heldout.parquet", metadata={
        "help": "prompts for the weight search and the evaluation"})
    num_prompts: int | None = field(default=None, metadata={"help": "prompts used for mirror descent; unset: all"})
    eval_prompts: int = field(default=32, metadata={"help": "the first prompts, used for real generations"})
    eval_samples_per_prompt: int = field(default=4, metadata={"help": "generations per evaluation prompt"})
    grid_size: int = field(default=10, metadata={
        "help": "estimated Pareto sweep on the simplex grid of step 1/grid_size"})
    union_baseline: bool = field(default=True, metadata={"help": "also train DPO on the union of the preference sets"})
    sir_candidates: int = field(default=8, metadata={
        "help": "candidates per response in the sir_* modes and the estimate check"})
    check_estimates: bool = field(default=True, metadata={
        "help": "compare instant estimates with real generations at three weights"})
    batch_size: int = field(default=64, metadata={"help": "sequences per decoding / scoring batch"})

    def validate(self, where: str) -> None:
        if len(self.objectives) < 2:
            raise ConfigError(f"{where}.objectives: mixing needs at least 2 objectives (got {len(self.objectives)})")
        names = [o.name for o in self.objectives]
        if len(set(names)) != len(names):
            raise ConfigError(f"{where}.objectives: names must be unique (got {names})")
        check_data_ref(f"{where}.prompts", self.prompts)
        for name in ("beta", "eta", "samples_per_prompt", "md_steps", "prompts_per_step", "temperature",
                     "max_new_tokens", "eval_prompts", "eval_samples_per_prompt", "grid_size", "sir_candidates",
                     "batch_size"):
            positive(where, name, getattr(self, name))
        if self.num_prompts is not None:
            positive(where, "num_prompts", self.num_prompts)
        if self.decode_mode in SIR_MODES and self.temperature != 1.0:
            raise ConfigError(f"{where}.temperature: {self.decode_mode} samples pi_lambda at temperature 1, the "
                              f"distribution lambda* is optimised for (got {self.temperature}); set temperature: 1.0, "
                              f"or decode_mode: token for a token-level mixture at {self.temperature}")

    def decoded_distribution(self) -> str:
        """The distribution of the run's generated points (engine.decoding.distributions)."""
        return distribution_name(self.temperature, self.decode_mode)


def expert_config(cfg, train: str, eval_: str | None, limit: int | None):
    """The DPO run config of one expert (or the union baseline) of a mixing run `cfg`: the run's model, training and
    logging sections, DPO at the mixing run's beta, on the given preference files."""
    from engine.methods.dpo.config import DPOParams

    return dataclasses.replace(cfg, method="dpo", params=DPOParams(beta=cfg.params.beta),
                               data=dataclasses.replace(cfg.data, train=train, eval=eval_, limit=limit))


def describe_outputs(params: MixingPOParams) -> str:
    return (f"experts/<objective>/model, baselines/{UNION}/model, mixing/samples.npz, mixing/lambda.json; "
            f"mixtures rows: a grid of {params.grid_size + 1} weights (2 objectives) and lambda*, experts, reference")
