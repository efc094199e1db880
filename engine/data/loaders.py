"""Preference pairs and prompt sets from hub datasets or local files, as plain-text `datasets.Dataset`s.

Output format (one, always): columns prompt, chosen, rejected, all `str`, with the response starting where the
prompt ends (prompt + chosen is the full text). Chat-message lists are rendered with the HH-RLHF template that
the Anthropic data already uses, so every source reads the same way:

    "\\n\\nHuman: {user}\\n\\nAssistant: {assistant}"   (a system message renders as "\\n\\nSystem: {content}")

with the prompt ending in "\\n\\nAssistant:" and each response starting with its space. Plain text rather than
TRL's conversational lists because every reference model must score the same text (docs/methods/mrpo.md: one shared
plain template), and TRL's DPOTrainer takes plain prompt/chosen/rejected strings as they are.

Formats, recognized by their columns (the hub and local files share the parsing code; only the read differs):
- prompt/chosen/rejected strings: taken verbatim (the demo data, any local file).
- prompt/chosen/rejected with message lists (TRL's conversational format; UltraFeedback-binarized, whose chosen
  and rejected hold the whole conversation, user turn included): the prompt is every message before the last, the
  response the last (an assistant message). A response list that starts with the assistant continues the prompt
  column (a string counts as one user turn); one that starts with another role carries its own prompt, and the
  prompt column is then not used.
- chosen/rejected transcripts without a prompt (Anthropic/hh-rlhf): split at the last "\\n\\nAssistant:".
- text(/label) (IMDb): no pairs; `load_prompts` turns reviews into prefix prompts.

Sources: a path (absolute, relative to the data folder as in configs, or relative to the working directory) to
.jsonl, .json (list of objects), either gzipped (the hub's HH-RLHF files are .jsonl.gz), or .parquet; anything
else is a hub name for `datasets.load_dataset`. Bad rows raise `DataError` (file, row, column, fix); with
`drop_invalid=True` empty, tied or mismatched pairs are dropped and counted in a logged warning instead.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow.parquet as pq
from datasets import Dataset

from engine.data.demo.corpus import prompt_of
from engine.data.validation import DataError, check_json_file, row_error
from engine.errors import InputError
from engine.paths import data_dir

logger = logging.getLogger(__name__)

ASSISTANT_MARKER = "\n\nAssistant:"
ROLE_NAMES = {"user": "Human", "assistant": "Assistant", "system": "System"}
_JSON_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")
_SUFFIXES = (*_JSON_SUFFIXES, ".parquet")

HH_RLHF = "Anthropic/hh-rlhf"
# Anthropic/hh-rlhf data_dir values holding chosen/rejected pairs, and the MPO paper's objective names for them.
# MPO (Wang et al., ICML 2025) trains one DPO policy per objective on "HH-RLHF split into helpful / harmless /
# humorous"; that helpful and harmless mean the -base subsets is our reading, not stated in what we could check.
HH_SUBSETS = {"helpful-base": "helpful-base", "helpful-online": "helpful-online",
              "helpful-rejection-sampled": "helpful-rejection-sampled", "harmless-base": "harmless-base",
              "helpful": "helpful-base", "harmless": "harmless-base"}
# Hub datasets whose preference splits are not called train/test.
_HUB_SPLITS = {"HuggingFaceH4/ultrafeedback_binarized": {"train": "train_prefs", "test": "test_prefs"}}


class _Bad(Exception):
    """One row's problem before its file and row number are attached."""

    def __init__(self, column: str, problem: str, fix: str) -> None:
        super().__init__(problem)
        self.column, self.problem, self.fix = column, problem, fix

    def at(self, where: str, row: int) -> DataError:
        return row_error(where, row, self.column, self.problem, self.fix)


# ---------------------------------------------------------------- text and messages


def render_messages(messages: list[dict[str, str]]) -> str:
    """Chat messages as HH-RLHF text: "\\n\\nHuman: ...\\n\\nAssistant: ..." (the module's one template)."""
    return "".join(f"\n\n{ROLE_NAMES[m['role']]}: {m['content']}" for m in messages)


def split_transcript(transcript: str) -> tuple[str, str]:
    """(prompt, response) of an HH-RLHF transcript: the prompt runs up to and including the last
    "\\n\\nAssistant:", the response is the rest, so prompt + response == transcript."""
    cut = transcript.rfind(ASSISTANT_MARKER)
    if cut < 0:
        raise InputError("no '\\n\\nAssistant:' turn in the transcript")
    cut += len(ASSISTANT_MARKER)
    return transcript[:cut], transcript[cut:]


