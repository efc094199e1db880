"""Models as the engine uses them: loading by path or hub name (loading.py) and log-prob / entropy scoring of
responses under a model (logprobs.py)."""
