"""The fused FFF inference kernels in Triton: every level of every tree in one launch.

Two kernels. The token kernel (small batches, :func:`_fff_token_kernel`) gives each program one token and
keeps its path in registers, then gathers all the path's ``w_out_t`` rows at once, so that the output
costs one round trip to memory instead of one per level; it can also split the walk over subtree programs
(``split``, see there), read bf16 rows as 32-bit pairs of features (``pairs``, see :func:`_token_dot_chunk`),
read rows in a blocked layout that keeps each deep subtree in one run of rows (``blocked``, see
:func:`blocked_rows`), and then ask L2 for a whole subtree's rows once the walk has entered it (``prefetch``).
The block kernel (:func:`_fff_kernel`, large batches) is described below.

In the block kernel, one program owns a block of ``BLOCK_B`` tokens and a slice of the output columns. A
routing step evaluates ``SPEC`` levels at once: all 2^SPEC − 1 nodes of the subtree below each token's
current node (gather their ``w_in`` rows in ``BLOCK_D`` chunks, dot with the token, add the biases), then
walks the subtree in registers. SPEC = 1 reads only the path; larger SPEC cuts the chain of dependent loads
(latency, what limits small batches) by SPEC for (2^SPEC − 1) / SPEC times the routing reads. Rows are
contiguous along the feature dimension, so each token's chunk of a row is one coalesced segment. All
arithmetic is float32 whatever the storage dtype (float32, float16, bfloat16); the output has the dtype of
``x``.

The block kernel's walk writes the visited rows and their GELU values to a small scratch buffer; the program
then sums its output columns from those ``w_out_t`` rows, ``BLOCK_O`` at a time (registers would hold the
path replicated across a warp's lanes, and spill; accumulating the output during the walk instead measured
up to 2x slower on an H200).

Small batches split the output columns over several programs so that the GPU fills up (each recomputes the
routing, whose rows come from L2); large batches give each program all columns so that routing runs once.
Both kernels use the same routing steps, on rows in heap order or in a blocked layout that keeps each deep subtree
in one run of rows (``blocked``, see :func:`blocked_rows`).

This module imports ``triton`` at import time: import it lazily (``recruit.fff.kernels.fff_infer`` does).
Triton's interpreter runs it on CPU tensors when ``TRITON_INTERPRET=1`` is set before ``triton`` is first
imported in the process (the tests do so in a subprocess).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch
import triton
import triton.language as tl

from recruit.fff.kernels.reference import check_shapes

SMALL_BATCH = 128  # up to this many tokens the default launch is the token kernel (on an H200 faster than the
# block kernel at 128 tokens, slower at 4096: ``recruit bench fff`` times both)
TOP_LEVELS = 8  # levels routed densely by default above SMALL_BATCH tokens (see fff_triton's ``top``) ...
TOP_LEVELS_LARGE = 7  # ... and above LARGE_BATCH tokens, where one level fewer measured 1-4% faster on an H200
LARGE_BATCH = 1024
_PROGRAMS = 264  # programs to aim for when splitting output columns (2 per SM of an H100)
TOKEN_PATH = 64  # most path rows (trees × levels) that the token kernel holds in registers
_TOKEN_TILE = 8192  # elements per (rows × features) routing tile of the token kernel
_TOKEN_OUT_TILE = 16384  # elements per (path × columns) output tile of the token kernel
PAIRS_BLOCK_D = 1024  # most features per chunk of the token kernel reading pairs (an H200's pick at hidden 4096)
_UNROLL_ALL = 16  # the token kernel unrolls its loop over feature chunks in full up to this many chunks ...
_UNROLL_ALL_FEATURES = 16384  # ... of a row of at most this many features (sm_90: 255 registers at 16384)
# The token kernel's register ceiling (ptxas' .maxnreg). Without one, the ptxas of Triton 3.6 kept registers
# low by issuing a routing step's loads in up to five waves, each waiting for the one before: 11.4 against
# 6.9 µs per call at hidden 4096, 1 token, on an H200. With a ceiling it issues them all before the first use.
TOKEN_MAXNREG = 255
MAX_PREFETCH = 3  # most steps above the blocked subtrees' from which the token kernel L2-prefetches them
# The row layout of a layer's prepared kernel (TritonKernel): subtrees of this many deepest levels in runs of rows,
# 0 for heap order. Heap order, and no prefetch, until a GPU times the blocked layout faster (`recruit bench fff`
# sweeps it as launches `blocked…` and `blocked…-prefetch…`).
LAYER_BLOCKED_LEVELS = 0
LAYER_PREFETCH = 0  # the token kernel's prefetch on such rows (sm_90 and later; 0: none)


@triton.jit
def _gelu(a):
    return 0.5 * a * (1.0 + tl.math.erf(a * 0.7071067811865476))


@triton.jit
def _subtree_lanes(local, SPEC: tl.constexpr):
    """Depth r(j) below the root, 2^r(j) and membership (j < 2^SPEC − 1) of local heap indices j of a subtree.

    ``local`` holds the indices j of a SPEC-level subtree's lanes; below node n, lane j is node n·2^r(j) + j.
    """
    depth = local.to(tl.int64) * 0
    for t in tl.static_range(1, SPEC):
        depth += (local + 1 >= (1 << t)).to(tl.int64)
    return depth, (1 << depth).to(tl.int64), local < (1 << SPEC) - 1


@triton.jit
def _stored(heap, level, LEVELS: tl.constexpr, BLOCKED: tl.constexpr):
    """The stored row (within its tree) of heap node ``heap`` at ``level``, in the layout BLOCKED names.

    BLOCKED = 0: heap order, the node itself. BLOCKED = L > 0: the blocked layout of :func:`blocked_rows`, where
    the levels above L keep heap order and each subtree rooted at level L takes a contiguous run of rows.

    ``level`` may lie below the tree (lanes past the last level, masked by the caller): the row is then junk.
    In 32 bits (a tree's nodes are fewer than 2^31: depth ≤ 30): compiled for sm_90 at hidden 4096, a routing step
    then takes 45 instructions more than in heap order (488), where 64-bit arithmetic took 116 more.
    """
    if BLOCKED == 0:
        return heap
    else:
        h = heap.to(tl.int32)
        lv = level.to(tl.int32)
        below = tl.maximum(lv - BLOCKED, 0)  # levels from the subtree's root down to the node
        i = h + 1 - (1 << lv)  # index within the level
        row = (1 << BLOCKED) - 1 + (i >> below) * ((1 << (LEVELS - BLOCKED)) - 1) + (1 << below) - 1
        return tl.where(lv >= BLOCKED, row + (i & ((1 << below) - 1)), h).to(tl.int64)


@triton.jit
def _fff_kernel(
    x_ptr,  # (B, D_in)
    w_in_ptr,  # (K·M, D_in)
    b_in_ptr,  # (K·M,)
    w_out_ptr,  # (K·M, D_out), w_out_t
    out_ptr,  # (B, D_out)
    path_row_ptr,  # (splits, B, K·(LEVELS − TOP)) int32 scratch: the visited global rows below the top
    path_gelu_ptr,  # (splits, B, K·(LEVELS − TOP)) float32 scratch: GELU of their pre-activations
    top_logit_ptr,  # (K, B, TOP_W) pre-activations of every top node (GEMM outputs); unused if TOP = 0
    top_act_ptr,  # (K, B, TOP_W) out: the GELU of each visited top node, 0 for the others
    B,
    D_IN,
    D_OUT,
    N_NODES,  # M = 2^(depth+1) − 1
    COLS_PER_PROGRAM,  # a multiple of BLOCK_O
    N_TREES: tl.constexpr,
    LEVELS: tl.constexpr,  # depth + 1
    TOP: tl.constexpr,  # levels routed from the precomputed top pre-activations (0 ≤ TOP ≤ LEVELS)
    TOP_W: tl.constexpr,  # columns per tree in the top tables: 2^TOP (aligned) or 2^TOP − 1 when TOP = LEVELS
    TOP_P: tl.constexpr,  # next power of two ≥ TOP_W
    SPEC: tl.constexpr,  # levels per routing step
    SUB: tl.constexpr,  # next power of two ≥ 2^SPEC − 1
    BLOCK_B: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_O: tl.constexpr,
    UNROLL: tl.constexpr,  # unroll factor of the loops over feature chunks and over the path
    BLOCKED: tl.constexpr,  # rows in the blocked layout of subtrees rooted at this level (0: heap order; ≥ TOP)
):
    tok = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)  # (BLOCK_B,)
    tok_mask = tok < B
    tok64 = tok.to(tl.int64)
    PATH: tl.constexpr = LEVELS - TOP  # levels walked by gathering rows, per tree
    path = (tl.program_id(1) * B + tok64) * (N_TREES * PATH)  # (BLOCK_B,) this program's path scratch rows
    # Lane j of a routing step is the subtree node with local heap index j, at relative depth r(j); below
    # node n it is node n·2^r + j of the tree (children of n: 2n+1, 2n+2; grandchildren: 4n+3 .. 4n+6).
    lane = tl.arange(0, SUB)  # (SUB,)
    lane_depth, lane_scale, lane_real = _subtree_lanes(lane, SPEC)  # (SUB,) each: r(j), 2^r(j), j < 2^SPEC − 1

    # Routing: walk every tree for this block of tokens, SPEC levels per step.
    for k in range(N_TREES):
        node = tl.zeros((BLOCK_B,), dtype=tl.int64)  # heap index within tree k of this step's root
        if TOP > 0:  # the top levels: one row of pre-activations per token, walked in registers
            col = tl.arange(0, TOP_P)  # (TOP_P,)
            top = (k * B + tok64[:, None]) * TOP_W + col[None, :]  # (BLOCK_B, TOP_P)
            top_mask = tok_mask[:, None] & (col < TOP_W)[None, :]
            a_top = tl.load(top_logit_ptr + top, mask=top_mask, other=0.0).to(tl.float32)
            seen = tl.zeros((BLOCK_B, TOP_P), dtype=tl.int32)
            for _ in tl.static_range(TOP):
                hit = col[None, :] == node[:, None]  # (BLOCK_B, TOP_P)
                seen += hit.to(tl.int32)
                a = tl.sum(tl.where(hit, a_top, 0.0), axis=1)  # (BLOCK_B,)
                node = 2 * node + 1 + (a > 0).to(tl.int64)
            g_top = tl.where(seen > 0, _gelu(a_top), 0.0)
            tl.store(top_act_ptr + top, g_top.to(top_act_ptr.dtype.element_ty), mask=top_mask)
        for first in range(TOP, LEVELS, SPEC):  # the step's first level
            heap = node[:, None] * lane_scale[None, :] + lane[None, :]  # (BLOCK_B, SUB) the lanes' heap nodes
            rows = k * N_NODES + _stored(heap, first + lane_depth[None, :] + 0 * heap, LEVELS, BLOCKED)
            live = tok_mask[:, None] & (lane_real & (first + lane_depth < LEVELS))[None, :]  # (BLOCK_B, SUB)
            # the biases are loaded before the feature loop (after it, triton 3.6's layout pass fails)
            bias = tl.load(b_in_ptr + rows, mask=live, other=0.0).to(tl.float32)
            acc = tl.zeros((BLOCK_B, SUB, BLOCK_D), dtype=tl.float32)
            for d0 in tl.range(0, D_IN, BLOCK_D, loop_unroll_factor=UNROLL):  # unrolled: more loads in flight
                d = d0 + tl.arange(0, BLOCK_D)  # (BLOCK_D,)
                d_ok = (d < D_IN)[None, None, :]  # (1, 1, BLOCK_D)
                x_off = tok64[:, None, None] * D_IN + d[None, None, :]  # (BLOCK_B, 1, BLOCK_D)
                xv = tl.load(x_ptr + x_off, mask=tok_mask[:, None, None] & d_ok, other=0.0)
                w_off = rows[:, :, None] * D_IN + d[None, None, :]  # (BLOCK_B, SUB, BLOCK_D)
                wv = tl.load(w_in_ptr + w_off, mask=live[:, :, None] & d_ok, other=0.0)
                acc += xv.to(tl.float32) * wv.to(tl.float32)
            logits = tl.sum(acc, axis=2) + bias  # (BLOCK_B, SUB)
            j = tl.zeros((BLOCK_B,), dtype=tl.int64)  # local heap index of the node at this level
            for r in tl.static_range(SPEC):
                pick = lane[None, :] == j[:, None]  # (BLOCK_B, SUB)
                a = tl.sum(tl.where(pick, logits, 0.0), axis=1)  # (BLOCK_B,)
                row = tl.sum(tl.where(pick, rows, 0), axis=1)  # (BLOCK_B,)
                g = _gelu(a)
                keep = tok_mask & (first + r < LEVELS)
                slot = path + k * PATH + first - TOP + r  # (BLOCK_B,)
                tl.store(path_row_ptr + slot, row.to(tl.int32), mask=keep)
                tl.store(path_gelu_ptr + slot, g, mask=keep)
                j = 2 * j + 1 + (a > 0).to(tl.int64)
            node = node * (1 << SPEC) + j  # the node SPEC levels down

    tl.debug_barrier()  # the path scratch, written by some threads, is read by others below

    # Output: this program's column slice, BLOCK_O columns at a time, summed over the visited rows.
    col_start = tl.program_id(1) * COLS_PER_PROGRAM
    col_end = tl.minimum(col_start + COLS_PER_PROGRAM, D_OUT)
    for o0 in range(col_start, col_end, BLOCK_O):
        o = o0 + tl.arange(0, BLOCK_O)  # (BLOCK_O,)
        mask = tok_mask[:, None] & (o < col_end)[None, :]  # (BLOCK_B, BLOCK_O)
        acc = tl.zeros((BLOCK_B, BLOCK_O), dtype=tl.float32)
        for j in tl.range(0, N_TREES * PATH, loop_unroll_factor=UNROLL):
            row = tl.load(path_row_ptr + path + j, mask=tok_mask, other=0).to(tl.int64)  # (BLOCK_B,)
            g = tl.load(path_gelu_ptr + path + j, mask=tok_mask, other=0.0)  # (BLOCK_B,)
            wv = tl.load(w_out_ptr + row[:, None] * D_OUT + o[None, :], mask=mask, other=0.0)
            acc += g[:, None] * wv.to(tl.float32)
        tl.store(out_ptr + tok64[:, None] * D_OUT + o[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bf16_pair(words):
    """Two bf16 values per uint32 of ``words`` as float32: (the low halves, the high halves)."""
    return (words << 16).to(tl.float32, bitcast=True), (words & 0xFFFF0000).to(tl.float32, bitcast=True)


@triton.jit
def _token_dot_chunk(acc, x_ptr, w_in_ptr, tok, rows, live, real, d0, D_IN, BLOCK_D: tl.constexpr,
                     PAIRS: tl.constexpr = False):  # fmt: skip
    """``acc`` (LANES, BLOCK_D) plus token ``tok``'s features [d0, d0 + BLOCK_D) times those of ``rows``.

    ``real`` (LANES,) marks the lanes that hold a node (2^SPEC − 1 of each SUB, a power of two), as a value the
    compiler knows per register, so that the others' products compile to no instructions: their masked loads'
    zeros are opaque to it, and Triton 3.6 (not 3.9) multiplied them, a quarter of a step's FFMAs at SPEC 2.

    With PAIRS (bf16 storage, D_IN even), ``acc`` is (LANES, BLOCK_D / 2): x and the rows are read as 32-bit
    words, each a pair of bf16 features (even ones in the low half), and a bf16 is the top half of its float32,
    so a word's two features widen by one shift and one mask. Widening each bf16 alone compiled to a byte
    permute and a shift for one of the two (sm_90, Triton 3.6, hidden 4096): 447 instructions per routing step
    against 374 with PAIRS.
    """
    if PAIRS:
        h = d0 // 2 + tl.arange(0, BLOCK_D // 2)  # (BLOCK_D/2,) words
        h_ok = h < D_IN // 2
        x32 = tl.load(x_ptr.to(tl.pointer_type(tl.uint32), bitcast=True) + tok * (D_IN // 2) + h, mask=h_ok, other=0)
        w32 = tl.load(w_in_ptr.to(tl.pointer_type(tl.uint32), bitcast=True) + rows[:, None] * (D_IN // 2) + h[None, :],
                      mask=live[:, None] & h_ok[None, :], other=0)  # fmt: skip
        x_even, x_odd = _bf16_pair(x32)
        w_even, w_odd = _bf16_pair(w32)
        acc = acc + x_even[None, :] * w_even + x_odd[None, :] * w_odd
    else:
        d = d0 + tl.arange(0, BLOCK_D)  # (BLOCK_D,)
        d_ok = d < D_IN
        xv = tl.load(x_ptr + tok * D_IN + d, mask=d_ok, other=0.0)
        wv = tl.load(w_in_ptr + rows[:, None] * D_IN + d[None, :], mask=live[:, None] & d_ok[None, :], other=0.0)
        acc = acc + xv[None, :].to(tl.float32) * wv.to(tl.float32)
    return tl.where(real[:, None], acc, 0.0)


@triton.jit
def _prefetch_bulk_l2(ptrs, nbytes):
    """Ask the L2 cache to fetch ``nbytes`` bytes from ``ptrs`` (16-byte aligned, a multiple of 16; 0: nothing).

    PTX ``cp.async.bulk.prefetch.L2`` (sm_90 and later), issued by the program's thread 0 alone: the copy engine
    (TMA) fetches the range into L2, nothing is loaded into registers and nothing waits for it, so it does not
    lengthen the chain of dependent loads; a later load of those bytes finds them in L2 instead of memory.
    ``ptrs`` and ``nbytes`` are (1,): the same in every thread (a value per thread compiled to a loop over the
    warp's distinct values, the instruction taking its operands from uniform registers). Inline PTX, which
    Triton's interpreter cannot run: the launcher leaves prefetching out there (it changes no result).
    """
    tl.inline_asm_elementwise(
        "{ .reg .pred p; .reg .b32 t; mov.u32 t, %tid.x; setp.eq.u32 p, t, 0; setp.ne.and.b32 p, $2, 0, p;\n"
        " @p cp.async.bulk.prefetch.L2.global [$1], $2; }\n mov.u32 $0, 0;",
        "=r,l,r", [ptrs, nbytes], dtype=tl.int32, is_pure=False, pack=1,
    )  # fmt: skip


@triton.jit
def _prefetch_span(base_ptr, first_row, n_rows, width):
    """L2-prefetch rows [first_row, first_row + n_rows) of a row-major matrix of ``width`` columns at ``base_ptr``.

    The span's bytes (within 16-byte alignment at both ends) are shared out in one piece per program over the
    programs of grid axis 2 (the column programs, which all walk the same path), so that each SM's copy engine
    fetches a share.
    """
    ELEM: tl.constexpr = base_ptr.dtype.element_ty.primitive_bitwidth // 8
    start = (base_ptr + first_row * width).to(tl.int64)  # byte addresses
    end = start + (start * 0 + n_rows) * width * ELEM  # in 64 bits: a span of many wide rows passes 2^31 bytes
    start = (start + 15) // 16 * 16
    units = tl.maximum(end // 16 * 16 - start, 0) // 16  # 16-byte units in the span
    per = tl.cdiv(units, tl.num_programs(2))  # units per piece
    piece = tl.program_id(2) + tl.zeros((1,), dtype=tl.int64)  # (1,) this program's piece
    size = tl.minimum(tl.maximum(units - piece * per, 0), per) * 16  # bytes, 0 past the span's end
    _prefetch_bulk_l2((start + piece * per * 16).to(tl.pointer_type(tl.int8)), size.to(tl.int32))


@triton.jit
def _token_logits(x_ptr, w_in_ptr, b_in_ptr, tok, rows, live, lane_real, D_IN, BLOCK_D: tl.constexpr,
                  UNROLL: tl.constexpr, D_CHUNKS: tl.constexpr, PAIRS: tl.constexpr):  # fmt: skip
    """A routing step's pre-activations, (LANES,): those of ``rows`` where ``live``, else 0."""
    bias = tl.load(b_in_ptr + rows, mask=live, other=0.0).to(tl.float32)
    # the bias starts the sum (column 0), so that ptxas issues its load with the rows' instead of after
    # them: left for the end, it was fetched once the rows had arrived, a second round trip per step; ACC_D is
    # BLOCK_D, or with PAIRS BLOCK_D / 2 (one sum per pair of features)
    acc = tl.where(tl.arange(0, BLOCK_D // (1 + PAIRS))[None, :] == 0, bias[:, None], 0.0)  # (LANES, ACC_D)
    if D_CHUNKS > 0:  # few chunks: unrolled in full, so that every chunk's loads are in flight at once
        for c in tl.static_range(D_CHUNKS):
            acc = _token_dot_chunk(acc, x_ptr, w_in_ptr, tok, rows, live, lane_real, c * BLOCK_D, D_IN, BLOCK_D,
                                   PAIRS)  # fmt: skip
    else:
        for d0 in tl.range(0, D_IN, BLOCK_D, loop_unroll_factor=UNROLL):
            acc = _token_dot_chunk(acc, x_ptr, w_in_ptr, tok, rows, live, lane_real, d0, D_IN, BLOCK_D, PAIRS)
    return tl.sum(acc, axis=1)


@triton.jit
def _token_step(
    x_ptr, w_in_ptr, b_in_ptr, tok, k, step, top, sub, path_rows, path_a, chosen, D_IN, N_NODES,
    LEVELS: tl.constexpr, SPLIT: tl.constexpr, SPEC: tl.constexpr, SUB: tl.constexpr, TOP_LANES: tl.constexpr,
    PATH_P: tl.constexpr, BLOCK_D: tl.constexpr, UNROLL: tl.constexpr, D_CHUNKS: tl.constexpr,
    PAIRS: tl.constexpr, BLOCKED: tl.constexpr,
):  # fmt: skip
    """Routing step ``step`` of tree ``k`` of :func:`_fff_token_kernel` (its arguments, by the same names).

    Walks SPEC levels from node ``top`` above SPLIT and ``sub`` below it, records the visited rows and their
    pre-activations in the path, and returns the walk's state: (top, sub, path_rows, path_a, chosen).
    """
    lane = tl.arange(0, TOP_LANES + SUB)  # (LANES,) lanes [0, TOP_LANES) walk above SPLIT, the rest below
    is_top = lane < TOP_LANES
    local = tl.where(is_top, lane, lane - TOP_LANES)  # heap index within the step's subtree
    lane_depth, lane_scale, lane_real = _subtree_lanes(local, SPEC)  # (LANES,) each
    limit = tl.where(is_top, SPLIT, LEVELS)  # the walk above SPLIT stops there
    slot = tl.arange(0, PATH_P)  # (PATH_P,) path slot k·LEVELS + level
    first = step * SPEC  # the step's first level above SPLIT; SPLIT + first below it
    node = tl.where(is_top, top, sub)  # (LANES,)
    start = tl.where(is_top, first, SPLIT + first)
    rows = k * N_NODES + _stored(node * lane_scale + local, start + lane_depth, LEVELS, BLOCKED)  # (LANES,)
    live = lane_real & (start + lane_depth < limit)
    logits = _token_logits(x_ptr, w_in_ptr, b_in_ptr, tok, rows, live, lane_real, D_IN, BLOCK_D, UNROLL, D_CHUNKS,
                           PAIRS)  # fmt: skip
    js = sub * 0  # local heap index below SPLIT at this level
    jt = sub * 0  # ... and above it
    for r in tl.static_range(SPEC):
        # the picked lane's row is node·2^r + its local index: no reduction over the lanes needed
        a = tl.sum(tl.where(lane == TOP_LANES + js, logits, 0.0), axis=0)
        at_slot = (slot == k * LEVELS + SPLIT + first + r) & (SPLIT + first + r < LEVELS)
        row = k * N_NODES + _stored(sub * (1 << r) + js, SPLIT + first + r, LEVELS, BLOCKED)
        path_rows = tl.where(at_slot, row, path_rows)
        path_a = tl.where(at_slot, a, path_a)
        js = 2 * js + 1 + (a > 0).to(tl.int64)
        if TOP_LANES > 0:
            a = tl.sum(tl.where(lane == jt, logits, 0.0), axis=0)
            right = (a > 0).to(tl.int64)
            here = top * (1 << r) + jt  # heap index (a single tree: the row, but for BLOCKED)
            at_slot = (slot == first + r) & (first + r < SPLIT)
            path_rows = tl.where(at_slot, _stored(here, first + r, LEVELS, BLOCKED), path_rows)
            path_a = tl.where(at_slot, a, path_a)
            chosen = tl.where(first + r == SPLIT - 1, 2 * here + 1 + right, chosen)  # one level down
            jt = 2 * jt + 1 + right
    return top * (1 << SPEC) + jt, sub * (1 << SPEC) + js, path_rows, path_a, chosen


@triton.jit
def _token_walk(
    x_ptr, w_in_ptr, b_in_ptr, tok, k, first_step, last_step, top, sub, path_rows, path_a, chosen, D_IN, N_NODES,
    LEVELS: tl.constexpr, SPLIT: tl.constexpr, SPEC: tl.constexpr, SUB: tl.constexpr, TOP_LANES: tl.constexpr,
    PATH_P: tl.constexpr, BLOCK_D: tl.constexpr, UNROLL: tl.constexpr, D_CHUNKS: tl.constexpr,
    PAIRS: tl.constexpr, BLOCKED: tl.constexpr,
):  # fmt: skip
    """Routing steps [first_step, last_step) of tree ``k`` (see :func:`_token_step`), the walk's state in and out."""
    for step in range(first_step, last_step):
        top, sub, path_rows, path_a, chosen = _token_step(
            x_ptr, w_in_ptr, b_in_ptr, tok, k, step, top, sub, path_rows, path_a, chosen, D_IN, N_NODES, LEVELS,
            SPLIT, SPEC, SUB, TOP_LANES, PATH_P, BLOCK_D, UNROLL, D_CHUNKS, PAIRS, BLOCKED,
        )  # fmt: skip
    return top, sub, path_rows, path_a, chosen


@triton.jit
def _fff_token_kernel(
    x_ptr,  # (B, D_in)
    w_in_ptr,  # (K·M, D_in)
    b_in_ptr,  # (K·M,)
    w_out_ptr,  # (K·M, D_out), w_out_t
    out_ptr,  # (B, D_out)
    D_IN,
    D_OUT,
    N_NODES,  # M = 2^(depth+1) − 1
    N_STEPS,  # routing steps per tree: max(⌈SPLIT / SPEC⌉, ⌈(LEVELS − SPLIT) / SPEC⌉)
    COLS_PER_PROGRAM,  # a multiple of BLOCK_O
    N_TREES: tl.constexpr,  # 1 when SPLIT > 0
    LEVELS: tl.constexpr,  # depth + 1
    SPLIT: tl.constexpr,  # level of the subtree roots that programs take one each (0: the whole tree)
    SPEC: tl.constexpr,  # levels per routing step
    SUB: tl.constexpr,  # next power of two ≥ 2^SPEC − 1
    TOP_LANES: tl.constexpr,  # SUB when SPLIT > 0 (lanes of the walk above SPLIT), else 0
    PATH_P: tl.constexpr,  # next power of two ≥ N_TREES · LEVELS: the path, held in registers
    BLOCK_D: tl.constexpr,
    BLOCK_O: tl.constexpr,
    UNROLL: tl.constexpr,  # unroll factor of the loop over feature chunks (loads in flight)
    D_CHUNKS: tl.constexpr,  # ⌈D_in / BLOCK_D⌉ when the loop over them is unrolled in full, else 0
    PAIRS: tl.constexpr,  # bf16 rows of even D_IN read as 32-bit pairs of features (see _token_dot_chunk)
    BLOCKED: tl.constexpr,  # rows in the blocked layout of subtrees rooted at this level (0: heap order)
    PREFETCH_STEP: tl.constexpr,  # the step that L2-prefetches the blocked subtrees below its root (-1: none)
):
    """One token per program: the path stays in registers, and the output is one gather of all its rows.

    Program (t, p, c) routes token t and sums output columns slice c. With SPLIT = s > 0 it also takes the
    subtree below level-s node p: each step evaluates SPEC levels of the walk above level s (which every
    program repeats) and SPEC levels of the walk down p's subtree side by side, so the chain of dependent
    loads is max(⌈s / SPEC⌉, ⌈(LEVELS − s) / SPEC⌉) steps instead of ⌈LEVELS / SPEC⌉; only the program
    whose subtree the token enters writes its output (the others computed a walk it does not take).

    With PREFETCH_STEP = s ≥ 0 (rows in the blocked layout, SPLIT = 0), routing step s of each tree, whose root
    at level f = s·SPEC lies at or above BLOCKED, first asks L2 for the w_in and w_out_t rows of every
    blocked subtree below that root: 2^(BLOCKED − f) runs of 2^(LEVELS − BLOCKED) − 1 rows, one contiguous span
    in each matrix, which holds all the rows that the walk reads from level BLOCKED on and the output gather
    after it, shared out over the column programs. It waits for none of it: the steps after s then read
    rows that their own loads find in L2 once the prefetch has arrived, instead of a round trip to memory each.
    """
    tok = tl.program_id(0).to(tl.int64)
    part = tl.program_id(1).to(tl.int64)
    root = (1 << SPLIT) - 1 + part  # heap index of this program's subtree root (0 when SPLIT = 0)
    slot = tl.arange(0, PATH_P)  # (PATH_P,) path slot k·LEVELS + level
    path_rows = tl.zeros((PATH_P,), dtype=tl.int64)  # global rows of the visited nodes
    path_a = tl.zeros((PATH_P,), dtype=tl.float32)  # their pre-activations (GELU after the walk, off its chain)
    col_start = tl.program_id(2) * COLS_PER_PROGRAM  # this program's output columns
    col_end = tl.minimum(col_start + COLS_PER_PROGRAM, D_OUT)
    chosen = root * 0 - 1  # the level-SPLIT node that the walk above SPLIT enters
    if SPLIT == 0:  # there is no walk above: every program's subtree is the whole tree
        chosen = root

    for k in range(N_TREES):
        top = root * 0  # heap index of the step's root node above SPLIT
        sub = root  # ... and below it
        if PREFETCH_STEP < 0:
            top, sub, path_rows, path_a, chosen = _token_walk(
                x_ptr, w_in_ptr, b_in_ptr, tok, k, 0, N_STEPS, top, sub, path_rows, path_a, chosen, D_IN, N_NODES,
                LEVELS, SPLIT, SPEC, SUB, TOP_LANES, PATH_P, BLOCK_D, UNROLL, D_CHUNKS, PAIRS, BLOCKED,
            )  # fmt: skip
        else:  # the loop in two, the prefetch between them: inside it, a branch moved the steps' loads apart
            top, sub, path_rows, path_a, chosen = _token_walk(
                x_ptr, w_in_ptr, b_in_ptr, tok, k, 0, PREFETCH_STEP, top, sub, path_rows, path_a, chosen, D_IN,
                N_NODES, LEVELS, SPLIT, SPEC, SUB, TOP_LANES, PATH_P, BLOCK_D, UNROLL, D_CHUNKS, PAIRS, BLOCKED,
            )  # fmt: skip
            f: tl.constexpr = PREFETCH_STEP * SPEC  # the level of the step's root, sub
            run: tl.constexpr = (1 << (LEVELS - BLOCKED)) - 1  # rows per blocked subtree
            n_rows: tl.constexpr = (1 << (BLOCKED - f)) * run  # the blocked subtrees below sub, in one span
            first_row = k * N_NODES + (1 << BLOCKED) - 1 + (sub + 1 - (1 << f)) * n_rows
            _prefetch_span(w_in_ptr, first_row, n_rows, D_IN)
            _prefetch_span(w_out_ptr, first_row, n_rows, D_OUT)
            top, sub, path_rows, path_a, chosen = _token_walk(
                x_ptr, w_in_ptr, b_in_ptr, tok, k, PREFETCH_STEP, N_STEPS, top, sub, path_rows, path_a, chosen, D_IN,
                N_NODES, LEVELS, SPLIT, SPEC, SUB, TOP_LANES, PATH_P, BLOCK_D, UNROLL, D_CHUNKS, PAIRS, BLOCKED,
            )  # fmt: skip

    # Output: every visited row's slice of w_out_t in one gather, so that the loads are in flight together.
    used = slot < N_TREES * LEVELS
    path_g = _gelu(path_a)  # (PATH_P,)
    for o0 in range(col_start, col_end, BLOCK_O):
        o = o0 + tl.arange(0, BLOCK_O)  # (BLOCK_O,)
        # only the program whose subtree the token enters writes (compared as a vector: Triton's interpreter
        # gives `vector & 0-d mask` an integer type that loads refuse)
        o_ok = (o < col_end) & (chosen + 0 * o == root)
        wv = tl.load(w_out_ptr + path_rows[:, None] * D_OUT + o[None, :], mask=used[:, None] & o_ok[None, :],
                     other=0.0)  # (PATH_P, BLOCK_O)  # fmt: skip
        acc = tl.sum(path_g[:, None] * wv.to(tl.float32), axis=0)  # (BLOCK_O,)
        tl.store(out_ptr + tok * D_OUT + o, acc.to(out_ptr.dtype.element_ty), mask=o_ok)


@dataclass(frozen=True)
class Launch:
    """Everything a launch of a kernel needs besides the tensors (:func:`token_launch`, :func:`block_launch`)."""

    grid: tuple[int, int, int]  # token kernel: (tokens, subtrees, column programs); block kernel: (token blocks,
    # column programs, 1)
    ints: Mapping[str, int]  # the kernel's runtime integer arguments, by name (read-only: launches are cached)
    constexprs: Mapping[str, int]  # its compile-time arguments, by name (read-only)
    options: Mapping[str, int]  # Triton's launch and compile options (num_warps; maxnreg where set), read-only


def _token_by_default(n: int, depth: int, n_trees: int) -> bool:
    """Whether :func:`fff_triton` serves n tokens with the token kernel when no launch option asks otherwise."""
    return n <= SMALL_BATCH and n_trees * (depth + 1) <= TOKEN_PATH


@functools.cache
def _capability(device: torch.device) -> tuple[int, int]:
    """The compute capability of a CUDA device, asked once (the prefetch is sm_90's; a call is on the hot path)."""
    return torch.cuda.get_device_capability(device)


def _pow2(n: int, hi: int) -> int:
    """The next power of two ≥ n, at least 16 and at most hi."""
    return max(16, min(hi, triton.next_power_of_2(max(n, 1))))


def fff_triton(
    x: torch.Tensor,
    w_in: torch.Tensor,
    b_in: torch.Tensor,
    w_out_t: torch.Tensor,
    depth: int,
    n_trees: int,
    *,
    spec: int | None = None,
    block_b: int | None = None,
    block_d: int | None = None,
    block_o: int | None = None,
    num_warps: int | None = None,
    unroll: int | None = None,
    top: int | None = None,
    split: int | None = None,
    maxnreg: int | None = None,
    kernel: str | None = None,
    prefetch: int = 0,
    pairs: bool | None = None,
    blocked: int = 0,
) -> torch.Tensor:
    """Hard FFF inference by the fused Triton kernel (CUDA tensors, or CPU tensors under Triton's interpreter).

    The launch parameters default to two regimes, picked from a sweep on an H200 (``recruit bench fff``
    records every configuration it tries). Up to ``SMALL_BATCH`` tokens the walk is latency-bound: the
    token kernel (one token per program, its path in registers, ``spec`` 2, 4 warps, the output columns
    split over programs in slices of 16384 / path elements, bf16 rows read as pairs of features in chunks of at
    most 1024: on an H200, at hidden 4096 and 1 token, 6.5 µs against 6.8 warm and 7.5 against 8.0 from memory
    for a feature at a time in chunks of 2048), as long as the path of all trees fits
    (K·(depth + 1) ≤ ``TOKEN_PATH``). Beyond that the block kernel, bandwidth-bound: the top ``TOP_LEVELS``
    levels (``TOP_LEVELS_LARGE`` above ``LARGE_BATCH`` tokens) routed densely, then ``spec`` 1 with 8
    tokens per program, 2 up to 1024 tokens, 4 when ``top`` = 0. Passing ``block_b`` or ``top`` > 0 asks
    for the block kernel at any batch size; ``kernel`` names one kernel whatever the batch size.

    ``top`` > 0 routes the first ``top`` levels densely: one GEMM computes the pre-activations of the
    2^top − 1 top nodes of every tree for every token, the kernel loads each token's row of them once and
    walks those levels in registers (writing the GELU of the visited nodes, 0 elsewhere), gathers rows only
    below them, and a second GEMM adds the top nodes' output. The top nodes are shared by all tokens, so
    for large batches this trades a little arithmetic (2^top − 1 instead of ``top`` neurons per token) for
    fewer gathered rows. The result is the same function (routing decisions come from the same signs, up
    to pre-activations within float rounding of 0). The tables are 2^top columns wide: an odd GEMM width
    (2^top − 1) sends cuBLAS down a slow path. ``TOP_LEVELS`` is the default for large batches.

    Args:
        x: Token features, (B, D_in), float32 / float16 / bfloat16.
        w_in: Node input weights, (K·M, D_in) with M = 2^(depth+1) − 1 nodes per tree in heap order.
        b_in: Node biases, (K·M,).
        w_out_t: Node output weights, transposed, (K·M, D_out).
        depth: Tree depth ≥ 0.
        n_trees: K ≥ 1, the number of trees whose outputs are summed.
        spec: Levels per routing step, 1 to 4 (see the module docstring).
        block_b: Tokens per program (a power of two).
        block_d: Input features per chunk (a power of two ≥ 16).
        block_o: Output columns per chunk (a power of two ≥ 16).
        num_warps: Warps per program.
        unroll: Unroll factor of the loops over feature chunks and over the path (loads in flight).
        top: Levels routed densely, 0 to depth + 1 (default: ``TOP_LEVELS`` for large batches, 0 for small).
        split: Token kernel only, single tree only: 2^split programs per token each walk the subtree below
            one node of level ``split`` (0 to depth) while all of them walk the levels above it, which cuts
            the chain of dependent loads to max(⌈split / spec⌉, ⌈(depth + 1 − split) / spec⌉) steps at the
            cost of 2^split times the routing reads (default 0).
        maxnreg: Token kernel only: the register ceiling handed to ptxas (default ``TOKEN_MAXNREG``; 0 leaves
            ptxas its own choice, which may issue a step's loads in several waves).
        kernel: ``"token"`` or ``"block"``: that kernel whatever the batch size (default: as described above).
        prefetch: Token kernel only, rows in the blocked layout (``blocked`` > 0), no ``split``, sm_90 or later:
            L2 prefetch, 0 to ``MAX_PREFETCH`` (default 0, off). p > 0 has the routing step whose root lies p − 1
            steps above the blocked subtrees' level (step ⌊blocked / spec⌋ − p + 1) ask L2, by the copy engine,
            for every row of the 2^(blocked − its level) blocked subtrees below its root, of w_in and w_out_t:
            all the rows the walk reads from level ``blocked`` on and all the output rows it gathers below it, so
            that those steps and the gather, whose rows a model's other layers evict from L2 between two calls,
            find them in L2 instead of memory. A hint with no effect on the result; ignored under Triton's
            interpreter, which cannot run it.
        pairs: Token kernel only, bf16 of even width, w_in at a 4-byte aligned address: read the rows as 32-bit
            pairs of features, which widen to float32 by a shift and a mask, in chunks of at most 1024 features
            (False: a feature at a time; default: pairs wherever they can be read, x copied to an aligned address
            if it is not, so that the sums do not depend on where x lies). At hidden 4096, compiled for sm_90, a
            routing step of 363 instructions instead of 447.
        blocked: The weights' rows are in the blocked layout of :func:`blocked_rows` with subtrees rooted at
            this level, 0 to ``depth`` (default 0: heap order; :func:`to_blocked` makes the layout). A token's rows
            below that level then lie within one run of 2^(depth + 1 − blocked) − 1 rows (at hidden 4096, depth 13
            and ``blocked`` 8: 63 rows, 504 KB of bf16 w_in), not spread over the deep levels' half of the matrix,
            for fewer DRAM pages and address translations per walk. The block kernel routes at most ``blocked``
            levels densely (``top``; by default ``min(top, blocked)``): its GEMMs read the first rows, which the
            layout keeps in heap order only above that level.

    Returns:
        (B, D_out) in the dtype of ``x``.
    """
    assert depth >= 0 and n_trees >= 1, f"need depth >= 0 and n_trees >= 1, got {depth}, {n_trees}"
    m = 2 ** (depth + 1) - 1
    n, d_in = x.shape
    d_out = w_out_t.shape[1]
    assert w_in.shape == (n_trees * m, d_in), f"w_in must be ({n_trees * m}, {d_in}), got {tuple(w_in.shape)}"
    assert b_in.shape == (n_trees * m,), f"b_in must be ({n_trees * m},), got {tuple(b_in.shape)}"
    assert w_out_t.shape == (n_trees * m, d_out), f"w_out_t must be ({n_trees * m}, D_out), got {tuple(w_out_t.shape)}"
    assert x.dtype in (torch.float32, torch.float16, torch.bfloat16), f"unsupported dtype {x.dtype}"
    assert all(t.dtype == x.dtype and t.device == x.device for t in (w_in, b_in, w_out_t)), "mixed dtypes/devices"
    x, w_in, b_in, w_out_t = (t.detach().contiguous() for t in (x, w_in, b_in, w_out_t))
    out = torch.empty(n, d_out, dtype=x.dtype, device=x.device)  # (B, D_out)
    if n == 0 or d_out == 0:
        return out

    small = n <= SMALL_BATCH
    assert kernel in (None, "token", "block"), f"kernel must be 'token' or 'block', got {kernel!r}"
    for name, value, least in (("block_b", block_b, 1), ("block_d", block_d, 16), ("block_o", block_o, 16),
                               ("num_warps", num_warps, 1)):  # fmt: skip
        ok = value is None or (value >= least and value & (value - 1) == 0)
        assert ok, f"{name} must be a power of two of at least {least}, got {value}"
    assert unroll is None or unroll >= 1, f"unroll must be at least 1, got {unroll}"
    can_token = block_b is None and not top and n_trees * (depth + 1) <= TOKEN_PATH
    no_token = f"the token kernel takes no block_b or top, and at most {TOKEN_PATH} path rows (trees × levels)"
    assert kernel != "token" or can_token, no_token
    token = kernel == "token" or (kernel is None and can_token and _token_by_default(n, depth, n_trees))
    spec = spec or (2 if small or token else 1)
    assert 1 <= spec <= 4, f"spec must be in 1..4, got {spec}"
    why = "needs the token kernel: at most SMALL_BATCH tokens or kernel='token', no block_b or top"
    assert token or not split, f"split {why}"
    assert token or maxnreg is None, f"maxnreg {why}"
    assert token or not prefetch, f"prefetch {why}"
    assert token or not pairs, f"pairs {why}"
    if token:
        if pairs is None:  # the default: pairs wherever the rows can be read so
            # x at an aligned address (a copy where it is not), so that one x gives one sum order wherever it lies
            aligned = x.clone() if x.dtype == torch.bfloat16 and x.data_ptr() % 4 else x
            pairs = _pairs_fit(aligned, w_in)
            x = aligned if pairs else x
        if prefetch and x.device.type == "cuda":
            major, minor = _capability(x.device)
            assert major >= 9, f"prefetch needs a GPU of compute capability 9.0 or later (sm_90), got {major}.{minor}"
        return _launch_token(x, w_in, b_in, w_out_t, out, depth, n_trees, spec=spec, split=split or 0,
                             block_d=block_d, block_o=block_o, num_warps=num_warps, unroll=unroll,
                             maxnreg=maxnreg, prefetch=prefetch, pairs=pairs, blocked=blocked,
                             hints=x.device.type == "cuda")  # fmt: skip
    launch = block_launch(n, d_in, d_out, depth, n_trees, spec=spec, top=top, block_b=block_b, block_d=block_d,
                          block_o=block_o, num_warps=num_warps, unroll=unroll, blocked=blocked,
                          itemsize=x.element_size())  # fmt: skip
    top, top_w = launch.constexprs["TOP"], launch.constexprs["TOP_W"]
    path = (launch.grid[1], n, n_trees * (depth + 1 - top))  # the visited rows below the top, per column program
    path_rows = torch.empty(path, dtype=torch.int32, device=x.device)
    path_gelu = torch.empty(path, dtype=torch.float32, device=x.device)
    top_logits = top_act = out  # placeholders, never read with top = 0
    if top:  # one GEMM per tree on views of its top rows (no copy of the weights per call)
        w_top, b_top = w_in.view(n_trees, m, d_in)[:, :top_w], b_in.view(n_trees, m)[:, :top_w]
        top_logits = torch.empty(n_trees, n, top_w, dtype=x.dtype, device=x.device)  # (K, B, top_w)
        for k in range(n_trees):  # signs as exact as the kernel's dots
            torch.addmm(b_top[k], x, w_top[k].t(), out=top_logits[k])
        top_act = torch.empty_like(top_logits)  # every entry written by the kernel
    _fff_kernel[launch.grid](x, w_in, b_in, w_out_t, out, path_rows, path_gelu, top_logits, top_act, **launch.ints,
                             **launch.constexprs, **launch.options)  # fmt: skip
    if top:  # the visited top nodes' share; the others have GELU 0 here
        w_out_top = w_out_t.view(n_trees, m, d_out)[:, :top_w]  # (K, top_w, D_out), a view
        for k in range(n_trees):
            out.addmm_(top_act[k], w_out_top[k])
    return out


@functools.lru_cache(maxsize=256)
def block_launch(
    n: int,
    d_in: int,
    d_out: int,
    depth: int,
    n_trees: int,
    *,
    spec: int = 1,
    top: int | None = None,
    block_b: int | None = None,
    block_d: int | None = None,
    block_o: int | None = None,
    num_warps: int | None = None,
    unroll: int | None = None,
    blocked: int = 0,
    itemsize: int = 2,
) -> Launch:
    """The block kernel's launch for n tokens of d_in features into d_out columns (see :func:`fff_triton`).

    A pure function of the shapes and options, as :func:`token_launch` is for the token kernel, shared by
    :func:`fff_triton` and the ahead-of-time resource check (``benchmarks/triton_resources.py``); cached and
    read-only. ``itemsize`` is the bytes per element of the weights (16-bit rows take twice the elements per tile).
    """
    assert 0 <= blocked <= depth, f"blocked must be in 0..{depth} (0: heap order), got {blocked}"
    small = n <= SMALL_BATCH
    if top is None:
        top = min(0 if small else TOP_LEVELS if n <= LARGE_BATCH else TOP_LEVELS_LARGE, depth + 1)
        if blocked:  # the top tables are GEMMs over the first rows, which the blocked layout keeps in heap order
            top = min(top, blocked)
    assert 0 <= top <= depth + 1, f"top must be in 0..{depth + 1}, got {top}"
    assert not blocked or top <= blocked, f"top must be at most blocked ({blocked}) with rows in that layout, got {top}"
    sub = triton.next_power_of_2(2**spec - 1)
    block_b = block_b or (1 if small else 4 if not top else 2 if n <= 1024 else 8)
    wide = 2 if itemsize == 2 else 1  # 16-bit storage: twice the elements in the same registers
    block_d = block_d or _pow2(d_in, (4096 * wide) // (block_b * sub) if small else 256 * wide)
    num_warps = num_warps or (4 if small and d_in <= 1024 else 8)
    token_programs = triton.cdiv(n, block_b)
    block_o = block_o or _pow2(d_out, (512 if small else 256) * wide)
    col_blocks = triton.cdiv(d_out, block_o)
    splits = max(1, min(col_blocks, _PROGRAMS // token_programs))  # output-column programs per token block
    cols_per_program = triton.cdiv(col_blocks, splits) * block_o
    # The top tables hold 2^top columns per tree: the 2^top − 1 top nodes and the first node below them,
    # whose activation stays 0; an odd GEMM width would send cuBLAS down a slow path.
    top_w = 2**top if top <= depth else 2 ** (depth + 1) - 1
    ints = dict(B=n, D_IN=d_in, D_OUT=d_out, N_NODES=2 ** (depth + 1) - 1, COLS_PER_PROGRAM=cols_per_program)
    constexprs = dict(
        N_TREES=n_trees, LEVELS=depth + 1, TOP=top, TOP_W=top_w, TOP_P=triton.next_power_of_2(top_w), SPEC=spec,
        SUB=sub, BLOCK_B=block_b, BLOCK_D=block_d, BLOCK_O=block_o, UNROLL=unroll or 4, BLOCKED=blocked,
    )  # fmt: skip
    grid = (token_programs, triton.cdiv(d_out, cols_per_program), 1)
    return Launch(grid, MappingProxyType(ints), MappingProxyType(constexprs),
                       MappingProxyType(dict(num_warps=num_warps)))  # fmt: skip


def blocked_rows(depth: int, blocked: int) -> torch.Tensor:
    """Row of each heap node of a tree in the blocked layout of subtrees rooted at level ``blocked``, (M,) int64.

    Levels above ``blocked`` keep heap order (rows 0 to 2^blocked − 2); then each of the 2^blocked subtrees
    rooted at that level takes 2^(depth + 1 − blocked) − 1 consecutive rows, left to right, its nodes in heap
    order within it. ``blocked`` 0 is heap order (one subtree, the tree). A walk's rows below level ``blocked``
    then lie in one run of rows, where heap order spreads its deepest levels over the last half of the matrix.
    """
    assert 0 <= blocked <= depth, f"blocked must be in 0..{depth} (0: heap order), got {blocked}"
    heap = torch.arange(2 ** (depth + 1) - 1)
    level = torch.frexp((heap + 1).double()).exponent.long() - 1  # exact: heap + 1 = mantissa · 2^exponent
    below = (level - blocked).clamp(min=0)
    i = heap - ((1 << level) - 1)  # index within the level
    row = (1 << blocked) - 1 + (i >> below) * ((1 << (depth + 1 - blocked)) - 1) + (1 << below) - 1
    return torch.where(level >= blocked, row + (i & ((1 << below) - 1)), heap)


def to_blocked(t: torch.Tensor, depth: int, n_trees: int, blocked: int) -> torch.Tensor:
    """``t`` (K·M, ...), the rows of K trees in heap order, in the layout of :func:`blocked_rows`.

    A new tensor, or for ``blocked`` 0 (heap order) ``t`` itself.
    """
    m = 2 ** (depth + 1) - 1
    assert t.shape[0] == n_trees * m, f"need {n_trees * m} rows ({n_trees} trees of depth {depth}), got {t.shape[0]}"
    if blocked == 0:
        return t
    rows = (blocked_rows(depth, blocked) + m * torch.arange(n_trees)[:, None]).flatten().to(t.device)
    out = torch.empty_like(t)
    out[rows] = t
    return out


def layer_blocked(depth: int, levels: int) -> int:
    """The level of the blocked layout that keeps a layer's ``levels`` deepest levels in runs of rows (0: heap order).

    At least the block kernel's dense top levels (``TOP_LEVELS``, as the tree allows), which it reads as GEMMs over
    the first rows: the layout keeps those in heap order only above its level.
    """
    assert levels >= 0, f"levels must be at least 0 (0: heap order), got {levels}"
    if levels == 0 or depth == 0:
        return 0
    return min(depth, max(depth + 1 - levels, min(TOP_LEVELS, depth)))


class TritonKernel:
    """A layer's weights bound for :func:`fff_triton`, in the row layout it reads (what ``fff_prepare`` gives CUDA).

    The rows are laid out once, at construction, in the blocked layout of :func:`layer_blocked`'s level for
    ``blocked_levels`` (default ``LAYER_BLOCKED_LEVELS``; 0: heap order, the weights themselves, no copy), and the
    token kernel asks L2 for the blocked subtrees ``prefetch`` steps ahead (default ``LAYER_PREFETCH``; only on
    blocked rows and a GPU of sm_90 or later). A call takes ``x2d`` (N, D_in) in the weights' dtype and device.
    """

    def __init__(self, w_in: torch.Tensor, b_in: torch.Tensor, w_out_t: torch.Tensor, depth: int, n_trees: int,
                 blocked_levels: int | None = None, prefetch: int | None = None) -> None:  # fmt: skip
        self.depth, self.n_trees = depth, n_trees
        self.blocked = layer_blocked(depth, LAYER_BLOCKED_LEVELS if blocked_levels is None else blocked_levels)
        prefetch = (LAYER_PREFETCH if prefetch is None else prefetch) if self.blocked else 0
        if prefetch and w_in.is_cuda and _capability(w_in.device)[0] < 9:
            prefetch = 0  # the bulk prefetch is sm_90's; older GPUs read the same rows without it
        self.prefetch = prefetch
        self.weights = tuple(to_blocked(t.detach().contiguous(), depth, n_trees, self.blocked)
                             for t in (w_in, b_in, w_out_t))  # fmt: skip

    def __call__(self, x2d: torch.Tensor) -> torch.Tensor:
        """(B, D_in) -> (B, D_out), in the weights' dtype and device (ValueError for other inputs)."""
        w_in = self.weights[0]
        if x2d.dim() != 2 or x2d.shape[1] != w_in.shape[1] or x2d.dtype != w_in.dtype or x2d.device != w_in.device:
            check_shapes(x2d, *self.weights, self.depth, self.n_trees)  # raises ValueError with the reason
        prefetch = self.prefetch if _token_by_default(x2d.shape[0], self.depth, self.n_trees) else 0  # token kernel
        return fff_triton(x2d, *self.weights, self.depth, self.n_trees, blocked=self.blocked, prefetch=prefetch)


@functools.lru_cache(maxsize=256)  # a call costs about 20 µs of Python, as much as the kernel at 1 token
def token_launch(
    n: int,
    d_in: int,
    d_out: int,
    depth: int,
    n_trees: int,
    *,
    spec: int = 2,
    split: int = 0,
    block_d: int | None = None,
    block_o: int | None = None,
    num_warps: int | None = None,
    unroll: int | None = None,
    maxnreg: int | None = None,
    prefetch: int = 0,
    pairs: bool = False,
    blocked: int = 0,
    itemsize: int = 2,
    hints: bool = True,
) -> Launch:
    """The token kernel's launch for n tokens of d_in features into d_out columns.

    A pure function of the shapes and options, shared by :func:`fff_triton` and by the ahead-of-time resource
    check (``benchmarks/triton_resources.py``), which compiles exactly what would be launched; cached, so the
    launch it returns is shared: read it, do not change it. ``itemsize`` is the bytes per element of the weights;
    ``pairs`` reads bf16 rows as 32-bit pairs of features, where the caller has checked that they are bf16 and
    that x and w_in are 4-byte aligned (:func:`_pairs_fit`). ``hints`` False leaves out the L2 prefetch
    (``prefetch`` is still checked): Triton's interpreter cannot run its PTX, and it changes no result.
    """
    assert 0 <= split <= depth, f"split must be in 0..{depth}, got {split}"
    assert 0 <= blocked <= depth, f"blocked must be in 0..{depth} (0: heap order), got {blocked}"
    assert split == 0 or n_trees == 1, f"split > 0 needs a single tree, got {n_trees}"
    assert not pairs or (itemsize == 2 and d_in % 2 == 0), f"pairs needs 16-bit rows of even width, got {d_in}"
    assert 0 <= prefetch <= MAX_PREFETCH, f"prefetch must be in 0..{MAX_PREFETCH}, got {prefetch}"
    prefetch_step = blocked // spec - prefetch + 1 if prefetch else -1  # the step whose root's subtrees it fetches
    if prefetch:
        assert blocked > 0 and split == 0, "prefetch needs rows in the blocked layout (blocked > 0) and no split"
        assert prefetch_step >= 0, f"prefetch {prefetch} reaches above the root: at most {blocked // spec + 1} here"
    levels = depth + 1
    sub = triton.next_power_of_2(2**spec - 1)
    lanes = sub * (2 if split else 1)
    path_p = triton.next_power_of_2(n_trees * levels)
    block_d = block_d or _pow2(d_in, min(_TOKEN_TILE // lanes, PAIRS_BLOCK_D) if pairs else _TOKEN_TILE // lanes)
    block_o = block_o or _pow2(d_out, _TOKEN_OUT_TILE // path_p)
    col_blocks = triton.cdiv(d_out, block_o)
    splits = max(1, min(col_blocks, _PROGRAMS // (n << split)))  # column programs per (token, subtree)
    cols_per_program = triton.cdiv(col_blocks, splits) * block_o
    steps = max(triton.cdiv(split, spec), triton.cdiv(levels - split, spec))
    chunks = triton.cdiv(d_in, block_d)
    unroll_all = chunks <= _UNROLL_ALL and d_in <= _UNROLL_ALL_FEATURES
    ints = dict(D_IN=d_in, D_OUT=d_out, N_NODES=2**levels - 1, N_STEPS=steps, COLS_PER_PROGRAM=cols_per_program)
    num_warps = num_warps or 4
    constexprs = dict(
        N_TREES=n_trees, LEVELS=levels, SPLIT=split, SPEC=spec, SUB=sub, TOP_LANES=sub if split else 0,
        PATH_P=path_p, BLOCK_D=block_d, BLOCK_O=block_o, UNROLL=unroll or 4, D_CHUNKS=chunks if unroll_all else 0,
        PAIRS=int(pairs), BLOCKED=blocked, PREFETCH_STEP=prefetch_step if hints else -1,
    )  # fmt: skip
    grid = (n, 2**split, triton.cdiv(d_out, cols_per_program))
    if maxnreg is None:
        maxnreg = TOKEN_MAXNREG
    assert 0 <= maxnreg <= 255, f"maxnreg must be in 0..255 (0: ptxas' choice), got {maxnreg}"
    options = dict(num_warps=num_warps, **({"maxnreg": maxnreg} if maxnreg else {}))
    return Launch(grid, MappingProxyType(ints), MappingProxyType(constexprs), MappingProxyType(options))


def _pairs_fit(x: torch.Tensor, w_in: torch.Tensor) -> bool:
    """Whether the token kernel can read ``x`` and ``w_in`` as 32-bit pairs of bf16 features (``pairs``)."""
    return x.dtype == torch.bfloat16 and x.shape[1] % 2 == 0 and x.data_ptr() % 4 == 0 and w_in.data_ptr() % 4 == 0


def _launch_token(
    x: torch.Tensor,
    w_in: torch.Tensor,
    b_in: torch.Tensor,
    w_out_t: torch.Tensor,
    out: torch.Tensor,
    depth: int,
    n_trees: int,
    **options,
) -> torch.Tensor:
    """Launch :func:`_fff_token_kernel` over (tokens, subtrees, column slices); ``out`` is filled and returned.

    ``options`` are :func:`token_launch`'s.
    """
    launch = token_launch(*x.shape, out.shape[1], depth, n_trees, itemsize=w_in.element_size(), **options)
    fits = not launch.constexprs["PAIRS"] or _pairs_fit(x, w_in)
    assert fits, "pairs needs bf16 x and w_in of even width at 4-byte aligned addresses"
    _fff_token_kernel[launch.grid](x, w_in, b_in, w_out_t, out, **launch.ints, **launch.constexprs, **launch.options)
    return out
