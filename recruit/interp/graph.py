"""The neuron graph of BDH and its degree distribution.

The graph is ``G = E·D_x`` in the code's row-vector layout (the paper's ``D_x E``): for neurons i, j of one
head, ``G[i, j] = decoder[i] · encoder[:, j]``, how much neuron i's output, written to the stream by ``E``,
excites neuron j through ``D_x``. It is computed per head in row blocks, so the N×N matrix is never whole.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from recruit.errors import RecruitError
from recruit.models.bdh import BDH


@dataclass
class GraphDegrees:
    """Degrees of the thresholded neuron graph (edges i → j within a head, self-loops excluded).

    Attributes:
        out_degree: (n,) edges leaving each neuron.
        in_degree: (n,) edges entering each neuron.
        threshold: Edge when ``G[i, j] > threshold`` (``None`` with ``top_k``).
        top_k: Edges to the ``top_k`` largest entries of each row (``None`` with a threshold).
    """

    out_degree: np.ndarray
    in_degree: np.ndarray
    threshold: float | None
    top_k: int | None

    @property
    def edges(self) -> int:
        """Number of edges."""
        return int(self.out_degree.sum())

    def summary(self) -> dict[str, float]:
        """``{out,in}_{max,median,mean,max_over_mean,ccdf_slope}`` and ``edges``.

        ``ccdf_slope`` is the least-squares slope of log10 P(D ≥ k) against log10 k over the positive
        degrees: a power law with exponent α gives about 1 − α; a binomial graph falls much more steeply.
        """
        out: dict[str, float] = {"edges": float(self.edges)}
        for name, deg in (("out", self.out_degree), ("in", self.in_degree)):
            med = float(np.median(deg))
            out |= {
                f"{name}_max": float(deg.max()),
                f"{name}_median": med,
                f"{name}_mean": float(deg.mean()),
                f"{name}_max_over_mean": float(deg.max() / deg.mean()) if deg.mean() > 0 else 0.0,  # hubs
                f"{name}_ccdf_slope": _ccdf_slope(deg),
            }
        return out


def _ccdf_slope(deg: np.ndarray) -> float:
    pos = np.sort(deg[deg > 0])
    ks = np.unique(pos)
    if len(ks) < 2:
        return math.nan
    ccdf = 1 - np.searchsorted(pos, ks, side="left") / len(pos)  # P(D >= k) among positive degrees
    return float(np.polyfit(np.log10(ks), np.log10(ccdf), 1)[0])


@torch.no_grad()
def neuron_graph_degrees(
    model: BDH, threshold: float | None = None, top_k: int | None = None, z: float = 3.0, block: int = 1024
) -> GraphDegrees:
    """Degree distribution of the neuron graph G = E·D_x per head, thresholded or top-k per row.

    Args:
        model: The BDH model.
        threshold: Edge i → j when ``G[i, j] > threshold``.
        top_k: Instead, edges from each neuron to its ``top_k`` largest entries.
        z: With neither, ``threshold = mean + z·std`` of all G entries (a first pass over the blocks).
        block: Rows of G computed at once.
    """
    if threshold is not None and top_k is not None:
        raise RecruitError("give a threshold or top_k, not both")
    h, N = model.config.n_head, model.config.n_neurons
    if top_k is not None and not 0 < top_k < N:
        raise RecruitError(f"top_k must be in [1, {N - 1}], got {top_k}")
    E, Dx = model.decoder.detach().float(), model.encoder.detach().float()  # (h*N, d), (h, d, N)

    def blocks() -> Iterator[tuple[int, int, torch.Tensor]]:
        for head in range(h):
            for r in range(0, N, block):
                g = E[head * N + r : head * N + min(r + block, N)] @ Dx[head]  # (b, N): rows r.., all targets
                rows = torch.arange(g.shape[0], device=g.device)
                g[rows, rows + r] = float("-inf")  # no self-loops
                yield head, r, g

    if threshold is None and top_k is None:
        s = s2 = 0.0
        for _, _, g in blocks():
            fin = g[torch.isfinite(g)].double()
            s, s2 = s + fin.sum().item(), s2 + (fin**2).sum().item()
        count = h * N * (N - 1)
        threshold = s / count + z * math.sqrt(max(s2 / count - (s / count) ** 2, 0.0))
    out_deg, in_deg = np.zeros(h * N, np.int64), np.zeros(h * N, np.int64)
    for head, r, g in blocks():
        if top_k is not None:
            cols = g.topk(top_k, dim=1).indices  # (b, k)
            out_deg[head * N + r : head * N + r + len(g)] = top_k
            in_deg[head * N : (head + 1) * N] += np.bincount(cols.flatten().cpu().numpy(), minlength=N)
        else:
            edge = g > threshold  # (b, N)
            out_deg[head * N + r : head * N + r + len(g)] = edge.sum(1).cpu().numpy()
            in_deg[head * N : (head + 1) * N] += edge.sum(0).cpu().numpy()
    return GraphDegrees(out_deg, in_deg, threshold, top_k)
