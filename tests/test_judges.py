"""Scorers and pairwise judges: hand-computed values, a tiny reward model and LM, and a local HTTP endpoint."""

from __future__ import annotations

import json
import math
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from engine.judges import (
    ConcisenessScorer,
    JudgeRequestError,
    LMJudge,
    OpenAIJudge,
    RewardModelScorer,
    ScorerJudge,
    SentimentScorer,
    get_judge,
    get_scorer,
    get_single_order_judge,
    lexicon_polarity,
)
from engine.models.loading import load_tokenizer


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


@pytest.mark.parametrize("text, expected", [
    ("good", 1.0),
    ("not good", -0.7),            # damped flip
    ("very good", 1.5),            # intensifier 1.5 x weight 1
    ("not very good", -0.7),       # negation wins over the intensifier
    ("never boring.", 1.05),       # -1.5 flipped and damped
    ("not, good", 1.0),            # punctuation ends the negation
    ("not at all good", -0.7),     # within 3 words
    ("not the plot was good", 1.0),  # out of scope after 3 words
    ("truly a gem", 2.25),         # 1.5 x 1.5, the boost carries over "a"
    ("The acting was awful, but the music was excellent!", 0.0),
    ("It stars Anna Klein.", 0.0),
])
def test_lexicon_polarity_hand_checked(text, expected):
    assert lexicon_polarity(text) == pytest.approx(expected)


def test_sentiment_and_conciseness_scores(tiny_tokenizer_dir):
    sentiment = SentimentScorer().score(["The film was", "I"], [" great.", " hated it."])
    np.testing.assert_allclose(sentiment, [_sigmoid(0.5 * 1.5), _sigmoid(0.5 * -1.5)])
    assert (ConcisenessScorer().score(["x", "x"], [" one two three", ""]) == [-3.0, 0.0]).all()
    tok = load_tokenizer(tiny_tokenizer_dir)
    text = " The acting was superb."
    by_tokens = ConcisenessScorer(tokenizer=tok).score(["x"], [text])
    assert by_tokens[0] == -len(tok(text, add_special_tokens=False)["input_ids"])
    with pytest.raises(ValueError, match="equal lengths"):
        SentimentScorer().score(["a"], ["b", "c"])


def test_bradley_terry_judge_hand_checked():
    judge = ScorerJudge(ConcisenessScorer(), temperature=2.0)
    p = judge.prob_a_beats_b(["x", "x"], [" one two", " a b c d e f"], [" one two three four", " a"])
    np.testing.assert_allclose(p, [_sigmoid((-2 + 4) / 2.0), _sigmoid((-6 + 1) / 2.0)])
    swapped = judge.prob_a_beats_b(["x", "x"], [" one two three four", " a"], [" one two", " a b c d e f"])
    np.testing.assert_allclose(p + swapped, 1.0)
    extreme = ScorerJudge(ConcisenessScorer(), temperature=0.01).prob_a_beats_b(["x"], [""], [" w" * 1000])
    assert extreme[0] == 1.0  # no overflow warning or NaN at a huge score gap
    with pytest.raises(ValueError, match="temperature"):
        ScorerJudge(ConcisenessScorer(), temperature=0.0)


def _save_tiny(model_cls, tokenizer, path, **config):
    torch.manual_seed(0)
    model = model_cls(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                  pad_token_id=tokenizer.pad_token_id, **config))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model.eval()


@pytest.mark.parametrize("num_labels", [1, 3])
def test_reward_model_scorer_matches_unbatched_logits(tiny_tokenizer_dir, tmp_path, num_labels):
    tok = load_tokenizer(tiny_tokenizer_dir)
    model = _save_tiny(LlamaForSequenceClassification, tok, tmp_path / "rm", num_labels=num_labels)
    prompts, responses = ["The film", "I watched it", "Wow"], [" was dull.", " twice and loved every minute.", "!"]
    scores = get_scorer(f"reward_model:{tmp_path / 'rm'}", batch_size=2).score(prompts, responses)
    for score, prompt, response in zip(scores, prompts, responses):
        with torch.no_grad():
            logits = model(input_ids=tok([prompt + response], return_tensors="pt")["input_ids"]).logits[0]
        if num_labels == 1:
            expected = logits[0].item()
        else:  # log-odds of the last label: log p2 - log(p0 + p1)
            probs = torch.softmax(logits, -1)
            expected = math.log(probs[2].item()) - math.log(probs[0].item() + probs[1].item())
        assert score == pytest.approx(expected, abs=1e-4)
    if num_labels == 3:
        with pytest.raises(ValueError, match="label"):
            RewardModelScorer(str(tmp_path / "rm"), label=5)


