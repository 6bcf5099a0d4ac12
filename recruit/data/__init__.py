"""Data: the corpus built from installed packages or the user's text, tokenizers, and batch streams."""

from recruit.data.tokenizer import ByteTokenizer, Tokenizer

__all__ = ["ByteTokenizer", "Tokenizer"]
