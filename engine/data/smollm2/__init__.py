"""The SmolLM2 world: SmolLM2-135M-Instruct (from a GGUF file on PyPI) asked for movie reviews, judged by VADER."""