def test_lm_judge_probabilities(tiny_tokenizer_dir, tmp_path):
    tok = load_tokenizer(tiny_tokenizer_dir)
    model = _save_tiny(LlamaForCausalLM, tok, tmp_path / "judge")
    prompts, a, b = ["The film", "I watched"], [" was dull.", " it twice."], [" was superb, really.", " it."]
    raw = LMJudge(str(tmp_path / "judge"), symmetrize=False, batch_size=2)
    p = raw.prob_a_beats_b(prompts, a, b)
    label_a, label_b = raw.label_ids
    for value, prompt, x, y in zip(p, prompts, a, b):  # one unpadded prompt at a time, by hand
        ids = tok([raw.template.format(prompt=prompt, a=x, b=y)], return_tensors="pt")["input_ids"]
        with torch.no_grad():
            last = model(input_ids=ids).logits[0, -1]
        assert value == pytest.approx(_sigmoid((last[label_a] - last[label_b]).item()), abs=1e-5)
    assert ((p > 0) & (p < 1)).all()
    fair = get_judge(f"lm:{tmp_path / 'judge'}")
    forward, backward = fair.prob_a_beats_b(prompts, a, b), fair.prob_a_beats_b(prompts, b, a)
    np.testing.assert_allclose(forward + backward, 1.0, atol=1e-6)
    np.testing.assert_allclose(forward, (p + 1 - raw.prob_a_beats_b(prompts, b, a)) / 2, atol=1e-6)
    np.testing.assert_allclose(fair.prob_a_beats_b(prompts, a, a), 0.5, atol=1e-6)
    with pytest.raises(ValueError, match="template"):
        LMJudge(str(tmp_path / "judge"), template="{prompt} {a} {b}")