def _text(value: Any, column: str) -> str:
    fix = f"give every row a non-empty string in '{column}'"
    if value is None:
        raise _Bad(column, "missing (null)", fix)
    if not isinstance(value, str):
        raise _Bad(column, f"expected a string or a list of chat messages, got {type(value).__name__}", fix)
    if not value.strip():
        raise _Bad(column, "empty string", fix)
    return value


def _messages(value: Any, column: str) -> list[dict[str, str]]:
    fix = "write messages as [{'role': 'user'|'assistant'|'system', 'content': non-empty string}, ...]"
    if not value:
        raise _Bad(column, "empty message list", fix)
    for i, message in enumerate(value):
        if not isinstance(message, dict) or not all(isinstance(message.get(k), str) for k in ("role", "content")):
            raise _Bad(column, f"message {i} is not a dict with string 'role' and 'content'", fix)
        if message["role"] not in ROLE_NAMES:
            raise _Bad(column, f"message {i} has role {message['role']!r}", fix)
        if not message["content"].strip():
            raise _Bad(column, f"message {i} has empty content", fix)
    return value


def _conversation(prompt: Any, response: Any, column: str) -> list[dict[str, str]]:
    """The whole conversation a response list belongs to (see the module docstring for the two layouts)."""
    messages = _messages(response, column)
    if messages[0]["role"] != "assistant":
        return messages
    if isinstance(prompt, list):
        return _messages(prompt, "prompt") + messages
    return [{"role": "user", "content": _text(prompt, "prompt")}, *messages]


def _split_conversation(messages: list[dict[str, str]], column: str) -> tuple[str, str]:
    if messages[-1]["role"] != "assistant" or len(messages) < 2:
        raise _Bad(column, "a conversation must end with the assistant's response after at least one prompt "
                   "message", "put the prompt turns first and the assistant's response last")
    return render_messages(messages[:-1]) + ASSISTANT_MARKER, " " + messages[-1]["content"]


def _split_hh(value: Any, column: str) -> tuple[str, str]:
    try:
        prompt, response = split_transcript(_text(value, column))
    except ValueError:
        raise _Bad(column, "no '\\n\\nAssistant:' turn in the transcript",
                   "write transcripts as '\\n\\nHuman: ...\\n\\nAssistant: ...', or give a prompt column") from None
    if not response.strip():
        raise _Bad(column, "the response after the last '\\n\\nAssistant:' is empty",
                   "drop the row or pass drop_invalid=True")
    return prompt, response


def _pair(row: dict[str, Any], has_prompt: bool) -> tuple[str, str, str]:
    """(prompt, chosen, rejected) from one row; raises _Bad naming the column at fault."""
    if not has_prompt:
        (prompt, chosen), (other, rejected) = _split_hh(row["chosen"], "chosen"), _split_hh(row["rejected"],
                                                                                             "rejected")
        if prompt != other:
            raise _Bad("chosen/rejected", "the two transcripts differ before their last '\\n\\nAssistant:' turn",
                       "keep every turn but the last identical, or pass drop_invalid=True")
    elif isinstance(row["chosen"], list) or isinstance(row["rejected"], list):
        for column in ("chosen", "rejected"):
            if not isinstance(row[column], list):
                raise _Bad(column, "a string beside a message list in the other response",
                           "give chosen and rejected in the same form")
        prompt, chosen = _split_conversation(_conversation(row["prompt"], row["chosen"], "chosen"), "chosen")
        other, rejected = _split_conversation(_conversation(row["prompt"], row["rejected"], "rejected"),
                                              "rejected")
        if prompt != other:
            raise _Bad("chosen/rejected", "the two conversations differ before their last message",
                       "keep every message but the last identical, or pass drop_invalid=True")
    else:
        if isinstance(row["prompt"], list):
            raise _Bad("prompt", "message-list prompt with plain-string responses",
                       "give chosen and rejected as message lists too, or all three as strings")
        prompt, chosen, rejected = (_text(row[c], c) for c in ("prompt", "chosen", "rejected"))
    if chosen == rejected:
        raise _Bad("chosen/rejected", "chosen and rejected are identical (a tie carries no preference)",
                   "remove the row or pass drop_invalid=True")
    return prompt, chosen, rejected


# ---------------------------------------------------------------- reading sources


def _local_path(source: str) -> Path | None:
    """The local file `source` names, None for a hub name; relative paths try the data folder first (configs)."""
    given = Path(source).expanduser()
    candidates = [given] if given.is_absolute() else [data_dir() / given, given.resolve()]
    for path in candidates:
        if path.exists():
            if path.is_dir():
                raise DataError(f"{path}: is a folder; fix: give one {', '.join(_SUFFIXES)} file")
            return path
    if source.endswith(_SUFFIXES) or given.is_absolute() or source.startswith(("./", "../", "~")):
        raise DataError(f"{source}: no such file (looked at {', '.join(map(str, candidates))}); fix: check the path "
                        "or run `python -m engine demo prepare` for the demo data")
    return None


