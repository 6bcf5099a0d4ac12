"""The fused FFF kernels (C++ on the CPU, Triton under its interpreter and on CUDA) against the per-token oracle."""

import copy
import logging
import os
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import recruit.fff.kernels as kernels
from recruit.benchmarks.fff_speed import _label
from recruit.fff.fff import pack_rows
from recruit.fff.kernels import cpu as cpu_kernel
from recruit.fff.kernels import fff_cpu, fff_gather, fff_infer, fff_reference, fff_route, n_nodes

TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-10),
    torch.float32: dict(rtol=1e-4, atol=1e-4),
    torch.float16: dict(rtol=4e-3, atol=4e-3),
    torch.bfloat16: dict(rtol=2e-2, atol=2e-2),  # both sides rounded to bf16: up to one ulp (2^-7) apart
}
MARGIN = 1e-4  # |pre-activation| above float32 rounding of the dot products here: every kernel routes alike
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def make_case(seed, depth, n_trees, batch, d_in, d_out, dtype):
    """Random FFF inputs in `dtype` whose float64 routing has no pre-activation within MARGIN of 0."""
    for attempt in range(20):
        g = torch.Generator().manual_seed(seed * 1000 + attempt)
        rows = n_trees * n_nodes(depth)
        x = torch.randn(batch, d_in, generator=g).to(dtype)
        w_in = (torch.randn(rows, d_in, generator=g) / d_in**0.5).to(dtype)
        b_in = (0.1 * torch.randn(rows, generator=g)).to(dtype)
        w_out_t = (torch.randn(rows, d_out, generator=g) / (depth + 1) ** 0.5).to(dtype)
        _, logits = fff_route(x, w_in, b_in, depth, n_trees)
        if batch == 0 or logits.abs().min() > MARGIN:
            return x, w_in, b_in, w_out_t
    raise AssertionError("no well-separated case in 20 attempts")


def check(fn, case, depth, n_trees, **kw):
    x = case[0]
    out = fn(*case, depth, n_trees, **kw)
    assert out.shape == (x.shape[0], case[3].shape[1]) and out.dtype == x.dtype
    torch.testing.assert_close(out.cpu(), fff_reference(*(t.cpu() for t in case), depth, n_trees), **TOL[x.dtype])


@pytest.fixture(scope="module", params=[64, 32], ids=["vector64", "vector32"])
def cpu_built(request):
    """Build (or load from the cache) the C++ kernel once per session, and run it with 64- then 32-byte vectors.

    Every CPU kernel test runs against both builds of the hot loops where the CPU has AVX-512 (x86-64-v4);
    elsewhere the 64-byte case is skipped.
    """
    start = time.perf_counter()
    if not kernels.cpu_kernel_available():
        pytest.skip("the C++ FFF kernel could not be built here (see the warning)")
    logging.getLogger(__name__).warning("FFF C++ kernel ready in %.1f s", time.perf_counter() - start)
    default = cpu_kernel.vector_bytes()
    if cpu_kernel.vector_bytes(request.param) != request.param:
        pytest.skip(f"this CPU cannot run the {request.param}-byte-vector build")
    yield request.param
    cpu_kernel.vector_bytes(default)


def test_vector_bytes_selects_a_width_the_cpu_has(cpu_built):
    assert cpu_kernel.vector_bytes() == cpu_built
    with pytest.raises(ValueError, match="32 or 64"):
        cpu_kernel.vector_bytes(16)


# ---- the references and the gather fallback ----------------------------------------------------------
CRAFTED_LOGITS = [[[1.0, 0.0, 3.0], [-0.5, 2.0, 1.25]], [[2.0, 0.25, 8.0], [-1.0, 4.0, 2.5]]]  # (B, K, levels)
CRAFTED_ROWS = [[[0, 2, 5], [7, 8, 11]], [[0, 2, 6], [7, 8, 11]]]  # a == 0 goes left: 2 -> 5


def crafted(dtype):
    """Depth 2, two trees, x = (s, 0): node n's pre-activation is s·w[n] + b[n]; w_out_t = I shows the path."""
    w = torch.tensor([1.0, 0.5, 0.25, 0.75, 1.5, 3.0, 4.0, -0.5, 2.0, 1.0, 1.0, 1.25, 1.0, 1.0])
    b = torch.zeros(14)
    b[2] = -0.25  # token 1: 0.25 - 0.25 == 0 exactly
    w_in = torch.stack([w, torch.full((14,), 3.0)], 1)  # (14, 2), column 1 meets x[:, 1] == 0
    x = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
    return tuple(t.to(dtype) for t in (x, w_in, b, torch.eye(14)))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_crafted_routing(dtype, cpu_built):
    case = crafted(dtype)
    rows, logits = fff_route(*case[:3], 2, 2)
    assert rows.tolist() == CRAFTED_ROWS and logits.tolist() == CRAFTED_LOGITS
    gelus = F.gelu(torch.tensor(CRAFTED_LOGITS, dtype=torch.float64)).flatten(1)  # (B, K·levels)
    expected = torch.zeros(2, 14, dtype=torch.float64).scatter_add_(1, torch.tensor(CRAFTED_ROWS).flatten(1), gelus)
    for fn in (fff_reference, fff_gather, fff_cpu, fff_infer):
        torch.testing.assert_close(fn(*case, 2, 2).double(), expected, **TOL[dtype], msg=fn.__name__)


@pytest.mark.parametrize("depth", range(15))
def test_every_depth(depth, cpu_built):
    case = make_case(depth, depth, 2, 3, 12, 7, torch.float32)
    check(fff_cpu, case, depth, 2)
    check(fff_gather, case, depth, 2)


@SETTINGS
@given(
    seed=st.integers(0, 2**16),
    depth=st.integers(0, 14),
    n_trees=st.integers(1, 3),
    batch=st.sampled_from([1, 3, 17]),
    d_in=st.integers(1, 48),
    d_out=st.integers(1, 48),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
)
def test_cpu_and_gather_equal_reference(cpu_built, seed, depth, n_trees, batch, d_in, d_out, dtype):
    case = make_case(seed, depth, n_trees, batch, d_in, d_out, dtype)
    check(fff_cpu, case, depth, n_trees)
    check(fff_gather, case, depth, n_trees)