class _Endpoint(BaseHTTPRequestHandler):
    """A scripted OpenAI-compatible server: pops one behaviour per request from the server's `script`."""

    def do_POST(self):  # noqa: N802  (http.server's naming)
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server.seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        kind, value = server.script.pop(0) if server.script else ("text", "A")
        if kind == "sleep":  # outlast the client's timeout; it has hung up, so nothing is sent
            time.sleep(value)
            return
        if kind == "status":
            self.send_response(value)
            self.end_headers()
            self.wfile.write(b'{"error": "scripted failure"}')
            return
        choice = {"message": {"role": "assistant", "content": value if kind == "text" else "A"}}
        if kind == "logprobs":
            choice["logprobs"] = {"content": [{"token": "A", "logprob": math.log(value[0]), "top_logprobs": [
                {"token": "A", "logprob": math.log(value[0])}, {"token": " B", "logprob": math.log(value[1])}]}]}
        payload = json.dumps({"choices": [choice]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture
def endpoint():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Endpoint)
    server.script, server.seen = [], []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_http_judge_success_and_auth(endpoint, monkeypatch):
    server, url = endpoint
    monkeypatch.setenv("JUDGE_KEY", "sk-test")
    # one order per pair, so that each scripted answer is one verdict (the answer parsing under test)
    judge = get_judge(f"openai:{url}#judge-model", api_key_env="JUDGE_KEY", max_workers=1, symmetrize=False)
    server.script = [("logprobs", (0.6, 0.2)), ("text", "B"), ("text", " A."), ("text", "maybe")]
    with pytest.warns(UserWarning, match="neither A nor B"):
        p = judge.prob_a_beats_b(["x"] * 4, ["a1", "a2", "a3", "a4"], ["b1", "b2", "b3", "b4"])
    np.testing.assert_allclose(p, [0.6 / (0.6 + 0.2), 0.0, 1.0, 0.5])
    first = server.seen[0]
    assert first["path"] == "/v1/chat/completions" and first["auth"] == "Bearer sk-test"
    assert first["body"]["model"] == "judge-model" and "a1" in first["body"]["messages"][0]["content"]


def test_http_judge_sees_both_orders_so_a_judge_that_always_answers_a_is_a_coin(endpoint):
    server, url = endpoint  # an empty script: the server answers "A" to every request, whatever it is shown
    judge = get_judge(f"openai:{url}#m")  # the default, as the evaluation builds it
    p, q = judge.prob_a_beats_b(["x"] * 2, ["a1", "a2"], ["b1", "b2"]), judge.prob_a_beats_b(["x"], ["b1"], ["a1"])
    assert p.tolist() == [0.5, 0.5] and q.tolist() == [0.5]  # (1 + 1 - 1) / 2, exactly
    shown = sorted(re.search(r"A: (\w+)\nB: (\w+)", s["body"]["messages"][0]["content"]).groups()
                   for s in server.seen)
    assert shown == [("a1", "b1"), ("a1", "b1"), ("a2", "b2"), ("b1", "a1"), ("b1", "a1"), ("b2", "a2")]
    assert judge.positions == "ab"
    raw = OpenAIJudge(url, "m", symmetrize=False)  # one order: the bias is the verdict
    assert raw.prob_a_beats_b(["x"] * 2, ["a1", "a2"], ["b1", "b2"]).tolist() == [1.0, 1.0] and raw.positions == "a"


def test_self_play_asks_each_ordered_pair_once_and_sees_the_raw_bias(endpoint):
    from engine.recipes.magnetic_selfplay import judge_groups

    server, url = endpoint  # answers "A" to everything
    judge = get_single_order_judge(f"openai:{url}#m")  # as magnetic self-play builds it
    raw = judge_groups(judge, ["x"], ["r0", "r1", "r2"], 3)
    assert len(server.seen) == 6  # 3 * 2 ordered pairs, each asked once (a symmetrising judge would ask 12)
    off_diagonal = raw[0][~np.eye(3, dtype=bool)]
    assert off_diagonal.tolist() == [1.0] * 6  # the position bias stays visible: p_ij + p_ji - 1 = 1
    assert judge.positions == "a" and get_single_order_judge("bt:sentiment").positions == "ab"


def test_http_judge_averages_the_two_orders_by_hand(endpoint):
    server, url = endpoint
    # first (a, b): P(A) = 0.6 / (0.6 + 0.2) = 0.75; then (b, a): P(A) = 0.3 / (0.3 + 0.5) = 0.375
    server.script = [("logprobs", (0.6, 0.2)), ("logprobs", (0.3, 0.5))]
    p = OpenAIJudge(url, "m", max_workers=1).prob_a_beats_b(["x"], ["a"], ["b"])
    assert p[0] == pytest.approx((0.75 + 1 - 0.375) / 2, abs=1e-12)
    assert [s["body"]["messages"][0]["content"].count("A: a\nB: b") for s in server.seen] == [1, 0]


def test_http_judge_retries_after_server_error(endpoint):
    server, url = endpoint
    server.script = [("status", 500), ("status", 503), ("text", "A")]
    judge = OpenAIJudge(url, "m", max_retries=2, backoff=0.01, max_workers=1, symmetrize=False)
    assert judge.prob_a_beats_b(["x"], ["a"], ["b"])[0] == 1.0
    assert len(server.seen) == 3


def test_http_judge_errors_are_clear(endpoint):
    server, url = endpoint
    server.script = [("sleep", 1.0), ("sleep", 1.0)]
    judge = OpenAIJudge(url, "m", timeout=0.2, max_retries=1, backoff=0.0, max_workers=1)
    with pytest.raises(JudgeRequestError, match=r"failed after 2 attempt\(s\): timed out after 0.2 s"):
        judge.prob_a_beats_b(["x"], ["a"], ["b"])
    server.script, server.seen = [("status", 401)], []
    with pytest.raises(JudgeRequestError, match="HTTP 401"):
        OpenAIJudge(url, "m", max_retries=3, backoff=0.0, symmetrize=False).prob_a_beats_b(["x"], ["a"], ["b"])
    assert len(server.seen) == 1  # a client error is not retried (one order: one request)
    with pytest.raises(JudgeRequestError, match="unreachable"):
        OpenAIJudge("http://127.0.0.1:9/v1", "m", max_retries=0).prob_a_beats_b(["x"], ["a"], ["b"])


def test_registry_names_and_errors():
    assert isinstance(get_scorer("sentiment"), SentimentScorer)
    assert isinstance(get_judge("bt:conciseness").scorer, ConcisenessScorer)
    judge = get_judge("openai:https://example.org/v1#org/model-7b")
    assert judge.url == "https://example.org/v1/chat/completions" and judge.model == "org/model-7b"
    with pytest.raises(ValueError, match="valid names: sentiment, conciseness, vader, reward_model:<path>"):
        get_scorer("toxicity")
    with pytest.raises(ValueError, match=r"valid names: bt:<scorer>, lm:<path>, openai:<base_url>#<model>"):
        get_judge("gpt4")
    with pytest.raises(ValueError, match="unknown scorer"):
        get_judge("bt:toxicity")
    with pytest.raises(ValueError, match="base_url"):
        get_judge("openai:file:///etc/passwd#m")
