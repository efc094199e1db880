"""The tiny demo models: a byte-level BPE tokenizer and small Llama networks trained here, offline, on the synthetic
corpus of engine/data/demo/corpus.py. Loading them afterwards goes through engine.models.loading like any model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from engine.errors import InputError

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"


@dataclass(frozen=True)
class LMSpec:
    """Size and SFT schedule of one tiny demo language model."""

    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 384
    steps: int = 600
    batch_size: int = 32
    block_size: int = 128
    lr: float = 3e-3
    seed: int = 0



def train_tokenizer(texts: Sequence[str], vocab_size: int = 2048, model_max_length: int = 256,
                    padding_side: str = "left") -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2 style) trained on `texts`; every sequence starts with <bos> when special tokens are on.

    Left padding is the default because batched generation needs it; the padding side is passed to the constructor
    because setting it afterwards is not saved.
    """
    if vocab_size < 300:
        raise InputError(f"vocab_size must be at least 300 (256 bytes + specials + merges), got {vocab_size}")
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, BOS, EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(texts, trainer=trainer)
    bos_id = core.token_to_id(BOS)
    core.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A $B",
                                                        special_tokens=[(BOS, bos_id)])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   padding_side=padding_side, model_max_length=model_max_length)


def tiny_llama(tokenizer: PreTrainedTokenizerFast, spec: LMSpec) -> LlamaForCausalLM:
    """A randomly initialised Llama sized by `spec`, with the tokenizer's special ids wired into its configs."""
    torch.manual_seed(spec.seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=spec.hidden_size,
                         intermediate_size=spec.intermediate_size, num_hidden_layers=spec.num_layers,
                         num_attention_heads=spec.num_heads, num_key_value_heads=spec.num_heads,
                         max_position_embeddings=tokenizer.model_max_length, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(model.generation_config, key, getattr(config, key))
    return model


def _packed_blocks(tokenizer: PreTrainedTokenizerFast, texts: Sequence[str], block_size: int) -> torch.Tensor:
    """<bos> text <eos> for every text, concatenated and cut into full blocks: no padding is wasted."""
    encoded = tokenizer(list(texts), add_special_tokens=True)["input_ids"]
    stream = [t for ids in encoded for t in (*ids, tokenizer.eos_token_id)]
    n_blocks = len(stream) // block_size
    if n_blocks == 0:
        raise InputError(f"texts hold {len(stream)} tokens, fewer than one block of block_size={block_size}")
    return torch.tensor(stream[: n_blocks * block_size]).view(n_blocks, block_size)


def train_lm(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, texts: Sequence[str], spec: LMSpec,
             progress: bool = True, desc: str = "sft") -> list[float]:
    """Next-token training on packed blocks with AdamW and a cosine schedule; returns the loss of every step.

    A plain loop, not TRL's SFTTrainer: at this size the trainer's per-step overhead would dominate (stack notes).
    """
    blocks = _packed_blocks(tokenizer, texts, spec.block_size)
    generator = torch.Generator().manual_seed(spec.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, spec.steps // 20)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, spec.steps - warmup)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    model.train()
    losses: list[float] = []
    bar = tqdm(range(spec.steps), desc=desc, disable=not progress, leave=False)
    for _ in bar:
        batch = blocks[torch.randint(len(blocks), (spec.batch_size,), generator=generator)]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    model.eval()
    return losses


@torch.no_grad()
def perplexity(model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast, texts: Sequence[str],
               batch_size: int = 64) -> float:
    """Per-token perplexity of <bos> text <eos>, predicting every token after <bos> (the eos included)."""
    model.eval()
    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    for start in range(0, len(texts), batch_size):
        ids = [seq + [tokenizer.eos_token_id] for seq in tokenizer(list(texts[start:start + batch_size]))["input_ids"]]
        width = max(map(len, ids))
        input_ids = torch.full((len(ids), width), tokenizer.pad_token_id)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, seq in enumerate(ids):  # right padding keeps positions simple for scoring
            input_ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        target = input_ids[:, 1:].to(device)
        nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        keep = mask[:, 1:].to(device).bool()
        total_nll += nll[keep].sum().item()
        total_tokens += int(keep.sum())
    return math.exp(total_nll / total_tokens)
