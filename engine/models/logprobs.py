"""Reference-side scoring, done once before training: summed response log-probs and mean normalized entropies.

Every reference quantity a method needs (DPO's reference log-probs, MallowsPO's entropies, MRPO's K references) is
a constant of the data, so it is computed here in a batched pass under `no_grad` and stored as dataset columns;
no reference model stays in memory during training. Log-probs come from TRL's fused LM head, which scores only the
response positions in tiles and never materializes the [B, T, V] logits.

Sequences are cut exactly as TRL's `DataCollatorForPreference` cuts them (prompt + response, first `max_length`
tokens), so policy and references always score the same tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext

import torch
from tqdm.auto import tqdm
from trl.trainer.utils import add_fused_lm_head

from engine.errors import InputError

FUSED_OUTPUTS = ("log_probs", "entropy")


def with_fused_head(model: torch.nn.Module) -> torch.nn.Module:
    """Give a freshly loaded reference model the fused head (log-probs and entropies without full logits)."""
    add_fused_lm_head(model, outputs=FUSED_OUTPUTS)
    model.eval()
    return model


@torch.no_grad()
def score_responses(model: torch.nn.Module, prompt_ids: Sequence[list[int]], response_ids: Sequence[list[int]],
                    pad_id: int, *, max_length: int | None, batch_size: int = 32, want_entropy: bool = False,
                    adapter_context=nullcontext, desc: str = "scoring") -> tuple[torch.Tensor, torch.Tensor | None]:
    """Summed log-prob of each response given its prompt, [N] float32; with `want_entropy`, also the mean over
    response tokens of the next-token entropy divided by log V (MallowsPO's Hbar(y), in [0, 1]).

    `model` must have been patched by TRL's `add_fused_lm_head` with entropy among its outputs when
    `want_entropy` is set. `adapter_context` disables LoRA adapters when the reference is the base of a PEFT policy.
    """
    if len(prompt_ids) != len(response_ids):
        raise InputError(f"response_ids: {len(response_ids)} responses for {len(prompt_ids)} prompts")
    device = next(model.parameters()).device
    vocab = model.get_output_embeddings().weight.shape[0]
    sequences = []
    for p, r in zip(prompt_ids, response_ids):
        seq, lab = list(p) + list(r), [-100] * len(p) + list(r)
        sequences.append((seq[:max_length], lab[:max_length]) if max_length is not None else (seq, lab))
    # Batches of similar lengths waste little compute on padding; results go back to the input order.
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i][0]))
    logps, entropies = torch.zeros(len(sequences)), torch.zeros(len(sequences))
    for start in tqdm(range(0, len(order), batch_size), desc=desc, leave=False):
        rows = order[start:start + batch_size]
        width = max(len(sequences[i][0]) for i in rows)
        input_ids = torch.tensor([sequences[i][0] + [pad_id] * (width - len(sequences[i][0])) for i in rows],
                                 device=device)
        label_ids = torch.tensor([sequences[i][1] + [-100] * (width - len(sequences[i][1])) for i in rows],
                                 device=device)
        attention = (torch.arange(width, device=device)[None, :] <
                     torch.tensor([len(sequences[i][0]) for i in rows], device=device)[:, None]).long()
        with adapter_context():
            out = model(input_ids=input_ids, attention_mask=attention, labels=label_ids, fused_lm_head=True)
        mask = (label_ids[:, 1:] != -100).float()
        logps[rows] = out.log_probs.float().mul(mask).sum(1).cpu()
        if want_entropy:
            mean_entropy = out.entropy.float().mul(mask).sum(1) / mask.sum(1).clamp(min=1)
            entropies[rows] = (mean_entropy / math.log(vocab)).cpu()
    return logps, (entropies if want_entropy else None)


def score_pairs(model: torch.nn.Module, prompt_ids: Sequence[list[int]], chosen_ids: Sequence[list[int]],
                rejected_ids: Sequence[list[int]], **kwargs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None,
                                                                 torch.Tensor | None]:
    """score_responses of the chosen and the rejected responses in one pass (one length-sorted pool of 2N sequences
    packs tighter than two): chosen log-probs, rejected log-probs, and their entropies (None without want_entropy)."""
    n = len(chosen_ids)
    logps, entropy = score_responses(model, [*prompt_ids, *prompt_ids], [*chosen_ids, *rejected_ids], **kwargs)
    return logps[:n], logps[n:], *((entropy[:n], entropy[n:]) if entropy is not None else (None, None))


def same_tokenization(tokenizer_a, tokenizer_b) -> bool:
    """True when two tokenizers turn text into the same ids, so token ids can be shared between their models."""
    return (type(tokenizer_a) is type(tokenizer_b) and tokenizer_a.get_vocab() == tokenizer_b.get_vocab()
            and tokenizer_a.bos_token == tokenizer_b.bos_token and tokenizer_a.eos_token == tokenizer_b.eos_token)


def tokenize_pairs(tokenizer, prompts: Sequence[str], responses: Sequence[str]) -> tuple[list, list]:
    """Prompt and response tokenized separately with this tokenizer's own rules, response ending in its EOS.

    Separate tokenization means no token straddles the boundary, so every reference scores exactly the response
    text (docs/methods/mrpo.md).
    """
    prompt_ids = [tokenizer(p)["input_ids"] for p in prompts]
    eos = tokenizer.eos_token or ""
    response_ids = [tokenizer(r if r.endswith(eos) else r + eos, add_special_tokens=False)["input_ids"]
                    for r in responses]
    return prompt_ids, response_ids
