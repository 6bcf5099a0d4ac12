"""Looking inside BDH: activation density, concept- and language-selective neurons, and the neuron graph.

Selectivity uses the Mann–Whitney U test (:mod:`recruit.interp.stats`) on per-sentence mean activations of
each neuron, for all neurons at once. The rank-biserial effect ``1 − 2·U_without/(n1·n2)`` is positive when
a neuron is more active with the concept (or language) than without it. The neuron graph's degrees are in
:mod:`recruit.interp.graph`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from recruit.data.stream import spread_windows
from recruit.data.tokenizer import ByteTokenizer
from recruit.errors import RecruitError
from recruit.interp.stats import mann_whitney
from recruit.models.bdh import BDH
from recruit.train import training_mode

WHICH = ("x", "y", "xy")


# ---- activations --------------------------------------------------------------------------------
@torch.no_grad()
def activation_density(
    model: BDH, tokens: np.ndarray, seq_len: int = 256, max_windows: int | None = 32, batch_size: int = 8
) -> dict[str, list[float]]:
    """Per-layer fraction of non-zero x, y and x⊙y over windows of held-out ``tokens`` (eval mode).

    The ``max_windows`` windows are spread evenly over ``tokens`` (all of them when None), so that every
    language and kind of a split is sampled, not only its first documents.

    Returns:
        ``{"x": [L floats], "y": [...], "xy": [...]}``, each in [0, 1], averaged over all windows' entries.
    """
    windows = spread_windows(tokens, seq_len, max_windows)[:, :-1]  # (W, T)
    dev = model.lm_head.device
    total: dict[str, np.ndarray] = {}
    with training_mode(model, False):
        for i in range(0, len(windows), batch_size):
            w = windows[i : i + batch_size].to(dev)  # (b, T)
            _, stats = model.forward_with_stats(w)
            for k in WHICH:  # every window has the same size, so weight by the number of windows
                total[k] = total.get(k, 0) + np.asarray(stats[k]) * len(w)
    return {k: (v / len(windows)).tolist() for k, v in total.items()}


@torch.no_grad()
def layer_activations(model: BDH, idx: torch.Tensor) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Yield ``(layer, x, y)`` of the parallel form for ids (B, T); x and y are (B, h, T, N), before dropout.

    They are the model's own activations, observed during one forward pass (all layers are held at once).
    Call in eval mode.
    """
    acts: list[tuple[int, torch.Tensor, torch.Tensor]] = []
    model(idx, observe=lambda i, x, y: acts.append((i, x, y)))
    yield from acts


@torch.no_grad()
def sentence_features(model: BDH, batch: torch.Tensor, which: str = "x", layer: int | None = None) -> np.ndarray:
    """Mean activation of every neuron over the tokens of each sequence of ``batch`` (B, T) -> (B, n).

    Args:
        model: The BDH model.
        batch: Token ids (B, T), sequences of equal length.
        which: ``x``, ``y`` or ``xy`` (the gated product).
        layer: One layer, or ``None`` for the mean over layers.
    """
    if which not in WHICH:
        raise RecruitError(f"which must be one of {', '.join(WHICH)}, got {which!r}")
    if layer is not None and not 0 <= layer < model.config.n_layer:
        raise RecruitError(f"layer must be in [0, {model.config.n_layer}), got {layer}")
    acc: list[torch.Tensor] = []

    def collect(i: int, x: torch.Tensor, y: torch.Tensor) -> None:  # one layer at a time, nothing kept
        if layer is None or i == layer:
            acc.append({"x": x, "y": y, "xy": x * y}[which].mean(2))  # (B, h, N)

    with training_mode(model, False):
        model(batch.to(model.lm_head.device), observe=collect)
    return (sum(acc).flatten(1) / len(acc)).cpu().double().numpy()  # (B, h*N), head-major


def _texts_features(model: BDH, texts: Sequence[str], which: str, layer: int | None, prefix: Sequence[int]):
    tok, limit = ByteTokenizer(), model.config.max_seq_len
    rows = []
    for t in texts:
        ids = [*prefix, *tok.encode(t)][:limit]
        if not ids:
            raise RecruitError("an empty sentence has no activations")
        rows.append(sentence_features(model, torch.tensor([ids]), which, layer)[0])
    return np.stack(rows)  # (S, n)


