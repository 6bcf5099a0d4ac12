"""Fused FFF inference kernels and their references.

:func:`fff_infer` picks the fastest path for the device: the Triton kernel for CUDA tensors when ``triton``
is installed, the C++ kernel on the CPU (built at first use), and the pure-torch gather walk otherwise.
``triton`` is imported only when a CUDA tensor asks for it, so this package imports without it.
"""

from __future__ import annotations

import functools
import importlib.util

import torch

from recruit.fff.kernels.cpu import cpu_kernel_available, fff_cpu
from recruit.fff.kernels.reference import check_shapes, fff_gather, fff_reference, fff_route, n_nodes

__all__ = [
    "check_shapes",
    "cpu_kernel_available",
    "fff_cpu",
    "fff_gather",
    "fff_infer",
    "fff_reference",
    "fff_route",
    "n_nodes",
    "triton_available",
]


@functools.cache
def triton_available() -> bool:
    """Whether ``triton`` can be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):  # ValueError: sys.modules["triton"] is None (import blocked)
        return False


def fff_infer(
    x2d: torch.Tensor, w_in: torch.Tensor, b_in: torch.Tensor, w_out_t: torch.Tensor, depth: int, n_trees: int
) -> torch.Tensor:
    """Hard FFF inference by the best kernel for the device (no gradients).

    CUDA tensors with ``triton`` installed go to the Triton kernel, CPU tensors to the fused C++ kernel
    (which falls back to :func:`fff_gather` when it cannot be built), anything else to :func:`fff_gather`.

    Args:
        x2d: Token features, (B, D_in).
        w_in: Node input weights, (K·M, D_in) with M = 2^(depth+1) − 1 nodes per tree in heap order.
        b_in: Node biases, (K·M,).
        w_out_t: Node output weights, transposed, (K·M, D_out); pass it contiguous (a copy per call otherwise).
        depth: Tree depth ≥ 0.
        n_trees: K ≥ 1, the number of trees whose outputs are summed.

    Returns:
        (B, D_out) in the dtype of ``x2d``.
    """
    if x2d.is_cuda and triton_available() and x2d.dtype in (torch.float32, torch.float16, torch.bfloat16):
        from recruit.fff.kernels.triton_fff import fff_triton

        check_shapes(x2d, w_in, b_in, w_out_t, depth, n_trees)
        return fff_triton(x2d, w_in, b_in, w_out_t, depth, n_trees)
    if x2d.device.type == "cpu":
        return fff_cpu(x2d, w_in, b_in, w_out_t, depth, n_trees)
    return fff_gather(x2d, w_in, b_in, w_out_t, depth, n_trees)
