"""Batches of token windows drawn from a flat token array, addressed by step for exact resume.

Batch ``i`` depends only on ``(seed, i)``, so a resumed run sees exactly the batches an uninterrupted run
would have seen, without saving any data-loader state.
"""

from __future__ import annotations

import numpy as np
import torch

from recruit.errors import RecruitError


class TokenStream:
    """Random windows of ``seq_len + 1`` tokens from ``tokens``.

    Args:
        tokens: (N,) token ids (a numpy array or memmap).
        seq_len: Tokens per training example (the targets are shifted by one).
        batch_size: Examples per batch.
        seed: Base seed; batch ``step`` uses ``numpy.random.default_rng([seed, step])``.
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, seed: int = 0) -> None:
        if len(tokens) < seq_len + 2:
            raise RecruitError(f"only {len(tokens)} tokens of data, fewer than one sequence of {seq_len + 1}")
        self.tokens, self.seq_len, self.batch_size, self.seed = tokens, seq_len, batch_size, seed

    def windows(self, step: int) -> np.ndarray:
        """The windows of batch ``step``: (B, T + 1) int64, a fresh array (subclasses may rewrite it)."""
        rng = np.random.default_rng([self.seed, step])
        starts = rng.integers(0, len(self.tokens) - self.seq_len - 1, size=self.batch_size)
        return np.stack([np.asarray(self.tokens[s : s + self.seq_len + 1], dtype=np.int64) for s in starts])

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets of batch ``step``: two (B, T) int64 tensors."""
        win = torch.from_numpy(self.windows(step))  # (B, T + 1)
        return win[:, :-1], win[:, 1:]


def eval_windows(tokens: np.ndarray, seq_len: int, max_windows: int | None = None) -> torch.Tensor:
    """Non-overlapping windows of ``seq_len + 1`` tokens covering ``tokens`` in order: (W, T + 1) int64.

    Consecutive windows share their boundary token, so every token after the first is a target exactly once.
    """
    n = (len(tokens) - 1) // seq_len
    if max_windows is not None:
        n = min(n, max_windows)
    if n <= 0:
        raise RecruitError(f"only {len(tokens)} tokens, fewer than one window of {seq_len + 1}")
    idx = np.arange(n)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]  # (W, T + 1)
    return torch.from_numpy(np.asarray(tokens[: n * seq_len + 1], dtype=np.int64)[idx])


def spread_windows(tokens: np.ndarray, seq_len: int, n: int | None = None) -> torch.Tensor:
    """``n`` of the :func:`eval_windows` of ``tokens``, evenly spaced from the first to the last: (W, T + 1).

    A split is stored document after document, so its first windows come from its first few documents (one
    language, one kind); spread windows sample the whole split. All windows when ``n`` is None or larger.
    """
    total = (len(tokens) - 1) // seq_len
    if n is None or n >= total:
        return eval_windows(tokens, seq_len)  # raises when there is no window at all
    if n <= 0:
        raise RecruitError(f"need a positive number of windows, got {n}")
    starts = torch.linspace(0, total - 1, n).long().numpy() * seq_len  # (W,)
    idx = starts[:, None] + np.arange(seq_len + 1)[None, :]  # (W, T + 1)
    return torch.from_numpy(np.asarray(tokens)[idx].astype(np.int64))
