import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_cache(tmp_path_factory, monkeypatch):
    torch.manual_seed(0)
    monkeypatch.setenv("RECRUIT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def tokens():
    """A deterministic byte stream with some structure, as uint16 like a corpus split."""
    text = ("The quick brown fox jumps over the lazy dog. Der schnelle braune Fuchs. " * 200).encode()
    return np.frombuffer(text, dtype=np.uint8).astype(np.uint16)
