"""Whether Triton can be used, for every technique that has Triton kernels (FFF inference, BDH's fused head).

Checked without importing ``triton``: the kernels' modules import it themselves, lazily, so the library
imports and runs (on its torch paths) where Triton is not installed.
"""

from __future__ import annotations

import functools
import importlib.util


@functools.cache
def triton_available() -> bool:
    """Whether ``triton`` can be imported (checked once, without importing it)."""
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):  # ValueError: sys.modules["triton"] is None (import blocked)
        return False
