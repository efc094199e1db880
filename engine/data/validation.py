"""Checks on preference data and tokenizers, and length truncation with counts.

Every problem is a `DataError` whose message is one line naming where (file, or hub name and split), the row,
the column and the fix: "prefs.jsonl: row 3, column 'chosen': empty string; fix: ...". Rows count from 0 as in
`dataset[i]`; in a .jsonl file row i is the i-th non-blank line.

Truncation follows what TRL 1.16's DPOTrainer does with plain-text data, so that the lengths counted here are the
lengths it trains on: it appends the tokenizer's EOS to each response, tokenizes prompt + response as one string
with the tokenizer's own special tokens, and cuts the joined sequence at `max_length` (keeping the start). Cutting
the text here instead, before TRL sees it, lets us count what is cut, keep the end of over-long prompts (the part
the response answers) and drop pairs that truncation makes identical.
"""

from __future__ import annotations

import gzip
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from datasets import Dataset

from engine.errors import InputError

logger = logging.getLogger(__name__)


class DataError(InputError):
    """Bad preference data or tokenizer; the message says where, what and how to fix it, on one line."""


def row_error(where: str, row: int, column: str, problem: str, fix: str) -> DataError:
    """The one format every row-level problem is reported in."""
    return DataError(f"{where}: row {row}, column '{column}': {problem}; fix: {fix}")


def _one_line(text: str, limit: int = 160) -> str:
    """Library messages can span lines; a DataError must not."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


# ---------------------------------------------------------------- JSON files: bytes and syntax, row by row


def _surrogate_field(record: Any) -> str | None:
    """The first top-level field whose text holds undecodable bytes (kept as lone surrogates by surrogateescape)."""
    def has_bad(value: Any) -> bool:
        if isinstance(value, str):
            return any("\udc80" <= ch <= "\udcff" for ch in value)
        if isinstance(value, dict):
            return any(has_bad(k) or has_bad(v) for k, v in value.items())
        if isinstance(value, list):
            return any(has_bad(v) for v in value)
        return False

    if isinstance(record, dict):
        for key, value in record.items():
            if has_bad(key) or has_bad(value):
                return str(key).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return None


def _json_rows(text: str, path: Path, jsonl: bool) -> list[tuple[int, Any]]:
    """(row, record) pairs; a syntax error names the row and the line, which pyarrow's reader does not."""
    if jsonl:
        rows: list[tuple[int, Any]] = []
        for line_no, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                rows.append((len(rows), json.loads(line)))
            except json.JSONDecodeError as err:
                raise row_error(str(path), len(rows), "*", f"line {line_no} is not valid JSON ({err.msg} at "
                                f"character {err.colno})", "write one JSON object per line") from None
        return rows
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise row_error(str(path), 0, "*", f"not valid JSON ({err.msg} at line {err.lineno}, character "
                        f"{err.colno})", "write a JSON list of objects, or use .jsonl with one object per "
                        "line") from None
    if isinstance(data, dict) and all(isinstance(v, list) for v in data.values()):
        data = [dict(zip(data, values)) for values in zip(*data.values())]
    if not isinstance(data, list):
        raise row_error(str(path), 0, "*", f"top level is a JSON {type(data).__name__}",
                        "write a JSON list of objects (one per row) or an object of equal-length column lists")
    return list(enumerate(data))


def check_json_file(path: Path) -> None:
    """Read a .json/.jsonl file (gzip allowed) once in Python before `datasets` does.

    Why: pyarrow reports a bad byte or a broken line without its row, and an empty file as a bare StopIteration.
    Here a non-UTF-8 byte is traced to the row and field that hold it.
    """
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if not raw.strip():
        raise DataError(f"{path}: file is empty (no rows, so no row or column to read); fix: write at least one "
                        "row with prompt/chosen/rejected, or point to the right file")
    jsonl = path.name.removesuffix(".gz").endswith(".jsonl")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        text = raw.decode("utf-8", errors="surrogateescape")
        bad = raw[err.start:err.end + 3].hex(" ")
        fix = "re-save the file as UTF-8 (for example: iconv -f latin1 -t utf-8 in > out)"
        for row, record in _json_rows(text, path, jsonl):
            column = _surrogate_field(record)
            if column is not None:
                raise row_error(str(path), row, column, f"bytes that are not UTF-8 ({bad} at byte offset "
                                f"{err.start})", fix) from None
        raise row_error(str(path), 0, "*", f"bytes that are not UTF-8 ({bad}) outside any field, at byte offset "
                        f"{err.start}", fix) from None
    _json_rows(text, path, jsonl)


