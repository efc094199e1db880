"""Shared fixtures: every test that touches files gets its own data folder."""

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


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module of tiny-model tests: on a shared 2-core machine a second thread only
    spins (measured 14x slower per step); the previous count comes back afterwards."""
    from engine.models import torch_threads

    with torch_threads(1):
        yield
