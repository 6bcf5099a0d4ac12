"""CUDA graph capture, shared by the models (BDH's graph decoding) and the measuring code (kernel timing).

A module of its own so that models do not import the measuring code for it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch

T = TypeVar("T")


def capture_cuda_graph(fn: Callable[[], T], device: str | torch.device, warmup: int = 2) -> tuple[Any, T]:
    """Capture ``fn()`` in a CUDA graph, after ``warmup`` runs of it on a side stream.

    Compilation, the allocator and library handles settle during the warm-up, as capture requires.
    Returns the ``torch.cuda.CUDAGraph`` and what ``fn`` returned during capture: static tensors that
    every ``graph.replay()`` overwrites. ``fn``'s inputs must likewise be static tensors, updated in place.
    """
    device = torch.device(device)
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out
