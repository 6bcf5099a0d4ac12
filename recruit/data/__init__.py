"""Data: the corpus built from installed packages or the user's text, tokenizers, and batch streams."""

from recruit.data.corpus import Corpus, DocInfo, default_cache_dir, prepare_corpus
from recruit.data.tokenizer import ByteTokenizer, HFTokenizer, Tokenizer

__all__ = ["ByteTokenizer", "Corpus", "DocInfo", "HFTokenizer", "Tokenizer", "default_cache_dir", "prepare_corpus"]
