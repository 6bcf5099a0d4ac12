import importlib.util
import os
import sys
from pathlib import Path

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


@pytest.fixture(scope="session")
def resources_tool():
    """``benchmarks/triton_resources.py`` as a module: compiles Triton kernels for sm_90 without a GPU."""
    pytest.importorskip("triton")
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "triton_resources.py"
    spec = importlib.util.spec_from_file_location("triton_resources", path)
    tool = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("triton_resources", tool)  # its dataclass looks itself up there
    spec.loader.exec_module(tool)
    return tool


@pytest.fixture(scope="session")
def cuobjdump(resources_tool):
    """The resources tool, when this Triton build ships ``cuobjdump`` (which reading a kernel's resources needs)."""
    if not os.path.exists(resources_tool._tool("cuobjdump")):
        pytest.skip("this triton build ships no cuobjdump")
    return resources_tool
