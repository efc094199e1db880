"""Loaders and validation of preference data: real formats from hand-written fixtures, every bad input, truncation.

Expected values are written out by hand from the fixture files (or recomputed from the raw JSON with the json
module), never read back from the loader's own output.
"""

import gzip
import json
import logging
import shutil
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from datasets import Dataset
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from engine.data.loaders import (
    ASSISTANT_MARKER,
    clean_review,
    load_preferences,
    load_prompts,
    render_messages,
    split_transcript,
)
from engine.data.validation import DataError, check_tokenizer, truncate_pairs

FIXTURES = Path(__file__).parent / "fixtures"
HH = FIXTURES / "hh_rlhf_sample.jsonl"
UF = FIXTURES / "ultrafeedback_binarized_sample.jsonl"
IMDB = FIXTURES / "imdb_sample.jsonl"
PLAIN = FIXTURES / "prefs_plain.jsonl"
CONVERSATIONAL = FIXTURES / "prefs_conversational.json"


def raw_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def rows_of(ds) -> list[dict]:
    return [ds[i] for i in range(len(ds))]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def assert_names(err: pytest.ExceptionInfo, path: Path | str, row: int, column: str) -> str:
    """The contract of every row-level error: one line naming the file, the row, the column and a fix."""
    message = str(err.value)
    assert "\n" not in message
    assert str(path) in message
    assert f"row {row}," in message
    assert f"column '{column}'" in message
    assert "fix:" in message
    return message


# ---------------------------------------------------------------- Anthropic HH-RLHF


def test_hh_transcripts_split_at_last_assistant_turn():
    ds = load_preferences(str(HH))
    assert ds.column_names == ["prompt", "chosen", "rejected"] and len(ds) == 4
    assert ds[0] == {"prompt": "\n\nHuman: What is a good name for a goldfish?\n\nAssistant:",
                     "chosen": " How about Bubbles, or Captain Fin if you like something playful?",
                     "rejected": " Fish do not need names."}
    # Two-turn dialogue: the first exchange belongs to the prompt.
    assert ds[1]["prompt"] == ("\n\nHuman: How do I boil an egg?\n\nAssistant: Put the egg in boiling water for "
                               "about nine minutes.\n\nHuman: And for a soft yolk?\n\nAssistant:")
    assert ds[1]["chosen"] == " Take it out after six minutes and cool it in cold water."
    # Three turns: two earlier Assistant turns stay in the prompt, only the last is the response.
    assert ds[2]["prompt"].count(ASSISTANT_MARKER) == 3 and ds[2]["prompt"].endswith("instead?\n\nAssistant:")
    assert ds[2]["chosen"] == " You could leave a funny note or a plastic flamingo on their lawn."
    assert ds[2]["rejected"] == " You could hide their car keys."
    # Responses sharing a start ("The moon orbits Earth") are still cut at the turn, not at the common prefix.
    assert ds[3]["rejected"] == " The moon orbits Earth."
    for got, raw in zip(rows_of(ds), raw_rows(HH)):
        assert got["prompt"] + got["chosen"] == raw["chosen"]
        assert got["prompt"] + got["rejected"] == raw["rejected"]


def test_hh_gzipped_file_as_on_the_hub(tmp_path):
    packed = tmp_path / "train.jsonl.gz"
    packed.write_bytes(gzip.compress(HH.read_bytes()))
    assert rows_of(load_preferences(str(packed))) == rows_of(load_preferences(str(HH)))


def test_hh_subsets_humorous_and_red_team_are_refused_before_any_download():
    with pytest.raises(DataError, match="no humor preference pairs"):
        load_preferences("Anthropic/hh-rlhf", subset="humorous")
    with pytest.raises(DataError, match="red-team-attempts holds rated transcripts"):
        load_preferences("Anthropic/hh-rlhf", subset="red-team-attempts")


def test_subset_with_a_local_file_is_refused():
    with pytest.raises(DataError, match="applies to hub datasets only"):
        load_preferences(str(HH), subset="helpful-base")


# ---------------------------------------------------------------- UltraFeedback-binarized and chat messages


