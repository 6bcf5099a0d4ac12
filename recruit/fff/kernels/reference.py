"""Slow and simple FFF inference: the per-token oracle, the vectorised routing, and the pure-torch gather walk.

Every fused kernel (:mod:`~recruit.fff.kernels.cpu`, :mod:`~recruit.fff.kernels.triton_fff`) is tested
against :func:`fff_reference`; :func:`fff_gather` is the fallback where no kernel runs.

The computation (UltraFastBERT FFF inference), for each token and each tree k with M = 2^(depth+1) − 1 nodes
in heap order occupying rows [k·M, (k+1)·M): n = 0; for each of the depth + 1 levels:
a = x·w_in[k·M+n] + b_in[k·M+n]; out += GELU(a)·w_out_t[k·M+n]; n = 2n + 1 + (a > 0). The output sums the
trees. GELU is the exact erf form; a pre-activation of exactly 0 goes left.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def n_nodes(depth: int) -> int:
    """Nodes per tree of the given depth: 2^(depth+1) − 1."""
    return 2 ** (depth + 1) - 1


def check_shapes(
    x: torch.Tensor, w_in: torch.Tensor, b_in: torch.Tensor, w_out_t: torch.Tensor, depth: int, n_trees: int
) -> None:
    """Raise ValueError unless the arguments describe a valid FFF call (shapes, dtypes, devices, depth, K).

    Args:
        x: (B, D_in).
        w_in: (K·M, D_in).
        b_in: (K·M,).
        w_out_t: (K·M, D_out).
        depth: ≥ 0.
        n_trees: K ≥ 1.
    """
    if depth < 0 or n_trees < 1:
        raise ValueError(f"need depth >= 0 and n_trees >= 1, got depth={depth}, n_trees={n_trees}")
    rows = n_trees * n_nodes(depth)
    if x.dim() != 2 or w_in.shape != (rows, x.shape[1]) or b_in.shape != (rows,) or w_out_t.dim() != 2:
        raise ValueError(
            f"expected x (B, D_in), w_in ({rows}, D_in), b_in ({rows},), w_out_t ({rows}, D_out) for depth={depth}, "
            f"n_trees={n_trees}; got x {tuple(x.shape)}, w_in {tuple(w_in.shape)}, b_in {tuple(b_in.shape)}, "
            f"w_out_t {tuple(w_out_t.shape)}"
        )
    if w_out_t.shape[0] != rows:
        raise ValueError(f"w_out_t must have {rows} rows (K·M), got {tuple(w_out_t.shape)}")
    if len({t.dtype for t in (x, w_in, b_in, w_out_t)}) != 1 or len({t.device for t in (x, w_in, b_in, w_out_t)}) != 1:
        raise ValueError("x, w_in, b_in and w_out_t must share one dtype and one device")


def fff_reference(
    x: torch.Tensor, w_in: torch.Tensor, b_in: torch.Tensor, w_out_t: torch.Tensor, depth: int, n_trees: int
) -> torch.Tensor:
    """The oracle: a literal loop over tokens, trees and levels, computed in float64.

    Args:
        x: Token features, (B, D_in).
        w_in: Node input weights, (K·M, D_in).
        b_in: Node biases, (K·M,).
        w_out_t: Node output weights, transposed, (K·M, D_out).
        depth: Tree depth (depth + 1 levels, M = 2^(depth+1) − 1 nodes per tree).
        n_trees: K, the number of trees whose outputs are summed.

    Returns:
        (B, D_out) in the dtype of ``x``.
    """
    check_shapes(x, w_in, b_in, w_out_t, depth, n_trees)
    m = n_nodes(depth)
    xd = x.detach().double().cpu()

    def row_of(w: torch.Tensor, i: int) -> torch.Tensor:  # one row in float64, read when the walk reaches it
        return w[i].detach().double().cpu()

    out = torch.zeros(x.shape[0], w_out_t.shape[1], dtype=torch.float64)  # (B, D_out)
    for t in range(x.shape[0]):
        for k in range(n_trees):
            n = 0
            for _ in range(depth + 1):
                row = k * m + n
                a = torch.dot(xd[t], row_of(w_in, row)) + row_of(b_in, row)
                out[t] += F.gelu(a) * row_of(w_out_t, row)
                n = 2 * n + 1 + int(a.item() > 0)
    return out.to(device=x.device, dtype=x.dtype)


def fff_route(
    x: torch.Tensor, w_in: torch.Tensor, b_in: torch.Tensor, depth: int, n_trees: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every token's path, vectorised and in float64: the visited rows and their pre-activations.

    Args:
        x: Token features, (B, D_in).
        w_in: Node input weights, (K·M, D_in).
        b_in: Node biases, (K·M,).
        depth: Tree depth.
        n_trees: K.

    Returns:
        ``(rows, logits)``, both (B, K, depth + 1): the global row (k·M + node) visited at each level, int64,
        and its pre-activation a, float64. ``logits.abs().min()`` is the routing margin: kernels computing in
        lower precision may take another branch where it is below their rounding error.
    """
    m = n_nodes(depth)
    xd, wi, bi = (t.detach().double() for t in (x, w_in, b_in))
    base = torch.arange(n_trees, device=x.device) * m  # (K,)
    node = torch.zeros(x.shape[0], n_trees, dtype=torch.long, device=x.device)  # (B, K)
    rows, logits = [], []
    for _ in range(depth + 1):
        row = base + node  # (B, K)
        a = torch.einsum("bd,bkd->bk", xd, wi[row]) + bi[row]  # (B, K)
        rows.append(row)
        logits.append(a)
        node = 2 * node + 1 + (a > 0).long()
    return torch.stack(rows, -1), torch.stack(logits, -1)  # (B, K, depth + 1) each


def fff_gather(
    x: torch.Tensor, w_in: torch.Tensor, b_in: torch.Tensor, w_out_t: torch.Tensor, depth: int, n_trees: int
) -> torch.Tensor:
    """Vectorised pure-torch FFF inference: per level, gather each token's rows, batched dot, GELU, accumulate.

    Works on any device. float16 / bfloat16 gather their rows in their own dtype and compute in float32.

    Args:
        x: Token features, (B, D_in).
        w_in: Node input weights, (K·M, D_in).
        b_in: Node biases, (K·M,).
        w_out_t: Node output weights, transposed, (K·M, D_out).
        depth: Tree depth.
        n_trees: K.

    Returns:
        (B, D_out) in the dtype of ``x``.
    """
    check_shapes(x, w_in, b_in, w_out_t, depth, n_trees)
    cdt = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    m = n_nodes(depth)
    xc = x.to(cdt)
    base = torch.arange(n_trees, device=x.device) * m  # (K,)
    node = torch.zeros(x.shape[0], n_trees, dtype=torch.long, device=x.device)  # (B, K)
    out = torch.zeros(x.shape[0], w_out_t.shape[1], dtype=cdt, device=x.device)  # (B, D_out)
    for _ in range(depth + 1):
        row = base + node  # (B, K)
        a = torch.einsum("bd,bkd->bk", xc, w_in[row].to(cdt)) + b_in[row].to(cdt)  # (B, K)
        out += torch.einsum("bk,bko->bo", F.gelu(a), w_out_t[row].to(cdt))  # (B, D_out)
        node = 2 * node + 1 + (a > 0).long()
    return out.to(x.dtype)
