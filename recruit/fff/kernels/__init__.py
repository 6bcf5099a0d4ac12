"""Fused FFF inference kernels and their references.

:func:`fff_infer` picks the fastest path for the device: the Triton kernel for CUDA tensors when ``triton``
is installed, the C++ kernel on the CPU (built at first use), and the pure-torch gather walk otherwise.
:func:`fff_prepare` binds a layer's weights once and returns the same computation as a function of ``x``
(on the CPU a :class:`~recruit.fff.kernels.cpu.CpuKernel`, which checks the weights once instead of per call).
``triton`` is imported only when a CUDA tensor asks for it, so this package imports without it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from recruit.fff.kernels.cpu import CpuKernel, cpu_kernel_available, fff_cpu
from recruit.fff.kernels.reference import check_shapes, fff_gather, fff_reference, fff_route, n_nodes
from recruit.triton_support import triton_available

__all__ = [
    "CpuKernel",
    "check_shapes",
    "cpu_kernel_available",
    "fff_cpu",
    "fff_gather",
    "fff_infer",
    "fff_prepare",
    "fff_reference",
    "fff_route",
    "n_nodes",
    "triton_available",
]


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


def fff_prepare(
    w_in: torch.Tensor, b_in: torch.Tensor, w_out_t: torch.Tensor, depth: int, n_trees: int
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``f(x2d) == fff_infer(x2d, w_in, b_in, w_out_t, depth, n_trees)``, with the weights bound once.

    On the CPU the result is a :class:`~recruit.fff.kernels.cpu.CpuKernel` (weights checked at construction,
    four arguments per C call); on CUDA with ``triton`` a :class:`~recruit.fff.kernels.triton_fff.TritonKernel`
    (the rows in the layout it reads, laid out once); elsewhere :func:`fff_infer` with the weights bound. The
    function keeps the weights alive; build a new one when they change.

    Raises:
        ValueError: When the weights do not describe an FFF (see :func:`check_shapes`).
    """
    check_shapes(w_in[:0], w_in, b_in, w_out_t, depth, n_trees)
    if w_in.is_cpu:
        return CpuKernel(w_in, b_in, w_out_t, depth, n_trees)
    if w_in.is_cuda and triton_available() and w_in.dtype in (torch.float32, torch.float16, torch.bfloat16):
        from recruit.fff.kernels.triton_fff import TritonKernel

        return TritonKernel(w_in, b_in, w_out_t, depth, n_trees)
    return functools.partial(fff_infer, w_in=w_in, b_in=b_in, w_out_t=w_out_t, depth=depth, n_trees=n_trees)
