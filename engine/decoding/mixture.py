"""Decoding from MixMPO's log-linear mixture ``pi_lambda ∝ prod_k pi_k^lambda_k`` (docs/methods/mixing_po.md).

A `PolicySet` holds named policies on one tokenizer: the reference (``REFERENCE``), the experts and any baseline.
Two ways to hold K experts, measured against each other in bench/mixing.py:

* `SeparatePolicies`: one model and one KV cache per policy (full fine-tuned experts); K forwards per token.
* `LoraPolicies`: one base with K LoRA adapters; the prompt batch is repeated once per policy and a single forward
  per token serves all of them, the adapters' updates added block by block as batched matmuls; one KV cache.

Decode modes (`sample_mixture`): ``token`` samples the token-level geometric mixture (cheap, approximate unless the
weights are one-hot); ``sir_token`` draws N token-level candidates and resamples one by the accumulated per-step
correction (exact as N grows); ``sir_ref`` draws N candidates from the reference at temperature 1 and resamples by
``lambda . ell`` (exact as N grows, poorer overlap). Both SIR modes target ``pi_lambda`` itself (temperature 1).

The loop mirrors transformers' ``generate`` step for step (position ids from the attention mask, a DynamicCache,
``logits_to_keep=1``, temperature then top-p warpers, one ``multinomial`` per step, pad after EOS, the same
per-batch seeding as engine.decoding.generation.generate_transformers), so a one-hot mixture reproduces that model's
``generate`` output token for token, greedy or sampled.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from transformers import DynamicCache, LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

from engine.decoding.distributions import DECODE_MODES
from engine.decoding.generation import SamplingParams
from engine.errors import InputError
from engine.methods.mixing_po.config import REFERENCE
from engine.models.logprobs import score_responses, with_fused_head
from engine.theory.mixing import mixture_step_log_weight, sir_ref_log_weights, sir_resample

BACKENDS = ("auto", "separate", "lora_batch")
Step = Callable[[torch.Tensor], torch.Tensor]  # next tokens [B] -> next logits [A, B, V]


def _positions(mask: torch.Tensor) -> torch.Tensor:
    # generate's rule: count real tokens, pads get 0 (they are masked anyway)
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)


def _last_logits(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor,
                 cache: DynamicCache, **extra) -> torch.Tensor:
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True,
                logits_to_keep=1, **extra)
    return out.logits[:, -1].float()


class PolicySet(ABC):
    """Named causal LMs sharing ``tokenizer`` (and so the vocabulary), one of them ``REFERENCE``."""

    def __init__(self, tokenizer, names: Sequence[str]):
        if REFERENCE not in names:
            raise InputError(f"policies: one policy must be named {REFERENCE!r} (got {list(names)})")
        self.tokenizer, self.names = tokenizer, list(names)

    def check(self, names: Sequence[str]) -> list[str]:
        unknown = [n for n in names if n not in self.names]
        if unknown or not names:
            raise InputError(f"policy names {unknown or '[]'} are not in this set; choose from {self.names}")
        return list(names)

    @abstractmethod
    def open(self, names: list[str], input_ids: torch.Tensor,
             mask: torch.Tensor) -> contextlib.AbstractContextManager[tuple[torch.Tensor, Step]]:
        """Context of one decode: prefill the left-padded prompts for each named policy and yield the logits
        [A, B, V] of the first new token and a function taking the chosen tokens [B] to the next logits."""

    @abstractmethod
    def scoring(self, name: str) -> tuple[torch.nn.Module, Callable[[], contextlib.AbstractContextManager]]:
        """A fused-head model and the context under which it is policy ``name`` (for score_responses)."""

    @property
    def device(self) -> torch.device:
        return next(self.scoring(REFERENCE)[0].parameters()).device

    def logprobs(self, names: Sequence[str], prompt_ids: Sequence[list[int]], response_ids: Sequence[list[int]],
                 batch_size: int = 32) -> np.ndarray:
        """Summed response log-probs [len(names), N] at temperature 1 (teacher forcing, EOS included if present)."""
        rows = []
        for name in self.check(names):
            model, context = self.scoring(name)
            logps, _ = score_responses(model, prompt_ids, response_ids, self.tokenizer.pad_token_id,
                                       max_length=None, batch_size=batch_size, adapter_context=context,
                                       desc=f"log-probs: {name}")
            rows.append(logps.double().numpy())
        return np.stack(rows)


class SeparatePolicies(PolicySet):
    """One model and one KV cache per policy: for fully fine-tuned experts."""

    def __init__(self, models: dict[str, torch.nn.Module], tokenizer):
        super().__init__(tokenizer, list(models))
        wrapped = [name for name, model in models.items() if hasattr(model, "peft_config")]
        if wrapped:
            raise InputError(f"models {wrapped} are peft-wrapped; merge them (merge_and_unload) or use LoraPolicies")
        self.models = {name: with_fused_head(model) for name, model in models.items()}

    @contextlib.contextmanager
    def open(self, names, input_ids, mask):
        models = [self.models[n] for n in self.check(names)]
        caches = [DynamicCache(config=m.config) for m in models]
        state = {"mask": mask, "pos": _positions(mask)}
        first = torch.stack([_last_logits(m, input_ids, mask, state["pos"], c) for m, c in zip(models, caches)])

        def step(tokens: torch.Tensor) -> torch.Tensor:
            state["mask"] = torch.cat([state["mask"], state["mask"].new_ones(len(tokens), 1)], dim=1)
            state["pos"] = state["pos"][:, -1:] + 1
            ids = tokens[:, None]
            return torch.stack([_last_logits(m, ids, state["mask"], state["pos"], c) for m, c in zip(models, caches)])

        yield first, step

    def scoring(self, name):
        return self.models[name], contextlib.nullcontext


class LoraPolicies(PolicySet):
    """One base model (the reference) with one plain LoRA adapter per other policy, decoded in one batch.

    The A active policies' copies of the prompt batch are stacked along the batch axis (one block per policy) and
    one forward per token serves them all, with one KV cache. The adapters' updates are added block by block as
    two batched matmuls per adapted layer (``x_a A_a^T B_a^T * s_a``, zero for the reference's block) by forward
    hooks while peft's own adapter path is switched off: the same sum peft computes, without its per-call module
    walk and per-row indexing (bench/mixing.py measures both against one policy).
    """

    def __init__(self, base: torch.nn.Module, adapters: dict[str, str | Path], tokenizer):
        from peft import PeftModel
        from peft.tuners.lora import Linear as LoraLinear
        from peft.tuners.lora import LoraLayer

        if not adapters or REFERENCE in adapters:
            raise InputError(f"adapters: name at least one adapter folder, none called {REFERENCE!r}")
        super().__init__(tokenizer, [REFERENCE, *adapters])
        with_fused_head(base)  # the fused head must be added before peft wraps the model
        (first, path), *rest = adapters.items()
        self.model = PeftModel.from_pretrained(base, str(path), adapter_name=first)
        for name, path in rest:
            self.model.load_adapter(str(path), adapter_name=name)
        self.model.eval()
        self._layers = [m for m in self.model.modules() if isinstance(m, LoraLayer)]
        odd = sorted({type(m).__name__ for m in self._layers if not isinstance(m, LoraLinear) or m.lora_variant})
        if odd:
            raise InputError(f"adapters: batched decoding supports plain LoRA on linear layers (found {odd}); "
                             "use backend 'separate', which merges each adapter into its own copy")

    def _stacks(self, names: list[str]) -> list[tuple[torch.nn.Module, torch.Tensor, torch.Tensor]]:
        """Per adapted layer: A^T [P, in, r] and s B^T [P, r, out] (B scaled by the adapter's scaling s) of the
        named policies (zeros for the reference and for adapters that do not adapt this layer; ranks zero-padded to
        the largest)."""
        out = []
        for layer in self._layers:
            rank = max(layer.r.get(n, 0) for n in names)
            if rank == 0:  # no named policy adapts this layer
                continue
            a = torch.zeros(len(names), layer.in_features, rank)
            b = torch.zeros(len(names), rank, layer.out_features)
            scale = torch.zeros(len(names))
            for i, n in enumerate(names):
                if n in layer.lora_A:
                    r = layer.r[n]
                    a[i, :, :r], b[i, :r], scale[i] = layer.lora_A[n].weight.T, layer.lora_B[n].weight.T, \
                        layer.scaling[n]
            weight = layer.base_layer.weight
            out.append((layer, a.to(weight), (b * scale[:, None, None]).to(weight)))  # scale folded into B
        return out

    @contextlib.contextmanager
    def open(self, names, input_ids, mask):
        names = self.check(names)
        a, b = len(names), input_ids.shape[0]
        handles = [layer.register_forward_hook(partial(_add_grouped_lora, a_t, b_t))
                   for layer, a_t, b_t in self._stacks(names)]
        try:
            with self.model.disable_adapter():
                cache = DynamicCache(config=self.model.config)
                state = {"mask": mask.repeat(a, 1)}
                state["pos"] = _positions(state["mask"])
                first = _last_logits(self.model, input_ids.repeat(a, 1), state["mask"], state["pos"], cache)

                def step(tokens: torch.Tensor) -> torch.Tensor:
                    state["mask"] = torch.cat([state["mask"], state["mask"].new_ones(a * b, 1)], dim=1)
                    state["pos"] = state["pos"][:, -1:] + 1
                    return _last_logits(self.model, tokens.repeat(a)[:, None], state["mask"], state["pos"],
                                        cache).view(a, b, -1)

                yield first.view(a, b, -1), step
        finally:
            for handle in handles:
                handle.remove()

    def scoring(self, name):
        if name == REFERENCE:
            return self.model, self.model.disable_adapter

        @contextlib.contextmanager
        def use():
            self.model.set_adapter(name)
            yield

        return self.model, use


def _add_grouped_lora(a_t: torch.Tensor, b_t: torch.Tensor, module: torch.nn.Module, args: tuple,
                      output: torch.Tensor) -> torch.Tensor:
    """Forward hook: the base layer's output plus each policy block's LoRA update (rows blocked by policy)."""
    x = args[0]
    blocks = x.reshape(a_t.shape[0], -1, x.shape[-1]).to(a_t.dtype)
    # in place: the base output is a fresh tensor, and decoding runs without autograd
    return output.add_(torch.bmm(torch.bmm(blocks, a_t), b_t).view_as(output).to(output.dtype))


def load_policies(reference: str, policies: dict[str, str], tokenizer, backend: str = "auto",
                  device: str | torch.device = "auto", dtype: str = "auto") -> PolicySet:
    """The reference plus named policies saved as LoRA adapter folders (adapter_config.json) or full models.

    ``auto`` batches adapters on the shared base and keeps full models separate; ``separate`` also works for
    adapters (each on its own copy of the base), ``lora_batch`` requires every policy to be an adapter.
    """
    from engine.models.loading import load_model

    if backend not in BACKENDS:
        raise InputError(f"backend: must be one of {', '.join(BACKENDS)} (got {backend!r})")
    adapters = {n: p for n, p in policies.items() if (Path(p) / "adapter_config.json").exists()}
    if backend == "lora_batch" and len(adapters) != len(policies):
        full = sorted(set(policies) - set(adapters))
        raise InputError(f"backend lora_batch: policies {full} are full models, not LoRA adapters; use 'separate'")
    if backend != "separate" and adapters and len(adapters) == len(policies):
        return LoraPolicies(load_model(reference, dtype=dtype, device=device), adapters, tokenizer)
    models = {REFERENCE: load_model(reference, dtype=dtype, device=device)}
    vocab = models[REFERENCE].get_output_embeddings().weight.shape[0]
    for name, path in policies.items():
        if name in adapters:
            from peft import PeftModel

            base = load_model(reference, dtype=dtype, device=device)
            models[name] = PeftModel.from_pretrained(base, str(path)).merge_and_unload().eval()
        else:
            models[name] = load_model(path, dtype=dtype, device=device)
        # The mixture adds the policies' log-probs token by token: row i of every output embedding must be token i.
        rows = models[name].get_output_embeddings().weight.shape[0]
        if rows != vocab:
            raise InputError(f"policies[{name!r}]: {str(path)!r} scores {rows} tokens but the reference "
                             f"{str(reference)!r} scores {vocab}; mix only experts trained from the reference, "
                             "which share its tokenizer and vocabulary")
    return SeparatePolicies(models, tokenizer)


# ---------------------------------------------------------------------------------------------- decoding


@dataclass(frozen=True)
class Decoded:
    """One sampled response per input prompt: text (up to EOS, special tokens removed), token ids as sampled
    (EOS included when reached, for exact re-scoring), ``log_weight`` the summed sir_token correction
    ``log p~(y) - log q(y)`` (zeros unless asked for) and, for SIR modes, the ESS of each prompt's candidates."""

    texts: list[str]
    token_ids: list[list[int]]
    num_tokens: list[int]
    log_weight: np.ndarray
    ess: np.ndarray | None = None


def _weights(names: Sequence[str], weights: Sequence[float]) -> tuple[list[str], np.ndarray]:
    """Policies with positive weight and their weights: zero-weight experts are not run at all."""
    lam = np.asarray(weights, dtype=np.float64)
    if lam.shape != (len(names),) or not np.all(np.isfinite(lam)) or np.any(lam < 0):
        raise InputError(f"weights: need {len(names)} nonnegative numbers, one per policy {list(names)} "
                         f"(got {list(weights)})")
    if abs(lam.sum() - 1.0) > 1e-6:
        raise InputError(f"weights must sum to 1 (got sum {lam.sum():.6g}); divide them by their sum")
    keep = np.flatnonzero(lam > 0)
    return [names[i] for i in keep], lam[keep]


@torch.no_grad()
def _decode_batch(policies: PolicySet, names: list[str], lam: np.ndarray, prompts: Sequence[str],
                  params: SamplingParams, track: bool) -> tuple[list[list[int]], np.ndarray]:
    tok = policies.tokenizer
    enc = tok(list(prompts), return_tensors="pt", padding=True, padding_side="left").to(policies.device)
    with policies.open(names, enc["input_ids"], enc["attention_mask"]) as (logits, step):
        return _sample_tokens(policies.tokenizer, enc["input_ids"], logits, step, lam, params, track)


def _sample_tokens(tok, ids: torch.Tensor, logits: torch.Tensor, step: Step, lam: np.ndarray, params: SamplingParams,
                   track: bool) -> tuple[list[list[int]], np.ndarray]:
    warp = LogitsProcessorList()
    if params.temperature > 0 and params.temperature != 1.0:
        warp.append(TemperatureLogitsWarper(params.temperature))
    if params.temperature > 0 and params.top_p < 1.0:
        warp.append(TopPLogitsWarper(params.top_p))
    weights = torch.as_tensor(lam, dtype=torch.float32, device=ids.device)[:, None, None]
    unfinished = torch.ones(ids.shape[0], dtype=torch.bool, device=ids.device)
    log_w = torch.zeros(ids.shape[0], dtype=torch.float64, device=ids.device)
    new = []
    for t in range(params.max_new_tokens):
        # a one-hot mixture is that model: use its raw logits, exactly as generate does; otherwise
        # sum_k w_k log_softmax_k (unnormalised: sampling only needs it up to a constant, see mixture_logprobs)
        scores = logits[0] if len(lam) == 1 else (weights * torch.log_softmax(logits.float(), dim=-1)).sum(0)
        if params.temperature > 0:
            next_tokens = torch.multinomial(torch.softmax(warp(ids, scores), dim=-1), num_samples=1).squeeze(1)
        else:
            next_tokens = scores.argmax(dim=-1)
        if track:
            step_w = mixture_step_log_weight(logits, lam, next_tokens, params.temperature)
            log_w += torch.where(unfinished, step_w.double(), 0.0)
        next_tokens = torch.where(unfinished, next_tokens, tok.pad_token_id)
        ids = torch.cat([ids, next_tokens[:, None]], dim=1)
        new.append(next_tokens)
        unfinished &= next_tokens != tok.eos_token_id
        if not unfinished.any() or t == params.max_new_tokens - 1:
            break
        logits = step(next_tokens)
    rows = torch.stack(new, dim=1).tolist()
    out = []
    for row in rows:  # keep EOS (it is part of the sampled sequence's probability), drop the pads after it
        cut = row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
        out.append(row[:cut])
    return out, log_w.cpu().numpy()


def _text(tokenizer, ids: list[int]) -> tuple[str, int]:
    body = ids[:-1] if ids and ids[-1] == tokenizer.eos_token_id else ids
    return tokenizer.decode(body, skip_special_tokens=True), len(body)


def sample(policies: PolicySet, names: Sequence[str], weights: Sequence[float], prompts: Sequence[str],
           params: SamplingParams = SamplingParams(), batch_size: int = 32, track_weights: bool = False) -> Decoded:
    """Token-level geometric mixing of the named policies, one response per prompt
    (docs/methods/mixing_po.md, ``token``).

    Seeding follows engine.decoding.generation.generate_transformers (one torch seed per batch drawn from
    ``params.seed``),
    so one-hot weights give exactly that model's generations. ``track_weights`` accumulates the sir_token
    log-weights (plain temperature sampling only: top-p changes the proposal).
    """
    names = policies.check(names)
    active, lam = _weights(names, weights)
    if not prompts:
        raise InputError("prompts: empty; give at least one prompt")
    if track_weights and (params.top_p < 1.0 or params.temperature == 0):
        raise InputError("SIR weights assume plain temperature sampling: set top_p=1 and a temperature > 0")
    seeds = torch.Generator().manual_seed(params.seed)
    token_ids, log_w = [], []
    for start in range(0, len(prompts), batch_size):
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=seeds)))
        ids, w = _decode_batch(policies, active, lam, prompts[start:start + batch_size], params, track_weights)
        token_ids.extend(ids)
        log_w.append(w)
    texts, counts = zip(*(_text(policies.tokenizer, ids) for ids in token_ids))
    return Decoded(list(texts), token_ids, list(counts), np.concatenate(log_w))


