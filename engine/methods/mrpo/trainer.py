"""Multi-Reference Preference Optimization (Le et al., AAAI 2025): DPO against a virtual reference of K models.

The primary reference (row 0) is the policy as it starts, scored by the common precompute; each secondary
reference is loaded in turn, scores every response once, and is freed before the next, so training holds no
reference model at all. A secondary with another tokenizer scores the same text re-tokenized with its own
tokenizer (prompt and response separately, so no token straddles the boundary; docs/methods/mrpo.md).

Config: `MRPOParams` (references [primary, secondaries...], beta 0.1, alpha None = adaptive ARWC weights, eps_max 0.1
CTRO clip window, clip, adaptive_eps, virtual_ref harmonic, arwc_convention paper). Logs the DPO keys computed
against the virtual reference, plus mrpo/alpha_k, mrpo/eps_w, mrpo/eps_l, mrpo/clip_frac_w, mrpo/clip_frac_l, and
rewards_primary/* against the primary reference.
"""

from __future__ import annotations

import gc

import torch
from datasets import Dataset

from engine.config import resolve_source
from engine.methods.losses import mrpo_loss, reward_stats
from engine.methods.preference_trainer import PreferenceTrainer
from engine.models.loading import load_model, load_tokenizer
from engine.models.logprobs import same_tokenization, score_pairs, tokenize_pairs, with_fused_head


class MRPOTrainer(PreferenceTrainer):
    extra_columns = ("refs_chosen_logps", "refs_rejected_logps")

    def add_reference_columns(self, dataset: Dataset, name: str, batch_size: int) -> Dataset:
        chosen = [dataset["ref_chosen_logps"]]
        rejected = [dataset["ref_rejected_logps"]]
        for path in self.method_params.references[1:]:
            logps_w, logps_l = self._score_with(resolve_source(path), dataset, batch_size, name)
            chosen.append(logps_w.tolist())
            rejected.append(logps_l.tolist())
        dataset = dataset.add_column("refs_chosen_logps", [list(row) for row in zip(*chosen)])
        return dataset.add_column("refs_rejected_logps", [list(row) for row in zip(*rejected)])

    def _score_with(self, path: str, dataset: Dataset, batch_size: int, name: str):
        tokenizer = load_tokenizer(path)
        model = with_fused_head(load_model(path, dtype=self.model.dtype, device=self.model.device))
        if same_tokenization(tokenizer, self.processing_class):
            prompts, chosen, rejected = dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"]
            max_length = self.args.max_length  # cut where the policy's sequences are cut
        else:
            own_eos = self.processing_class.eos_token or ""
            texts = {key: [t.removesuffix(own_eos) for t in dataset[key]] for key in ("chosen", "rejected")}
            prompts, chosen = tokenize_pairs(tokenizer, dataset["prompt"], texts["chosen"])
            _, rejected = tokenize_pairs(tokenizer, dataset["prompt"], texts["rejected"])
            max_length = None  # the text already fits the policy's limit; another cut here would score less text
        score = dict(pad_id=tokenizer.pad_token_id, max_length=max_length, batch_size=batch_size)
        logps_w, logps_l, _, _ = score_pairs(model, prompts, chosen, rejected, desc=f"{path}: {name} pairs", **score)
        del model  # freed here by reference counting; on CUDA also hand its cached blocks back for the next one
        if torch.cuda.is_available():
            gc.collect()
            torch.cuda.empty_cache()
        return logps_w, logps_l

    def preference_loss(self, policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
                        batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        params = self.method_params
        refs_w, refs_l = batch["refs_chosen_logps"].T, batch["refs_rejected_logps"].T  # [K, B]
        alpha = None if params.alpha is None else torch.tensor(params.alpha, dtype=refs_w.dtype, device=refs_w.device)
        losses, stats = mrpo_loss(policy_chosen, policy_rejected, refs_w, refs_l, params.beta, alpha=alpha,
                                  eps_max=params.eps_max, clip=params.clip, adaptive_eps=params.adaptive_eps,
                                  virtual_ref=params.virtual_ref, arwc_convention=params.arwc_convention,
                                  return_stats=True)
        logs = reward_stats(policy_chosen, policy_rejected, stats.ref_chosen, stats.ref_rejected,
                            params.beta).as_log_dict()
        logs |= reward_stats(policy_chosen, policy_rejected, refs_w[0], refs_l[0],
                             params.beta).as_log_dict("rewards_primary")
        return losses, logs | stats.as_log_dict()
