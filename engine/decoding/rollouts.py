"""Self-play rollouts for MagMPO (engine/recipes/magnetic_selfplay.py): sampled responses as the token tensors a
training step consumes, drawn with transformers' `generate` or with one vLLM engine colocated with the policy for the
job, and their next-token distributions under any model.

Both backends sample the same distribution, softmax(logits / temperature) with every other logits processor off
whatever the model's generation_config asks for (`sampling_kwargs`, `vllm_sampling_kwargs` in
engine/decoding/generation.py: no top-k, top-p, min-p, typical-p, repetition or n-gram penalty), at most
`max_new_tokens`; they cut prompts from the left to the same `max_prompt_tokens` and end in the same `_finish`, so a
step trains on the same kind of tensors whichever sampled.
vLLM (Kwon et al., "Efficient Memory Management for Large Language Model
Serving with PagedAttention", SOSP 2023) is imported inside `VLLMEngine` only: the project runs without it.

The engine follows TRL 1.16's colocate mode (trl/generation/vllm_generation.py): built once from the policy's start
checkpoint with `distributed_executor_backend="external_launcher"` (the model then lives in this process, where its
weights can be written), then before sampling from a policy that changed, every weight is pushed through
`llm.llm_engine.model_executor.driver_worker.model_runner.model.load_weights` and the prefix cache is reset (cached
KV blocks hold the old weights' activations). A LoRA policy is merged on the fly: each adapted weight is sent as
`W + delta` computed in a new tensor, the policy's own weights are never touched.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.decoding.generation import sampling_kwargs, vllm_sampling_kwargs
from engine.errors import InputError

# TRL's GRPOConfig default for a colocated engine: the rest of the GPU stays with the policy, magnet, SFT and judge
GPU_MEMORY_UTILIZATION = 0.3


@dataclass
class Rollout:
    """Sampled responses: token ids [N, P + T] (left-padded prompts), masks, and decoded texts without EOS."""

    input_ids: torch.Tensor
    prompt_mask: torch.Tensor  # [N, P]
    response_mask: torch.Tensor  # [N, T]: response tokens up to and including the first EOS
    texts: list[str]

    @property
    def lengths(self) -> torch.Tensor:
        return self.response_mask.sum(dim=-1)


def end_token_ids(tokenizer, generation_config=None) -> list[int]:
    """Every token that ends a response: the tokenizer's EOS and the model's generation-config EOS ids, which may be
    several (Qwen2.5-Instruct stops on <|im_end|> and on <|endoftext|>, its pad token too)."""
    configured = getattr(generation_config, "eos_token_id", None)
    configured = [] if configured is None else [configured] if isinstance(configured, int) else list(configured)
    return sorted({tokenizer.eos_token_id, *configured} - {None})


def _finish(input_ids: torch.Tensor, prompt_mask: torch.Tensor, tokenizer, end_ids: list[int]) -> Rollout:
    """Response mask and texts of `input_ids` = [left-padded prompts | responses padded after their end]."""
    response = input_ids[:, prompt_mask.shape[1]:]
    is_eos = torch.isin(response, torch.tensor(end_ids, device=response.device)).long()
    mask = ((is_eos.cumsum(dim=-1) - is_eos) == 0).long()  # nothing after the first EOS counts
    texts = tokenizer.batch_decode(response.masked_fill(is_eos.bool() | (mask == 0), tokenizer.pad_token_id),
                                   skip_special_tokens=True)
    return Rollout(input_ids, prompt_mask, mask, texts)


@torch.no_grad()
def sample(model, tokenizer, prompts: list[str], max_new_tokens: int, temperature: float, seed: int,
           max_prompt_tokens: int) -> Rollout:
    """Sampling from softmax(logits / temperature) and nothing else (`sampling_kwargs`), prompts left-padded and cut
    from the left to `max_prompt_tokens`."""
    device = next(model.parameters()).device
    enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
    # with left padding, the last columns hold every prompt's end: slicing them keeps the most recent context
    enc = {key: value[:, -max_prompt_tokens:].to(device) for key, value in enc.items()}
    torch.manual_seed(seed)
    out = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                         **sampling_kwargs(temperature))
    return _finish(out, enc["attention_mask"], tokenizer, end_token_ids(tokenizer, model.generation_config))


def rollout_from_token_ids(prompt_ids: list[list[int]], responses: list[list[int]], tokenizer,
                           device: torch.device | str = "cpu", end_ids: list[int] | None = None) -> Rollout:
    """The Rollout `sample` would have built for these prompts and responses: prompts left-padded, responses padded
    on the right with the pad token (after their end token, where the mask ends anyway). ``end_ids``: the tokens
    that end a response (default: the tokenizer's EOS)."""
    if len(prompt_ids) != len(responses) or not responses:
        raise InputError(f"responses: need one response per prompt row (got {len(responses)} for "
                         f"{len(prompt_ids)} prompts)")
    width, length = max(map(len, prompt_ids)), max(map(len, responses))
    ids = torch.full((len(responses), width + length), tokenizer.pad_token_id, dtype=torch.long)
    prompt_mask = torch.zeros(len(responses), width, dtype=torch.long)
    for row, (prompt, response) in enumerate(zip(prompt_ids, responses)):
        ids[row, width - len(prompt):width + len(response)] = torch.tensor([*prompt, *response], dtype=torch.long)
        prompt_mask[row, width - len(prompt):] = 1
    return _finish(ids.to(device), prompt_mask.to(device), tokenizer, end_ids or end_token_ids(tokenizer))


def response_log_probs(model, rollout: Rollout) -> torch.Tensor:
    """Next-token log-distributions [N, T, V] at the response positions, float32: row t is log model(. | x, y_<t).

    Position ids follow the attention mask, as `generate` sets them for left-padded prompts, so training scores
    exactly the distribution that sampled. Only the last T + 1 positions' logits are computed.
    """
    n_response = rollout.response_mask.shape[1]
    attention = torch.cat([rollout.prompt_mask, rollout.response_mask], dim=1)
    positions = (attention.cumsum(dim=-1) - 1).clamp(min=0)
    logits = model(input_ids=rollout.input_ids, attention_mask=attention, position_ids=positions,
                   logits_to_keep=n_response + 1).logits[:, :-1].float()
    return torch.log_softmax(logits, dim=-1)


def response_tokens(rollout: Rollout) -> torch.Tensor:
    """The sampled response token ids [N, T] (padding after the end included; the response mask excludes it)."""
    return rollout.input_ids[:, -rollout.response_mask.shape[1]:]


def token_logps(model, rollout: Rollout) -> torch.Tensor:
    """Per-token log-probs [N, T] of the sampled response tokens (0 on masked positions), float32."""
    picked = response_log_probs(model, rollout).gather(-1, response_tokens(rollout).unsqueeze(-1)).squeeze(-1)
    return picked * rollout.response_mask


def merged_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of every weight of `model` as the plain checkpoint (and vLLM) names it, LoRA merged in.

    Names follow TRL's mapping: PEFT's `base_model.model.` prefix and `.base_layer` dropped, adapter parameters
    left out, `modules_to_save` copies under the original name. An adapted weight is `W + sum of its active
    adapters' deltas`, in W's dtype as PEFT's own merge stores it, computed in a new tensor.
    """
    from peft.tuners.lora import LoraLayer  # peft is a dependency; imported here with the rest of the LoRA path

    adapted = {f"{name}.base_layer.weight": module for name, module in model.named_modules()
               if isinstance(module, LoraLayer) and not module.merged}
    for name, param in model.named_parameters():
        if re.search(r"(^|\.)lora_", name) or "original_module" in name:
            continue
        tensor = param.detach()
        if name in adapted:
            layer = adapted[name]
            delta = sum(layer.get_delta_weight(a) for a in layer.active_adapters if a in layer.lora_A)
            tensor = (tensor + delta).to(tensor.dtype)
        yield name.removeprefix("base_model.model.").replace(".base_layer", "").replace(
            "modules_to_save.default.", ""), tensor


def engine_checkpoint(model_path: str) -> str:
    """What vLLM builds the engine from: the model itself, or for a LoRA adapter folder its base model (vLLM loads
    full checkpoints; the adapter is in the policy, whose merged weights replace the engine's before any sample)."""
    folder = Path(model_path)
    if (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file():
        return json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))["base_model_name_or_path"]
    return model_path


class VLLMEngine:
    """One vLLM engine for a whole self-play job; `sync` pushes the policy's weights, `sample` draws a Rollout."""

    def __init__(self, model_path: str, tokenizer, *, tokenizer_path: str, dtype: torch.dtype, max_model_len: int,
                 seed: int, trust_remote_code: bool = False) -> None:
        import vllm  # only here: MagneticPOParams.sampling_backend has already checked that it is installed

        # external_launcher runs the model in this process as rank 0 of a one-process group (TRL's colocate mode);
        # a free port, as TRL's ensure_master_addr_port picks, keeps two runs on one machine apart
        for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "localhost")):
            os.environ.setdefault(key, value)
        if not os.environ.get("MASTER_PORT"):
            with socket.socket() as probe:
                probe.bind(("localhost", 0))
                os.environ["MASTER_PORT"] = str(probe.getsockname()[1])
        self.tokenizer, self._sampling = tokenizer, vllm.SamplingParams
        self.end_ids = end_token_ids(tokenizer)  # `sync` adds the policy's generation-config end tokens
        self.llm = vllm.LLM(model=model_path, tokenizer=tokenizer_path, dtype=dtype, seed=seed,
                            max_model_len=max_model_len, gpu_memory_utilization=GPU_MEMORY_UTILIZATION,
                            distributed_executor_backend="external_launcher", max_num_batched_tokens=4096,
                            trust_remote_code=trust_remote_code)

    @torch.no_grad()
    def sync(self, model: torch.nn.Module) -> None:
        """Write the (LoRA-merged) weights of `model` into the engine, one tensor at a time as TRL does."""
        self.end_ids = end_token_ids(self.tokenizer, model.generation_config)
        target = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        for name, tensor in merged_weights(model):
            target.load_weights([(name, tensor)])
        self.llm.reset_prefix_cache()

    def sample(self, prompts: list[str], n: int, temperature: float, max_new_tokens: int, seed: int,
               max_prompt_tokens: int, device: torch.device | str) -> Rollout:
        """`n` responses per prompt, rows ordered prompt by prompt as `sample` gets them from repeated prompts.

        Row r = b * n + i is drawn with seed `seed + r` (vLLM seeds the i-th of n samples with its request seed + i):
        every row has a seed of its own, fixed by the step's seed (draws still vary with GPU nondeterminism).
        """
        prompt_ids = [ids[-max_prompt_tokens:] for ids in self.tokenizer(prompts)["input_ids"]]
        params = [self._sampling(**vllm_sampling_kwargs(temperature, 1.0, max_new_tokens, seed + b * n, n=n),
                                 detokenize=False) for b in range(len(prompts))]
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], sampling_params=params,
                                    use_tqdm=False)
        responses = [list(completion.token_ids) for output in outputs for completion in output.outputs]
        return rollout_from_token_ids([ids for ids in prompt_ids for _ in range(n)], responses, self.tokenizer,
                                      device, self.end_ids)
