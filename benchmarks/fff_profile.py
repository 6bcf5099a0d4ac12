"""Where a 1-token FFF call spends its GPU time: the token kernel's cost per routing step, from L2 and from memory.

    python benchmarks/fff_profile.py --out DIR        # on a GPU: hidden 4096, depths 1, 3, ..., 13, bf16
    TRITON_INTERPRET=1 python benchmarks/fff_profile.py --device cpu --quick --out DIR   # dry run here

A diagnostic for tuning the token kernel (:mod:`recruit.fff.kernels.triton_fff`), not a result: the figures of
record are ``recruit bench fff``'s. One tree of the deepest depth is drawn; the tree of depth d is its first
2^(d+1) − 1 rows (heap order). For each depth and launch, the time per 1-token call in a CUDA graph, as
``recruit bench fff`` takes it: ``warm`` (16 distinct inputs, whose rows stay in L2) and ``cycled`` (enough
distinct inputs to touch twice the L2 in rows). A least-squares line through time against routing steps
splits each (launch, timing) into a fixed part (launch, output gather, store) and a cost per step, the figure
that the step count, the per-step reads and the output gather trade against each other. The same graph of an
empty kernel gives the launch floor, and the dense FF at the hidden size the target. Writes
``DIR/fff-profile.txt``.
"""

from __future__ import annotations

import argparse
import itertools
import os
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import torch
import triton
import triton.language as tl

from recruit import measure
from recruit.benchmarks.fff_speed import SpeedCase, _calls_beyond_l2
from recruit.fff.kernels.triton_fff import fff_triton, to_blocked

# the default (bf16 rows read as pairs, in chunks of 1024 features), the default before the last H200 sweep (a
# feature at a time), and with the rows in the blocked layout (the part per step from memory), without and with the
# L2 prefetch of the blocked subtree the walk enters, shared out over four or eight column programs; `blocked` True
# stands for subtrees of the BLOCK_LEVELS deepest levels (at depth 13 `blocked=8`; 2 in a --quick run), heap order
# (and no prefetch) where the tree has no more
LAUNCHES = {
    "default": {},
    "pairs0": dict(pairs=False),
    "blocked": dict(blocked=True),
    "blocked-prefetch": dict(blocked=True, prefetch=1),
    "blocked-prefetch-block_o512": dict(blocked=True, prefetch=1, block_o=512),
}
BLOCK_LEVELS = 6


@triton.jit
def _empty(out_ptr):
    tl.store(out_ptr, 1.0)


def _timer(device: torch.device) -> Callable[[Callable[[int], object], int], float]:
    """(fn of the call index, calls) -> µs per call: GPU time in a CUDA graph, or wall time on the CPU."""

    def time(fn: Callable[[int], object], calls: int) -> float:
        if device.type == "cuda":
            return measure.time_cuda_graph(fn, device, calls=calls).median * 1e6
        counter = itertools.count()
        return measure.time_fn(lambda: fn(next(counter) % calls), device, warmup=1, repeats=3).median * 1e6

    return time


def _fit(steps: list[int], us: list[float]) -> tuple[float, float]:
    """Least-squares (fixed, per step) of ``us`` against ``steps``."""
    n, sx, sy = len(steps), sum(steps), sum(us)
    sxx, sxy = sum(s * s for s in steps), sum(s * u for s, u in zip(steps, us, strict=True))
    slope = (n * sxy - sx * sy) / max(n * sxx - sx * sx, 1e-12)
    return (sy - slope * sx) / n, slope


