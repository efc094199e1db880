"""Scorers (one number per response, higher is better) and pairwise judges (probability that A beats B).

Scorers stand in for the MPO paper's per-objective reward models on IMDb (positive sentiment, conciseness); a
Hugging Face sequence-classification model can replace either. Judges turn anything into P(A beats B): a scorer
through Bradley-Terry, a local causal LM asked "A or B?", or an OpenAI-compatible chat endpoint. Names such as
"bt:sentiment" or "openai:http://host/v1#model" select them from configs (`get_scorer`, `get_judge`).

Heavy libraries (torch, transformers) are imported only by the classes that need them, so the lexicon scorers
stay importable from light processes.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Protocol

import numpy as np

from engine.data.demo.corpus import INTENSIFIERS, LEXICON, NEGATION_FACTOR, NEGATION_SCOPE, NEGATORS
from engine.errors import InputError, PrefLabError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# P(positive) = sigmoid(SENTIMENT_SCALE * polarity): a few opinion words make a confident verdict, as with the
# IMDb sentiment classifier the MPO paper scores with, without saturating on a single word.
SENTIMENT_SCALE = 0.5
_WORD = re.compile(r"[a-z']+|[.,!?;:]")
_JUDGE_TEMPLATE = ("Two continuations of the same text.\nText: {prompt}\nA: {a}\nB: {b}\n"
                   "Which continuation is better, A or B?\nAnswer:")


class Scorer(Protocol):
    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray: ...


class Judge(Protocol):
    # Where text `a` was shown to the judge for each verdict: "a" (first only, so position bias stays in) or
    # "ab" (both orders averaged, or a judge that never sees an order). The evaluation stores it with each verdict.
    positions: str

    def prob_a_beats_b(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> np.ndarray: ...


BOTH_ORDERS, FIRST_ONLY = "ab", "a"


def both_orders(prob_first: Callable[[Sequence[str], Sequence[str], Sequence[str]], np.ndarray],
                prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> np.ndarray:
    """Position-debiased P(A beats B) = (p(a, b) + 1 - p(b, a)) / 2 from a judge that sees one order per call.

    Both orders go to `prob_first` in one call (one batch, one request pool). Written 0.5 + (p(a, b) - p(b, a)) / 2,
    which is exact in floating point: P(a, b) + P(b, a) = 1 and identical texts give 1/2, a tie, not a win by a
    rounding error (the preference game of MagMPO and a model judged against itself need both).
    """
    n = len(prompts)
    p = np.asarray(prob_first([*prompts, *prompts], [*a, *b], [*b, *a]), dtype=float)
    return 0.5 + (p[:n] - p[n:]) / 2.0


def _check_lengths(**columns: Sequence[str]) -> int:
    sizes = {name: len(values) for name, values in columns.items()}
    if len(set(sizes.values())) > 1:
        raise InputError(f"inputs must have equal lengths, got {sizes}")
    return next(iter(sizes.values()))


def lexicon_polarity(text: str) -> float:
    """Sum of lexicon weights; intensifiers scale the next opinion word, negators flip it (damped) within scope.

    Negation wins over intensification ("not very good" reads like "not good"), and punctuation ends both.
    """
    total, boost, negate_left = 0.0, 1.0, 0
    for token in _WORD.findall(text.lower()):
        if token in ".,!?;:":
            boost, negate_left = 1.0, 0
        elif token in NEGATORS:
            negate_left = NEGATION_SCOPE
        elif token in LEXICON:
            total += LEXICON[token] * (NEGATION_FACTOR if negate_left else boost)
            boost, negate_left = 1.0, 0
        else:
            boost *= INTENSIFIERS.get(token, 1.0)
            negate_left = max(0, negate_left - 1)
    return total


class SentimentScorer:
    """P(positive) of prompt + response from the shared lexicon: the sentiment objective of the demo world."""

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        _check_lengths(prompts=prompts, responses=responses)
        polarity = np.array([lexicon_polarity(p + r) for p, r in zip(prompts, responses)], dtype=float)
        return 1.0 / (1.0 + np.exp(-SENTIMENT_SCALE * polarity))


class ConcisenessScorer:
    """Minus the response length: in words by default, in tokens when a tokenizer is given (conciseness objective)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase | None = None) -> None:
        self.tokenizer = tokenizer

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        _check_lengths(prompts=prompts, responses=responses)
        if self.tokenizer is None:
            return -np.array([len(r.split()) for r in responses], dtype=float)
        ids = self.tokenizer(list(responses), add_special_tokens=False)["input_ids"]
        return -np.array([len(x) for x in ids], dtype=float)