def prompt_token_ids(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """Prompts tokenized as the decoder saw them (with BOS), without padding: the prefix for re-scoring."""
    return [tokenizer(p)["input_ids"] for p in prompts]


def logratios(policies: PolicySet, experts: Sequence[str], prompts: Sequence[str],
              response_ids: Sequence[list[int]], batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """``ell_k = log pi_k(y|x) - log pi_ref(y|x)`` [N, K] at temperature 1, and ``log pi_ref`` [N]."""
    prompt_ids = prompt_token_ids(policies.tokenizer, prompts)
    logps = policies.logprobs([REFERENCE, *experts], prompt_ids, response_ids, batch_size)
    return (logps[1:] - logps[0]).T, logps[0]


def sample_mixture(policies: PolicySet, experts: Sequence[str], weights: Sequence[float], prompts: Sequence[str],
                   params: SamplingParams = SamplingParams(), mode: str = "token", candidates: int = 8,
                   batch_size: int = 32) -> Decoded:
    """One response per prompt from the mixture of ``experts`` with ``weights`` in decode ``mode``.

    ``sir_token``: ``candidates`` token-level draws per prompt (at ``params.temperature``), one kept with
    probability ∝ exp(summed correction). ``sir_ref``: ``candidates`` reference draws at temperature 1, one kept
    ∝ exp(lambda . ell). Both target ``pi_lambda`` at temperature 1 and report each prompt's candidate ESS.
    """
    if mode not in DECODE_MODES:
        raise InputError(f"mode: must be one of {', '.join(DECODE_MODES)} (got {mode!r})")
    if mode == "token":
        return sample(policies, experts, weights, prompts, params, batch_size)
    if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
        raise InputError(f"candidates: must be a positive integer (got {candidates!r})")
    if params.temperature == 0:
        raise InputError("temperature: SIR decoding samples candidates; use a temperature > 0")
    repeated = [p for p in prompts for _ in range(candidates)]
    if mode == "sir_token":
        drawn = sample(policies, experts, weights, repeated, params, batch_size, track_weights=True)
        log_w = drawn.log_weight
    else:
        ref_params = SamplingParams(params.max_new_tokens, 1.0, 1.0, params.seed)
        drawn = sample(policies, [REFERENCE], [1.0], repeated, ref_params, batch_size)
        active, lam = _weights(policies.check(experts), weights)
        ell, _ = logratios(policies, active, repeated, drawn.token_ids, batch_size)
        log_w = sir_ref_log_weights(ell, lam)
    pick = sir_resample(log_w.reshape(len(prompts), candidates), seed=params.seed)
    chosen = [i * candidates + int(j) for i, j in enumerate(pick.indices[:, 0])]
    return Decoded([drawn.texts[i] for i in chosen], [drawn.token_ids[i] for i in chosen],
                   [drawn.num_tokens[i] for i in chosen], log_w[chosen], pick.ess)
