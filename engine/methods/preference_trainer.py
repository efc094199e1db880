"""The common trainer: TRL's `DPOTrainer` with the loss swapped and every reference quantity precomputed.

TRL supplies the training loop: tokenization, batching, the fused LM head (log-probs without [B, T, V] logits),
optimizer and schedule, logging, checkpoints and `--resume`, accelerate/DeepSpeed and LoRA. A method subclasses
`PreferenceTrainer` and writes only `preference_loss`, a call to a pure function of engine/methods/losses.py;
if it needs more than the primary reference's log-probs it declares them (`needs_entropy`) or adds columns in
`add_reference_columns`.

Before training, TRL runs its reference pass (`precompute_reference` here, see trl_adapter.py) on the train and eval
sets (`precompute_ref_log_probs=True` is always set).
Here that pass scores every response with the policy as it starts — the primary
reference; for LoRA the adapters are switched off — and stores the results as dataset columns, which the collator
hands to the loss. No reference model is in memory while training runs.
"""

from __future__ import annotations

import contextlib
from abc import ABCMeta, abstractmethod
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from datasets import Dataset

from engine.methods.trl_adapter import DataCollatorForPreference, TRLAdapter, use_adapter
from engine.models.logprobs import score_pairs

PRIMARY_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")
ENTROPY_COLUMNS = ("ref_chosen_entropy", "ref_rejected_entropy")


@dataclass
class PreferenceCollator(DataCollatorForPreference):
    """TRL's preference collator, passing along the precomputed reference columns as float tensors."""

    extra_columns: tuple[str, ...] = ()

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = super().torch_call(examples)
        for column in self.extra_columns:
            batch[column] = torch.tensor([example[column] for example in examples], dtype=torch.float32)
        return batch


class PreferenceTrainer(TRLAdapter, metaclass=ABCMeta):
    """DPOTrainer whose loss is `preference_loss`; `method_params` is the method's config dataclass."""

    needs_entropy = False  # MallowsPO: also store each response's mean normalized reference entropy
    extra_columns: tuple[str, ...] = ()  # further per-example columns a subclass adds in add_reference_columns

    def __init__(self, *args: Any, method_params: Any, **kwargs: Any):
        self.method_params = method_params
        args_ = kwargs["args"]
        if not args_.precompute_ref_log_probs:  # a caller's bug, not a config choice: no config field sets it
            raise ValueError("PreferenceTrainer needs DPOConfig(precompute_ref_log_probs=True): every reference "
                             "value is precomputed once (see training_arguments)")
        tokenizer = kwargs["processing_class"]
        kwargs.setdefault("data_collator", PreferenceCollator(
            pad_token_id=tokenizer.pad_token_id, max_length=args_.max_length, extra_columns=self.reference_columns()))
        super().__init__(*args, **kwargs)

    @classmethod
    def reference_columns(cls) -> tuple[str, ...]:
        return PRIMARY_COLUMNS + (ENTROPY_COLUMNS if cls.needs_entropy else ()) + cls.extra_columns

    # ------------------------------------------------------------------------------------------- precompute

    def precompute_reference(self, dataset: Dataset, name: str, batch_size: int) -> Dataset:
        if all(c in dataset.column_names for c in self.reference_columns()):
            return dataset
        adapter = contextlib.nullcontext
        if hasattr(self.model, "peft_config"):
            adapter = partial(use_adapter, self.accelerator.unwrap_model(self.model), None)
        was_training = self.model.training
        self.model.eval()
        chosen_logps, rejected_logps, chosen_entropy, rejected_entropy = score_pairs(
            self.model, dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"], pad_id=self.pad_token_id,
            max_length=self.args.max_length, batch_size=batch_size, want_entropy=self.needs_entropy,
            adapter_context=adapter, desc=f"reference: {name} pairs")
        self.model.train(was_training)
        dataset = dataset.add_column("ref_chosen_logps", chosen_logps.tolist())
        dataset = dataset.add_column("ref_rejected_logps", rejected_logps.tolist())
        if self.needs_entropy:
            dataset = dataset.add_column("ref_chosen_entropy", chosen_entropy.tolist())
            dataset = dataset.add_column("ref_rejected_entropy", rejected_entropy.tolist())
        return self.add_reference_columns(dataset, name, batch_size)

    @property
    def pad_token_id(self) -> int:
        return self.processing_class.pad_token_id

    def add_reference_columns(self, dataset: Dataset, name: str, batch_size: int) -> Dataset:
        """Hook for methods that need more reference values than the primary reference gives (MRPO)."""
        return dataset

    def extra_signature_columns(self) -> tuple[str, ...]:
        return self.reference_columns()

    # ------------------------------------------------------------------------------------------- loss

    @abstractmethod
    def preference_loss(self, policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
                        batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Per-example loss [B] and the method's batch metrics. Subclasses call a function of engine.methods.losses."""

    def training_loss(self, model, inputs, return_outputs):
        mode = "train" if self.model.training else "eval"
        completion_mask = inputs["completion_mask"]
        model_kwargs = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        outputs = model(**model_kwargs, labels=labels, fused_lm_head=True, use_cache=False)
        seq_len = completion_mask.size(1) - 1
        logps = outputs.log_probs[:, -seq_len:].sum(dim=1)
        policy_chosen, policy_rejected = logps.chunk(2, dim=0)  # the collator stacks [chosen; rejected]
        losses, logs = self.preference_loss(policy_chosen, policy_rejected, inputs)
        loss = losses.mean()

        logs["logps/chosen"] = policy_chosen.detach().mean().item()
        logs["logps/rejected"] = policy_rejected.detach().mean().item()
        for key, value in logs.items():
            self.record_metric(mode, key, self.accelerator.gather_for_metrics(
                torch.tensor(value, device=loss.device)).mean().item())
        if mode == "train":
            tokens = self.accelerator.gather_for_metrics(inputs["attention_mask"].sum()).sum().item()
            self.train_tokens += tokens
        self.set_metric(mode, "num_tokens", [self.train_tokens])
        if return_outputs:
            return loss, outputs
        return loss