def test_cpu_wide_rows_threads_noncontiguous_fp16_empty(cpu_built):
    torch.set_num_threads(2)  # the OpenMP loop over tokens (conftest restores the count)
    for dtype in (torch.float64, torch.bfloat16):  # rows of several SIMD chunks, with tails
        check(fff_cpu, make_case(3, 6, 2, 17, 300, 257, dtype), 6, 2)
    case = make_case(1, 6, 2, 17, 300, 257, torch.float32)
    check(fff_cpu, case, 6, 2)
    x, w_in, b_in, w_out_t = case
    strided = (x.t().contiguous().t(), w_in, b_in, w_out_t.t().contiguous().t())  # (B, D) views, column-major
    assert not strided[0].is_contiguous() and not strided[3].is_contiguous()
    check(fff_cpu, strided, 6, 2)
    check(fff_cpu, tuple(t.half() for t in case), 6, 2)
    empty = fff_cpu(x[:0], w_in, b_in, w_out_t, 6, 2)
    assert empty.shape == (0, 257) and fff_gather(x[:0], w_in, b_in, w_out_t, 6, 2).shape == (0, 257)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_cpu_reads_packed_rows_in_place(cpu_built, dtype):
    x, w_in, b_in, w_out_t = make_case(5, 7, 2, 17, 40, 33, dtype)
    p_in, p_out = pack_rows(w_in, w_out_t)
    assert p_in.stride() == p_out.stride() == (73, 1) and p_out.data_ptr() == p_in.data_ptr() + 40 * p_in.itemsize
    (w, ld), (v, _) = cpu_kernel._unit_rows(p_in), cpu_kernel._unit_rows(p_out)
    assert w is p_in and v is p_out and ld == 73  # read in place, no copy per call
    assert torch.equal(fff_cpu(x, p_in, b_in, p_out, 7, 2), fff_cpu(x, w_in, b_in, w_out_t, 7, 2))
    check(fff_cpu, (x, p_in, b_in, p_out), 7, 2)
    shared = w_in[:1].expand_as(w_in)  # stride 0 between rows: copied, not read as overlapping rows
    assert cpu_kernel._unit_rows(shared)[0] is not shared
    check(fff_cpu, (x, shared, b_in, w_out_t), 7, 2)
    with pytest.raises(ValueError, match="pack_rows"):
        pack_rows(w_in, w_out_t[:-1])


def test_cpu_output_does_not_depend_on_the_batch(cpu_built):
    torch.set_num_threads(2)  # tokens read side by side in groups of 4, 2 and 1, on two threads
    for dtype, trees in ((torch.float32, 2), (torch.bfloat16, 2), (torch.float32, 5)):
        # with 5 trees, 1 token walks all 5 at once, 2 tokens 4 + 1 trees, 3 tokens 2 + 2 + 1, 8 tokens 1 at a time
        x, w_in, b_in, w_out_t = make_case(7, 9, trees, 23, 100, 60, dtype)
        full = fff_cpu(x, w_in, b_in, w_out_t, 9, trees)
        for lo, hi in ((0, 1), (5, 6), (3, 5), (3, 6), (1, 9), (22, 23)):
            assert torch.equal(fff_cpu(x[lo:hi], w_in, b_in, w_out_t, 9, trees), full[lo:hi]), (dtype, trees, lo, hi)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_prepared_cpu_kernel_equals_fff_cpu(cpu_built, dtype):
    torch.set_num_threads(2)
    x, w_in, b_in, w_out_t = make_case(11, 6, 2, 13, 40, 33, dtype)
    p_in, p_out = pack_rows(w_in, w_out_t)
    kernel = kernels.fff_prepare(p_in.clone(), b_in.clone(), w_out_t.t().contiguous().t(), 6, 2)  # a copied layout
    assert isinstance(kernel, cpu_kernel.CpuKernel) and kernel.w_out_t.stride(1) == 1
    packed = cpu_kernel.CpuKernel(p_in, b_in, p_out, 6, 2)
    assert packed.w_in is p_in and packed.w_out_t is p_out  # packed views are read in place
    expect = fff_cpu(x, w_in, b_in, w_out_t, 6, 2)
    for k in (kernel, packed):
        out = k(x)
        assert out.dtype == dtype and torch.equal(out, expect)
        assert torch.equal(k(x.t().contiguous().t()), expect)  # a column-major x is made contiguous
        assert torch.equal(k(x[3:4]), expect[3:4]) and k(x[:0]).shape == (0, 33)
    check(lambda *a: packed(a[0]), (x, w_in, b_in, w_out_t), 6, 2)
    del p_in, p_out
    assert torch.equal(packed(x), expect)  # the kernel keeps the weights it points to alive
    twin = copy.deepcopy(packed)  # copied (and pickled) as its weights, with a plan of its own
    assert (
        twin.w_in.data_ptr() != packed.w_in.data_ptr()
        and twin.w_out_t.data_ptr() == twin.w_in.data_ptr() + 40 * x.itemsize
    )
    assert torch.equal(twin(x), expect)


def _huge_bytes_at(address: int) -> int:
    """AnonHugePages, in bytes, of the mapping of this process that holds ``address`` (from /proc/self/smaps)."""
    inside = False
    for line in open("/proc/self/smaps"):
        head = line.split()[0]
        if "-" in head and ":" not in head:
            lo, hi = (int(v, 16) for v in head.split("-"))
            inside = lo <= address < hi
        elif inside and head == "AnonHugePages:":
            return int(line.split()[1]) << 10
    return 0


def _collapse_expected() -> bool:
    """Linux ≥ 6.1 (MADV_COLLAPSE) with transparent huge pages not switched off."""
    if not sys.platform.startswith("linux"):
        return False
    major, minor = (int(v) for v in os.uname().release.split(".")[:2])
    try:
        enabled = open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    except OSError:
        return False
    return (major, minor) >= (6, 1) and "[never]" not in enabled