class VaderScorer:
    """VADER's compound score of the response alone, in [-1, 1] (Hutto & Gilbert, ICWSM 2014: a sentiment lexicon
    with rules for negation, intensifiers, punctuation and emphasis; PyPI's vadersentiment). The sentiment objective
    of the SmolLM2 world: an outside judge, written by nobody here. The prompt is left out: in a chat it is the
    user's request, not the model's opinion."""

    def __init__(self) -> None:
        try:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        except ImportError:
            raise InputError("the vader scorer needs the vadersentiment package; fix: pip install "
                             "vadersentiment==3.3.2") from None
        self.analyzer = SentimentIntensityAnalyzer()

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        _check_lengths(prompts=prompts, responses=responses)
        return np.array([self.analyzer.polarity_scores(r)["compound"] for r in responses], dtype=float)


class RewardModelScorer:
    """A Hugging Face sequence-classification model: its single logit, or the log-odds of `label` if it has several."""

    def __init__(self, path: str, label: int | None = None, batch_size: int = 32, device: str = "auto",
                 dtype: str = "auto", trust_remote_code: bool = False) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification

        from engine.models.loading import (
            check_source,
            explain_load_errors,
            load_tokenizer,
            resolve_device,
            resolve_dtype,
        )

        dev, source = resolve_device(device), check_source(path)
        self.tokenizer = load_tokenizer(source, trust_remote_code=trust_remote_code)
        with explain_load_errors(source):
            self.model = AutoModelForSequenceClassification.from_pretrained(
                source, dtype=resolve_dtype(dtype, dev), trust_remote_code=trust_remote_code).to(dev).eval()
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        n_labels = self.model.config.num_labels
        self.label = (n_labels - 1) if label is None else label
        if not 0 <= self.label < n_labels:
            raise InputError(f"label must be in [0, {n_labels}) for this reward model, got {label}")
        self.batch_size, self._torch = batch_size, torch

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        _check_lengths(prompts=prompts, responses=responses)
        torch, out = self._torch, []
        texts = [p + r for p, r in zip(prompts, responses)]
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(texts[start:start + self.batch_size], return_tensors="pt", padding=True,
                                   truncation=True).to(self.model.device)
            with torch.no_grad():
                logits = self.model(**batch).logits.float()
            if logits.shape[-1] == 1:
                out.append(logits[:, 0])
            else:  # log p(label) - log(1 - p(label)), computed stably
                others = torch.cat([logits[:, : self.label], logits[:, self.label + 1:]], dim=-1)
                out.append(logits[:, self.label] - torch.logsumexp(others, dim=-1))
        return torch.cat(out).cpu().numpy().astype(float) if out else np.zeros(0)