def _read_local(path: Path) -> Dataset:
    if not path.name.endswith(_SUFFIXES):
        raise DataError(f"{path}: unsupported file type; fix: use one of {', '.join(_SUFFIXES)}")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty (no rows, so no row or column to read); fix: write at least one "
                        "row, or point to the right file")
    builder = "parquet" if path.suffix == ".parquet" else "json"
    if builder == "json":
        check_json_file(path)
    # A throwaway cache with the table kept in memory: no stale cache entries, nothing written outside tmp.
    with tempfile.TemporaryDirectory(prefix="preflab-ds-") as cache:
        try:
            return datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=cache,
                                         keep_in_memory=True)
        except Exception as err:  # pyarrow/datasets raise many types; all mean the file cannot be read
            if _holds_no_rows(path, builder):
                raise DataError(f"{path}: has no rows (valid {builder}, but not one row with a field in it); fix: "
                                "write at least one row, or point to the right file") from None
            raise DataError(f"{path}: could not be read as {builder} ({type(err).__name__}: {_short(err)}); fix: "
                            "check that the file is complete and of the type its suffix says") from err


def _holds_no_rows(path: Path, builder: str) -> bool:
    """Whether a file `datasets` failed on is a valid file without rows: a Parquet whose footer counts 0 rows, or
    JSON holding no object with a field (`[]`, `{}`, `[{}]`, lines of `{}`). `datasets` fails on those with
    errors that read like damage ("BatchSize must be greater than 0", "corresponds to no data"); asked only after
    such a failure, so a readable file is never parsed twice."""
    try:
        if builder == "parquet":
            return pq.read_metadata(path).num_rows == 0
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        text = raw.decode("utf-8")
        if path.name.removesuffix(".gz").endswith(".jsonl"):
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            data = json.loads(text)
            records = data if isinstance(data, list) else [data]
            if isinstance(data, dict) and all(isinstance(v, list) for v in data.values()):
                records = [dict(zip(data, values)) for values in zip(*data.values())]  # columns -> rows
    except Exception:  # damaged after all: the caller reports that
        return False
    return not any(isinstance(record, dict) and record for record in records)


def _hub_subset(source: str, subset: str | None) -> str | None:
    if source.lower() != HH_RLHF.lower() or subset is None:
        return subset
    if subset in ("humorous", "humor"):
        raise DataError(f"{HH_RLHF} subset={subset!r}: there are no humor preference pairs in HH-RLHF (the MPO "
                        "paper's humorous objective is scored by a humor classifier, not labelled by people); fix: "
                        "build the pairs yourself (e.g. rank two responses per HH prompt with a humor judge) and "
                        "pass that .jsonl/.parquet as the source")
    if subset not in HH_SUBSETS:
        raise DataError(f"{HH_RLHF} subset={subset!r}: not a preference subset; fix: use one of "
                        f"{', '.join(HH_SUBSETS)} (red-team-attempts holds rated transcripts, not pairs)")
    return HH_SUBSETS[subset]


def _short(err: BaseException) -> str:
    return " ".join(str(err).split())[:200] or "no message"


def _open(source: str, split: str, subset: str | None) -> tuple[Dataset, str]:
    """The raw table and the name errors should give it (the file path, or hub name[subset/split])."""
    if not isinstance(source, str) or not source.strip():
        raise DataError(f"source: must be a file path or a hub dataset name (got {source!r})")
    path = _local_path(source)
    if path is not None:
        if subset is not None:
            raise DataError(f"subset={subset!r}: applies to hub datasets only, and {path} is a local file; fix: "
                            "leave subset unset, or point the source at that subset's file")
        return _read_local(path), str(path)
    data_dir_arg = _hub_subset(source, subset)
    hub_split = _HUB_SPLITS.get(source, {}).get(split, split)
    where = f"{source}[{f'{data_dir_arg}/' if data_dir_arg else ''}{hub_split}]"
    try:
        table = datasets.load_dataset(source, data_dir=data_dir_arg, split=hub_split)
    except Exception as err:  # no network, unknown name or split: all end here
        raise DataError(f"{where}: could not load from the hub ({type(err).__name__}: {_short(err)}); fix: check "
                        "the name, subset and split, or download the files and pass a local path") from err
    return table, where


def _head(table: Dataset, limit: int | None, where: str) -> Dataset:
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise DataError(f"limit: must be a positive integer or None (got {limit!r})")
    if len(table) == 0:
        raise DataError(f"{where}: no rows (so no row or column to read); fix: point to a non-empty file or split")
    return table.select(range(min(limit, len(table)))) if limit is not None else table


