"""Human votes: a person's verdict on two outputs, stored like a judge's so that win rates and the leaderboard
count it (judgments row, source "human", in a run of kind "votes" that the dashboard owns)."""

from __future__ import annotations

from engine.store.runs import RunWriter, run_dir

VOTES_RUN = "human-votes"
HUMAN = "human"
_PROB_A = {"a": 1.0, "tie": 0.5, "b": 0.0}


def record_vote(prompt: str, model_a: str, model_b: str, output_a: str, output_b: str, winner: str) -> None:
    """Append one human judgment; ``winner`` is "a", "b" or "tie"."""
    if winner not in _PROB_A:
        raise ValueError(f"winner: must be 'a', 'b' or 'tie' (got {winner!r})")
    if model_a == model_b:
        raise ValueError(f"model_b: pick a model other than {model_a!r} to vote between two")
    if not (run_dir(VOTES_RUN) / "run.json").exists():
        writer = RunWriter.create(VOTES_RUN, method=HUMAN, name="human votes", config={}, kind="votes")
        # Not a process: marked finished at once so that liveness checks never flag it as a dead job.
        writer.set_status("finished", message="votes cast in the dashboard")
    RunWriter(VOTES_RUN).append("judgments", [{"source": HUMAN, "prompt": prompt, "model_a": model_a,
                                               "model_b": model_b, "output_a": output_a, "output_b": output_b,
                                               "prob_a": _PROB_A[winner], "winner": winner}])
