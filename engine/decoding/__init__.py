"""Generating text: single models on transformers or vLLM (generation.py), the MPO mixture of several policies
(mixture.py), and self-play rollouts with per-token log-probs (rollouts.py)."""
