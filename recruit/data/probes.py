"""Long-context key retrieval: a key stated once, real text for ``distance`` bytes, then a question.

A probe reads ``<lang:..> <kind:..> The secret key is K3J9QZ. <filler> The secret key is `` and its answer is
the key's bytes (``K3J9QZ``). The filler is held-out corpus text (whole documents' bodies, tags and
end-of-sequence ids left out, concatenated in corpus order from a seeded starting document), cut at a UTF-8
character boundary and padded with spaces to exactly ``distance`` bytes, so the key lies ``distance`` bytes
before the question. Everything is deterministic in ``(seed, distance)``; the same seed gives the same key and
the same start of filler at every distance.

:class:`ProbeMixStream` teaches the task: it puts such an episode (a random key, real training text as the
filler, the question and the key again) into a fraction of the training windows, so a model can learn to
carry a key across the filler and is then scored by :func:`probe_accuracy` at distances within and beyond
its training windows.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from recruit.data.corpus import DocInfo
from recruit.data.stream import TokenStream
from recruit.data.tokenizer import ByteTokenizer
from recruit.errors import RecruitError

KEY_ALPHABET = string.ascii_uppercase + string.digits
"""Characters of a key (36 symbols: chance of guessing one character is 1/36)."""
STATEMENT = "The secret key is {key}. "
QUESTION = " The secret key is "


def episode_tokens(distance: int, key_len: int) -> int:
    """Ids of an episode without its tags: the statement, ``distance`` bytes of filler, the question, the key."""
    return len(STATEMENT.format(key="K" * key_len).encode()) + distance + len(QUESTION.encode()) + key_len


def prompt_tokens(distance: int, key_len: int) -> int:
    """Ids of a probe's prompt (:func:`make_probe`): two tags and the episode up to the question."""
    return 2 + episode_tokens(distance, key_len) - key_len


GenerateFn = Callable[[list[int], int], Sequence[int]]
"""``(prompt ids, max new tokens) -> generated ids`` (the continuation only, at most that many)."""


@dataclass(frozen=True)
class ProbeScore:
    """Accuracy of a model on ``n`` probes at one distance.

    Attributes:
        distance: Bytes of filler between the key and the question.
        n: Probes scored.
        exact: Fraction whose generated key matches every character.
        char: Mean fraction of key characters right at their position.
        prompt_tokens: Mean prompt length in ids.
    """

    distance: int
    n: int
    exact: float
    char: float
    prompt_tokens: float


def _utf8_cut(data: bytes, n: int) -> bytes:
    """The first at most ``n`` bytes of ``data``, not ending inside a UTF-8 character."""
    data = data[:n]
    j = len(data) - 1
    while j >= 0 and len(data) - j <= 4 and data[j] & 0xC0 == 0x80:  # skip continuation bytes 10xxxxxx
        j -= 1
    if j < 0:
        return b""
    need = 1 if data[j] < 0x80 else 2 if data[j] < 0xE0 else 3 if data[j] < 0xF0 else 4  # from the lead byte
    return data if len(data) - j >= need else data[:j]


def filler_bytes(
    corpus, split: str, n: int, rng: np.random.Generator, lang: str | None = None
) -> tuple[bytes, DocInfo]:
    """``n`` bytes of real text from ``split`` (documents of ``lang`` only, when given) and the first document.

    Document bodies are taken in corpus order from a random start document (wrapping around), separated by a
    newline, cut at a character boundary and padded with spaces to exactly ``n`` bytes.
    """
    docs = [d for d in corpus.docs(split) if lang is None or d.lang == lang]
    docs = [d for d in docs if d.n_bytes > 0]
    if not docs:
        raise RecruitError(f"no {'documents' if lang is None else lang + ' documents'} in the {split} split")
    toks = corpus.tokens(split)
    start = int(rng.integers(len(docs)))
    parts, size, i = [], 0, start
    while size < n and i < start + len(docs):
        d = docs[i % len(docs)]
        body = np.asarray(toks[d.offset + 2 : d.offset + d.length - 1], dtype=np.uint8).tobytes()  # no tags, no eos
        parts.append(body)
        size += len(body) + 1
        i += 1
    text = _utf8_cut(b"\n".join(parts), n)
    return text + b" " * (n - len(text)), docs[start]


def make_probe(
    corpus, distance: int, seed: int, split: str = "test", key_len: int = 6, lang: str | None = None
) -> tuple[list[int], bytes]:
    """One key-retrieval probe in byte-tokenizer ids.

    Args:
        corpus: A :class:`recruit.data.corpus.Corpus` (anything with ``docs(split)`` and ``tokens(split)``).
        distance: Bytes of filler between the key's statement and the question (>= 0).
        seed: Picks the key and the filler's first document.
        split: Corpus split of the filler (default the held-out ``test``).
        key_len: Characters of the key.
        lang: Take filler only from documents of this language (default any); the prompt's tags are those of
            the filler's first document.

    Returns:
        ``(prompt_ids, answer_bytes)``: tags, statement, filler and question as ids; the key as bytes.
    """
    if distance < 0 or key_len <= 0:
        raise RecruitError(f"need distance >= 0 and key_len > 0, got {distance} and {key_len}")
    rng = np.random.default_rng(seed)
    key = "".join(KEY_ALPHABET[i] for i in rng.integers(len(KEY_ALPHABET), size=key_len))
    filler, first = filler_bytes(corpus, split, distance, rng, lang)
    tok = ByteTokenizer()
    text = STATEMENT.format(key=key).encode() + filler + QUESTION.encode()
    return [tok.lang_id(first.lang), tok.kind_id(first.kind), *tok.encode_bytes(text)], key.encode()