# ---------------------------------------------------------------- tokenizers


def check_tokenizer(tok: Any) -> None:
    """Fail early on a tokenizer that cannot batch preference pairs.

    Why: padding needs a pad token, and TRL appends `eos_token` to every plain-text response (a missing one would
    end up as the string "None"). TRL silently sets pad = eos; we ask for it to be set on purpose, because code that
    masks by pad id would then also mask every real EOS and the model would never learn to stop.
    """
    name = getattr(tok, "name_or_path", "") or type(tok).__name__
    if getattr(tok, "eos_token", None) is None:
        raise DataError(f"tokenizer {name}: no eos_token; fix: set tokenizer.eos_token (e.g. '</s>' or the "
                        "model's end-of-text token) before building preference batches")
    if getattr(tok, "pad_token", None) is None:
        raise DataError(f"tokenizer {name}: no pad_token; fix: tokenizer.pad_token = tokenizer.eos_token (what "
                        "TRL does; mask padding by attention_mask, not by pad id) or add a dedicated pad token")


# ---------------------------------------------------------------- truncation


@dataclass(frozen=True)
class TruncationReport:
    """What `truncate_pairs` changed; every count is a number of pairs (rows)."""

    max_length: int
    max_prompt_length: int | None
    n_input: int
    n_output: int
    n_prompt_truncated: int
    n_chosen_truncated: int
    n_rejected_truncated: int
    n_truncated: int  # pairs with at least one of the three fields cut (tied ones included)
    n_dropped_too_long: int  # mode="drop" over-long pairs, or no room left for a single response token
    n_dropped_tied: int  # chosen == rejected after cutting: no preference left to learn

    def summary(self) -> str:
        return (f"{self.n_truncated} of {self.n_input} pairs truncated to max_length={self.max_length} "
                f"(prompt {self.n_prompt_truncated}, chosen {self.n_chosen_truncated}, rejected "
                f"{self.n_rejected_truncated}); dropped {self.n_dropped_too_long} too long and "
                f"{self.n_dropped_tied} tied after truncation; {self.n_output} kept")


def _lengths(tok: Any, texts: list[str]) -> list[int]:
    return [len(ids) for ids in tok(texts)["input_ids"]] if texts else []


def _keep_prompt_end(tok: Any, prompt: str, limit: int) -> str:
    """The longest end of `prompt`, cut at a token boundary, that tokenizes to at most `limit` tokens."""
    offsets = [(s, e) for s, e in tok(prompt, return_offsets_mapping=True)["offset_mapping"] if e > s]
    for keep in range(min(limit, len(offsets)), 0, -1):
        candidate = prompt[offsets[-keep][0]:]
        if _lengths(tok, [candidate])[0] <= limit:
            return candidate
    return ""


def _keep_response_start(tok: Any, prompt: str, response: str, eos: str, max_length: int) -> str:
    """The longest start of `response`, cut at a token boundary, with len(prompt + cut + eos) <= max_length."""
    enc = tok(prompt + response, return_offsets_mapping=True)
    ends = [e for s, e in enc["offset_mapping"] if e > s and s >= len(prompt)]
    keep = min(max_length - _lengths(tok, [prompt + eos])[0], len(ends))
    while keep > 0:  # the estimate is exact unless tokens merge across the cut; then step back
        candidate = response[: ends[keep - 1] - len(prompt)]
        if _lengths(tok, [prompt + candidate + eos])[0] <= max_length:
            return candidate
        keep -= 1
    return ""


