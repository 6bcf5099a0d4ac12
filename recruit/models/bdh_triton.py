"""BDH's fused training head in Triton: each (B·T, N) neuron tensor is made in a GEMM's epilogue.

One head of the parallel form (see :meth:`recruit.models.bdh.BDH._layer_fast`) touches four tensors of
B·T × N neurons (x, RoPE(x), y and x ⊙ y), 268 MB each in bf16 at the paper's training batch, and plain torch
spends a pass over memory on every element-wise step between its GEMMs (ReLU, RoPE, x ⊙ y, dropout, and
their gradients). Here one kernel, :func:`_neuron_gemm`, computes a (M × N) product tile by tile and applies
one of five epilogues before anything reaches memory:

====================  =========================  ================================================================
epilogue              product                    stores
====================  =========================  ================================================================
``ENCODE``            v · D_x                    x = ReLU(·) and RoPE(x)
``GATE``              LN(a) · D_y                y = ReLU(·) and dropout(x ⊙ y)
``GATE_BACKWARD``     g · Eᵀ (= ∂x⊙y)            ∂y before its ReLU, and the x-part of ∂x (∂(x⊙y) ⊙ y)
``ROPE_BACKWARD``     (Gg + Ggᵀ) · RoPE(x)       ∂x before its ReLU: RoPE⁻¹(·) + the x-part, masked by x > 0
``SCORES``            RoPE(x) · RoPE(x)ᵀ         the scores strictly below the diagonal (tiles above it skipped)
====================  =========================  ================================================================

The products with d-wide outputs (x ⊙ y · E, the attention's T × T by T × d products and the weight
gradients) stay torch GEMMs. A program makes one tile, walking K in blocks; or (``ROW_BLOCKS`` > 1, for products
of small K) holds a whole-K block of B in shared memory and makes that many row blocks' tiles against it; or
(``PERSISTENT`` > 0) loops over tiles in one flattened loop that the software pipeline overlaps across tiles,
and (``TMA``, for the unbatched products) moves them through tensor descriptors, by Hopper's copy engine.
The B operands of the products of K = d (D_x, D_y, Eᵀ) are K-major, the layout Hopper's wgmma takes natively.
Dropout draws its mask from Philox keyed by (seed, element / 8), so the backward regenerates it instead of
storing it. Values are rounded to the compute dtype where the torch form rounds them, so in fp32 the head
equals :class:`~recruit.models.bdh._CausalLinearAttention`'s form to float tolerance (tests, through
Triton's interpreter on the CPU).

This module imports ``triton`` at import time: import it lazily (:mod:`recruit.models.bdh` does).
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

ENCODE, GATE, GATE_BACKWARD, ROPE_BACKWARD, SCORES = 0, 1, 2, 3, 4

# Launch configurations tried by the autotuner on a GPU (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages, ROW_BLOCKS,
# PERSISTENT, TMA): the two fastest of each epilogue at bdh-ref's training shape on an H200 (benchmarks/bdh_profile.py
# lists every config's time), out of fourteen tried there, and four persistent ones not yet timed on a GPU; each
# config tried costs every new shape a compile. The interpreter takes the small fixed blocks of _INTERPRETED
# instead (it runs every program in Python; the tests also run it with ROW_BLOCKS > 1, where the launcher widens
# BLOCK_K to all of K, with PERSISTENT > 0 and with TMA).
_CONFIGS = [
    (128, 128, 64, 8, 3, 1, 0, 0),  # SCORES
    (128, 64, 64, 4, 4, 1, 0, 0),  # ROPE_BACKWARD, ENCODE's second
    (64, 128, 64, 4, 4, 1, 0, 0),
    (64, 128, 64, 4, 2, 1, 0, 0),  # GATE, GATE_BACKWARD: two stages, more programs per SM to overlap their epilogues
    (64, 64, 64, 4, 4, 1, 0, 0),  # for N or T of 64 (BLOCK_N at most N's power of two; see _prune)
    (32, 64, 64, 4, 3, 1, 0, 0),  # small row blocks: only for the batched products of sequences of 16 or 48 tokens ...
    (16, 64, 64, 4, 3, 1, 0, 0),  # ... which no larger BLOCK_M divides
    # ENCODE: one B block held while the program walks 8 row blocks (products of K ≤ 256 only)
    (64, 256, 256, 8, 2, 8, 0, 0),
    # persistent: 2 or 1 programs per SM, each looping over tiles, the next tile's loads overlapping this epilogue
    (64, 128, 64, 4, 3, 1, 2, 0),
    (128, 128, 64, 8, 3, 1, 1, 0),
    # ... and the same with every tile moved by TMA (the unbatched products of K = d: ENCODE, GATE, GATE_BACKWARD);
    # two stages, as its epilogue's inputs take 32 KB of shared memory and two programs must fit an SM's 228 KB
    (64, 128, 64, 4, 2, 1, 2, 1),
    (128, 128, 64, 8, 3, 1, 1, 1),
]
_INTERPRETED = dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, GROUP_M=2, ROW_BLOCKS=1, PERSISTENT=0, TMA=0)


def interpreting() -> bool:
    """Whether Triton runs kernels in its interpreter (``TRITON_INTERPRET=1``), i.e. on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@triton.jit