UF_EXPECTED = [
    {"prompt": "\n\nHuman: Name two primary colors.\n\nAssistant:",
     "chosen": " Red and blue are two primary colors.", "rejected": " Green."},
    {"prompt": "\n\nHuman: Write a haiku about rain.\n\nAssistant:",
     "chosen": " Soft rain on the roof\nthe garden drinks in silence\npuddles hold the sky",
     "rejected": " Rain is wet and falls down from clouds."},
    {"prompt": "\n\nHuman: What is 12 times 12?\n\nAssistant:",
     "chosen": " 12 times 12 is 144.", "rejected": " 12 times 12 is 124."},
]


def test_ultrafeedback_message_lists_jsonl():
    ds = load_preferences(str(UF))
    assert ds.column_names == ["prompt", "chosen", "rejected"]  # prompt_id, messages, scores are not carried
    assert rows_of(ds) == UF_EXPECTED


def test_ultrafeedback_message_lists_parquet(tmp_path):
    path = tmp_path / "train_prefs.parquet"
    pd.DataFrame(raw_rows(UF)).to_parquet(path)
    assert rows_of(load_preferences(str(path))) == UF_EXPECTED


def test_conversational_json_with_system_message_and_string_prompt():
    assert rows_of(load_preferences(str(CONVERSATIONAL))) == [
        {"prompt": "\n\nSystem: You are terse.\n\nHuman: Capital of France?\n\nAssistant:",
         "chosen": " Paris.", "rejected": " France is a country in Europe with many cities."},
        {"prompt": "\n\nHuman: Say hi.\n\nAssistant:", "chosen": " Hi!", "rejected": " Goodbye."},
    ]


def test_render_messages_is_the_hh_template():
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    assert render_messages(messages) == "\n\nHuman: a\n\nAssistant: b"


# ---------------------------------------------------------------- local plain files


def test_plain_jsonl_verbatim_including_unicode():
    assert rows_of(load_preferences(str(PLAIN))) == raw_rows(PLAIN)


def test_plain_parquet_and_limit(tmp_path):
    path = tmp_path / "prefs.parquet"
    pd.DataFrame(raw_rows(PLAIN)).to_parquet(path)
    assert rows_of(load_preferences(str(path))) == raw_rows(PLAIN)
    assert rows_of(load_preferences(str(path), limit=2)) == raw_rows(PLAIN)[:2]


def test_relative_path_is_read_from_the_data_folder(data_root):
    (data_root / "demo").mkdir()
    shutil.copy(PLAIN, data_root / "demo" / "p.jsonl")
    assert rows_of(load_preferences("demo/p.jsonl")) == raw_rows(PLAIN)


# ---------------------------------------------------------------- prompt sets


def test_imdb_prompts_are_word_prefixes_of_cleaned_reviews():
    ds = load_prompts(str(IMDB), seed=3)
    assert ds["label"] == [0, 1, 0, 1]
    cleaned = ["I rented I AM CURIOUS-YELLOW from my video store because of all the controversy. It was dull "
               "and far too long.", "This film is a quiet gem. The acting is superb and the ending moved me.",
               "Worst sequel ever made, avoid it.", "Loved it."]
    assert [clean_review(r["text"]) for r in raw_rows(IMDB)] == cleaned
    for prompt, text in zip(ds["prompt"], cleaned):
        assert 1 <= len(prompt.split()) <= 4 and text.startswith(prompt + " ")
    assert ds["prompt"][3] == "Loved"  # a two-word review leaves one word to continue
    assert load_prompts(str(IMDB), seed=3)["prompt"] == ds["prompt"]


def test_prompts_of_preference_data_match_and_are_deduplicated(tmp_path):
    rows = raw_rows(HH)
    path = write_jsonl(tmp_path / "hh.jsonl", rows + rows[:2])
    assert load_prompts(str(path))["prompt"] == load_preferences(str(HH))["prompt"]


def test_prompt_column_strings_and_messages(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Once upon a time"},
                                              {"prompt": [{"role": "user", "content": "Hi"}]}])
    assert load_prompts(str(path))["prompt"] == ["Once upon a time", "\n\nHuman: Hi\n\nAssistant:"]


# ---------------------------------------------------------------- bad input: one line, file, row, column, fix


def test_missing_column_in_every_row(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "chosen": "b"}])
    with pytest.raises(DataError) as err:
        load_preferences(str(path))
    assert "missing from every row" in assert_names(err, path, 0, "rejected")