def score_answer(generated: Sequence[int], answer: bytes) -> tuple[bool, float]:
    """Exact match and per-character accuracy of generated ids against the answer's bytes (position-wise)."""
    got = list(generated)[: len(answer)]
    hits = sum(1 for g, a in zip(got, answer, strict=False) if int(g) == a)
    return len(got) == len(answer) and hits == len(answer), hits / len(answer)


def probe_accuracy(
    generate_fn: GenerateFn,
    corpus,
    distances: Sequence[int],
    n: int = 20,
    split: str = "test",
    seed: int = 0,
    key_len: int = 6,
    lang: str | None = None,
) -> list[ProbeScore]:
    """Score ``generate_fn`` on ``n`` probes per distance (probe ``i`` uses seed ``seed + i``).

    Args:
        generate_fn: ``(prompt ids, key_len) -> generated ids`` (greedy decoding is the usual choice).
        corpus: Source of the filler, see :func:`make_probe`.
        distances: Filler lengths in bytes.
        n: Probes per distance.
        split: Corpus split of the filler.
        seed: Base seed.
        key_len: Characters of each key.
        lang: Filler language (default any).

    Returns:
        One :class:`ProbeScore` per distance, in the given order.
    """
    if n <= 0:
        raise RecruitError(f"n must be positive, got {n}")
    out = []
    for dist in distances:
        exact, chars, lengths = 0, 0.0, 0
        for i in range(n):
            prompt, answer = make_probe(corpus, dist, seed + i, split, key_len, lang)
            ok, frac = score_answer(generate_fn(prompt, len(answer)), answer)
            exact, chars, lengths = exact + ok, chars + frac, lengths + len(prompt)
        out.append(ProbeScore(dist, n, exact / n, chars / n, lengths / n))
    return out


class ProbeMixStream(TokenStream):
    """A :class:`TokenStream` whose windows carry a key-retrieval episode with probability ``mix``.

    An episode is ``The secret key is K. <filler> The secret key is K`` with a random key of ``key_len``
    characters of :data:`KEY_ALPHABET`; it is written into the window at a random offset, its filler being the
    window's own (real) text, of a random length from 0 to what the window leaves, and the window's text goes
    on after it. The window keeps its length, so batches keep their shape; the loss covers the whole window,
    the key's repetition included. Deterministic in ``(seed, step)`` like the plain stream.

    Args:
        tokens, seq_len, batch_size, seed: As for :class:`TokenStream`.
        mix: Fraction of windows (each independently) that carry an episode, in (0, 1].
        key_len: Characters of each key.
    """

    def __init__(
        self, tokens: np.ndarray, seq_len: int, batch_size: int, seed: int = 0, mix: float = 0.5, key_len: int = 6
    ) -> None:
        super().__init__(tokens, seq_len, batch_size, seed)
        self.fixed = episode_tokens(0, key_len)  # episode ids besides the filler
        if not 0 < mix <= 1:
            raise RecruitError(f"probe mix must be in (0, 1], got {mix}")
        if key_len <= 0 or self.fixed > seq_len + 1:
            raise RecruitError(f"a key-retrieval episode needs {self.fixed} tokens, a window has {seq_len + 1}")
        self.mix, self.key_len = mix, key_len

    def episode(self, window: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``window`` (T + 1,) with an episode written in: statement, filler, question, key, then more text."""
        key = "".join(KEY_ALPHABET[i] for i in rng.integers(len(KEY_ALPHABET), size=self.key_len)).encode()
        room = len(window) - self.fixed  # filler + text before the episode
        distance = int(rng.integers(room + 1))
        start = int(rng.integers(room - distance + 1))
        statement = np.frombuffer(STATEMENT.format(key=key.decode()).encode(), dtype=np.uint8)
        question = np.frombuffer(QUESTION.encode() + key, dtype=np.uint8)
        text = window[start:]  # the episode's filler and the text after it come from here, in order
        out = np.concatenate([window[:start], statement, text[:distance], question, text[distance:]])
        return out[: len(window)]

    def windows(self, step: int) -> np.ndarray:
        """The plain stream's windows of batch ``step`` (B, T + 1), some of them carrying an episode."""
        win = super().windows(step)
        rng = np.random.default_rng([self.seed, step, 1])
        for b in range(len(win)):
            if rng.random() < self.mix:
                win[b] = self.episode(win[b], rng)
        return win