def test_huge_pages_keep_contents_and_kernel_output(cpu_built):
    torch.set_num_threads(2)
    x, w_in, b_in, w_out_t = make_case(13, 10, 1, 9, 512, 512, torch.float32)  # 2047 x 1024 floats: 8 MiB
    expect = cpu_kernel.CpuKernel(w_in, b_in, w_out_t, 10, 1, huge_pages=False)(x)
    filled = torch.cat([w_in, w_out_t], 1)  # written on ordinary pages: the kernel collapses them in place
    p_in, p_out = pack_rows(w_in, w_out_t)  # advised before it was filled
    for buffer, (a, b) in ((filled, (filled[:, :512], filled[:, 512:])), (p_in, (p_in, p_out))):
        before = buffer.clone()
        kernel = cpu_kernel.CpuKernel(a, b_in, b, 10, 1)
        assert torch.equal(buffer, before) and torch.equal(kernel(x), expect)
        first = -(-buffer.untyped_storage().data_ptr() // (2 << 20)) * (2 << 20)
        if _collapse_expected() and _huge_bytes_at(first) < 2 << 20:
            # the collapse is advice, which Linux refuses now and then (no free huge page at that moment): once
            # it says it collapsed, the memory must really be on huge pages
            if cpu_kernel.advise_huge_pages(buffer):
                assert _huge_bytes_at(first) >= 2 << 20  # the kernel really backs it with huge pages
        done = cpu_kernel.advise_huge_pages(buffer)  # again: nothing left to do, the same bytes
        assert done % (2 << 20) == 0 and done <= buffer.untyped_storage().nbytes()
        assert torch.equal(buffer, before) and torch.equal(kernel(x), expect)
    assert cpu_kernel.advise_huge_pages(torch.zeros(1000)) == 0  # smaller than a huge page


def test_prepared_cpu_kernel_sends_other_inputs_to_fff_cpu(cpu_built):
    x, w_in, b_in, w_out_t = make_case(12, 4, 1, 5, 16, 8, torch.float32)
    kernel = cpu_kernel.CpuKernel(w_in, b_in, w_out_t, 4, 1)
    with pytest.raises(ValueError, match="share one dtype"):
        kernel(x.double())  # fff_cpu's own error
    with pytest.raises(ValueError, match="expected x"):
        kernel(x[:, :15])
    with pytest.raises(ValueError, match="w_in"):
        cpu_kernel.CpuKernel(w_in[:-1], b_in, w_out_t, 4, 1)
    with pytest.raises(ValueError, match="n_trees"):
        kernels.fff_prepare(w_in, b_in, w_out_t, 4, 0)
    half = cpu_kernel.CpuKernel(*(t.half() for t in (w_in, b_in, w_out_t)), 4, 1)  # no native float16: fff_cpu's
    assert torch.equal(half(x.half()), fff_cpu(x.half(), w_in.half(), b_in.half(), w_out_t.half(), 4, 1))


def test_cpu_gelu_matches_exact_gelu(cpu_built):
    x = torch.cat([torch.linspace(-12, 12, 200001), torch.tensor([0.0, -0.0, 1e-30, -1e-30, 3e38, -5.0, 8.5])])
    exact = F.gelu(x.double())  # erf in float64
    got = cpu_kernel.kernel_gelu(x)  # 8 at a time (200008 elements: no scalar tail)
    tail = cpu_kernel.kernel_gelu(x[:13])  # 8 vectorised + 5 by std::erf
    for out, ref, xs in ((got, exact, x), (tail, exact[:13], x[:13])):
        # absolute error against max(|x|, 1): float32 GELU cannot be relatively exact in the left tail, where
        # 1 + erf cancels (torch's own float GELU is 7% off at -5); torch's float GELU reaches 1.5e-7 here
        err = (out.double() - ref).abs() / xs.double().abs().clamp_min(1)
        assert err.max() < 3e-7, (err.max(), xs[err.argmax()])
    special = cpu_kernel.kernel_gelu(
        torch.tensor([float("nan"), float("inf"), 0.0, 2.0, float("-inf"), -40.0, 1.0, -1.0])
    )
    assert special[0].isnan() and special[1] == float("inf") and special[2] == 0.0 and special[5] == 0.0
    assert special[4].isnan()  # -inf · (1 + erf(-inf)) = -inf · 0, as std::erf gives too
    assert special[:4].isnan().sum() == 1 and torch.isfinite(special[[2, 3, 5, 6, 7]]).all()


def test_row_reader_reads_the_listed_rows(cpu_built):
    torch.set_num_threads(2)
    w = torch.randn(50, 70, dtype=torch.float64).float()
    rows = torch.tensor([3, 49, 0, 3, 17])
    for m in (w, torch.cat([w, w], 1)[:, 70:]):  # contiguous, and rows with a stride
        assert cpu_kernel.row_reader(m, rows)() == pytest.approx(w[rows].double().sum().item(), rel=1e-5)
    assert cpu_kernel.row_reader(w, rows[:0])() == 0.0
    with pytest.raises(ValueError, match="outside"):
        cpu_kernel.row_reader(w, torch.tensor([50]))
    with pytest.raises(ValueError, match="float32"):
        cpu_kernel.row_reader(w.double(), rows)


def test_shape_errors():
    x, w_in, b_in, w_out_t = make_case(0, 2, 1, 3, 4, 5, torch.float32)
    with pytest.raises(ValueError, match="w_in"):
        fff_cpu(x, w_in, b_in, w_out_t, 3, 1)  # depth 3 needs 15 rows
    with pytest.raises(ValueError, match="dtype"):
        fff_gather(x, w_in.double(), b_in, w_out_t, 2, 1)


def test_build_failure_warns_and_falls_back(tmp_path, monkeypatch, caplog):
    bad = tmp_path / "broken.cpp"
    bad.write_text("this is not C++\n")
    monkeypatch.setattr(cpu_kernel, "SOURCE", bad)
    monkeypatch.setenv("RECRUIT_CACHE", str(tmp_path))
    with caplog.at_level(logging.WARNING, logger=cpu_kernel.__name__):
        assert cpu_kernel._load.__wrapped__() is None
    assert len(caplog.records) == 1 and "fallback" in caplog.text
    monkeypatch.setattr(cpu_kernel, "_load", lambda: None)
    case = make_case(2, 3, 2, 3, 8, 6, torch.float32)
    check(fff_cpu, case, 3, 2)  # served by fff_gather
    prepared = kernels.fff_prepare(*case[1:], 3, 2)
    check(lambda *a: prepared(a[0]), case, 3, 2)  # a prepared kernel without its C++ library: fff_gather too


def test_package_imports_and_infers_without_triton(cpu_built):
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch\n"
        "from recruit.fff.kernels import fff_infer, fff_gather, triton_available\n"
        "assert not triton_available()\n"
        "x, w, b, o = torch.randn(3, 4), torch.randn(7, 4), torch.randn(7), torch.randn(7, 5)\n"
        "torch.testing.assert_close(fff_infer(x, w, b, o, 2, 1), fff_gather(x, w, b, o, 2, 1))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ---- Triton ----------------------------------------------------------------------------------------
TRITON_CASES = [  # depth, n_trees, batch, d_in, d_out, launch overrides (small blocks: several masked chunks)
    (0, 1, 1, 5, 3, {}),  # small-batch defaults (the token kernel) on a single level
    (14, 1, 3, 8, 5, {}),  # 15 levels in routing steps of 2, the last one of a single level
    (5, 3, 3, 20, 9, dict(spec=3, block_d=16)),  # 6 levels = 3 + 3, two feature chunks, three trees' paths
    (6, 1, 2, 9, 9, dict(split=3)),  # 8 programs per token, each a level-3 subtree: 2 steps above, 2 below
    (5, 1, 3, 20, 17, dict(split=2, spec=1, block_d=16, block_o=16)),  # 2 + 4 levels, masked tails
    (4, 1, 2, 16, 7, dict(split=1, spec=4)),  # 1 level above the subtrees, 4 below in one step
    (8, 2, 3, 24, 10, dict(block_b=1)),  # the block kernel at a small batch
    (3, 1, 2, 300, 5, dict(block_d=16)),  # 19 feature chunks: the token kernel's loop is not unrolled in full
    (5, 1, 130, 12, 6, dict(kernel="token")),  # the token kernel above SMALL_BATCH tokens
    (5, 1, 3, 12, 6, dict(kernel="block")),  # the block kernel at a small batch
    (5, 1, 2, 12, 6, dict(maxnreg=0)),  # ptxas' own register choice (a compile option the interpreter ignores)
    (14, 1, 3, 8, 5, dict(pairs=True)),  # bf16 rows read as 32-bit pairs of features (other dtypes: refused)
    (5, 3, 3, 20, 9, dict(spec=3, block_d=16, pairs=True)),  # ... two chunks, a masked tail of pairs
    (3, 1, 2, 300, 6, dict(block_d=16, pairs=True, split=1)),  # ... 19 chunks, not unrolled in full
    (14, 1, 3, 8, 5, dict(blocked=8)),  # rows in the blocked layout: subtrees of levels 8..14 in runs of rows
    (5, 3, 3, 20, 9, dict(blocked=2, spec=3)),  # ... three trees
    (6, 1, 2, 9, 9, dict(blocked=2, split=3)),  # ... the walk above the subtree programs' roots too
    (5, 1, 3, 20, 17, dict(blocked=3, spec=1, block_o=16)),  # ... 2 column programs, tails
    (6, 1, 2, 10, 9, dict(blocked=4, split=2, pairs=True)),  # ... the layout's subtrees below the programs' roots
    (6, 1, 2, 16, 7, dict(blocked=6, spec=3)),  # ... subtrees of one node (heap order)
    (9, 2, 2, 12, 6, dict(blocked=5, prefetch=2)),  # L2 prefetching (PTX, a hint, which the interpreter leaves out)
    (8, 2, 3, 24, 10, dict(block_b=1, blocked=3)),  # the block kernel on rows in the blocked layout
    (5, 1, 3, 20, 9, dict(kernel="block", blocked=2, spec=3, block_d=16)),  # ... 3 levels per step, 2 chunks
    (6, 2, 130, 12, 6, dict(blocked=4)),  # ... large-batch defaults: the top levels by GEMM, at most 4 of them
    (5, 1, 129, 12, 6, dict(blocked=2, top=1, spec=2)),  # ... one level by GEMM, the walk from heap order into runs
    (6, 1, 5, 9, 9, dict(spec=2, block_b=4, unroll=3)),  # 7 levels = 2 + 2 + 2 + 1, masked tokens
    (3, 2, 17, 37, 41, dict(spec=1, block_b=16, block_d=16, block_o=16)),  # masked feature and column tails
    (2, 1, 129, 4, 3, {}),  # large-batch defaults on a shallow tree: every level routed by GEMM
    (9, 1, 131, 8, 5, {}),  # large-batch defaults: top 8 levels by GEMM, 2 gathered, 2 tokens per program
    (6, 2, 130, 9, 5, dict(top=0)),  # the plain walk, 4 tokens per program
    (6, 1, 134, 9, 9, dict(spec=4)),  # 7 levels = 4 + 3 at a large batch
    (5, 2, 134, 24, 10, dict(top=3)),  # the top 3 levels of both trees routed by GEMM, then 3 gathered
    (5, 2, 7, 24, 10, dict(top=3, spec=2)),  # the same at a small batch
    (4, 1, 6, 16, 7, dict(top=5, spec=2)),  # every level routed by GEMM: the kernel only looks up
    (3, 3, 2, 11, 37, dict(top=1, spec=3, block_d=16, block_o=16)),  # 3 column tiles
]
# one name per case (depth-trees-batch, and its place where those repeat): the fixture keys its outputs by name
TRITON_NAMES = [f"{c[0]}-{c[1]}-{c[2]}" + f"#{i}" * (sum(d[:3] == c[:3] for d in TRITON_CASES) > 1)
                for i, c in enumerate(TRITON_CASES)]  # fmt: skip
TRITON_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
INTERPRET = """
import sys, torch
from recruit.fff.kernels.triton_fff import fff_triton, to_blocked
def run(x, w_in, b_in, w_out_t, depth, n_trees, blocked=0, **blocks):  # weights laid out as `blocked` says
    w_in, b_in, w_out_t = (to_blocked(t, depth, n_trees, blocked) for t in (w_in, b_in, w_out_t))
    return fff_triton(x, w_in, b_in, w_out_t, depth, n_trees, blocked=blocked, **blocks)
jobs = torch.load(sys.argv[1])
torch.save([run(*args, depth, n_trees, **blocks) for args, depth, n_trees, blocks in jobs], sys.argv[2])
"""


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory):
    """Triton's outputs for every interpreter case, computed in a subprocess with TRITON_INTERPRET=1.

    The interpreter must be on before ``triton`` is first imported (``triton.language``'s own functions are
    decorated then), which another test may already have done in this process; a subprocess also keeps the
    variable from leaking. Returns {(name, dtype): (inputs, depth, n_trees, output)}.
    """
    pytest.importorskip("triton")
    jobs = {}
    for dtype in TRITON_DTYPES:
        for name, (depth, n_trees, batch, d_in, d_out, blocks) in zip(TRITON_NAMES, TRITON_CASES, strict=True):
            case = make_case(depth + batch, depth, n_trees, batch, d_in, d_out, dtype)
            if dtype != torch.bfloat16:  # pairs is for bf16 rows: other dtypes run the same launch without it
                blocks = {k: v for k, v in blocks.items() if k != "pairs"}
            jobs[(name, dtype)] = (case, depth, n_trees, blocks)
        jobs[("crafted", dtype)] = (crafted(dtype), 2, 2, {})
        jobs[("empty", dtype)] = (tuple(t[:0] if i == 0 else t for i, t in enumerate(crafted(dtype))), 2, 2, {})
    folder = tmp_path_factory.mktemp("triton")
    torch.save(list(jobs.values()), folder / "jobs.pt")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run(
        [sys.executable, "-c", INTERPRET, str(folder / "jobs.pt"), str(folder / "out.pt")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    outputs = torch.load(folder / "out.pt")
    return {key: (*job[:3], out) for (key, job), out in zip(jobs.items(), outputs, strict=True)}


@pytest.mark.parametrize("dtype", TRITON_DTYPES)
@pytest.mark.parametrize("name", TRITON_NAMES + ["crafted", "empty"])
def test_triton_interpreted_equals_reference(interpreted, dtype, name):
    case, depth, n_trees, out = interpreted[(name, dtype)]
    assert out.shape == (case[0].shape[0], case[3].shape[1]) and out.dtype == dtype
    torch.testing.assert_close(out, fff_reference(*case, depth, n_trees), **TOL[dtype])


PREFETCH_SPANS = """
import os, sys
os.environ["TRITON_INTERPRET"] = "1"
import numpy as np, torch
from recruit.fff.kernels import triton_fff

issued = []  # (address, bytes) of every prefetch, as the interpreter hands them over
triton_fff._prefetch_bulk_l2 = lambda ptrs, n: issued.append((int(ptrs.handle.data[0]), int(n.handle.data[0])))
depth, trees, spec, blocked, ahead, d_in, d_out, block_o, itemsize = (int(a) for a in sys.argv[1:])
block_o = block_o or None  # 0: the default
m, levels = 2 ** (depth + 1) - 1, depth + 1
dtype = {2: torch.bfloat16, 4: torch.float32}[itemsize]
g = torch.Generator().manual_seed(depth + spec)
shapes = ((1, d_in), (trees * m, d_in), (trees * m,), (trees * m, d_out))
x, w_in, b_in, w_out = (torch.randn(*shape, generator=g).to(dtype) for shape in shapes)
out = torch.empty(1, d_out, dtype=dtype)
kernel_w = [triton_fff.to_blocked(t, depth, trees, blocked) for t in (w_in, b_in, w_out)]
triton_fff._launch_token(x, *kernel_w, out, depth, trees, spec=spec, block_o=block_o, prefetch=ahead,
                         blocked=blocked, hints=True)
stored = triton_fff.blocked_rows(depth, blocked)  # heap node -> row within its tree
assert all(a % 16 == 0 and n % 16 == 0 and n >= 0 for a, n in issued), issued
def fetched(t):  # the bytes of t asked for, as a sorted list of disjoint [start, end) offsets
    base, size = t.data_ptr(), t.numel() * t.element_size()
    spans = sorted((a - base, a - base + n) for a, n in issued if n and base <= a < base + size)
    assert all(end <= size for _, end in spans), "a prefetch runs past the end of its tensor"
    merged = []
    for start, end in spans:
        assert not merged or start >= merged[-1][1], "two prefetches overlap"
        if merged and start == merged[-1][1]:
            merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged, sum(n for a, n in issued if n and base <= a < base + size)
total = sum(n for _, n in issued)
first = (blocked // spec - ahead + 1) * spec  # the level whose node asks for the blocked subtrees below it
per_tree = 2 ** (blocked - first) * (2 ** (levels - blocked) - 1)  # rows asked for, per tree
expect_in, expect_out = [], []
for k in range(trees):
    node = 0  # the token's walk down tree k, to its node at level `first`
    for _ in range(first):
        node = 2 * node + 1 + int((x[0].float() @ w_in[k * m + node].float() + b_in[k * m + node].float()).item() > 0)
    lo = (2 ** blocked - 1) + (node - (2 ** first - 1)) * per_tree  # the first blocked subtree's row below it
    for h in range(2 ** blocked - 1, m):  # every node below `node` at level >= blocked lies in the span, and only those
        level = (h + 1).bit_length() - 1
        inside = lo <= int(stored[h]) < lo + per_tree
        assert inside == ((h + 1) >> (level - first) == node + 1), (k, h)
    for expect, width in ((expect_in, d_in), (expect_out, d_out)):
        row_bytes = width * itemsize
        start, end = (k * m + lo) * row_bytes, (k * m + lo + per_tree) * row_bytes
        expect.append(((start + 15) // 16 * 16, end // 16 * 16))
got_in, n_in = fetched(kernel_w[0])
got_out, n_out = fetched(kernel_w[2])
assert got_in == expect_in and got_out == expect_out, (got_in, expect_in, got_out, expect_out)
assert n_in + n_out == total, "a prefetch outside w_in and w_out"
ref = triton_fff.fff_triton(x, *kernel_w, depth, trees, spec=spec, block_o=block_o, blocked=blocked)
torch.testing.assert_close(out, ref, rtol=0, atol=0)
print("ok", len(issued), n_in, n_out)
"""


@pytest.mark.parametrize(
    "depth,trees,spec,blocked,ahead,d_in,d_out,block_o,itemsize",
    [
        (9, 1, 2, 5, 1, 100, 70, 16, 4),  # step 2 (level 4) asks for its 2 subtrees, 5 column programs, masked tails
        (9, 1, 2, 6, 1, 40, 33, None, 4),  # step 3 (level 6) asks for its one subtree
        (9, 1, 2, 6, 2, 40, 33, 16, 4),  # ... or step 2 (level 4) for 4 subtrees
        (8, 1, 3, 3, 2, 24, 48, 16, 2),  # spec 3: step 0 (the root) asks for all 8; bf16 rows of 48 bytes
        (5, 3, 2, 2, 1, 12, 40, None, 2),  # three trees, walked one after another; rows of 24 bytes (unaligned)
    ],
)
def test_token_kernel_prefetches_the_blocked_subtrees_below_the_walk(depth, trees, spec, blocked, ahead, d_in,
                                                                    d_out, block_o, itemsize):  # fmt: skip
    """The L2 prefetch asks, once per tree, for the w_in and w_out_t rows of exactly the blocked subtrees below the
    walk's node at the asking step's level (one span each, within 16-byte alignment), shared out over the column
    programs without overlaps, nothing outside the weights (under the interpreter, with the PTX replaced by a
    recorder); and the result is that of the same launch without it."""
    pytest.importorskip("triton")
    args = [str(a) for a in (depth, trees, spec, blocked, ahead, d_in, d_out, block_o or 0, itemsize)]
    done = subprocess.run([sys.executable, "-c", PREFETCH_SPANS, *args], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("ok"), done.stdout


PREPARED = """
import os, sys
os.environ["TRITON_INTERPRET"] = "1"
import torch
from recruit.fff.kernels import triton_fff
from recruit.fff.kernels.reference import fff_reference

g = torch.Generator().manual_seed(5)
depth, trees, d_in, d_out = 9, 2, 12, 7
m = 2 ** (depth + 1) - 1
shapes = ((trees * m, d_in), (trees * m,), (trees * m, d_out))
w_in, b_in, w_out_t = (torch.randn(*shape, generator=g) for shape in shapes)
plain = triton_fff.TritonKernel(w_in, b_in, w_out_t, depth, trees)  # the defaults: heap order, the weights as given
assert plain.blocked == triton_fff.layer_blocked(depth, triton_fff.LAYER_BLOCKED_LEVELS)
if plain.blocked == 0:
    assert plain.weights[0].data_ptr() == w_in.data_ptr() and plain.prefetch == 0  # no copy
laid = triton_fff.TritonKernel(w_in, b_in, w_out_t, depth, trees, blocked_levels=4, prefetch=1)
assert laid.blocked == 8 and laid.prefetch == 1  # at least TOP_LEVELS: the block kernel's GEMMs read heap-order rows
assert torch.equal(laid.weights[0], triton_fff.to_blocked(w_in, depth, trees, 8))
for kernel in (plain, laid):
    for batch in (1, 3, 130):  # the token kernel (with the prefetch, left out by the interpreter), the block kernel
        x = torch.randn(batch, d_in, generator=g)
        torch.testing.assert_close(kernel(x), fff_reference(x, w_in, b_in, w_out_t, depth, trees), rtol=1e-4, atol=1e-4)
for bad in (torch.randn(2, d_in + 1), torch.randn(2, d_in, dtype=torch.float64), torch.randn(d_in)):
    try:
        laid(bad)
    except ValueError as e:
        print("refused:", e)
    else:
        raise AssertionError(f"accepted x {tuple(bad.shape)} {bad.dtype}")
print("ok")
"""


def test_prepared_triton_kernel_lays_out_the_rows_once_and_equals_the_reference():
    """``TritonKernel`` (what ``fff_prepare`` gives CUDA), under the interpreter: the default layout's weights as
    given, a blocked layout copied once at a level no shallower than the block kernel's dense top levels, both
    equal to the reference at 1, 3 and 130 tokens, and inputs of another width, dtype or rank refused."""
    pytest.importorskip("triton")
    from recruit.fff.kernels.triton_fff import layer_blocked

    assert [layer_blocked(13, n) for n in (0, 6, 3, 14)] == [0, 8, 11, 8]
    assert [layer_blocked(10, 6), layer_blocked(5, 6), layer_blocked(0, 6)] == [8, 5, 0]
    done = subprocess.run([sys.executable, "-c", PREPARED], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.endswith("ok\n") and done.stdout.count("refused") == 3, done.stdout


@pytest.mark.parametrize("depth,blocked", [(0, 0), (3, 0), (3, 1), (3, 2), (3, 3), (7, 3), (13, 8)])
def test_blocked_layout_keeps_the_top_levels_and_runs_each_subtree_in_heap_order(depth, blocked):
    """The layout, against its definition written out node by node: rows 0..2^L − 2 the levels above L, then
    subtree after subtree of the level-L roots, each in heap order (its root, then its children, ...)."""
    pytest.importorskip("triton")
    from recruit.fff.kernels.triton_fff import blocked_rows, to_blocked

    expect = list(range(2**blocked - 1))  # heap nodes in row order
    for root in range(2**blocked - 1, 2 ** (blocked + 1) - 1):
        level = [root]
        while level[0] < 2 ** (depth + 1) - 1:
            expect += level
            level = [c for n in level for c in (2 * n + 1, 2 * n + 2)]
    rows = blocked_rows(depth, blocked)
    assert rows.dtype == torch.int64 and sorted(rows.tolist()) == list(range(len(expect)))
    assert [rows[n].item() for n in expect] == list(range(len(expect)))  # node expect[r] sits at row r
    if depth == 3:
        t = torch.arange(2 * 15.0)[:, None].expand(-1, 3)  # two trees, a row's value its heap index
        laid = to_blocked(t, depth, 2, blocked)
        assert laid[:15, 0].tolist() == expect and laid[15:, 0].tolist() == [15.0 + n for n in expect]


def test_token_kernel_reads_bf16_rows_as_pairs_by_default(monkeypatch):
    """bf16 rows of even width are read as pairs unless asked not to (an H200's pick at hidden 4096), with x moved
    to an aligned address when it lies at an odd one, so that one x gives one sum order; other rows one at a time."""
    pytest.importorskip("triton")
    from recruit.fff.kernels import triton_fff

    seen = []
    monkeypatch.setattr(triton_fff, "_launch_token", lambda x, *a, **kw: seen.append((x, kw["pairs"])) or a[3])

    def pairs_for(dtype, d_in=8, offset=0, **launch):
        w_in, b_in, w_out_t = (torch.randn(*shape).to(dtype) for shape in ((7, d_in), (7,), (7, 5)))
        x = torch.randn(2 * d_in + 1).to(dtype)[offset : offset + 2 * d_in].view(2, d_in)
        triton_fff.fff_triton(x, w_in, b_in, w_out_t, 2, 1, **launch)
        return seen[-1][1], seen[-1][0].data_ptr() % 4 == 0, seen[-1][0].data_ptr() == x.data_ptr()

    assert pairs_for(torch.bfloat16) == (True, True, True)
    assert pairs_for(torch.bfloat16, offset=1) == (True, True, False)  # a copy at an aligned address
    assert pairs_for(torch.bfloat16, pairs=False)[0] is False
    assert pairs_for(torch.bfloat16, d_in=7)[0] is False  # odd width
    assert pairs_for(torch.float16)[0] is False and pairs_for(torch.float32)[0] is False
    launch = triton_fff.token_launch(1, 4096, 4096, 13, 1, pairs=True)
    assert launch.constexprs["BLOCK_D"] == triton_fff.PAIRS_BLOCK_D == 1024 and launch.constexprs["PAIRS"] == 1
    assert triton_fff.token_launch(1, 4096, 4096, 13, 1).constexprs["BLOCK_D"] == 2048  # a feature at a time


def test_token_launch_is_worked_out_once_per_shape():
    """A launch costs about 20 µs of Python to work out, as much as the kernel at 1 token: it is cached per shape
    and options, and read-only, since every call with those shares it."""
    pytest.importorskip("triton")
    from recruit.fff.kernels.triton_fff import token_launch

    first = token_launch(1, 4096, 4096, 13, 1, pairs=True)
    assert token_launch(1, 4096, 4096, 13, 1, pairs=True) is first
    assert token_launch(1, 4096, 4096, 13, 1) is not first and first.constexprs["PAIRS"] == 1
    with pytest.raises(TypeError):
        first.ints["D_IN"] = 8


@pytest.mark.parametrize(
    "launch,batch,n_trees,why",
    [
        (dict(split=2), 1, 2, "single tree"),  # the programs of one token would write one output per tree
        (dict(split=2), 129, 1, "token kernel"),  # above SMALL_BATCH tokens
        (dict(split=2, block_b=1), 1, 1, "token kernel"),
        (dict(split=4), 1, 1, "split must be in 0..3"),
        (dict(kernel="token", block_b=2), 1, 1, "token kernel takes no block_b"),
        (dict(kernel="token"), 1, 17, "at most 64 path rows"),  # 17 trees of 4 levels
        (dict(kernel="warp"), 1, 1, "kernel must be"),
        (dict(maxnreg=128), 129, 1, "token kernel"),
        (dict(maxnreg=256), 1, 1, "maxnreg must be in 0..255"),
        (dict(prefetch=1, block_b=1), 1, 1, "prefetch needs the token kernel"),
        (dict(prefetch=4, blocked=2), 1, 1, "prefetch must be in 0..3"),
        (dict(prefetch=1), 1, 1, "prefetch needs rows in the blocked layout"),
        (dict(prefetch=1, blocked=2, split=1), 1, 1, "and no split"),
        (dict(prefetch=3, blocked=2), 1, 1, "prefetch 3 reaches above the root: at most 2 here"),
        (dict(pairs=True), 1, 1, "pairs needs 16-bit rows"),  # float32 rows
        (dict(pairs=True, block_b=1), 1, 1, "pairs needs the token kernel"),
        (dict(block_d=100), 1, 1, "block_d must be a power of two of at least 16"),
        (dict(block_o=8), 1, 1, "block_o must be a power of two of at least 16"),
        (dict(block_b=3), 1, 1, "block_b must be a power of two"),
        (dict(num_warps=6), 1, 1, "num_warps must be a power of two"),
        (dict(unroll=0), 1, 1, "unroll must be at least 1"),
        (dict(blocked=2, top=3), 1, 1, "top must be at most blocked"),  # the top GEMMs read heap-order rows
        (dict(blocked=4), 1, 1, "blocked must be in 0..3"),
    ],
)
def test_triton_launch_refuses_what_it_cannot_do(launch, batch, n_trees, why):
    pytest.importorskip("triton")
    from recruit.fff.kernels.triton_fff import fff_triton

    case = make_case(0, 3, n_trees, batch, 8, 4, torch.float32)
    with pytest.raises(AssertionError, match=why):
        fff_triton(*case, 3, n_trees, **launch)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("depth,n_trees,batch,d_in,d_out", [(0, 1, 1, 7, 5), (11, 1, 1, 256, 256), (8, 2, 333, 96, 9)])
def test_triton_cuda_equals_reference(dtype, depth, n_trees, batch, d_in, d_out):
    pytest.importorskip("triton")
    from recruit.fff.kernels.triton_fff import TritonKernel, fff_triton

    case = tuple(t.cuda() for t in make_case(depth, depth, n_trees, batch, d_in, d_out, dtype))
    check(fff_triton, case, depth, n_trees)
    check(fff_infer, case, depth, n_trees)
    for prepared in (kernels.fff_prepare(*case[1:], depth, n_trees),  # the layer's kernel, default layout
                     TritonKernel(*case[1:], depth, n_trees, blocked_levels=6, prefetch=1)):  # fmt: skip
        assert isinstance(prepared, TritonKernel)
        check(lambda x, *weights_and_shape, prepared=prepared: prepared(x), case, depth, n_trees)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "launch",
    [
        dict(split=3),
        dict(split=6, spec=1),
        dict(split=7, spec=3),
        dict(block_b=1),
        dict(maxnreg=0),
        dict(pairs=True),
        dict(blocked=8),
        dict(blocked=8, pairs=True),
        dict(blocked=2, split=3),
        dict(blocked=8, prefetch=1),
        dict(blocked=8, prefetch=2, pairs=True),
        dict(blocked=9, prefetch=3, spec=3),
    ],
    ids=_label,  # named as the sweep names them, for -k (device_session.sh)
)
def test_triton_cuda_small_batch_launches_equal_reference(dtype, launch):
    pytest.importorskip("triton")
    from recruit.fff.kernels.triton_fff import fff_triton, to_blocked

    case = tuple(t.cuda() for t in make_case(13, 13, 1, 5, 512, 384, dtype))
    if dtype != torch.bfloat16:  # pairs is for bf16 rows: the same launch without it
        launch = {k: v for k, v in launch.items() if k != "pairs"}

    def laid_out(x, w_in, b_in, w_out_t, depth, n_trees, **kw):  # the weights in the layout the launch reads
        weights = (to_blocked(t, depth, n_trees, kw.get("blocked", 0)) for t in (w_in, b_in, w_out_t))
        return fff_triton(x, *weights, depth, n_trees, **kw)

    check(laid_out, case, 13, 1, **launch)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_cuda_token_kernel_at_large_batch_equals_reference(dtype):
    pytest.importorskip("triton")
    from recruit.fff.kernels.triton_fff import fff_triton

    case = tuple(t.cuda() for t in make_case(11, 11, 1, 333, 256, 192, dtype))
    check(fff_triton, case, 11, 1, kernel="token")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("launch", [dict(), dict(top=0), dict(top=3, spec=2)])
def test_triton_cuda_block_kernel_on_blocked_rows_equals_reference(dtype, launch):
    pytest.importorskip("triton")
    from recruit.fff.kernels.triton_fff import fff_triton, to_blocked

    case = make_case(11, 11, 2, 333, 256, 192, dtype)
    laid = tuple(to_blocked(t, 11, 2, 6) for t in case[1:])
    out = fff_triton(case[0].cuda(), *(t.cuda() for t in laid), 11, 2, blocked=6, **launch)
    torch.testing.assert_close(out.cpu(), fff_reference(*case, 11, 2), **TOL[dtype])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("top", [2, 6, 12])
def test_triton_cuda_dense_top_levels_equal_reference(dtype, top):
    pytest.importorskip("triton")
    from recruit.fff.kernels.triton_fff import fff_triton

    case = tuple(t.cuda() for t in make_case(top, 11, 2, 257, 256, 192, dtype))
    check(fff_triton, case, 11, 2, top=top)
    check(fff_triton, tuple(t[:3] if i == 0 else t for i, t in enumerate(case)), 11, 2, top=top)


def _sass(*lines: str) -> str:
    return "\n".join(f"        /*{16 * i:04x}*/   {line} ;" for i, line in enumerate(lines))


def test_the_routing_loops_are_the_outermost_loops_before_the_last(resources_tool):
    """A loop nested in a routing loop (over feature chunks) ends first in the SASS: the tool reads the loop that
    encloses it, not the nested one; with ``prefetch`` the routing steps are two loops, and the last loop (the
    output's gather) is not one of them."""
    tool = resources_tool
    body = ["LDG.E.128 R8, desc[UR4][R2.64]", "FFMA R20, R11, R9, RZ", "UBLKPF.L2 [UR4], UR6", "@P2 BRA 0x20",
            "FADD R21, R20, R20", "@P1 BRA 0x10", "LDG.E.128 R8, desc[UR4][R2.64]", "@P3 BRA 0x70", "EXIT"]  # fmt: skip
    assert tool.loop_ops(_sass("MOV R1, R2", *body)) == {"BRA": 2, "FADD": 1, "FFMA": 1, "LDG": 1, "UBLKPF": 1}
    two = ["MOV R1, R2", "FFMA R20, R11, R9, RZ", "@P1 BRA 0x10", "FADD R21, R20, R20", "IMAD R1, R2, R3, RZ",
           "@P1 BRA 0x30", "LDG.E.128 R8, desc[UR4][R2.64]", "@P3 BRA 0x60", "EXIT"]  # fmt: skip
    assert tool.loop_ops(_sass(*two)) == {"BRA": 1, "FADD": 1, "IMAD": 1}  # the second of two routing loops
    with pytest.raises(AssertionError, match="output's loop"):
        tool.loop_ops(_sass("MOV R1, R2", "@P1 BRA 0x0", "EXIT"))


def test_load_waves_counts_loads_issued_after_a_wait(resources_tool):
    tool = resources_tool
    head = ["MOV R1, R2", "IADD3 R3, R3, 0x1, RZ"]  # 0x0000, 0x0010: the loop starts at 0x0010
    one = ["@P0 LDG.E.128 R8, desc[UR4][R2.64]", "LDG.E.U16 R12, desc[UR4][R4.64]", "FFMA R20, R8, R9, RZ",
           "FADD R21, R12, R20"]  # fmt: skip
    gather = ["LDG.E.128 R8, desc[UR4][R2.64]", "FFMA R20, R11, R9, RZ", "LDG.E.128 R8, desc[UR4][R2.64]"]
    tail = [*gather, f"@P2 BRA {16 * (len(head) + len(one) + 1):#x}", "EXIT"]  # the output's loop after the steps
    assert tool.load_waves(_sass(*head, *one, "@P1 BRA 0x10", *tail)) == 1
    assert tool.load_waves(_sass(*head, *one, "@P1 BRA 0x10", *tail), after=True) == 2
    two = ["LDG.E.128 R8, desc[UR4][R2.64]", "FFMA R20, R11, R9, RZ", "LDG.E.128 R8, desc[UR4][R2.64+0x10]",
           "SHFL.BFLY PT, R8, R20, 0x10, 0x1f", "LDG.E R13, desc[UR4][R2.64]"]  # fmt: skip
    # R11 is the 4th register of a 128-bit load: a wait; the shuffle writes R8, it does not read it: no wait
    tail = [*gather, f"@P2 BRA {16 * (len(head) + len(two) + 1):#x}", "EXIT"]
    assert tool.load_waves(_sass(*head, *two, "@P1 BRA 0x10", *tail)) == 2
    assert tool.load_waves(_sass(*two, *head, "@P1 BRA 0x40", *tail)) == 1  # loads before the loop: not counted


def test_token_kernel_compiles_for_sm90_without_spills(cuobjdump):
    """The default small-batch launches at the GPU benchmark's shapes, compiled ahead of time for an H100/H200.

    No registers spilled, the row reads vectorised to 128-bit loads (a scalar-load layout once hid here), and
    each routing step's loads issued in one wave (the ptxas of Triton 3.6 once split them in five).
    """
    tool = cuobjdump
    for hidden, depth in tool.SHAPES:
        used = tool.resources(tool.compile_token(hidden, depth))
        assert used.local_bytes == 0, (hidden, depth, used)
        assert used.load_waves == 1, (hidden, depth, used)
        assert used.ops.get("LDG.E.128", 0) >= 8, (hidden, depth, used)
        assert "UBLKPF.L2" not in used.ops, (hidden, depth, used)  # no prefetch unless asked for


def test_token_kernel_blocked_layout_costs_a_step_a_few_integer_instructions(cuobjdump):
    """Rows in the blocked layout, compiled for an H100/H200: each step's loads still in one wave, no spills, and
    the layout's row arithmetic in 32 bits (64-bit shifts and products cost a step 116 instructions, not 45)."""
    tool = cuobjdump
    for hidden, depth in tool.SHAPES:
        heap = tool.resources(tool.compile_token(hidden, depth))
        laid = tool.resources(tool.compile_token(hidden, depth, blocked=8))
        assert laid.local_bytes == 0 and laid.load_waves == 1, (hidden, depth, laid)
        extra = sum(laid.loop_ops.values()) - sum(heap.loop_ops.values())
        assert 0 < extra <= 60, (hidden, depth, extra)


@pytest.mark.parametrize("batch", [512, 4096])
def test_block_kernel_compiles_for_sm90_on_blocked_rows(cuobjdump, batch):
    """The block kernel's default launch above 128 tokens (8 or 7 levels by GEMM), compiled for an H100/H200 on rows
    in heap order and in the blocked layout a layer would hold (subtrees at level 8): no spill either way, and the
    layout's row arithmetic a few instructions (Triton 3.6, hidden 4096: 1,704 against 1,680 at 4096 tokens)."""
    tool = cuobjdump
    for hidden, depth in tool.SHAPES:
        heap = tool.resources(tool.compile_block(hidden, depth, batch), waves=False)
        laid = tool.resources(tool.compile_block(hidden, depth, batch, blocked=8), waves=False)
        assert heap.local_bytes == 0 and laid.local_bytes == 0, (hidden, depth, heap, laid)
        assert laid.instructions <= 1.1 * heap.instructions, (hidden, depth, heap.instructions, laid.instructions)


@pytest.mark.parametrize("spec", [1, 2, 3])
def test_token_kernel_multiplies_only_the_lanes_that_hold_a_node(cuobjdump, spec):
    """A routing step's lanes are a power of two, of which 2^spec − 1 hold a node: compiled for an H100/H200,
    the step's FFMAs are those of these lanes alone (at spec 2, 3 of 4). Triton 3.6, the GPU machine's, multiplied
    the empty lane too until the kernel masked it by a value known per register; Triton 3.9 folds it either way."""
    from recruit.fff.kernels.triton_fff import token_launch

    tool = cuobjdump
    for hidden, depth in tool.SHAPES:
        launch = token_launch(1, hidden, hidden, depth, 1, spec=spec)
        block_d, chunks = launch.constexprs["BLOCK_D"], launch.constexprs["D_CHUNKS"]
        used = tool.resources(tool.compile_token(hidden, depth, spec=spec, pairs=False))
        per_thread = (2**spec - 1) * chunks * block_d // (32 * launch.options["num_warps"])
        assert chunks and used.loop_ops.get("FFMA") == per_thread, (hidden, spec, used.loop_ops, per_thread)


def test_token_kernel_pairs_widens_bf16_in_fewer_instructions(cuobjdump):
    """``pairs`` at hidden 4096, compiled for an H100/H200: bf16 rows read as 32-bit pairs widen by a shift and a
    mask, where a feature alone compiled to a byte permute and a shift for half of them; the routing step keeps its
    FFMAs and its one load wave in fewer instructions, alone and with ``block_d`` 1024."""
    tool = cuobjdump
    for launch in (dict(), dict(block_d=1024)):
        plain = tool.resources(tool.compile_token(4096, 13, pairs=False, **launch))
        used = tool.resources(tool.compile_token(4096, 13, pairs=True, **launch))
        assert used.local_bytes == 0 and used.load_waves == 1 and used.tail_waves == 1, (launch, used)
        assert used.loop_ops["FFMA"] == plain.loop_ops["FFMA"], (launch, used.loop_ops, plain.loop_ops)
        assert sum(used.loop_ops.values()) < 0.9 * sum(plain.loop_ops.values()), (launch, used.loop_ops)
        assert used.loop_ops.get("PRMT", 0) < plain.loop_ops["PRMT"] // 4, (launch, used.loop_ops)


@pytest.mark.parametrize("launch", [dict(prefetch=1), dict(prefetch=2), dict(prefetch=1, pairs=False)])
def test_token_kernel_prefetch_compiles_for_sm90_as_hints(cuobjdump, launch):
    """With L2 prefetching of the blocked subtrees, at the GPU benchmark's shapes for an H100/H200: two bulk
    prefetches (``UBLKPF``, w_in's span and w_out_t's), issued between the routing loops and not in a loop over a
    warp's threads, at no spill, no extra load in a step and one load wave per step in both loops (inside the loop,
    behind a branch, it moved a step's loads into two waves, Triton 3.6)."""
    tool = cuobjdump
    for hidden, depth in tool.SHAPES:
        without = {k: v for k, v in launch.items() if k != "prefetch"}
        plain = tool.resources(tool.compile_token(hidden, depth, blocked=depth - 5, **without))
        used = tool.resources(tool.compile_token(hidden, depth, blocked=depth - 5, **launch))
        assert used.local_bytes == 0 and used.load_waves == 1 and used.tail_waves == 1, (hidden, depth, used)
        assert used.ops.get("UBLKPF.L2", 0) == 2 and "UBLKPF" not in used.loop_ops, (hidden, depth, used)
        assert used.loop_ops["LDG"] == plain.loop_ops["LDG"], (hidden, depth, used.loop_ops, plain.loop_ops)
