"""Compile the FFF token kernel (or BDH's fused-head GEMM) for a GPU without one, and report what it costs.

    python benchmarks/triton_resources.py                 # the GPU benchmark's small-batch shapes, sm_90
    python benchmarks/triton_resources.py --arch 80 --spec 3 --block-d 1024
    python benchmarks/triton_resources.py --bdh           # BDH's GEMM: every epilogue and autotuner config (also
                                                          # its barriers and register-layout conversions)

Triton ships ``ptxas`` and ``cuobjdump``, so the kernel compiles to a cubin for any NVIDIA architecture on a
machine without a GPU. For each shape this prints the registers per thread, the local (spilled) bytes, the
instruction count, the global loads, shuffles, barriers and bulk L2 prefetches (``UBLKPF``) in the SASS, and the
load waves and instructions of the routing loop (:func:`load_waves`, :func:`loop_ops`) and the load waves after it
(the output's gather): what decides a latency-bound launch before a GPU is at hand.
Run it under the Triton the GPU machine has (``pip install --target DIR triton==X`` and ``PYTHONPATH=DIR``):
its ``ptxas`` schedules differently. The launch is exactly :func:`recruit.fff.kernels.triton_fff.token_launch`'s,
with the integer arguments marked divisible by 16 where they are, as Triton's JIT specialises them.
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from recruit.fff.kernels.triton_fff import _fff_kernel, _fff_token_kernel, block_launch, token_launch

SHAPES = ((768, 11), (4096, 13))  # (hidden, depth) of the GPU benchmark's cases


@dataclass(frozen=True)
class Resources:
    """What one compiled launch uses per thread, and what its SASS holds."""

    registers: int
    local_bytes: int  # spilled registers
    instructions: int
    ops: dict[str, int]  # global loads by width, shuffles, barriers, bulk L2 prefetches
    load_waves: int  # of the routing loops, the most (see load_waves)
    loop_ops: dict[str, int]  # instructions of the last routing loop by opcode (FFMA, FADD, ...; see loop_ops)
    tail_waves: int = 0  # of the code after the routing loops (see load_waves): the output's gather


def _tool(name: str) -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def _compile(fn, constexprs: dict, ints: dict, arch: int, ptr_dtypes: dict, **options):
    """``triton.compile`` of ``fn`` for sm_``arch`` as the JIT would specialise it for these arguments.

    ``ints`` holds the runtime integer arguments' values (an integer divisible by 16 is marked so, as the JIT
    does; one equal to 1 should be passed in ``constexprs``, which the JIT also does); ``ptr_dtypes`` the
    element type of each pointer argument (by name, "*" for the rest); every other argument is an fp32 scalar.
    """
    names = fn.arg_names
    signature, attrs = {}, {}
    for i, name in enumerate(names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = "*" + ptr_dtypes.get(name, ptr_dtypes["*"])
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in ints:
            signature[name] = "i32"
            if ints[name] % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            signature[name] = "fp32"
    source = ASTSource(fn=fn, signature=signature, constexprs={(names.index(k),): v for k, v in constexprs.items()},
                       attrs=attrs)  # fmt: skip
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options=dict(enable_fp_fusion=True, **options))


def compile_token(hidden: int, depth: int, batch: int = 1, arch: int = 90, dtype: str = "bf16", **options):
    """The compiled token kernel (a ``triton.compile`` result) for ``token_launch(batch, hidden, hidden, ...)``.

    ``pairs`` defaults as in ``fff_triton``: bf16 rows of even width are read as pairs.
    """
    itemsize = {"bf16": 2, "fp16": 2, "fp32": 4}[dtype]
    options.setdefault("pairs", dtype == "bf16" and hidden % 2 == 0)
    launch = token_launch(batch, hidden, hidden, depth, 1, itemsize=itemsize, **options)
    return _compile(_fff_token_kernel, launch.constexprs, launch.ints, arch, {"*": dtype}, **launch.options)


def compile_block(hidden: int, depth: int, batch: int = 4096, arch: int = 90, dtype: str = "bf16", **options):
    """The compiled block kernel (a ``triton.compile`` result) for ``block_launch(batch, hidden, hidden, ...)``."""
    itemsize = {"bf16": 2, "fp16": 2, "fp32": 4}[dtype]
    launch = block_launch(batch, hidden, hidden, depth, 1, itemsize=itemsize, **options)
    ptrs = {"*": dtype, "path_row_ptr": "i32", "path_gelu_ptr": "fp32"}
    return _compile(_fff_kernel, launch.constexprs, launch.ints, arch, ptrs, **launch.options)


def bdh_gemm_shape(epilogue: int) -> tuple[dict, dict]:
    """The integer arguments of BDH's fused-head GEMM at the paper's training shape, and its unit strides.

    Shapes and strides as ``_FusedHead`` launches them: B·T = 16384 rows, N = 8192 neurons, d = 256, T = 512;
    the B operands of the products of K = d are K-major (``bdh_triton._k_major``).
    """
    from recruit.models.bdh_triton import ROPE_BACKWARD, SCORES

    B, T, N, d = 32, 512, 8192, 256
    ints = dict(M=B * T, N=N, K=d, T=T, stride_am=d, stride_bn=d, a_batch=0, b_batch=0, seed=12345)
    unit = dict(stride_ak=1, stride_bk=1)  # strides equal to 1, which the JIT makes constants
    if epilogue == ROPE_BACKWARD:  # (B, T, T) @ (T, N) per sequence
        ints.update(K=T, stride_am=T, stride_bk=N, a_batch=T * T, b_batch=T * N)
        del ints["stride_bn"]
        unit = dict(stride_ak=1, stride_bn=1)
    elif epilogue == SCORES:  # (T, N) @ (N, T) per sequence, B = RoPE(x)ᵀ
        ints.update(N=T, K=N, stride_am=N, stride_bn=N, a_batch=T * N, b_batch=T * N)
    return ints, unit


def bdh_configs(epilogue: int) -> list[tuple[int, ...]]:
    """The configs of ``bdh_triton._CONFIGS`` that the autotuner's pruning keeps for this epilogue's shape."""
    from recruit.models import bdh_triton as bt

    ints, unit = bdh_gemm_shape(epilogue)
    batched = epilogue in (bt.ROPE_BACKWARD, bt.SCORES)
    kept = bt._prune(bt._tuned.configs, {**ints, **unit}, BATCHED=batched, PAIRED=True)  # inputs as the head pairs them
    return [c for c, t in zip(bt._CONFIGS, bt._tuned.configs, strict=True) if t in kept]


def compile_bdh_gemm(epilogue: int, config: tuple[int, ...], arch: int = 90, dtype: str = "bf16"):
    """BDH's fused-head GEMM (:func:`recruit.models.bdh_triton._neuron_gemm`) at the paper's training shape.

    ``config`` is one of ``bdh_triton._CONFIGS``: (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages, ROW_BLOCKS,
    PERSISTENT, TMA); shapes from :func:`bdh_gemm_shape`.
    """
    from recruit.models.bdh_triton import ROPE_BACKWARD, SCORES, _neuron_gemm

    bm, bn, bk, warps, stages, rows, persistent, tma = config
    ints, unit = bdh_gemm_shape(epilogue)
    constexprs = dict(**unit, EPILOGUE=epilogue, BATCHED=epilogue in (ROPE_BACKWARD, SCORES), UPCAST=False,
                      BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, ROW_BLOCKS=rows, PERSISTENT=persistent, TMA=tma,
                      PAIRED=True, DOT_PRECISION="tf32")  # fmt: skip
    ptrs = {"*": dtype, "cos_ptr": "fp32", "sin_ptr": "fp32", "grad_add_ptr": "fp32"}
    return _compile(_neuron_gemm, constexprs, ints, arch, ptrs, num_warps=warps, num_stages=stages)


def load_waves(sass: str, after: bool = False) -> int:
    """Waves of global loads in one trip of each routing loop of ``sass`` (see :func:`_routing_loops`), the most of
    them; or (``after``) in the code from the last loop on: the gather of the output.

    A step's loads all depend on the last step's node, so they should all be issued before the first of them
    is used: one round trip to memory per step. Each time an instruction uses a loaded register and a load
    follows, the loads come in one more wave, and the step costs one more round trip.
    """
    parts = [_gather(sass)] if after else _routing_loops(sass)
    return max(_waves(instructions) for instructions in parts)


def _waves(instructions: list[str]) -> int:
    """Waves of global loads in ``instructions`` (see :func:`load_waves`)."""
    waves, pending, waited = 1, set(), False
    for ins in instructions:
        op, _, args = ins.partition(" ")
        operands = [t.strip() for t in args.split(",")]
        if op.startswith("LDG"):
            waves, waited = waves + waited, False
            width = re.search(r"\.(128|64)\b", op)  # registers written: 4, 2 or 1
            first = int(operands[0][1:])
            pending |= set(range(first, first + (int(width.group(1)) // 32 if width else 1)))
            continue
        reads = operands if op.startswith(("ST", "BRA")) else operands[2:] if op.startswith("SHFL") else operands[1:]
        if any(int(r) in pending for t in reads for r in re.findall(r"\bR(\d+)", t)):
            waited, pending = True, set()
    return waves


def loop_ops(sass: str) -> dict[str, int]:
    """Instructions by opcode (without modifiers: ``FFMA``, ``LDG``) in one trip of the last routing loop of
    ``sass`` (see :func:`_routing_loops`; with ``prefetch``, the steps after it)."""
    ops = collections.Counter(ins.partition(" ")[0].split(".")[0] for ins in _routing_loops(sass)[-1])
    return dict(sorted(ops.items()))


@functools.lru_cache(maxsize=4)  # resources() reads one kernel's SASS three ways
def _code(sass: str) -> tuple[tuple[int, str], ...]:
    """(address, instruction) of every instruction of ``sass``, predicates dropped."""
    return tuple((int(a, 16), re.sub(r"^@!?U?P\w+\s+", "", ins))
                 for a, ins in re.findall(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", sass))  # fmt: skip


def _spans(code: tuple[tuple[int, str], ...]) -> list[tuple[int, int]]:
    """(start, end) addresses of the outermost loops of ``code``, in order: from the target of a backward branch to
    the branch, for the branches whose loop no other encloses (a loop nested in another ends first)."""
    jumps = sorted((int(t, 16), a) for a, ins in code if (t := _backward(ins, a)))
    assert jumps, "no loop in the SASS"
    spans: list[tuple[int, int]] = []
    for start, end in jumps:  # by start: a loop enclosing the last one kept starts no later than it
        while spans and start <= spans[-1][0] and end >= spans[-1][1]:
            spans.pop()
        if not spans or start > spans[-1][1]:
            spans.append((start, end))
    return spans


def _routing_loops(sass: str) -> list[list[str]]:
    """The instructions of each routing loop of the token kernel's ``sass``, in order: its outermost loops (see
    :func:`_spans`) but the last, the output's gather; one loop, or with ``prefetch`` the steps before and after
    it."""
    code = _code(sass)
    spans = _spans(code)
    assert len(spans) >= 2, "need a routing loop and the output's loop after it"
    return [[ins for a, ins in code if start <= a <= end] for start, end in spans[:-1]]


def _gather(sass: str) -> list[str]:
    """The instructions of the token kernel's ``sass`` from its last outermost loop on: the output's gather."""
    code = _code(sass)
    start = _spans(code)[-1][0]
    return [ins for a, ins in code if a >= start]


def _backward(ins: str, address: int) -> str | None:
    """The target of a branch to an earlier address, or None."""
    m = re.search(r"\bBRA (0x[0-9a-f]+)", ins)
    return m.group(1) if m and int(m.group(1), 16) < address else None


def resources(kernel, waves: bool = True) -> Resources:
    """Registers, spills and SASS counts of a compiled kernel, read with Triton's own ``cuobjdump``.

    ``waves``: also count :func:`load_waves` and :func:`loop_ops` (meant for the FFF token kernel; 0 and {} when
    False).
    """
    with tempfile.TemporaryDirectory() as tmp:
        cubin = os.path.join(tmp, "kernel.cubin")
        with open(cubin, "wb") as f:
            f.write(kernel.asm["cubin"])
        usage = subprocess.run([_tool("cuobjdump"), "-res-usage", cubin], capture_output=True, text=True, check=True)
        sass = subprocess.run([_tool("cuobjdump"), "-sass", cubin], capture_output=True, text=True, check=True)
    m = re.search(r"REG:(\d+).*?LOCAL:(\d+)", usage.stdout)
    assert m, f"no resource usage in cuobjdump's output: {usage.stdout[-500:]}"
    ops = collections.Counter(re.findall(r"\b(LDG[A-Z0-9_.]*|BAR\.SYNC|SHFL\.[A-Z]+|UBLKPF[A-Z0-9_.]*)", sass.stdout))
    instructions = len(re.findall(r"^\s+/\*[0-9a-f]{4,}\*/", sass.stdout, re.M))
    return Resources(int(m.group(1)), int(m.group(2)), instructions, dict(sorted(ops.items())),
                     load_waves(sass.stdout) if waves else 0, loop_ops(sass.stdout) if waves else {},
                     load_waves(sass.stdout, after=True) if waves else 0)  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", type=int, default=90, help="compute capability × 10 (90: H100/H200)")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--bdh", action="store_true", help="BDH's fused-head GEMM instead, every epilogue and config")
    p.add_argument("--batch", type=int, default=1)
    keys = ("spec", "split", "block_d", "block_o", "num_warps", "unroll", "maxnreg", "prefetch", "pairs", "blocked")
    for key in keys:  # token_launch's options, as --block-d and so on
        p.add_argument(f"--{key.replace('_', '-')}", type=int)
    args = p.parse_args()
    if args.bdh:
        for epilogue, name in enumerate(("ENCODE", "GATE", "GATE_BACKWARD", "ROPE_BACKWARD", "SCORES")):
            for config in bdh_configs(epilogue):
                k = compile_bdh_gemm(epilogue, config, args.arch, args.dtype)
                r = resources(k, waves=False)
                print(f"{name:>14} {config}: {r.registers} registers, {r.local_bytes} local bytes, "
                      f"{k.metadata.shared} shared bytes, {r.instructions} instructions, "
                      f"{r.ops.get('BAR.SYNC', 0)} barriers, {k.asm['ttgir'].count('ttg.convert_layout')} layout "
                      f"conversions, {k.asm['ptx'].count('cp.async.cg')} async copies, "
                      f"{k.asm['ptx'].count('cp.async.bulk.tensor')} TMA copies")  # fmt: skip
        return
    options = {k: v for k in keys if (v := getattr(args, k)) is not None}
    for hidden, depth in SHAPES:
        r = resources(compile_token(hidden, depth, args.batch, args.arch, args.dtype, **options))
        print(f"hidden {hidden} depth {depth} {options or 'defaults'}: {r.registers} registers, "
              f"{r.local_bytes} local bytes, {r.instructions} instructions, {r.load_waves} load waves, "
              f"{sum(r.loop_ops.values())} per routing step ({r.loop_ops.get('FFMA', 0)} FFMA), "
              f"{r.tail_waves} load waves after the loop, {r.ops}")  # fmt: skip


if __name__ == "__main__":
    main()
