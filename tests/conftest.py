import numpy as np
import pytest
import torch

from recruit.data.corpus import Corpus, _write
from recruit.data.sources import Document

TEXTS = {
    "en": "The quick brown fox jumps over the lazy dog while the cat sleeps near the warm fire. ",
    "de": "Über die Brücke gehen fünf müde Müller, grüßen früh und kühlen ihre Füße im Fluss. ",
    "fr": "Le renard brun rapide saute par-dessus le chien paresseux près de la forêt. ",
}


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models on 2 cores: one thread avoids OpenMP oversubscription stalls (up to 100x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory):
    """A real corpus on disk in three languages, every language in every split."""
    docs = [
        Document(f"{lang}:{i}", f"[{lang} {i}] " + body * (8 + i), lang, "text", "test")
        for lang, body in TEXTS.items()
        for i in range(6)
    ]
    out = tmp_path_factory.mktemp("corpus") / "three"
    _write(out, docs, {"format": 1, "name": "three", "tokenizer": "byte-288", "params": {}, "packages": {}}, False)
    return out


@pytest.fixture(scope="session")
def corpus(corpus_dir):
    c = Corpus.load(corpus_dir)
    assert all(c.languages(s) == ["de", "en", "fr"] for s in ("train", "val", "test"))
    return c


@pytest.fixture(autouse=True)
def _seed_and_cache(tmp_path_factory, monkeypatch):
    torch.manual_seed(0)
    monkeypatch.setenv("RECRUIT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def tokens():
    """A deterministic byte stream with some structure, as uint16 like a corpus split."""
    text = ("The quick brown fox jumps over the lazy dog. Der schnelle braune Fuchs. " * 200).encode()
    return np.frombuffer(text, dtype=np.uint8).astype(np.uint16)