class ScorerJudge:
    """Bradley-Terry: P(A beats B) = sigmoid((s_A - s_B) / temperature) for any scorer."""

    positions = BOTH_ORDERS  # each text is scored alone: there is no order to be biased by

    def __init__(self, scorer: Scorer, temperature: float = 1.0) -> None:
        if temperature <= 0:
            raise InputError(f"temperature must be positive, got {temperature}")
        self.scorer, self.temperature = scorer, temperature

    def prob_a_beats_b(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        _check_lengths(prompts=prompts, a=a, b=b)
        diff = (self.scorer.score(prompts, a) - self.scorer.score(prompts, b)) / self.temperature
        return 0.5 * (1.0 + np.tanh(0.5 * diff))  # = sigmoid(diff), without overflow for large |diff|


def _answer_token_ids(tokenizer, cue: str, labels: tuple[str, str]) -> list[int]:
    """The first token each label adds after `cue`, as the judge prompt is tokenized (BPE may merge across)."""
    base = tokenizer(cue, add_special_tokens=False)["input_ids"]
    ids = []
    for label in labels:
        full = tokenizer(cue + label, add_special_tokens=False)["input_ids"]
        shared = next((i for i, (x, y) in enumerate(zip(base, full)) if x != y), min(len(base), len(full)))
        if shared >= len(full):
            raise InputError(f"label {label!r} adds no token after the template's answer cue")
        ids.append(full[shared])
    if ids[0] == ids[1]:
        raise InputError(f"labels {labels} start with the same token for this tokenizer; pass distinct labels")
    return ids


class LMJudge:
    """A local causal LM asked which continuation is better: P(A) = softmax over the logits of the two labels.

    `symmetrize` averages with the swapped order (`both_orders`), which removes position bias and makes
    P(A beats B) + P(B beats A) = 1 exactly (the preference game of MagMPO needs that).
    """

    def __init__(self, path: str, template: str = _JUDGE_TEMPLATE, labels: tuple[str, str] = (" A", " B"),
                 symmetrize: bool = True, batch_size: int = 16, device: str = "auto", dtype: str = "auto",
                 trust_remote_code: bool = False) -> None:
        import torch

        from engine.models.loading import load_model, load_tokenizer

        cue = template[template.rfind("}") + 1:]
        if not all(f"{{{key}}}" in template for key in ("prompt", "a", "b")) or not cue.strip():
            raise InputError("template must contain {prompt}, {a}, {b} and end with an answer cue such as 'Answer:'")
        self.tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
        self.model = load_model(path, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
        self.label_ids = _answer_token_ids(self.tokenizer, cue, labels)
        self.template, self.symmetrize, self.batch_size, self._torch = template, symmetrize, batch_size, torch
        self.positions = BOTH_ORDERS if symmetrize else FIRST_ONLY

    def _prob_first(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        torch, out = self._torch, []
        texts = [self.template.format(prompt=p, a=x, b=y) for p, x, y in zip(prompts, a, b)]
        for start in range(0, len(texts), self.batch_size):
            # left padding puts every prompt's last token at position -1
            batch = self.tokenizer(texts[start:start + self.batch_size], return_tensors="pt", padding=True,
                                   padding_side="left").to(self.model.device)
            with torch.no_grad():
                last = self.model(**batch).logits[:, -1, self.label_ids].float()
            out.append(torch.softmax(last, dim=-1)[:, 0])
        return torch.cat(out).cpu().numpy().astype(float) if out else np.zeros(0)

    def prob_a_beats_b(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        _check_lengths(prompts=prompts, a=a, b=b)
        return both_orders(self._prob_first, prompts, a, b) if self.symmetrize else self._prob_first(prompts, a, b)


class JudgeRequestError(PrefLabError, RuntimeError):
    """The judge endpoint could not be reached or refused the request; the message says what and where."""


class OpenAIJudge:
    """An OpenAI-compatible /chat/completions endpoint (vLLM, llama.cpp, OpenAI) answering "A" or "B".

    P(A) comes from the first token's top log-probs when the server returns them, else from the answer text (1, 0,
    or 0.5 with a warning when unreadable). `symmetrize` (default) asks both orders and averages them, as LMJudge
    does: chat judges favour one position, and a single order would put that bias into every win rate (twice the
    requests). Transient failures (timeouts, 429, 5xx) are retried with exponential backoff; the API key is read
    from the environment variable `api_key_env` and never logged.
    """

    _RETRYABLE = frozenset({408, 409, 429, 500, 502, 503, 504})

    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", timeout: float = 30.0,
                 max_retries: int = 3, backoff: float = 1.0, template: str = _JUDGE_TEMPLATE,
                 max_workers: int = 4, symmetrize: bool = True) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise InputError(f"base_url must start with http:// or https://, got {base_url!r}")
        if not model:
            raise InputError("model must name the served model, e.g. openai:http://127.0.0.1:8000/v1#my-model")
        if timeout <= 0 or max_retries < 0 or backoff < 0:
            raise InputError("timeout must be positive, max_retries and backoff non-negative")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key_env, self.timeout = model, api_key_env, timeout
        self.max_retries, self.backoff, self.template, self.max_workers = max_retries, backoff, template, max_workers
        self.symmetrize, self.positions = symmetrize, BOTH_ORDERS if symmetrize else FIRST_ONLY

    def _post(self, payload: dict) -> dict:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        body, problem = json.dumps(payload).encode(), ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read().decode("utf-8"))
            except urllib.error.HTTPError as err:
                detail = err.read(300).decode("utf-8", "replace").replace("\n", " ")
                problem = f"HTTP {err.code} {detail}".strip()
                if err.code not in self._RETRYABLE:
                    break
            except (TimeoutError, socket.timeout):
                problem = f"timed out after {self.timeout} s"
            except urllib.error.URLError as err:
                timed_out = isinstance(err.reason, (TimeoutError, socket.timeout))
                problem = f"timed out after {self.timeout} s" if timed_out else f"unreachable ({err.reason})"
            except json.JSONDecodeError:
                problem = "the reply was not JSON"
        raise JudgeRequestError(f"judge request to {self.url} failed after {attempt + 1} attempt(s): {problem}")

    def _ask(self, prompt: str, a: str, b: str) -> float:
        payload = {"model": self.model, "temperature": 0.0, "max_tokens": 1, "logprobs": True, "top_logprobs": 10,
                   "messages": [{"role": "user", "content": self.template.format(prompt=prompt, a=a, b=b)}]}
        choice = self._post(payload)["choices"][0]
        content = ((choice.get("logprobs") or {}).get("content") or [{}])[0]
        top = {item["token"].strip(): item["logprob"] for item in content.get("top_logprobs") or []}
        if "A" in top or "B" in top:
            log_a, log_b = top.get("A", -math.inf), top.get("B", -math.inf)
            return 1.0 / (1.0 + math.exp(log_b - log_a)) if log_a > -math.inf else 0.0
        answer = ((choice.get("message") or {}).get("content") or "").strip().upper()[:1]
        if answer in ("A", "B"):
            return 1.0 if answer == "A" else 0.0
        warnings.warn(f"judge at {self.url} answered {answer!r}, neither A nor B; counted as a tie", stacklevel=2)
        return 0.5

    def _prob_first(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        with ThreadPoolExecutor(max_workers=self.max_workers) as pool:
            return np.array(list(pool.map(self._ask, prompts, a, b)), dtype=float)

    def prob_a_beats_b(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        _check_lengths(prompts=prompts, a=a, b=b)
        return both_orders(self._prob_first, prompts, a, b) if self.symmetrize else self._prob_first(prompts, a, b)


_SCORER_NAMES = "sentiment, conciseness, vader, reward_model:<path>"
_JUDGE_NAMES = "bt:<scorer>, lm:<path>, openai:<base_url>#<model>"


def get_scorer(name: str, **kwargs) -> Scorer:
    """A scorer by name: 'sentiment', 'conciseness', 'vader' or 'reward_model:<path or hub id>'."""
    if name == "sentiment":
        return SentimentScorer(**kwargs)
    if name == "conciseness":
        return ConcisenessScorer(**kwargs)
    if name == "vader":
        return VaderScorer(**kwargs)
    kind, _, arg = name.partition(":")
    if kind == "reward_model" and arg:
        return RewardModelScorer(arg, **kwargs)
    raise InputError(f"unknown scorer {name!r}; valid names: {_SCORER_NAMES}")


def get_judge(name: str, **kwargs) -> Judge:
    """A pairwise judge by name: 'bt:<scorer>', 'lm:<path>' or 'openai:<base_url>#<model>'."""
    kind, _, arg = name.partition(":")
    if kind == "bt" and arg:
        return ScorerJudge(get_scorer(arg), **kwargs)
    if kind == "lm" and arg:
        return LMJudge(arg, **kwargs)
    if kind == "openai" and "#" in arg:
        base_url, _, model = arg.rpartition("#")
        return OpenAIJudge(base_url, model, **kwargs)
    raise InputError(f"unknown judge {name!r}; valid names: {_JUDGE_NAMES} (scorers: {_SCORER_NAMES})")


def get_single_order_judge(name: str) -> Judge:
    """The judge answering the one order it is shown, for callers that ask every ordered pair themselves (self-play
    judges i-vs-j and j-vs-i): symmetrising inside would double the judge's cost and hide the asymmetry they report."""
    kind = name.partition(":")[0]
    return get_judge(name, symmetrize=False) if kind in ("lm", "openai") else get_judge(name)