def _pairs(t, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Columns (2k, 2k+1) of a (BLOCK_M, BLOCK_N) tile as two (BLOCK_M, BLOCK_N/2) tiles, in fp32.

    The epilogues multiply tiles as such pairs (and :func:`_interleave` them back): Triton then moves fewer tiles
    between the GEMM's register layout and the loads' through shared memory than for whole-tile products. At
    64 × 128 tiles compiled for sm_90 by Triton 3.6, GATE converts 3 tiles instead of 4 and GATE_BACKWARD 2
    instead of 8, with 6% and 13% fewer instructions, 10 and 6 barriers instead of 16 and 24.
    """
    even, odd = tl.split(tl.reshape(t, (BLOCK_M, BLOCK_N // 2, 2)))  # split first: the halves convert in 16 bits
    return even.to(tl.float32), odd.to(tl.float32)


@triton.jit
def _rotate(even, odd, c, s):
    """A pair rotation (even·c − odd·s, odd·c + even·s) of fp32 tiles, each as one explicit fused multiply-add.

    Written as plain products and sums, the compiler contracts them to FMAs as it sees fit, and the persistent and
    one-tile-per-program kernels (the same tiles) compiled them differently: on an H200 one bf16 element of a million
    of RoPE(x) came out one unit in the last place apart. Spelled out, every kernel rounds the same way.
    """
    return tl.fma(even, c, -(odd * s)), tl.fma(odd, c, even * s)


@triton.jit
def _interleave(even, odd, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The inverse of :func:`_pairs`: (BLOCK_M, BLOCK_N/2) twice -> (BLOCK_M, BLOCK_N)."""
    return tl.reshape(tl.join(even, odd), (BLOCK_M, BLOCK_N))


@triton.jit
def _keep(seed, m, pid_n, N, p_drop, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Dropout's keep mask (BLOCK_M, BLOCK_N) of rows ``m`` and column block ``pid_n`` of an (M, N) tensor.

    One Philox-4x32-10 draw (``tl.randint4x``, torch's generator) gives 128 random bits, eight 16-bit integers
    for eight consecutive columns: element (m, n) takes integer n mod 8 of the draw at offset (m·N + n) / 8
    (wrapping at 2^32; N is a multiple of 8), and is kept when that integer is at least p·2^16. So ``p_drop``
    must be a multiple of 2^-16 (:func:`dropout_p` rounds it). A draw serves twice the elements that 32-bit
    uniforms would: with those, the draws were 60% of the instructions of GATE's compiled epilogue.
    """
    octet = pid_n * (BLOCK_N // 8) + tl.arange(0, BLOCK_N // 8)  # (BLOCK_N/8,)
    offsets = (m.to(tl.int64)[:, None] * (N // 8) + octet[None, :]).to(tl.int32)  # (BLOCK_M, BLOCK_N/8)
    r0, r1, r2, r3 = tl.randint4x(seed, offsets)
    t = tl.cast(p_drop * 65536.0, tl.uint32)  # exact: p_drop is a multiple of 2^-16
    # integer j = 2w + h is half h (0: low) of word w; tl.join stacks on a new minor axis, so the words are
    # joined (0, 2), (1, 3) to come out in order
    low = tl.join(tl.join((r0 & 0xFFFF) >= t, (r2 & 0xFFFF) >= t), tl.join((r1 & 0xFFFF) >= t, (r3 & 0xFFFF) >= t))
    high = tl.join(tl.join((r0 >> 16) >= t, (r2 >> 16) >= t), tl.join((r1 >> 16) >= t, (r3 >> 16) >= t))
    return tl.reshape(tl.join(low, high), (BLOCK_M, BLOCK_N))  # column 8q + j takes integer j


@triton.jit
def _get(src, row0, col0, offsets, ok, TMA: tl.constexpr):
    """A tile of ``src`` at (row0, col0): through its tensor descriptor (TMA), or a pointer, ``offsets`` and ``ok``."""
    if TMA:
        return src.load([row0, col0])
    else:
        return tl.load(src + offsets, mask=ok, other=0.0)


@triton.jit
def _get_pair(src0, src1, row0, col0, offsets, ok, TMA: tl.constexpr):
    """Tiles of ``src0`` and ``src1`` at (row0, col0), as :func:`_get` reads one each.

    With TMA, ``src0`` describes the two as the halves (2, R, C) of one tensor (see :func:`_halves`), and both
    tiles come in one copy: Triton waits for each descriptor load before the next is issued, so two loads would
    cost the epilogue two round trips to memory.
    """
    if TMA:
        return tl.split(tl.permute(src0.load([0, row0, col0]), (1, 2, 0)))
    else:
        return tl.load(src0 + offsets, mask=ok, other=0.0), tl.load(src1 + offsets, mask=ok, other=0.0)


@triton.jit
def _put(dst, row0, col0, value, offsets, ok, TMA: tl.constexpr):
    """Store ``value`` as the tile of ``dst`` at (row0, col0), as :func:`_get` reads one."""
    if TMA:
        dst.store([row0, col0], value)
    else:
        tl.store(dst + offsets, value, mask=ok)


@triton.jit
def _epilogue(
    acc,  # (BLOCK_M, BLOCK_N) fp32: the product tile of row block pid_m, column block pid_n
    pid_m,
    pid_n,
    out0,  # pointers, or with TMA tensor descriptors of (BLOCK_M, BLOCK_N) tiles ((BLOCK_M, BLOCK_N/2): cos, sin)
    out1,
    in0,
    in1,
    cos,
    sin,
    M,
    N,
    T,
    p_drop,
    seed,
    grad_add_ptr,
    dt: tl.constexpr,  # the dtype of the (M, N) tensors
    EPILOGUE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    TMA: tl.constexpr,
):
    """Apply :func:`_neuron_gemm`'s epilogue to one product tile and store what it makes."""
    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    m_ok, n_ok = m < M, n < N
    row0, col0 = pid_m * BLOCK_M, pid_n * BLOCK_N
    tile = m.to(tl.int64)[:, None] * N + n[None, :]  # (BLOCK_M, BLOCK_N) element offsets of the (M, N) tensors
    ok = m_ok[:, None] & n_ok[None, :]
    if EPILOGUE == 0 or EPILOGUE == 3:  # the angles of the tile's pairs: row m is position m mod T
        pair = pid_n * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)  # (BLOCK_N/2,)
        trig = (m % T).to(tl.int64)[:, None] * (N // 2) + pair[None, :]
        trig_ok = m_ok[:, None] & (pair < N // 2)[None, :]
        c, s = _get_pair(cos, sin, row0 % T, col0 // 2, trig, trig_ok, TMA)  # TMA: BLOCK_M divides T (_tma_fits)
    scale = 1.0 / (1.0 - p_drop)  # dropout keeps an element with probability 1 − p and scales it by this

    if EPILOGUE == 0:  # x = ReLU(v·D_x) and its rotation RoPE(x)
        x = tl.maximum(acc, 0.0).to(dt)
        _put(out0, row0, col0, x, tile, ok, TMA)
        xe, xo = _pairs(x, BLOCK_M, BLOCK_N)
        xr = _interleave(*_rotate(xe, xo, c, s), BLOCK_M, BLOCK_N)
        _put(out1, row0, col0, xr.to(dt), tile, ok, TMA)
    elif EPILOGUE == 1:  # y = ReLU(LN(a)·D_y) and dropout(x ⊙ y)
        y = tl.maximum(acc, 0.0).to(dt)
        x = _get(in0, row0, col0, tile, ok, TMA)
        xe, xo = _pairs(x, BLOCK_M, BLOCK_N)
        ye, yo = _pairs(y, BLOCK_M, BLOCK_N)
        xy = _interleave((xe * ye).to(dt), (xo * yo).to(dt), BLOCK_M, BLOCK_N)
        if p_drop > 0:
            keep = _keep(seed, m, pid_n, N, p_drop, BLOCK_M, BLOCK_N)
            xy = tl.where(keep, (xy.to(tl.float32) * scale).to(dt), 0.0).to(dt)
        _put(out0, row0, col0, y, tile, ok, TMA)
        _put(out1, row0, col0, xy, tile, ok, TMA)
    elif EPILOGUE == 2:  # from ∂(dropout(x ⊙ y)) = g·Eᵀ: ∂y before its ReLU, and ∂(x ⊙ y) ⊙ y
        # dropout's mask applies to the two products (a dropped element's are 0, as its ∂(x ⊙ y) is), in the
        # loads' layout, where its own layout converts cheaply (see _pairs)
        g = acc.to(dt)
        if p_drop > 0:
            g = (g.to(tl.float32) * scale).to(dt)
        x, y = _get_pair(in0, in1, row0, col0, tile, ok, TMA)
        ge, go = _pairs(g, BLOCK_M, BLOCK_N)
        xe, xo = _pairs(x, BLOCK_M, BLOCK_N)
        ye, yo = _pairs(y, BLOCK_M, BLOCK_N)
        gx = _interleave((ge * xe).to(dt), (go * xo).to(dt), BLOCK_M, BLOCK_N)
        gp = _interleave((ge * ye).to(dt), (go * yo).to(dt), BLOCK_M, BLOCK_N)
        if p_drop > 0:
            keep = _keep(seed, m, pid_n, N, p_drop, BLOCK_M, BLOCK_N)
            gx = tl.where(keep, gx, 0.0).to(dt)
            gp = tl.where(keep, gp, 0.0).to(dt)
        gy = tl.where(y > 0, gx.to(tl.float32) + tl.load(grad_add_ptr), 0.0).to(dt)
        _put(out0, row0, col0, gy, tile, ok, TMA)
        _put(out1, row0, col0, gp, tile, ok, TMA)
    elif EPILOGUE == 4:  # scores RoPE(x)·RoPE(x)ᵀ strictly below the diagonal (column j < row t), else 0
        t = m % T  # (BLOCK_M,) positions of the rows in their sequence
        _put(out0, row0, col0, tl.where(n[None, :] < t[:, None], acc, 0.0).to(dt), tile, ok, TMA)
    else:  # ∂x before its ReLU: RoPE⁻¹((Gg + Ggᵀ)·RoPE(x)) + ∂(x ⊙ y) ⊙ y, where x > 0
        ge, go = _pairs(acc.to(dt), BLOCK_M, BLOCK_N)
        turned = _interleave(*_rotate(ge, go, c, -s), BLOCK_M, BLOCK_N).to(dt)  # the inverse rotation
        part, x = _get_pair(in0, in1, row0, col0, tile, ok, TMA)
        gx = (turned.to(tl.float32) + part.to(tl.float32)).to(dt).to(tl.float32) + tl.load(grad_add_ptr)
        _put(out0, row0, col0, tl.where(x > 0, gx, 0.0).to(dt), tile, ok, TMA)


@triton.jit
def _tile_of(t, n_m, n_n, GROUP_M: tl.constexpr):
    """Row and column block of tile ``t``.

    Tiles walk GROUP_M row blocks across all column blocks before moving on, so that A's rows stay in L2.
    """
    group = t // (GROUP_M * n_n)
    first_m = group * GROUP_M
    rows_in_group = tl.minimum(n_m - first_m, GROUP_M)
    return first_m + (t % (GROUP_M * n_n)) % rows_in_group, (t % (GROUP_M * n_n)) // rows_in_group


@triton.jit
def _sequence_bases(a_ptr, b_ptr, pid_m, T, a_batch, b_batch, BATCHED: tl.constexpr, BLOCK_M: tl.constexpr):
    """Row block ``pid_m``'s sequence, and where A's and B's blocks start (BATCHED: that sequence's, else all)."""
    seq = (pid_m * BLOCK_M) // T  # BATCHED: a program's rows lie in one sequence (the launcher sees to it)
    a_base = a_ptr + seq.to(tl.int64) * a_batch if BATCHED else a_ptr
    b_base = b_ptr + seq.to(tl.int64) * b_batch if BATCHED else b_ptr
    return seq, a_base, b_base


@triton.jit
def _a_rows(a_base, m, seq, T, stride_am, BATCHED: tl.constexpr):
    """(BLOCK_M, 1) pointers to the A rows ``m`` (BATCHED: positions m − seq·T of their sequence's block)."""
    return a_base + (m - seq * T if BATCHED else m).to(tl.int64)[:, None] * stride_am


@triton.jit
def _walk_k(
    a_ptr,
    b_ptr,
    pid_m,
    pid_n,
    M,
    N,
    K,
    T,
    stride_am,
    stride_ak,
    stride_bk,
    stride_bn,
    a_batch,
    b_batch,
    EPILOGUE: tl.constexpr,
    BATCHED: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """The (BLOCK_M, BLOCK_N) fp32 product tile of row block ``pid_m`` and column block ``pid_n``, K in blocks."""
    seq, a_base, b_base = _sequence_bases(a_ptr, b_ptr, pid_m, T, a_batch, b_batch, BATCHED, BLOCK_M)
    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    m_ok, n_ok = m < M, n < N
    a_rows = _a_rows(a_base, m, seq, T, stride_am, BATCHED)
    k_end = K
    if EPILOGUE == 4:  # causal scores: a tile wholly on or above the diagonal (no column j < row t) is all 0
        k_end = tl.where(pid_n * BLOCK_N < pid_m * BLOCK_M - seq * T + BLOCK_M - 1, K, 0)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, k_end, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)  # (BLOCK_K,)
        k_ok = k < K
        a = tl.load(a_rows + k[None, :] * stride_ak, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(b_base + k.to(tl.int64)[:, None] * stride_bk + n[None, :] * stride_bn,
                    mask=k_ok[:, None] & n_ok[None, :], other=0.0)  # fmt: skip
        if UPCAST:
            a, b = a.to(tl.float32), b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
    return acc


@triton.jit
def _walk_k_tma(a_desc, b_desc, pid_m, pid_n, K, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):  # fmt: skip
    """:func:`_walk_k` through tensor descriptors (TMA) of A (M, K) and of B as (N, K): K-major, unbatched."""
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        a = a_desc.load([pid_m * BLOCK_M, k0])  # (BLOCK_M, BLOCK_K), zeros past the tensor's edges
        b = b_desc.load([pid_n * BLOCK_N, k0])  # (BLOCK_N, BLOCK_K)
        if UPCAST:
            a, b = a.to(tl.float32), b.to(tl.float32)
        acc = tl.dot(a, b.T, acc, input_precision=DOT_PRECISION)
    return acc


@triton.jit
def _neuron_gemm(
    a_ptr,  # (M, K) with strides (stride_am, stride_ak); BATCHED: sequence s's block starts at s·a_batch
    b_ptr,  # (K, N) with strides (stride_bk, stride_bn); BATCHED: sequence s's block starts at s·b_batch
    out0_ptr,  # (M, N): x | y | ∂y | ∂x | scores
    out1_ptr,  # (M, N): RoPE(x) | dropout(x ⊙ y) | the x-part of ∂x | unused | unused
    in0_ptr,  # (M, N): unused | x | x | the x-part of ∂x | unused
    in1_ptr,  # (M, N): unused | unused | y | x | unused
    cos_ptr,  # (T, N/2) fp32: cos of each position's pair angles (ENCODE, ROPE_BACKWARD)
    sin_ptr,  # (T, N/2) fp32
    M,
    N,
    K,
    T,  # tokens per sequence: row m is position m mod T
    stride_am,
    stride_ak,
    stride_bk,
    stride_bn,
    a_batch,  # BATCHED: elements between the A blocks of consecutive sequences
    b_batch,  # BATCHED: ... and between their B blocks
    p_drop,  # dropout probability (GATE, GATE_BACKWARD), a multiple of 2^-16; 0 = none
    seed,  # Philox seed of the dropout mask
    grad_add_ptr,  # () fp32: added to ∂y (GATE_BACKWARD) or ∂x (ROPE_BACKWARD) before its ReLU (activity penalty)
    EPILOGUE: tl.constexpr,
    BATCHED: tl.constexpr,  # row m multiplies sequence m // T's block of B (and its A rows lie in its A block)
    DOT_PRECISION: tl.constexpr,  # "ieee" or "tf32" (for fp32 operands; 16-bit ones multiply exactly either way)
    UPCAST: tl.constexpr,  # multiply in fp32 (the interpreter's dot mistakes bf16 operands; products are exact)
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    ROW_BLOCKS: tl.constexpr,  # > 1: one program makes this many row blocks against one B block held (BLOCK_K ≥ K)
    PERSISTENT: tl.constexpr,  # > 0: the launcher starts this many programs per SM, and each loops over tiles
    TMA: tl.constexpr,  # with PERSISTENT: tiles move through tensor descriptors (Hopper's TMA; see _tma_fits)
    PAIRED: tl.constexpr,  # the epilogue's two inputs (ENCODE: cos, sin; GATE_BACKWARD: x, y) are the halves of one
    # tensor, or it reads fewer (see _halves); TMA needs it, to load both in one copy
):
    n_m, n_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
    pid = tl.program_id(0)
    dt: tl.constexpr = out0_ptr.dtype.element_ty
    if PERSISTENT > 0:
        # Program p makes tiles p, p + P, p + 2P, ... One flattened loop over (tile, K block), which the software
        # pipeline overlaps across tiles: the next tile's operands load during this tile's epilogue. The
        # epilogue counts its own tiles (t_out), as Triton's persistent-matmul tutorial does to keep its
        # pipeliner off a value used both before and after the K loop.
        out0, out1, in0, in1, cos, sin = out0_ptr, out1_ptr, in0_ptr, in1_ptr, cos_ptr, sin_ptr
        if TMA:
            tl.static_assert(PAIRED, "TMA loads an epilogue's two inputs as the halves of one tensor")
            # A program makes its descriptors once (in global scratch, from the launcher's allocator), and each
            # tile's operands, inputs and outputs move by TMA: a copy engine, not the threads, moves and bounds them
            a_d = tl.make_tensor_descriptor(a_ptr, [M, K], [stride_am, 1], [BLOCK_M, BLOCK_K])
            b_d = tl.make_tensor_descriptor(b_ptr, [N, K], [stride_bn, 1], [BLOCK_N, BLOCK_K])  # Bᵀ, row-major
            out0 = tl.make_tensor_descriptor(out0_ptr, [M, N], [N, 1], [BLOCK_M, BLOCK_N])
            out1 = tl.make_tensor_descriptor(out1_ptr, [M, N], [N, 1], [BLOCK_M, BLOCK_N])
            # an epilogue's two inputs as the halves of one (2, …) tensor, both tiles in one copy (see _get_pair)
            if EPILOGUE == 0:  # cos and sin
                trig_rows = T.to(tl.int64) * (N // 2)
                cos = tl.make_tensor_descriptor(cos_ptr, [2, T, N // 2], [trig_rows, N // 2, 1],
                                                [2, BLOCK_M, BLOCK_N // 2])  # fmt: skip
            if EPILOGUE == 1:  # x
                in0 = tl.make_tensor_descriptor(in0_ptr, [M, N], [N, 1], [BLOCK_M, BLOCK_N])
            if EPILOGUE == 2:  # x and y
                in0 = tl.make_tensor_descriptor(in0_ptr, [2, M, N], [M.to(tl.int64) * N, N, 1], [2, BLOCK_M, BLOCK_N])
        # K > 0 (the launcher checks it): without it, flattening the loop also compiles a copy of it for an empty K
        # loop (a third more instructions at 64 × 128 tiles, never run by a product of K = d or T)
        tl.assume(K > 0)
        t_out = pid - tl.num_programs(0)
        for t in tl.range(pid, n_m * n_n, tl.num_programs(0), flatten=True):
            pid_m, pid_n = _tile_of(t, n_m, n_n, GROUP_M)
            if TMA:
                acc = _walk_k_tma(a_d, b_d, pid_m, pid_n, K, DOT_PRECISION, UPCAST, BLOCK_M, BLOCK_N, BLOCK_K)
            else:
                acc = _walk_k(a_ptr, b_ptr, pid_m, pid_n, M, N, K, T, stride_am, stride_ak, stride_bk, stride_bn,
                              a_batch, b_batch, EPILOGUE, BATCHED, DOT_PRECISION, UPCAST, BLOCK_M, BLOCK_N,
                              BLOCK_K)  # fmt: skip
            t_out += tl.num_programs(0)
            out_m, out_n = _tile_of(t_out, n_m, n_n, GROUP_M)
            _epilogue(acc, out_m, out_n, out0, out1, in0, in1, cos, sin, M, N, T, p_drop, seed, grad_add_ptr, dt,
                      EPILOGUE, BLOCK_M, BLOCK_N, TMA)  # fmt: skip
    elif ROW_BLOCKS == 1:
        pid_m, pid_n = _tile_of(pid, n_m, n_n, GROUP_M)
        acc = _walk_k(a_ptr, b_ptr, pid_m, pid_n, M, N, K, T, stride_am, stride_ak, stride_bk, stride_bn, a_batch,
                      b_batch, EPILOGUE, BATCHED, DOT_PRECISION, UPCAST, BLOCK_M, BLOCK_N, BLOCK_K)  # fmt: skip
        _epilogue(acc, pid_m, pid_n, out0_ptr, out1_ptr, in0_ptr, in1_ptr, cos_ptr, sin_ptr, M, N, T, p_drop, seed,
                  grad_add_ptr, dt, EPILOGUE, BLOCK_M, BLOCK_N, False)  # fmt: skip
    else:
        # Consecutive programs share ROW_BLOCKS row blocks of A (in L2) and take B's column blocks in turn; each
        # reads its B block once, where one row block per program would read it n_m times over (on an H200 this
        # made ENCODE 13% faster and the other epilogues slower: their epilogues, not the tiles read, bind them).
        pid_n = pid % n_n
        pid_m = (pid // n_n) * ROW_BLOCKS
        n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
        n_ok = n < N
        seq, a_base, b_base = _sequence_bases(a_ptr, b_ptr, pid_m, T, a_batch, b_batch, BATCHED, BLOCK_M)
        k = tl.arange(0, BLOCK_K)  # (BLOCK_K,): all of K
        k_ok = k < K
        b = tl.load(b_base + k.to(tl.int64)[:, None] * stride_bk + n[None, :] * stride_bn,
                    mask=k_ok[:, None] & n_ok[None, :], other=0.0)  # fmt: skip
        if UPCAST:
            b = b.to(tl.float32)
        for r in range(ROW_BLOCKS):
            m = (pid_m + r) * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
            m_ok = m < M
            a_rows = _a_rows(a_base, m, seq, T, stride_am, BATCHED)
            a = tl.load(a_rows + k[None, :] * stride_ak, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            if UPCAST:
                a = a.to(tl.float32)
            acc = tl.dot(a, b, input_precision=DOT_PRECISION, out_dtype=tl.float32)
            _epilogue(acc, pid_m + r, pid_n, out0_ptr, out1_ptr, in0_ptr, in1_ptr, cos_ptr, sin_ptr, M, N, T,
                      p_drop, seed, grad_add_ptr, dt, EPILOGUE, BLOCK_M, BLOCK_N, False)  # fmt: skip


def _halves(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``b`` follows ``a`` in memory as the second half of one contiguous (2, …) tensor."""
    return (
        a.shape == b.shape
        and a.dtype == b.dtype
        and a.is_contiguous()
        and b.is_contiguous()
        and b.data_ptr() == a.data_ptr() + a.numel() * a.element_size()
    )


def _tma_fits(args: dict, batched: bool, block_m: int, paired: bool) -> bool:
    """Whether a launch with these arguments (by name) can move its tiles by TMA, in row blocks of ``block_m``.

    Tensor descriptors need a unit stride along the last dimension (A's K, and B's K: B K-major), the other
    strides and every base address 16-byte aligned, and an unbatched product; ENCODE's cos and sin tiles need
    BLOCK_M to divide T (a tile's rows are consecutive positions); an epilogue reading two inputs needs them
    ``paired``, the halves of one tensor (:func:`_halves`), which it loads in one copy; the GPU needs TMA (sm_90
    or later), and a Triton that makes descriptors in the kernel (``tl.make_tensor_descriptor``).
    """
    tensors = [v for v in args.values() if isinstance(v, torch.Tensor)]
    cuda = [t for t in tensors if t.is_cuda]
    return (
        hasattr(tl, "make_tensor_descriptor")
        and hasattr(triton, "set_allocator")
        and not batched
        and paired
        and args.get("stride_ak") == 1
        and args.get("stride_bk") == 1
        and all(args.get(k, 0) % 8 == 0 for k in ("N", "K", "stride_am", "stride_bn"))
        and args["T"] % block_m == 0
        and all(t.data_ptr() % 16 == 0 for t in tensors)
        and (not cuda or torch.cuda.get_device_capability(cuda[0].device)[0] >= 9)
    )


def _prune(configs, named_args, **kwargs):
    """The configs worth timing for these arguments.

    When BATCHED, a program's rows (BLOCK_M · ROW_BLOCKS) must divide T (they lie in one sequence); a program
    holding its B block (ROW_BLOCKS > 1) needs BLOCK_K = K rounded up to a power of two; a persistent program a
    K-major B (unit stride along K; see :func:`_k_major`); one moving tiles by TMA what :func:`_tma_fits` asks;
    row blocks under 64 only when no larger one does; and BLOCK_N at most N rounded up to a power of two, where
    any config has it.
    """
    T, N, K = named_args["T"], named_args["N"], named_args["K"]
    batched = kwargs.get("BATCHED", named_args.get("BATCHED"))
    paired = kwargs.get("PAIRED", named_args.get("PAIRED"))
    keep = [c for c in configs if not batched or T % (c.kwargs["BLOCK_M"] * c.kwargs["ROW_BLOCKS"]) == 0]
    keep = [c for c in keep if c.kwargs["ROW_BLOCKS"] == 1 or c.kwargs["BLOCK_K"] == triton.next_power_of_2(K)]
    keep = [c for c in keep if not c.kwargs["PERSISTENT"] or named_args.get("stride_bk") == 1]
    keep = [c for c in keep if not c.kwargs["TMA"] or _tma_fits(named_args, batched, c.kwargs["BLOCK_M"], paired)]
    keep = [c for c in keep if c.kwargs["BLOCK_M"] >= 64] or keep
    narrow = [c for c in keep if c.kwargs["BLOCK_N"] <= max(16, triton.next_power_of_2(N))]
    return narrow or keep


_tuned = triton.autotune(
    configs=[
        triton.Config(
            dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, ROW_BLOCKS=r, PERSISTENT=p, TMA=tma),
            num_warps=w,
            num_stages=s,
        )
        for bm, bn, bk, w, s, r, p, tma in _CONFIGS
    ],
    key=["M", "N", "K", "T", "EPILOGUE", "BATCHED", "DOT_PRECISION", "UPCAST", "PAIRED"],
    prune_configs_by=dict(early_config_prune=_prune),
)(_neuron_gemm)


def dropout_p(p: float) -> float:
    """The dropout probability that the fused head applies for ``p``: ``p`` rounded to a multiple of 2^-16.

    Its mask compares 16-bit random integers with p·2^16 (see :func:`_keep`), and scales the kept elements by
    1 / (1 − this p), so that dropout stays unbiased: p = 0.1 becomes 6554 / 65536 ≈ 0.100006.
    """
    return round(p * 65536) / 65536


@functools.cache
def _multiprocessors(device: torch.device) -> int:
    """The SMs of a CUDA ``device`` (1 elsewhere: the interpreter), for persistent launches."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1


def _descriptor_scratch(size: int, alignment: int, stream) -> torch.Tensor:
    """Global memory for the tensor descriptors that the programs of a TMA launch make (Triton's allocator).

    On the current CUDA device, where Triton launches; torch's allocations are aligned beyond the 128 bytes
    that Triton asks for (``alignment``).
    """
    return torch.empty(size, dtype=torch.int8, device="cuda")


def _ensure_allocator() -> None:
    """Give Triton :func:`_descriptor_scratch` as its allocator where none is set (a user's own stays).

    Triton keeps the allocator in a context variable, so each thread that launches (autograd runs the backward
    in its own) needs it set. Whether one is set is Triton's private state: a Triton that keeps it elsewhere
    gets ours each time.
    """
    try:
        from triton.runtime._allocation import NullAllocator, _allocator

        if not isinstance(_allocator.get(), NullAllocator):
            return
    except ImportError:
        pass
    triton.set_allocator(_descriptor_scratch)


@functools.cache
def _zero(device: torch.device) -> torch.Tensor:
    """A () fp32 zero on ``device``, made once: the ``grad_add`` of launches without an activity penalty."""
    return torch.zeros((), device=device, dtype=torch.float32)


def _launch(
    epilogue: int,
    a: torch.Tensor,
    b: torch.Tensor,
    outs: tuple[torch.Tensor, torch.Tensor],
    ins: tuple[torch.Tensor, torch.Tensor],
    trig: tuple[torch.Tensor, torch.Tensor],
    T: int,
    batch: tuple[int, int] | None = None,
    p_drop: float = 0.0,
    seed: int = 0,
    grad_add: torch.Tensor | None = None,
    config: dict | None = None,
) -> None:
    """Run :func:`_neuron_gemm` on ``a`` (…, K) and ``b`` (K, N) into ``outs`` (M, N) each.

    ``batch`` = (a_batch, b_batch) makes the product per sequence: rows m of sequence s = m // T take their A
    rows from ``a``'s block s (element offset s·a_batch; ``a`` may be (B, T, K)) and multiply B's block s.
    ``config`` (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, ROW_BLOCKS, PERSISTENT, TMA, and optionally num_warps and
    num_stages) launches that config instead of the autotuner's (``_INTERPRETED`` where Triton interprets and
    none is given); its ROW_BLOCKS apply where a program's rows lie in one sequence and it is not persistent,
    with BLOCK_K widened to all of K; its TMA where it is persistent and :func:`_tma_fits` allows. A persistent
    launch starts PERSISTENT programs per SM (at most one per tile; in the interpreter, PERSISTENT programs).
    """
    M, N = outs[0].shape
    K, batched = a.shape[-1], batch is not None
    assert K > 0, f"a product needs K > 0, got a of shape {tuple(a.shape)}"  # the kernel assumes it
    p_drop = dropout_p(p_drop)
    if grad_add is None:
        grad_add = _zero(a.device)
    # fp32 operands follow torch's TF32 switch; 16-bit ones ignore the setting ("tf32" is Triton's default)
    precision = "ieee" if a.dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32 else "tf32"
    args = (a, b, *outs, *ins, *trig, M, N, K, T, a.stride(-2), a.stride(-1), b.stride(0), b.stride(1),
            *(batch or (0, 0)), p_drop, seed, grad_add)  # fmt: skip

    if a.is_cuda:
        _ensure_allocator()  # for the tensor descriptors of TMA configs

    def grid(meta):
        tiles = triton.cdiv(triton.cdiv(M, meta["BLOCK_M"]), meta["ROW_BLOCKS"]) * triton.cdiv(N, meta["BLOCK_N"])
        if meta["PERSISTENT"]:
            return (min(tiles, meta["PERSISTENT"] * _multiprocessors(a.device)),)
        return (tiles,)

    # the two inputs that ENCODE and GATE_BACKWARD read, if the halves of one tensor, move in one TMA copy
    paired = {ENCODE: _halves(*trig), GATE_BACKWARD: _halves(*ins)}.get(epilogue, True)
    if config is None and not interpreting():
        _tuned[grid](*args, EPILOGUE=epilogue, BATCHED=batched, DOT_PRECISION=precision, UPCAST=False, PAIRED=paired)
        return
    meta = dict(config if config is not None else _INTERPRETED)
    meta.setdefault("PERSISTENT", 0)
    named = dict(zip(_neuron_gemm.arg_names, args, strict=False))
    tma = bool(meta.get("TMA")) and bool(meta["PERSISTENT"])
    meta["TMA"] = int(tma and _tma_fits(named, batched, meta["BLOCK_M"], paired))
    if (batched and T % (meta["BLOCK_M"] * meta["ROW_BLOCKS"])) or meta["PERSISTENT"]:
        meta["ROW_BLOCKS"] = 1  # a program's rows must lie in one sequence; a persistent program walks K
    if meta["ROW_BLOCKS"] > 1:
        meta["BLOCK_K"] = max(meta["BLOCK_K"], triton.next_power_of_2(K))  # the held B block spans all of K
    if interpreting():
        precision = "ieee"
    _neuron_gemm[grid(meta)](*args, EPILOGUE=epilogue, BATCHED=batched, DOT_PRECISION=precision,
                             UPCAST=interpreting(), PAIRED=paired, **meta)  # fmt: skip


def supports(v: torch.Tensor, n_neurons: int) -> bool:
    """Whether :func:`fused_head` can run on the stream ``v`` (B, T, d) in its dtype.

    Needs a CUDA tensor (or Triton's interpreter on the CPU), fp32 or bf16, T a multiple of 16 (a row block
    of the batched backward GEMM lies in one sequence) and N a multiple of 16.
    """
    return (
        (v.is_cuda or interpreting())
        and v.dtype in (torch.float32, torch.bfloat16)
        and v.shape[1] % 16 == 0
        and n_neurons % 16 == 0
    )


class _FusedHead(torch.autograd.Function):
    """One head's ``dropout(x ⊙ y)·E`` from the stream v, forward and backward through :func:`_neuron_gemm`.

    Inputs: v (B, T, d), D_x and D_y (d, N) K-major (:func:`_k_major`), E (N, d), all in the compute dtype, cos
    and sin (T, N/2) fp32, the dropout probability and seed, and whether to also return the means of x and y (for
    the activity penalty). Saves x, RoPE(x), y, dropout(x ⊙ y) (each B·T × N), the (B, T, T) scores and the attention's
    (B, T, d) output with its layer-norm statistics.
    """

    @staticmethod
    def forward(ctx, v, dx_w, dy_w, e_w, c, s, p_drop: float, seed: int, means: bool):
        B, T, d = v.shape
        N = dx_w.shape[1]
        v2 = v.reshape(B * T, d)
        # x and y, the halves of one tensor: GATE_BACKWARD's TMA configs load their tiles in one copy (_get_pair)
        x, y = torch.empty(2, B * T, N, device=v.device, dtype=v.dtype).unbind(0)
        xr = torch.empty_like(x)
        _launch(ENCODE, v2, dx_w, (x, xr), (x, x), (c, s), T)
        scores = torch.empty(B, T, T, device=v.device, dtype=v.dtype)  # RoPE(x)·RoPE(x)ᵀ below the diagonal
        flat = scores.view(B * T, T)
        _launch(SCORES, xr, xr.mT, (flat, flat), (flat, flat), (c, s), T, batch=(T * N, T * N))
        a = torch.matmul(scores, v).float()  # (B, T, d)
        normed, mean, rstd = torch.native_layer_norm(a, (d,), None, None, 1e-5)  # F.layer_norm, and its stats
        an = normed.to(v.dtype).view(B * T, d)
        xy = torch.empty_like(x)
        _launch(GATE, an, dy_w, (y, xy), (x, x), (c, s), T, p_drop=p_drop, seed=seed)
        out = (xy @ e_w).view(B, T, d)
        ctx.save_for_backward(v, dx_w, dy_w, e_w, c, s, x, xr, y, xy, scores, a, mean, rstd, an)
        ctx.p_drop, ctx.seed, ctx.means = p_drop, seed, means
        if means:
            return out, x.mean(dtype=torch.float32), y.mean(dtype=torch.float32)
        zero = out.new_zeros((), dtype=torch.float32)
        ctx.mark_non_differentiable(zero)
        return out, zero, zero

    @staticmethod
    def backward(ctx, g_out, g_xmean, g_ymean):
        v, dx_w, dy_w, e_w, c, s, x, xr, y, xy, scores, a, mean, rstd, an = ctx.saved_tensors
        B, T, d = v.shape
        N, dt = x.shape[1], v.dtype
        add_x, add_y = (None if g is None or not ctx.means else g.float() / x.numel() for g in (g_xmean, g_ymean))
        g2 = g_out.reshape(B * T, d).to(dt).contiguous()
        gy, gx_part = torch.empty_like(x), torch.empty_like(x)
        # Eᵀ as a view of E: a K-major B operand (unit stride along K = d), as D_x and D_y are made in fused_head
        _launch(GATE_BACKWARD, g2, e_w.mT, (gy, gx_part), (x, y), (c, s), T, p_drop=ctx.p_drop,
                seed=ctx.seed, grad_add=add_y)  # fmt: skip
        d_e = xy.mT @ g2  # (N, d)
        d_dy = an.mT @ gy  # (d, N)
        d_an = (gy @ dy_w.mT).view(B, T, d).float()
        d_a = torch.ops.aten.native_layer_norm_backward(d_an, a, (d,), mean, rstd, None, None, [True, False, False])
        d_a = d_a[0].to(dt)  # (B, T, d)
        gram = torch.matmul(d_a, v.mT).tril_(-1)  # ∂scores (B, T, T)
        d_v = torch.matmul(scores.mT, d_a)  # (B, T, d)
        gx = torch.empty_like(x)
        _launch(ROPE_BACKWARD, gram + gram.mT, xr, (gx, gx), (gx_part, x), (c, s), T, batch=(T * T, T * N),
                grad_add=add_x)  # fmt: skip
        v2 = v.reshape(B * T, d)
        d_dx = v2.mT @ gx  # (d, N)
        d_v = d_v + (gx @ dx_w.mT).view(B, T, d)
        return d_v, d_dx, d_dy, d_e, None, None, None, None, None


def _k_major(w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``w`` (K, N) in ``dtype`` as the transpose of a contiguous (N, K) copy: unit stride along K.

    The GEMM's B operands are K-major, as Hopper's wgmma takes them natively: Triton's pipeline of a persistent
    program's flattened loop copies an N-major B tile through registers instead of asynchronously (sm_90, Triton
    3.6 and 3.9). A copy costs N·K elements (4 MB at bdh-ref's head), against the 268 MB tensors it makes.
    """
    return torch.empty(w.shape[1], w.shape[0], device=w.device, dtype=dtype).copy_(w.mT).mT


@torch.compiler.disable  # Dynamo does not trace the launcher; a compiled model calls it between graphs
def fused_head(
    v: torch.Tensor,
    dx_w: torch.Tensor,
    dy_w: torch.Tensor,
    e_w: torch.Tensor,
    c: torch.Tensor,
    s: torch.Tensor,
    p_drop: float,
    means: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One head's output (B, T, d) of BDH's layer, and the means of its x and y (0 unless ``means``).

    ``v`` (B, T, d) in the compute dtype; ``dx_w``, ``dy_w`` (d, N) and ``e_w`` (N, d) are cast to it.
    ``c``, ``s`` (T, N/2) fp32 are the cos and sin of each position's pair angles (best the halves of one tensor:
    see :func:`halves_of_one`). ``p_drop`` > 0 applies dropout to x ⊙ y with a Philox seed drawn from torch's
    default generator (so seeding torch seeds it), at the probability :func:`dropout_p` (``p_drop`` rounded to a
    multiple of 2^-16).
    """
    dt = v.dtype
    seed = int(torch.randint(0, 2**31 - 1, (1,)).item()) if p_drop > 0 else 0
    v, e_w = (_aligned(t) for t in (v, e_w.to(dt)))
    c, s = halves_of_one(c, s)
    with torch.autocast(v.device.type, enabled=False):
        return _FusedHead.apply(v, _k_major(dx_w, dt), _k_major(dy_w, dt), e_w, c, s, p_drop, seed, means)


def halves_of_one(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``a`` and ``b`` (same shape and dtype) as the halves of one contiguous, 16-byte aligned (2, …) tensor.

    As they are where they already are (:func:`_halves`), else a copy. The fused head's TMA configs load the
    tiles of two such halves in one copy; :meth:`recruit.models.bdh.BDH.forward` makes its cos and sin tables so.
    """
    if _halves(a, b) and a.data_ptr() % 16 == 0 and b.data_ptr() % 16 == 0:
        return a, b
    return torch.stack((a, b)).unbind(0)


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """``t`` contiguous, at a 16-byte aligned address (a copy where it is not), as tensor descriptors need it.

    Every tensor of a head then is, and a TMA config that the autotuner picked for one call fits the next.
    """
    t = t.contiguous()
    return t if t.data_ptr() % 16 == 0 else t.clone()


def reference_head(v, dx_w, dy_w, e_w, c, s, keep: torch.Tensor | None = None, p_drop: float = 0.0):
    """:func:`fused_head` in plain torch (the tests' oracle): output (B, T, d), x and y (B, T, N).

    ``keep`` (B·T, N) bool, when given, is the dropout mask of probability ``p_drop``.
    """
    from recruit.models.bdh import _head_attention, _ln

    B, T, d = v.shape
    x = F.relu(v @ dx_w)  # (B, T, N)
    a = _ln(_head_attention(x, v, c, s))
    y = F.relu(a.to(v.dtype) @ dy_w)
    xy = x * y
    if keep is not None:
        xy = torch.where(keep.view_as(xy), xy / (1 - p_drop), 0.0).to(xy.dtype)
    return (xy @ e_w).view(B, T, d), x, y