def truncate_pairs(dataset: Dataset, tokenizer: Any, max_length: int, max_prompt_length: int | None = None,
                   mode: Literal["truncate", "drop"] = "truncate") -> tuple[Dataset, TruncationReport]:
    """Fit every pair into `max_length` tokens (prompt + response + EOS, counted as TRL counts them).

    mode="truncate": a prompt over `max_prompt_length` keeps its end; a response keeps its start. Note that TRL
    then appends EOS to a cut response, teaching the model to stop there; mode="drop" removes over-long pairs
    instead. Pairs with no room for one response token, or identical after cutting, are dropped. Counts are
    returned and logged as a warning, never silent. Needs a fast tokenizer (character offsets).
    """
    check_tokenizer(tokenizer)
    if not getattr(tokenizer, "is_fast", False):
        raise DataError(f"tokenizer {tokenizer.name_or_path}: truncation needs a fast tokenizer (character "
                        "offsets); fix: load it with use_fast=True or wrap it in PreTrainedTokenizerFast")
    if max_length < 2:
        raise DataError(f"max_length: must be at least 2 (got {max_length}); fix: raise max_length")
    if max_prompt_length is not None and not 0 < max_prompt_length < max_length:
        raise DataError(f"max_prompt_length: must lie in [1, max_length - 1] (got {max_prompt_length}, "
                        f"max_length {max_length}); fix: lower max_prompt_length or raise max_length")
    if mode not in ("truncate", "drop"):
        raise DataError(f"mode: must be 'truncate' or 'drop' (got {mode!r})")
    missing = [c for c in ("prompt", "chosen", "rejected") if c not in dataset.column_names]
    if missing:
        raise DataError(f"dataset: column '{missing[0]}' missing (columns: {', '.join(dataset.column_names)}); fix: "
                        "pass the output of load_preferences")
    eos = tokenizer.eos_token
    prompts, chosen, rejected = (list(dataset[c]) for c in ("prompt", "chosen", "rejected"))
    prompt_len = _lengths(tokenizer, prompts)
    chosen_len = _lengths(tokenizer, [p + c + eos for p, c in zip(prompts, chosen)])
    rejected_len = _lengths(tokenizer, [p + r + eos for p, r in zip(prompts, rejected)])
    keep_rows: list[int] = []
    out: dict[str, list[str]] = {"prompt": [], "chosen": [], "rejected": []}
    n_prompt = n_chosen = n_rejected = n_any = n_long = n_tied = 0
    for i, (p, c, r) in enumerate(zip(prompts, chosen, rejected)):
        cut_p = max_prompt_length is not None and prompt_len[i] > max_prompt_length
        cut_c, cut_r = chosen_len[i] > max_length, rejected_len[i] > max_length
        if mode == "drop" and (cut_p or cut_c or cut_r):
            n_long += 1
            continue
        if cut_p:
            p = _keep_prompt_end(tokenizer, p, max_prompt_length)
            cut_c = _lengths(tokenizer, [p + c + eos])[0] > max_length
            cut_r = _lengths(tokenizer, [p + r + eos])[0] > max_length
        c = _keep_response_start(tokenizer, p, c, eos, max_length) if cut_c else c
        r = _keep_response_start(tokenizer, p, r, eos, max_length) if cut_r else r
        if not p or not c or not r:
            n_long += 1
            continue
        n_prompt, n_chosen, n_rejected = n_prompt + cut_p, n_chosen + cut_c, n_rejected + cut_r
        n_any += cut_p or cut_c or cut_r
        if c == r:
            n_tied += 1
            continue
        keep_rows.append(i)
        for key, value in (("prompt", p), ("chosen", c), ("rejected", r)):
            out[key].append(value)
    result = dataset.select(keep_rows)  # other columns (ids, scores) ride along with their rows
    for key, values in out.items():
        result = result.remove_columns(key).add_column(key, values)
    report = TruncationReport(max_length, max_prompt_length, len(prompts), len(keep_rows), n_prompt, n_chosen,
                              n_rejected, n_any, n_long, n_tied)
    if n_any or n_long or n_tied:
        logger.warning("preference data: %s", report.summary())
    return result, report