def test_missing_value_in_one_row(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"},
                                              {"prompt": "a", "chosen": "b"}])
    with pytest.raises(DataError) as err:
        load_preferences(str(path))
    assert "missing (null)" in assert_names(err, path, 1, "rejected")


@pytest.mark.parametrize("field,value,problem", [("chosen", "", "empty string"), ("prompt", "  \n", "empty string"),
                                                 ("chosen", 5, "got int"), ("rejected", True, "got bool")])
def test_empty_or_non_string_field(tmp_path, field, value, problem):
    rows = [{"prompt": "a", "chosen": "b", "rejected": "c"} for _ in range(3)]
    rows[2][field] = value
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(DataError) as err:
        load_preferences(str(path))
    assert problem in assert_names(err, path, 2, field)


def test_tie_is_an_error_and_drop_invalid_drops_it_with_a_count(tmp_path, caplog):
    rows = [{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "chosen": "same", "rejected": "same"},
            {"prompt": "a", "chosen": "", "rejected": "c"}, {"prompt": "x", "chosen": "y", "rejected": "z"}]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(DataError) as err:
        load_preferences(str(path))
    assert "identical" in assert_names(err, path, 1, "chosen/rejected")
    with caplog.at_level(logging.WARNING, logger="engine.data.loaders"):
        ds = load_preferences(str(path), drop_invalid=True)
    assert rows_of(ds) == [rows[0], rows[3]]
    assert "dropped 2 of 4 rows" in caplog.text
    with pytest.raises(DataError, match="all 2 rows were invalid"):
        load_preferences(str(write_jsonl(tmp_path / "q.jsonl", rows[1:3])), drop_invalid=True)


def test_hh_rows_that_cannot_be_split(tmp_path):
    good = "\n\nHuman: hi\n\nAssistant: hello"
    cases = [({"chosen": good, "rejected": "\n\nHuman: hi there\n\nAssistant: yo"}, "chosen/rejected",
              "differ before"),
             ({"chosen": "Human: hi Assistant: hello", "rejected": good}, "chosen", "no '\\n\\nAssistant:' turn"),
             ({"chosen": good, "rejected": "\n\nHuman: hi\n\nAssistant:"}, "rejected", "is empty")]
    for k, (bad, column, problem) in enumerate(cases):
        path = write_jsonl(tmp_path / f"hh{k}.jsonl", [{"chosen": good, "rejected": good + "!"}, bad])
        with pytest.raises(DataError) as err:
            load_preferences(str(path))
        assert problem in assert_names(err, path, 1, column)


def test_bad_message_lists(tmp_path):
    user, bot = {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}
    cases = [({"prompt": "q", "chosen": [user, {"role": "robot", "content": "a"}], "rejected": [user, bot]},
              "chosen", "role 'robot'"),
             ({"prompt": "q", "chosen": [user, bot], "rejected": [bot, user]}, "rejected", "must end with"),
             ({"prompt": "q", "chosen": [user, bot], "rejected": "a string"}, "rejected", "same form"),
             ({"prompt": "q", "chosen": [user, {"role": "assistant", "content": " "}], "rejected": [user, bot]},
              "chosen", "empty content")]
    for k, (bad, column, problem) in enumerate(cases):
        good = {"prompt": "q", "chosen": [user, bot], "rejected": [user, {"role": "assistant", "content": "b"}]}
        path = write_jsonl(tmp_path / f"m{k}.jsonl", [good, bad])
        with pytest.raises(DataError) as err:
            load_preferences(str(path))
        assert problem in assert_names(err, path, 1, column)


def test_non_utf8_bytes_are_traced_to_row_and_column(tmp_path):
    path = tmp_path / "latin1.jsonl"
    lines = ['{"prompt": "a", "chosen": "b", "rejected": "c"}'] * 2 + ['{"prompt": "a", "chosen": "café", '
                                                                       '"rejected": "c"}']
    path.write_bytes("\n".join(lines).encode("latin-1"))
    with pytest.raises(DataError) as err:
        load_preferences(str(path))
    assert "not UTF-8 (e9" in assert_names(err, path, 2, "chosen")


