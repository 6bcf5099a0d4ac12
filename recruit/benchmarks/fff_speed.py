"""FFF inference speed against torch's dense feed-forward of the same (aligned) width, in the same run.

``recruit bench fff --out DIR``. For each case: a dense FF ``gelu(x·W1ᵀ + b1)·W2ᵀ`` of width 2^(depth+1) (the
aligned width: an odd width slows vendor GEMMs several-fold, and a weak baseline is not a result), the fused
FFF kernel of depth ``depth`` (2^(depth+1) − 1 nodes, depth + 1 of them used per token), and the pure-torch
gather walk as a peer. Every token gets its own random input, so routing spreads over the tree instead of
following one cache-hot path. Times are medians after warm-up with the device synchronised;
``speedup`` = dense time ÷ FFF time.

On the CPU the fused kernel is the C++ one (``recruit.fff.kernels.cpu``); on CUDA the Triton one, in bf16.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from recruit import measure
from recruit.benchmarks import Bench, BenchOptions, register
from recruit.fff.kernels import fff_gather, fff_infer
from recruit.records import Record, environment
from recruit.train import resolve_device

BENCH = "fff"


@dataclass(frozen=True)
class SpeedCase:
    """One shape: model width, tree depth, tokens per call."""

    hidden: int
    depth: int
    batch: int


CPU_CASES = tuple(SpeedCase(768, d, b) for d in (10, 11) for b in (1, 8, 128, 4096)) + tuple(
    SpeedCase(4096, 13, b)
    for b in (1, 8, 128)  # 4096 tokens x 4096 x 16384 dense takes minutes on 2 cores
)
GPU_CASES = tuple(SpeedCase(768, 11, b) for b in (1, 128, 4096)) + tuple(
    SpeedCase(4096, 13, b) for b in (1, 8, 128, 4096)
)
QUICK_CASES = (SpeedCase(64, 5, 1), SpeedCase(64, 5, 33))


def _weights(hidden: int, depth: int, dtype: torch.dtype, device, g: torch.Generator):
    width = 2 ** (depth + 1)  # dense: aligned width; FFF: width - 1 nodes
    w1 = (torch.randn(width, hidden, generator=g) / hidden**0.5).to(device, dtype)
    b1 = torch.zeros(width, device=device, dtype=dtype)
    w2 = (torch.randn(hidden, width, generator=g) / width**0.5).to(device, dtype)
    return w1, b1, w2


def measure_case(case: SpeedCase, device: torch.device, dtype: torch.dtype, repeats: int, gather: bool) -> dict:
    """Median milliseconds of dense, fused FFF and (optionally) gather FFF on one case."""
    g = torch.Generator().manual_seed(case.hidden * 1000 + case.depth)
    w1, b1, w2 = _weights(case.hidden, case.depth, dtype, device, g)
    nodes = 2 ** (case.depth + 1) - 1
    w_in, b_in, w_out_t = w1[:nodes].contiguous(), b1[:nodes].contiguous(), w2[:, :nodes].t().contiguous()
    x = torch.randn(case.batch, case.hidden, generator=g).to(device, dtype)  # distinct input per token
    out = {}
    with torch.no_grad():
        fns = {"dense": lambda: F.linear(F.gelu(F.linear(x, w1, b1)), w2),
               "fff": lambda: fff_infer(x, w_in, b_in, w_out_t, case.depth, 1)}  # fmt: skip
        if gather:
            fns["gather"] = lambda: fff_gather(x, w_in, b_in, w_out_t, case.depth, 1)
        budget = 0.2 if case.batch <= 128 else 1.0
        for name, fn in fns.items():
            out[name] = measure.time_fn(fn, device, warmup=3, repeats=repeats, min_time=budget).median * 1e3
    return out


def run(opts: BenchOptions, cases: tuple[SpeedCase, ...] | None = None) -> list[Record]:
    """Time every case on ``opts.device`` (CPU: fp32; CUDA: bf16)."""
    device = resolve_device(opts.device)
    env = environment(device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if cases is None:
        cases = QUICK_CASES if opts.quick else (GPU_CASES if device.type == "cuda" else CPU_CASES)
    recs: list[Record] = []
    for case in tqdm(cases, desc="fff speed", disable=not opts.progress):
        gather = case.batch <= 4096 and case.hidden <= 768 or case.batch <= 128
        ms = measure_case(case, device, dtype, repeats=3 if opts.quick else 7, gather=gather)
        name = "cpp" if device.type == "cpu" else "triton"
        c = (f"hidden={case.hidden},depth={case.depth},width={2 ** (case.depth + 1) - 1},"
             f"dense_width={2 ** (case.depth + 1)},B={case.batch},dtype={str(dtype).split('.')[-1]}")  # fmt: skip
        recs.append(Record(BENCH, f"{c},impl=dense", "latency_ms", ms["dense"], "ms", env))
        recs.append(Record(BENCH, f"{c},impl={name}", "latency_ms", ms["fff"], "ms", env))
        recs.append(Record(BENCH, f"{c},impl={name}", "speedup", ms["dense"] / ms["fff"], "x", env))
        if "gather" in ms:
            recs.append(Record(BENCH, f"{c},impl=gather", "latency_ms", ms["gather"], "ms", env))
            recs.append(Record(BENCH, f"{c},impl=gather", "speedup", ms["dense"] / ms["gather"], "x", env))
        recs.append(Record(BENCH, c, "flops_ratio", (case.depth + 1) / 2 ** (case.depth + 1), "x", env))
    return recs


def section(records: list[Record]) -> str:
    """Speed-up tables per device and implementation."""
    from recruit.report.html import table

    rs = [r for r in records if r.bench == BENCH and r.metric == "speedup"]
    if not rs:
        return ""
    rows = [[r.env.get("device_name", r.env.get("device")), r.params["hidden"], r.params["depth"], r.params["B"],
             r.params["impl"], f"{r.value:.3g}x"] for r in rs]  # fmt: skip
    return (
        "<p>Dense FF (torch, aligned width) time ÷ FFF time, same run, distinct random input per token "
        "(<code>recruit bench fff</code>). Below 1 means FFF is slower.</p>"
        + table(["device", "hidden", "depth", "tokens", "FFF implementation", "speed-up"], rows)
    )


register(Bench(BENCH, run, section, summary="FFF inference speed vs torch dense FF (same run)"))
