"""Tokenizers: a byte-level one (every language, no vocabulary file) and an adapter for Hugging Face ones.

The byte tokenizer maps UTF-8 bytes to ids 0..255 and appends special tokens for padding, sequence
boundaries, and task/language/kind tags, so a model can be told "German manual page" or "Python code".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from recruit.errors import RecruitError

LANGUAGES = ("en", "de", "fr", "pl", "ru", "es", "xx")
"""Language tags of the corpus; ``xx`` is any other or unknown language."""
KINDS = ("prose", "code", "manual", "text")
"""Document kinds: prose and code from the Python docs, manual pages, and the user's plain text."""
N_TASK_TAGS = 16
"""Free tag slots (``task:0`` .. ``task:15``) that techniques may use as task/context tokens."""

SPECIALS: tuple[str, ...] = (
    ("<pad>", "<bos>", "<eos>", "<sep>", "<mask>")
    + tuple(f"<lang:{x}>" for x in LANGUAGES)
    + tuple(f"<kind:{x}>" for x in KINDS)
    + tuple(f"<task:{i}>" for i in range(N_TASK_TAGS))
)


@runtime_checkable
class Tokenizer(Protocol):
    """What the library needs of a tokenizer."""

    vocab_size: int
    pad_id: int
    eos_id: int

    def encode(self, text: str) -> list[int]:
        """Text to ids (no special tokens added)."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Ids to text (special tokens dropped)."""
        ...


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255, then the :data:`SPECIALS` (vocabulary 256 + 32 = 288).

    Example:
        >>> tok = ByteTokenizer()
        >>> tok.decode(tok.encode("żółw"))
        'żółw'
    """

    n_bytes = 256

    def __init__(self) -> None:
        self.specials = SPECIALS
        self._special_ids = {s: self.n_bytes + i for i, s in enumerate(SPECIALS)}
        self.vocab_size = self.n_bytes + len(SPECIALS)
        self.pad_id = self._special_ids["<pad>"]
        self.bos_id = self._special_ids["<bos>"]
        self.eos_id = self._special_ids["<eos>"]

    def encode(self, text: str) -> list[int]:
        """UTF-8 bytes of ``text`` as ids."""
        return list(text.encode("utf-8"))

    def encode_bytes(self, data: bytes) -> list[int]:
        """Raw bytes as ids."""
        return list(data)

    def decode(self, ids: Sequence[int]) -> str:
        """Ids to text; special ids are dropped and invalid UTF-8 becomes U+FFFD."""
        return bytes(int(i) for i in ids if 0 <= int(i) < self.n_bytes).decode("utf-8", errors="replace")

    def special_id(self, name: str) -> int:
        """Id of a special token such as ``<lang:de>`` or ``<task:3>``."""
        try:
            return self._special_ids[name]
        except KeyError:
            raise RecruitError(f"unknown special token {name!r}; known: {', '.join(SPECIALS)}") from None

    def lang_id(self, lang: str) -> int:
        """Id of the language tag for ``lang`` (one of :data:`LANGUAGES`; anything else maps to ``xx``)."""
        return self._special_ids[f"<lang:{lang if lang in LANGUAGES else 'xx'}>"]

    def kind_id(self, kind: str) -> int:
        """Id of the kind tag for ``kind`` (one of :data:`KINDS`)."""
        if kind not in KINDS:
            raise RecruitError(f"unknown document kind {kind!r}; allowed: {', '.join(KINDS)}")
        return self._special_ids[f"<kind:{kind}>"]

    def document(self, text: str, lang: str, kind: str) -> list[int]:
        """A tagged document: ``<lang:..> <kind:..> bytes... <eos>``."""
        return [self.lang_id(lang), self.kind_id(kind), *self.encode(text), self.eos_id]

    def is_byte(self, i: int) -> bool:
        """Whether id ``i`` is a byte (not a special token)."""
        return 0 <= i < self.n_bytes


class HFTokenizer:
    """Adapter that gives a Hugging Face tokenizer the :class:`Tokenizer` interface.

    Args:
        tokenizer: A ``transformers`` tokenizer, or a path to a local directory holding one.
    """

    def __init__(self, tokenizer) -> None:
        if isinstance(tokenizer, str):
            from transformers import AutoTokenizer

            try:
                tokenizer = AutoTokenizer.from_pretrained(tokenizer, local_files_only=True)
            except (OSError, ValueError) as e:
                raise RecruitError(f"cannot load a tokenizer from {tokenizer}: {e}") from None
        self.tok = tokenizer
        self.vocab_size = len(tokenizer)
        self.eos_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id

    def encode(self, text: str) -> list[int]:
        """Text to ids, without special tokens."""
        return list(self.tok.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        """Ids to text, special tokens skipped."""
        return self.tok.decode(list(ids), skip_special_tokens=True)