def test_broken_json_line_names_row_and_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n\n{"prompt": "a", "chosen": \n',
                    encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_preferences(str(path))
    assert "line 3 is not valid JSON" in assert_names(err, path, 1, "*")


@pytest.mark.parametrize("name,content", [("empty.jsonl", b""), ("blank.jsonl", b"\n \n"), ("none.json", b"[]"),
                                          ("empty.parquet", b"")])
def test_empty_files(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        load_preferences(str(path))
    message = str(err.value)
    assert str(path) in message and ("empty" in message or "no rows" in message) and "fix:" in message


def test_imdb_file_given_as_preferences_points_to_load_prompts():
    with pytest.raises(DataError) as err:
        load_preferences(str(IMDB))
    assert "load_prompts" in assert_names(err, IMDB, 0, "chosen")


def test_empty_prompt_in_a_prompt_set(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "fine"}, {"prompt": ""}])
    with pytest.raises(DataError) as err:
        load_prompts(str(path))
    assert "empty string" in assert_names(err, path, 1, "prompt")
    path = write_jsonl(tmp_path / "q.jsonl", [{"question": "no prompt column"}])
    with pytest.raises(DataError) as err:
        load_prompts(str(path))
    assert_names(err, path, 0, "prompt")


def test_bad_sources_and_arguments(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_preferences(str(tmp_path / "nope.jsonl"))
    (tmp_path / "data.csv").write_text("prompt,chosen,rejected\n", encoding="utf-8")
    with pytest.raises(DataError, match="unsupported file type"):
        load_preferences(str(tmp_path / "data.csv"))
    with pytest.raises(DataError, match="limit: must be a positive integer"):
        load_preferences(str(PLAIN), limit=0)


# ---------------------------------------------------------------- tokenizers and truncation

SENTENCES = ["the movie was very good and fun to watch", "the movie was bad but long",
             "one two three four five", "a plot"]


def word_tokenizer(pad: bool = True) -> PreTrainedTokenizerFast:
    """A word-level tokenizer trained on SENTENCES: each word is one token, so lengths can be counted by hand."""
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(SENTENCES, trainers.WordLevelTrainer(special_tokens=["<unk>", "<pad>", "</s>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>",
                                   pad_token="<pad>" if pad else None)


def test_check_tokenizer():
    check_tokenizer(word_tokenizer())
    with pytest.raises(DataError, match="no pad_token; fix: tokenizer.pad_token = tokenizer.eos_token"):
        check_tokenizer(word_tokenizer(pad=False))
    no_eos = word_tokenizer()
    no_eos.eos_token = None
    with pytest.raises(DataError, match="no eos_token"):
        check_tokenizer(no_eos)


def pairs(*rows):
    return Dataset.from_list([dict(zip(("prompt", "chosen", "rejected"), r)) for r in rows])


def test_truncation_counts_by_hand(caplog):
    tok = word_tokenizer()
    ds = pairs(("the movie was", " very good and fun to watch", " bad"),  # 3 + 6 + EOS = 10 tokens
               ("one two three four five the movie was", " good", " bad"),  # prompt of 8 words
               ("the movie was", " very good and fun to watch", " very good and fun but long"),  # tie once cut
               ("a plot", " good", " bad"))  # 4 tokens: untouched
    with caplog.at_level(logging.WARNING, logger="engine.data.validation"):
        out, report = truncate_pairs(ds, tok, max_length=8, max_prompt_length=4)
    # max_length 8 leaves 8 - 3 - 1 (EOS) = 4 response words; the long prompt keeps its last 4 words.
    assert rows_of(out) == [
        {"prompt": "the movie was", "chosen": " very good and fun", "rejected": " bad"},
        {"prompt": "five the movie was", "chosen": " good", "rejected": " bad"},
        {"prompt": "a plot", "chosen": " good", "rejected": " bad"}]
    assert (report.n_input, report.n_output, report.n_prompt_truncated, report.n_chosen_truncated,
            report.n_rejected_truncated, report.n_truncated, report.n_dropped_tied,
            report.n_dropped_too_long) == (4, 3, 1, 2, 1, 3, 1, 0)
    assert "3 of 4 pairs truncated" in caplog.text


def test_truncation_drop_mode_and_no_room():
    tok = word_tokenizer()
    ds = pairs(("the movie was", " very good and fun to watch", " bad"), ("a plot", " good", " bad"),
               ("one two three four five the movie", " good", " bad"))  # 7 + EOS fills max_length 8
    out, report = truncate_pairs(ds, tok, max_length=8, mode="drop")
    assert out["prompt"] == ["a plot"] and report.n_dropped_too_long == 2 and report.n_truncated == 0
    out, report = truncate_pairs(ds, tok, max_length=8)
    assert out["prompt"] == ["the movie was", "a plot"] and report.n_dropped_too_long == 1
    with pytest.raises(DataError, match="max_prompt_length: must lie in"):
        truncate_pairs(ds, tok, max_length=8, max_prompt_length=8)
    with pytest.raises(DataError, match="no pad_token"):
        truncate_pairs(ds, word_tokenizer(pad=False), max_length=8)


def bpe_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE like real models use: tokens do not match words, spaces attach to the next token."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(SENTENCES * 3, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<pad>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>", pad_token="<pad>")


BPE = bpe_tokenizer()
words = st.lists(st.sampled_from(["the", "movie", "was", "very", "good", "bad", "fun", "zebra", "ok", "x"]),
                 min_size=1, max_size=12).map(" ".join)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(words, words, words), min_size=1, max_size=4), st.integers(6, 16))