@dataclass(frozen=True)
class NeuronStat:
    """One neuron's selectivity: ``neuron`` = ``head * N + index`` in the concatenated n = h·N neurons."""

    neuron: int
    head: int
    index: int
    effect: float
    u: float
    p: float
    mean_with: float
    mean_without: float


def _top(model: BDH, a: np.ndarray, b: np.ndarray, top: int) -> list[NeuronStat]:
    """The ``top`` neurons of features a (n1, n) vs b (n2, n): largest effect, then mean gap, then smallest p."""
    mw, N = mann_whitney(a, b), model.config.n_neurons
    ma, mb = a.mean(0), b.mean(0)
    order = np.lexsort((mw.p, -(ma - mb), -mw.effect))[:top]  # the last key sorts first
    return [
        NeuronStat(
            int(i),
            int(i) // N,
            int(i) % N,
            float(mw.effect[i]),
            float(mw.u[i]),
            float(mw.p[i]),
            float(ma[i]),
            float(mb[i]),
        )
        for i in order
    ]


def concept_neurons(
    model: BDH,
    texts_with: Sequence[str],
    texts_without: Sequence[str],
    which: str = "x",
    layer: int | None = None,
    top: int = 20,
    prefix: Sequence[int] = (),
) -> list[NeuronStat]:
    """Neurons most selective for a concept: sentences that mention it vs sentences that do not.

    Each sentence (UTF-8 bytes after the ids ``prefix``, cut to ``max_seq_len``) becomes the mean activation
    of every neuron over its tokens; each neuron is tested with :func:`mann_whitney`.

    Returns:
        The ``top`` neurons by rank-biserial effect (most active with the concept first; ties broken by
        the difference of the means, then by the p-value).
    """
    return _top(model, *(_texts_features(model, t, which, layer, prefix) for t in (texts_with, texts_without)), top)


def language_chunks(corpus, split: str, chunks: int, chunk_bytes: int) -> dict[str, torch.Tensor]:
    """Per language, ``chunks`` windows of ``chunk_bytes`` bytes spread evenly over its documents' text.

    Tags are left out, so a neuron cannot simply read the language tag. Languages with too little text are
    skipped. Returns ``{lang: (chunks, chunk_bytes) int64}``.
    """
    toks, out = corpus.tokens(split), {}
    for lang in corpus.languages(split):
        docs = [d for d in corpus.docs(split) if d.lang == lang]
        bodies = [np.asarray(toks[d.offset + 2 : d.offset + d.length - 1]) for d in docs]  # no tags, no eos
        text = np.concatenate(bodies).astype(np.int64)  # (L,) bytes of the language
        if len(text) < chunk_bytes:
            continue
        starts = np.linspace(0, len(text) - chunk_bytes, chunks).astype(np.int64)  # (chunks,)
        out[lang] = torch.from_numpy(text[starts[:, None] + np.arange(chunk_bytes)])  # (chunks, chunk_bytes)
    return out


def language_neurons(
    model: BDH,
    corpus,
    split: str = "test",
    which: str = "x",
    layer: int | None = None,
    top: int = 10,
    chunks: int = 16,
    chunk_bytes: int = 128,
    batch_size: int = 16,
) -> dict[str, list[NeuronStat]]:
    """For each language, the neurons most selective for its text against all other languages' text.

    Uses :func:`language_chunks` and the statistic of :func:`concept_neurons` (that language = "with").
    """
    data = language_chunks(corpus, split, chunks, min(chunk_bytes, model.config.max_seq_len))
    if len(data) < 2:
        raise RecruitError(f"language neurons need at least two languages with text in {split}, got {list(data)}")
    feats = {
        lang: np.concatenate(
            [sentence_features(model, c[i : i + batch_size], which, layer) for i in range(0, len(c), batch_size)]
        )
        for lang, c in data.items()
    }  # lang -> (chunks, n)
    return {
        lang: _top(model, f, np.concatenate([g for other, g in feats.items() if other != lang]), top)
        for lang, f in feats.items()
    }
