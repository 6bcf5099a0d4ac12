"""The Mann–Whitney U test for many features at once, with numpy only (ranks with ties averaged).

Sign convention of the rank-biserial effect: ``effect = 1 − 2·U_without/(n1·n2)``, where ``U_without``
counts (with, without) pairs in which the sample *without* the concept is larger (ties count ½);
equivalently ``2·U_with/(n1·n2) − 1``. It lies in [−1, 1] and is positive when values are larger with the
concept (+1: every value with it beats every value without).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from recruit.errors import RecruitError


def rankdata(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ranks (1-based, ties averaged) of each column of ``a`` (n, F), and per column Σ(t³ − t) over tie groups."""
    a = np.asarray(a, dtype=np.float64)
    n = a.shape[0]
    order = np.argsort(a, axis=0, kind="mergesort")  # (n, F)
    s = np.take_along_axis(a, order, axis=0)  # sorted columns
    idx = np.broadcast_to(np.arange(n)[:, None], s.shape)
    first = np.ones_like(s, dtype=bool)
    first[1:] = s[1:] != s[:-1]  # starts a tie group
    last = np.ones_like(s, dtype=bool)
    last[:-1] = s[1:] != s[:-1]  # ends a tie group
    start = np.maximum.accumulate(np.where(first, idx, 0), axis=0)  # group start per sorted position
    end = np.minimum.accumulate(np.where(last, idx, n - 1)[::-1], axis=0)[::-1]  # group end
    ranks = np.empty_like(s)
    np.put_along_axis(ranks, order, (start + end) / 2 + 1, axis=0)
    size = end - start + 1  # summing t² − 1 over a group's t members gives t³ − t
    return ranks, (size.astype(np.float64) ** 2 - 1).sum(axis=0)


@dataclass
class MannWhitney:
    """Mann–Whitney U of sample ``with`` (n1, F) against ``without`` (n2, F), per column (F,).

    Attributes:
        u: U of ``with``: pairs where ``with`` is larger, ties ½.
        z: Normal score with tie and continuity corrections (0 when every value ties).
        p: Two-sided p-value of the normal approximation.
        effect: Rank-biserial ``1 − 2·U_without/(n1·n2)``; > 0 means larger with the concept.
    """

    u: np.ndarray
    z: np.ndarray
    p: np.ndarray
    effect: np.ndarray


def mann_whitney(with_: np.ndarray, without: np.ndarray) -> MannWhitney:
    """The Mann–Whitney U test of every column of ``with_`` (n1, F) against ``without`` (n2, F)."""
    a, b = (np.asarray(s, dtype=np.float64) for s in (with_, without))
    a, b = (s[:, None] if s.ndim == 1 else s for s in (a, b))  # (n1, F), (n2, F)
    n1, n2 = len(a), len(b)
    if n1 == 0 or n2 == 0:
        raise RecruitError(f"the Mann–Whitney test needs both samples non-empty, got {n1} and {n2}")
    ranks, ties = rankdata(np.concatenate([a, b]))  # (n1 + n2, F)
    u = ranks[:n1].sum(0) - n1 * (n1 + 1) / 2
    n = n1 + n2
    sigma = np.sqrt(n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1)))) if n > 1 else np.zeros_like(u)
    dev = np.abs(u - n1 * n2 / 2) - 0.5
    z = np.where(sigma > 0, np.sign(u - n1 * n2 / 2) * np.maximum(dev, 0) / np.where(sigma > 0, sigma, 1), 0.0)
    p = torch.special.erfc(torch.from_numpy(np.abs(z) / math.sqrt(2))).numpy()  # two-sided
    return MannWhitney(u, z, p, 1 - 2 * (n1 * n2 - u) / (n1 * n2))