def profile(hidden: int, depths: list[int], device: torch.device, dtype: torch.dtype, out: TextIO,
            block_levels: int = BLOCK_LEVELS) -> None:  # fmt: skip
    time = _timer(device)
    g = torch.Generator().manual_seed(0)
    deepest = max(depths)
    m = 2 ** (deepest + 1) - 1
    w_in, w_out_t = (torch.randn(m, hidden, generator=g).div(hidden**0.5).to(device, dtype) for _ in range(2))
    b_in = torch.randn(m, generator=g).mul(0.1).to(device, dtype)
    flag = torch.zeros(1, device=device)
    out.write(f"hidden {hidden}, 1 token, {dtype}; µs per call\n")
    out.write(f"empty kernel (launch floor): {time(lambda i: _empty[(1,)](flag), 16):.2f}\n")
    dense_in = torch.randn(hidden, 2 ** (deepest + 1), generator=g).to(device, dtype)
    dense_out = torch.randn(2 ** (deepest + 1), hidden, generator=g).to(device, dtype)
    xs = torch.randn(16, 1, hidden, generator=g).to(device, dtype)
    dense_us = time(lambda i: torch.nn.functional.gelu(xs[i] @ dense_in) @ dense_out, 16)
    out.write(f"dense FF, width {2 ** (deepest + 1)}: {dense_us:.2f}\n\n")
    table: dict[tuple[str, str], list[float]] = {}
    steps = {name: [] for name in LAUNCHES}
    out.write("depth " + " ".join(f"{name + ' ' + t:>41}" for name in LAUNCHES for t in ("warm", "cycled")) + "\n")
    for depth in depths:
        rows = 2 ** (depth + 1) - 1
        fff = w_in[:rows], b_in[:rows], w_out_t[:rows]
        level = max(0, depth + 1 - block_levels)
        laid = tuple(to_blocked(t, depth, 1, level) for t in fff)  # the same tree in the blocked layout (level 0: fff)
        calls = _calls_beyond_l2(SpeedCase(hidden, depth, 1), device, dtype) if device.type == "cuda" else 4
        cycled = torch.randn(calls, 1, hidden, generator=g).to(device, dtype)
        line = f"{depth:>5}"
        for name, launch in LAUNCHES.items():
            spec = launch.get("spec", 2)
            steps[name].append(-(-(depth + 1) // spec))
            weights = laid if launch.get("blocked") else fff
            if launch.get("blocked"):
                launch = {**launch, "blocked": level, "prefetch": launch.get("prefetch", 0) if level else 0}
            for timing, inputs, n in (("warm", xs, 16), ("cycled", cycled, calls)):
                us = time(lambda i, x=inputs, kw=launch, f=weights, d=depth: fff_triton(x[i], *f, d, 1, **kw), n)
                table.setdefault((name, timing), []).append(us)
                line += f" {us:>41.2f}"
        out.write(line + "\n")
    out.write("\nleast squares over the depths: fixed µs + µs per routing step (⌈(depth + 1) / spec⌉ steps)\n")
    for (name, timing), us in table.items():
        fixed, per_step = _fit(steps[name], us)
        out.write(f"{name:>34} {timing:>7}: {fixed:7.2f} + {per_step:5.2f} per step;"
                  f" depth {depths[-1]}: {us[-1]:.2f} µs, {dense_us / us[-1]:.2f}x dense\n")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for fff-profile.txt")
    p.add_argument("--device", default="cuda")
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--quick", action="store_true", help="hidden 64, depths 1 to 4 (a dry run of the script)")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("on the CPU the Triton kernel needs TRITON_INTERPRET=1")
    # odd depths only: each depth and launch is a kernel of its own to compile (1 to 7 steps at spec 2)
    hidden, depths = (64, [1, 2, 3, 4]) if args.quick else (args.hidden, list(range(1, 14, 2)))
    dtype = torch.bfloat16  # as recruit bench fff times a GPU (pairs is for bf16); Triton's interpreter runs it too
    Path(args.out).mkdir(parents=True, exist_ok=True)
    path = Path(args.out) / "fff-profile.txt"
    with path.open("w", buffering=1) as out:  # line by line, so that a run cut short keeps the depths it timed
        out.write(f"device {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, "
                  f"torch {torch.__version__}, triton {triton.__version__}\n")  # fmt: skip
        profile(hidden, depths, device, dtype, out, 2 if args.quick else BLOCK_LEVELS)
    print(path.read_text())


if __name__ == "__main__":
    main()