def _rows(table: Dataset) -> Iterator[dict[str, Any]]:
    """Rows as dicts, read in batches (row-by-row access of a Dataset is several times slower)."""
    for batch in table.iter(batch_size=1024):
        yield from (dict(zip(batch, values)) for values in zip(*batch.values()))


def _missing(where: str, columns: list[str], wanted: str, fix: str) -> DataError:
    return row_error(where, 0, wanted, f"missing from every row (columns found: {', '.join(columns) or 'none'})",
                     fix)


def _pairs(table: Dataset, where: str, drop_invalid: bool) -> Dataset:
    columns = table.column_names
    for wanted in ("chosen", "rejected"):
        if wanted not in columns:
            fix = ("this is a prompt set (text/label, as IMDb): load it with load_prompts" if "text" in columns
                   else "give prompt/chosen/rejected columns, or HH-style chosen/rejected transcripts")
            raise _missing(where, columns, wanted, fix)
    has_prompt = "prompt" in columns
    out: dict[str, list[str]] = {"prompt": [], "chosen": [], "rejected": []}
    dropped, first = 0, ""
    for i, row in enumerate(_rows(table)):
        try:
            triple = _pair(row, has_prompt)
        except _Bad as bad:
            if not drop_invalid:
                raise bad.at(where, i) from None
            dropped, first = dropped + 1, first or str(bad.at(where, i))
            continue
        for key, value in zip(out, triple):
            out[key].append(value)
    if dropped:
        logger.warning("%s: dropped %d of %d rows (drop_invalid=True); first: %s", where, dropped, len(table), first)
    if not out["prompt"]:
        raise DataError(f"{where}: all {len(table)} rows were invalid and dropped; first: {first}")
    return Dataset.from_dict(out)


# ---------------------------------------------------------------- public entry points


def load_preferences(source: str, split: str = "train", subset: str | None = None, limit: int | None = None,
                     *, drop_invalid: bool = False) -> Dataset:
    """Preference pairs as a Dataset with string columns prompt, chosen, rejected (see the module docstring).

    `split` picks the hub split (train/test map to train_prefs/test_prefs for UltraFeedback-binarized); a local
    file is one split and ignores it. `subset` is the hub data_dir (HH-RLHF: helpful-base, harmless-base, ...,
    or the MPO names helpful/harmless; humorous raises, see HH_SUBSETS). `limit` keeps the first rows.
    """
    table, where = _open(source, split, subset)
    return _pairs(_head(table, limit, where), where, drop_invalid)


def clean_review(text: str) -> str:
    """IMDb review text with its HTML line breaks ("<br /><br />") and runs of whitespace made single spaces."""
    return " ".join(re.sub(r"<br\s*/?>", " ", text, flags=re.IGNORECASE).split())


def _review_prompt(value: Any, rng: np.random.Generator) -> str:
    words = clean_review(_text(value, "text"))
    if len(words.split()) < 2:
        raise _Bad("text", "fewer than two words, nothing to continue", "drop the row")
    return prompt_of(words, rng)


def _prompt_text(value: Any) -> str:
    if isinstance(value, list):
        return render_messages(_messages(value, "prompt")) + ASSISTANT_MARKER
    return _text(value, "prompt")


def load_prompts(source: str, split: str = "train", subset: str | None = None, limit: int | None = None,
                 *, seed: int = 0) -> Dataset:
    """A prompt set as a Dataset with a string column prompt (plus label when the source has one).

    - text(/label) rows (IMDb, the MPO paper's sentiment task): the review's first 2-4 words, drawn as for the
      offline demo corpus (engine.data.demo.corpus.prompt_of, seeded) after removing HTML breaks, so that the demo stays
      a faithful stand-in (the paper's own prefix length is not something we could confirm);
    - preference data: its prompts, rendered exactly as load_preferences renders them, duplicates removed;
    - a prompt column: strings verbatim, message lists rendered and ended with "\\n\\nAssistant:".
    `limit` applies to the rows read, before duplicates are removed.
    """
    table, where = _open(source, split, subset)
    table = _head(table, limit, where)
    columns = table.column_names
    if "chosen" in columns and "rejected" in columns:
        return Dataset.from_dict({"prompt": list(dict.fromkeys(_pairs(table, where, False)["prompt"]))})
    if "text" not in columns and "prompt" not in columns:
        raise _missing(where, columns, "prompt", "give a prompt column, IMDb-style text, or preference pairs")
    rng = np.random.default_rng(seed)
    prompts: list[str] = []
    for i, row in enumerate(_rows(table)):
        try:
            prompts.append(_review_prompt(row["text"], rng) if "text" in columns else _prompt_text(row["prompt"]))
        except _Bad as bad:
            raise bad.at(where, i) from None
    out: dict[str, list[Any]] = {"prompt": prompts}
    if "text" in columns and "label" in columns:
        out["label"] = list(table["label"])
    return Dataset.from_dict(out)