def test_truncation_fits_every_pair_and_only_cuts(triples, max_length):
    """Recount with the tokenizer itself: every kept pair fits, prompts keep their end, responses their start."""
    rows = [{"id": i, "prompt": p, "chosen": " " + c, "rejected": " " + r + " end"}
            for i, (p, c, r) in enumerate(triples)]
    limit = max_length // 2
    out, report = truncate_pairs(Dataset.from_list(rows), BPE, max_length=max_length, max_prompt_length=limit)
    count = lambda text: len(BPE(text)["input_ids"])  # noqa: E731
    assert report.n_output == len(out) == len(rows) - report.n_dropped_tied - report.n_dropped_too_long
    for row in rows_of(out):
        source = rows[row["id"]]  # extra columns travel with their rows
        assert count(row["prompt"]) <= limit and source["prompt"].endswith(row["prompt"])
        for side in ("chosen", "rejected"):
            assert count(row["prompt"] + row[side] + BPE.eos_token) <= max_length
            assert source[side].startswith(row[side])
        fits = count(source["prompt"]) <= limit and all(
            count(source["prompt"] + source[side] + BPE.eos_token) <= max_length for side in ("chosen", "rejected"))
        assert (row == source) == fits and row["chosen"] != row["rejected"]


# ---------------------------------------------------------------- properties


turn = st.text(min_size=1, max_size=30).filter(lambda s: ASSISTANT_MARKER not in s and "\n\nAssistant" not in s)


@given(st.lists(st.tuples(turn, turn), min_size=1, max_size=4))
def test_hh_split_round_trip(turns):
    transcript = "".join(f"\n\nHuman: {h}\n\nAssistant: {a}" for h, a in turns)
    prompt, response = split_transcript(transcript)
    assert prompt + response == transcript
    assert prompt.endswith(ASSISTANT_MARKER) and response == " " + turns[-1][1]
    assert prompt.count(ASSISTANT_MARKER) == len(turns)


@given(st.text(max_size=40), st.text(max_size=40))
def test_split_transcript_any_string_with_a_marker(before, after):
    transcript = before + ASSISTANT_MARKER + after.replace(ASSISTANT_MARKER, "")
    prompt, response = split_transcript(transcript)
    assert prompt + response == transcript and ASSISTANT_MARKER not in response


valid_text = st.text(min_size=1, max_size=40).filter(lambda s: s.strip() != "")


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(valid_text, valid_text, valid_text).filter(lambda t: t[1] != t[2]), min_size=1,
                max_size=5))
def test_local_loader_keeps_any_valid_strings(triples):
    rows = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in triples]
    with tempfile.TemporaryDirectory() as folder:
        jsonl = write_jsonl(Path(folder) / "p.jsonl", rows)
        parquet = Path(folder) / "p.parquet"
        pd.DataFrame(rows).to_parquet(parquet)
        assert rows_of(load_preferences(str(jsonl))) == rows
        assert rows_of(load_preferences(str(parquet))) == rows
