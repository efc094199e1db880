"""The offline demo world: a synthetic review corpus (corpus.py), tiny tokenizer and Llama models trained on it
(models.py), preference pairs labelled by the judges (preferences.py), and the cached build of it all (prepare.py)."""
