"""The one module that touches TRL's private DPOTrainer API (TRL 1.16), so a TRL upgrade changes this file only.

TRL 1.16's `DPOTrainer` keeps the loss in `_compute_loss`, the reference pass in `_precompute_ref_logps`, the logged
values in `_metrics[mode][key]` and the token count in `_total_train_tokens`; none of them is public. `TRLAdapter`
maps them to named hooks (`precompute_reference`, `training_loss`) and accessors (`record_metric`, `train_tokens`)
that engine/methods/preference_trainer.py builds on. Read `trl/trainer/dpo_trainer.py` before changing anything here.
"""

from __future__ import annotations

from typing import Any

from datasets import Dataset
from trl import DPOConfig, DPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForPreference  # noqa: F401  (re-exported for the collator)
from trl.trainer.utils import use_adapter  # noqa: F401  (re-exported: LoRA adapters off for the reference)


class TRLAdapter(DPOTrainer):
    """DPOTrainer with its private hooks renamed; subclasses implement `precompute_reference` and `training_loss`."""

    def precompute_reference(self, dataset: Dataset, name: str, batch_size: int) -> Dataset:
        raise TypeError(f"{type(self).__name__} must implement precompute_reference")

    def training_loss(self, model, inputs: dict[str, Any], return_outputs: bool):
        raise TypeError(f"{type(self).__name__} must implement training_loss")

    def extra_signature_columns(self) -> tuple[str, ...]:
        """Dataset columns the collator needs beyond TRL's own (kept when TRL drops unused columns)."""
        return ()

    # ------------------------------------------------------------------------------------ TRL's private hooks

    def _precompute_ref_logps(self, dataset: Dataset, name: str, batch_size: int) -> Dataset:
        return self.precompute_reference(dataset, name, batch_size)

    def _compute_loss(self, model, inputs, return_outputs):
        return self.training_loss(model, inputs, return_outputs)

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        self._signature_columns = list(dict.fromkeys([*self._signature_columns, *self.extra_signature_columns()]))

    # ------------------------------------------------------------------------------------ TRL's private state

    def record_metric(self, mode: str, key: str, value: float) -> None:
        """Add one batch value to what TRL averages and logs at the next logging step."""
        self._metrics[mode][key].append(value)

    def set_metric(self, mode: str, key: str, values: list[float]) -> None:
        self._metrics[mode][key] = values

    @property
    def train_tokens(self) -> int:
        """Non-padding tokens trained on so far (TRL counts them from 0 in every process)."""
        return self._total_train_tokens

    @train_tokens.setter
    def train_tokens(self, value: int) -> None:
        self._total_train_tokens = value


__all__ = ["DPOConfig", "DataCollatorForPreference", "TRLAdapter", "use_adapter"]
