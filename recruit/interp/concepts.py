"""Cross-language concept tests for BDH: the paper's "currency synapse" experiment on our six languages.

A concept test compares sentences that mention a concept with matched sentences that do not: the same
templates, with the concept's word swapped for a word of another class (here currencies vs units of measure,
in the plural form the number asks for). Each feature (a neuron's mean activation over the sentence, or one
entry of a layer's synaptic state after the sentence) gets a Mann–Whitney U test and its rank-biserial effect.

The test is cross-lingual on purpose: features are *selected* on some languages and *judged* on the others,
so a feature only scores if it tracks the concept in languages it was not picked on — a concept feature rather
than a word detector. The sentence sets are fixed data in this module, not results.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from recruit.data.tokenizer import ByteTokenizer
from recruit.errors import RecruitError
from recruit.interp.bdh import WHICH, sentence_features
from recruit.interp.stats import mann_whitney
from recruit.models.bdh import BDH

# language -> (templates with {x}, currency words, unit words); numbers ≥ 5 where the language's plural needs it
CURRENCY: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "en": (
        ("The total is 20 {x}.", "She counted 150 {x} on the table.", "We need 30 more {x} for this.",
         "Only 45 {x} were left.", "It came to about 800 {x}."),
        ("dollars", "euros", "pounds", "francs"),
        ("meters", "kilograms", "liters", "minutes"),
    ),
    "de": (
        ("Insgesamt sind es 20 {x}.", "Sie zählte 150 {x} auf dem Tisch.", "Wir brauchen noch 30 {x} dafür.",
         "Nur 45 {x} waren übrig.", "Es waren etwa 800 {x}."),
        ("Dollar", "Euro", "Pfund", "Franken"),
        ("Meter", "Kilogramm", "Liter", "Minuten"),
    ),
    "fr": (
        ("Le total est de 20 {x}.", "Elle a compté 150 {x} sur la table.", "Il nous faut encore 30 {x}.",
         "Il ne restait que 45 {x}.", "Cela faisait environ 800 {x}."),
        ("dollars", "euros", "livres", "francs"),
        ("mètres", "kilos", "litres", "minutes"),
    ),
    "pl": (
        ("Razem jest 20 {x}.", "Naliczyła 150 {x} na stole.", "Potrzebujemy jeszcze 30 {x}.",
         "Zostało tylko 45 {x}.", "Wyszło około 800 {x}."),
        ("dolarów", "euro", "funtów", "złotych"),
        ("metrów", "kilogramów", "litrów", "minut"),
    ),
    "ru": (
        ("Всего 20 {x}.", "Она насчитала 150 {x} на столе.", "Нам нужно ещё 30 {x}.",
         "Осталось только 45 {x}.", "Вышло около 800 {x}."),
        ("долларов", "евро", "фунтов", "рублей"),
        ("метров", "килограммов", "литров", "минут"),
    ),
    "es": (
        ("El total es de 20 {x}.", "Contó 150 {x} en la mesa.", "Necesitamos 30 {x} más.",
         "Solo quedaban 45 {x}.", "Salieron unos 800 {x}."),
        ("dólares", "euros", "libras", "pesos"),
        ("metros", "kilos", "litros", "minutos"),
    ),
}  # fmt: skip


def concept_sentences(lang: str, table=CURRENCY) -> tuple[list[str], list[str]]:
    """The (with concept, without concept) sentences of ``lang``: every template with every word."""
    if lang not in table:
        raise RecruitError(f"no concept sentences for language {lang!r}; languages: {', '.join(table)}")
    templates, with_words, without_words = table[lang]
    return [t.format(x=w) for t in templates for w in with_words], [
        t.format(x=w) for t in templates for w in without_words
    ]


@torch.no_grad()
def sentence_synapses(model: BDH, ids: Sequence[int], layer: int) -> np.ndarray:
    """Layer ``layer``'s synaptic state after reading ``ids`` from an empty state, flattened: (h·N·d,) float64."""
    if not 0 <= layer < model.config.n_layer:
        raise RecruitError(f"layer must be in [0, {model.config.n_layer}), got {layer}")
    dev = model.lm_head.device
    state = model.new_state(1)
    model.prefill(torch.tensor([list(ids)], device=dev), state)
    return state.synapses[layer].flatten().cpu().double().numpy()


def _features(model: BDH, texts: Sequence[str], lang: str, which: str, layer: int | None) -> np.ndarray:
    tok = ByteTokenizer()
    prefix = [tok.lang_id(lang), tok.kind_id("prose")]
    rows = []
    for t in texts:
        ids = [*prefix, *tok.encode(t)][: model.config.max_seq_len]
        if which == "synapse":
            rows.append(sentence_synapses(model, ids, model.config.n_layer - 1 if layer is None else layer))
        else:
            rows.append(sentence_features(model, torch.tensor([ids]), which, layer)[0])
    return np.stack(rows)  # (S, features)


@dataclass(frozen=True)
class ConceptFeature:
    """One feature's selectivity on the languages it was picked on (``select``) and on the others (``heldout``).

    ``feature`` indexes the neurons (head·N + index) or, for synapses, the flattened (h, N, d) state.
    """

    feature: int
    effect_select: float
    p_select: float
    effect_heldout: float
    p_heldout: float


def cross_language_concept(
    model: BDH,
    select_langs: Sequence[str] = ("en", "de", "fr"),
    heldout_langs: Sequence[str] = ("pl", "ru", "es"),
    which: str = "x",
    layer: int | None = None,
    top: int = 5,
    table=CURRENCY,
) -> list[ConceptFeature]:
    """The ``top`` features most selective for the concept on ``select_langs``, judged on ``heldout_langs``.

    Args:
        model: A BDH model.
        select_langs: Languages whose sentences pick the features (largest rank-biserial effect).
        heldout_langs: Languages on which the picked features are tested again.
        which: ``x``, ``y``, ``xy`` (neurons, mean over the sentence and over layers unless ``layer``) or
            ``synapse`` (the state entries of ``layer``, default the last).
        layer: A layer index, or None (see ``which``).
        top: How many features to return.
        table: The concept's sentence table (language -> templates, concept words, contrast words).

    Returns:
        Features in decreasing order of their selection effect.
    """
    if which not in (*WHICH, "synapse"):
        raise RecruitError(f"which must be one of {', '.join((*WHICH, 'synapse'))}, got {which!r}")
    if not select_langs or not heldout_langs or set(select_langs) & set(heldout_langs):
        raise RecruitError("select_langs and heldout_langs must be non-empty and disjoint")

    def sets(langs: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        pairs = [concept_sentences(lang, table) for lang in langs]
        w = np.concatenate([_features(model, p[0], lang, which, layer) for lang, p in zip(langs, pairs, strict=True)])
        wo = np.concatenate([_features(model, p[1], lang, which, layer) for lang, p in zip(langs, pairs, strict=True)])
        return w, wo

    sel, held = mann_whitney(*sets(select_langs)), mann_whitney(*sets(heldout_langs))
    order = np.lexsort((sel.p, -sel.effect))[:top]  # largest effect first, then smallest p
    return [
        ConceptFeature(int(i), float(sel.effect[i]), float(sel.p[i]), float(held.effect[i]), float(held.p[i]))
        for i in order
    ]
