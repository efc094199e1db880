"""A causal LM whose next-token distribution is a trainable logits table, the same at every position: a finite game's
mixed strategy dressed as a language model, so that the real sampler, log-prob and update code can run on it.

Vocabulary: the actions, then one special token (end of text, padding and unknown word at once) whose logit is a
fixed, very negative constant: responses are actions. The tokenizer splits on whitespace.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerFast
from transformers.modeling_outputs import CausalLMOutputWithPast

SPECIAL = "<end>"
SPECIAL_LOGIT = -40.0  # exp(-40) ~ 4e-18: never sampled, and a negligible term in any exact KL


class TableConfig(PretrainedConfig):
    model_type = "logits_table"

    def __init__(self, n_actions: int = 3, **kwargs) -> None:
        self.n_actions = n_actions
        kwargs.setdefault("vocab_size", n_actions + 1)
        super().__init__(**kwargs)


class TableLM(PreTrainedModel, GenerationMixin):
    """logits(. | any context) = [table, SPECIAL_LOGIT]; `table` [n_actions] is the only parameter."""

    config_class = TableConfig

    def __init__(self, config: TableConfig) -> None:
        super().__init__(config)
        self.table = torch.nn.Parameter(torch.zeros(config.n_actions))
        self.post_init()

    def _init_weights(self, module) -> None:  # the table is set by the test, not initialised at random
        pass

    def forward(self, input_ids: torch.Tensor, attention_mask=None, position_ids=None, past_key_values=None,
                logits_to_keep: int = 0, **kwargs) -> CausalLMOutputWithPast:
        rows, width = input_ids.shape
        kept = logits_to_keep or width
        special = torch.full((1,), SPECIAL_LOGIT, dtype=self.table.dtype, device=self.table.device)
        logits = torch.cat([self.table, special]).expand(rows, kept, -1)
        return CausalLMOutputWithPast(logits=logits)

    def policy(self) -> torch.Tensor:
        """The mixed strategy over the actions (the special token's mass, ~1e-17, left out)."""
        return torch.softmax(self.table.detach().double(), dim=0)


def table_tokenizer(actions: list[str]) -> PreTrainedTokenizerFast:
    vocab = {name: i for i, name in enumerate([*actions, SPECIAL])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=SPECIAL))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=SPECIAL, pad_token=SPECIAL, unk_token=SPECIAL)


def table_model(logits: list[float] | torch.Tensor, **generation) -> TableLM:
    """A TableLM with these action logits, no KV cache, and `generation` written into its generation_config."""
    model = TableLM(TableConfig(n_actions=len(logits), eos_token_id=len(logits), pad_token_id=len(logits))).eval()
    with torch.no_grad():
        model.table.copy_(torch.as_tensor(logits, dtype=torch.float32))
    model.generation_config.use_cache = False
    for key, value in generation.items():
        setattr(model.generation_config, key, value)
    return model
