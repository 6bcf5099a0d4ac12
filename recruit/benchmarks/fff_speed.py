"""FFF inference speed against torch's dense feed-forward of the same (aligned) width, in the same run.

``recruit bench fff --out DIR``. For each case: a dense FF ``gelu(x·W1ᵀ + b1)·W2ᵀ`` of width 2^(depth+1) (the
aligned width: an odd width slows vendor GEMMs several-fold, and a weak baseline is not a result), the fused
FFF kernel of depth ``depth`` (2^(depth+1) − 1 nodes, depth + 1 of them used per token), and the pure-torch
gather walk as a peer. Every token gets its own random input, so routing spreads over the tree instead of
following one cache-hot path. Times are medians after warm-up with the device synchronised;
``speedup`` = dense time ÷ FFF time. ``tokens_agreeing_with_reference`` is the fraction of the first batch's
first ``tokens`` tokens (:data:`CHECK_TOKENS`, or the whole batch where it is smaller) on which the timed fused FFF's
output equals the float64 oracle's (:func:`~recruit.fff.kernels.fff_reference`, same weights) to 5% of the
output's scale; the Triton launches of the sweep each count only if they agree with the timed default.

On the CPU the fused kernel is the C++ one (``recruit.fff.kernels.cpu``); on CUDA the Triton one, in bf16. It is
called as :class:`~recruit.fff.FastFeedForward` calls it: through :func:`~recruit.fff.kernels.fff_prepare`, the
weights bound once (on the CPU a :class:`~recruit.fff.kernels.cpu.CpuKernel`, which puts them on 2 MiB pages
where Linux allows; the dense FF's and the gather walk's weights get the same pages, so neither gains on the TLB
alone; the ``fastfeedforward`` peer keeps its own).

``--set hidden=4096 --set batches=1,4096`` times only those of the device's cases; ``--set tune=false`` leaves out
the sweep of Triton launch configurations on CUDA, ``--set sweep_s=60`` bounds it (its launches come in
order, the default and the untimed candidates first), and ``--set skip=prefetch`` leaves out the launches whose
label holds that word.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from time import perf_counter

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from recruit import measure
from recruit.benchmarks import Bench, BenchOptions, checks, configure, register
from recruit.errors import RecruitError
from recruit.fff.fff import pack_rows
from recruit.fff.kernels import fff_gather, fff_prepare, fff_reference, fff_route
from recruit.fff.kernels.cpu import advise_huge_pages, cpu_kernel_available, row_reader
from recruit.records import Record, environment
from recruit.train import resolve_device

BENCH = "fff"
log = logging.getLogger(__name__)
_Impls = dict[str, Callable[[torch.Tensor], torch.Tensor]]  # name: input batch -> output


@dataclass(frozen=True)
class SpeedCase:
    """One shape: model width, tree depth, tokens per call, and trees (a forest of K trees of that depth)."""

    hidden: int
    depth: int
    batch: int
    trees: int = 1

    def __post_init__(self) -> None:
        checks.positive(self, "hidden", "batch")
        checks.fff_shape(f"case {self}", self.depth, self.trees)

    @property
    def nodes(self) -> int:
        """The FFF's neurons: K · (2^(D+1) − 1)."""
        return self.trees * (2 ** (self.depth + 1) - 1)

    @property
    def dense_width(self) -> int:
        """The dense FF's aligned width: K · 2^(D+1)."""
        return self.trees * 2 ** (self.depth + 1)


CPU_CASES = (
    tuple(SpeedCase(768, d, b) for d in (10, 11) for b in (1, 8, 128, 4096))
    + tuple(SpeedCase(4096, 13, b) for b in (1, 8, 128))  # 4096 tokens x 4096 x 16384 dense takes minutes on 2 cores
    + tuple(SpeedCase(768, 8, b, trees=8) for b in (1, 8, 128))  # a forest of about width 4095 (fff-quality's kind)
    + tuple(SpeedCase(768, 9, b, trees=3) for b in (1, 128))  # 3069 neurons against BERT-base's 3072-wide FF
)
GPU_CASES = (
    tuple(SpeedCase(768, 11, b) for b in (1, 128, 1024, 4096))
    + tuple(SpeedCase(4096, 13, b) for b in (1, 8, 128, 1024, 4096))  # 1024: where the token and block kernels cross
    + tuple(SpeedCase(768, 8, b, trees=8) for b in (1, 128, 4096))  # the CPU's forest case
)
QUICK_CASES = (SpeedCase(64, 5, 1), SpeedCase(64, 5, 33), SpeedCase(64, 3, 5, trees=4))


@dataclass
class Selection:
    """Which of the device's cases to time (``--set hidden=4096 --set batches=1,4096``; empty: all of them)."""

    hidden: tuple[int, ...] = ()
    batches: tuple[int, ...] = ()
    tune: bool = True  # on CUDA (not --quick), also time the sweep of Triton launch configurations
    sweep_s: float = 0.0  # seconds the sweep's warm pass may take per case, launches in order (0: no limit)
    skip: tuple[str, ...] = ()  # sweep launches whose label holds any of these are not tried (``skip=prefetch``)

    def __post_init__(self) -> None:
        for name in ("hidden", "batches"):
            if any(v <= 0 for v in getattr(self, name)):
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not self.sweep_s >= 0:
            raise ValueError(f"sweep_s must be at least 0 (0: no limit), got {self.sweep_s}")

    def pick(self, cases: tuple[SpeedCase, ...]) -> tuple[SpeedCase, ...]:
        """The cases whose width and batch are selected; none is an error that lists what there is."""
        picked = tuple(c for c in cases if (not self.hidden or c.hidden in self.hidden)
                       and (not self.batches or c.batch in self.batches))  # fmt: skip
        if not picked:
            raise RecruitError(f"no {BENCH} case has hidden in {self.hidden or 'any'} and batch in "
                               f"{self.batches or 'any'}; the cases here: hidden {sorted({c.hidden for c in cases})}, "
                               f"batches {sorted({c.batch for c in cases})}")  # fmt: skip
        return picked


@dataclass(frozen=True)
class _Layers:
    """One case's dense FF (``w1``, ``b1``, ``w2``, aligned width) and the FFF made of its first width − 1 neurons.

    ``w_in`` and ``w_out_t`` are contiguous (the peers' layout); the fused kernel gets ``fused``, the layout
    :class:`~recruit.fff.FastFeedForward` gives it: on the CPU the :func:`~recruit.fff.fff.pack_rows`
    views of one (width − 1, 2·hidden) buffer, on CUDA the contiguous pair.
    """

    w1: torch.Tensor  # (width, hidden)
    b1: torch.Tensor  # (width,)
    w2: torch.Tensor  # (hidden, width)
    w_in: torch.Tensor  # (width − 1, hidden)
    b_in: torch.Tensor  # (width − 1,)
    w_out_t: torch.Tensor  # (width − 1, hidden)
    depth: int
    trees: int
    fused: tuple[torch.Tensor, torch.Tensor]  # (w_in, w_out_t) as the fused kernel reads them
    kernel: Callable[[torch.Tensor], torch.Tensor]  # fff_prepare of the fused layout

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.gelu(F.linear(x, self.w1, self.b1)), self.w2)

    def fff(self, x: torch.Tensor) -> torch.Tensor:
        return self.kernel(x)


def _layers(hidden: int, depth: int, dtype: torch.dtype, device, g: torch.Generator, trees: int = 1) -> _Layers:
    width = trees * 2 ** (depth + 1)  # dense: aligned width; FFF: its first K·(2^(D+1) − 1) rows, K trees
    nodes = trees * (2 ** (depth + 1) - 1)
    w1 = (torch.randn(width, hidden, generator=g) / hidden**0.5).to(device, dtype)
    b1 = torch.zeros(width, device=device, dtype=dtype)
    w2 = (torch.randn(hidden, width, generator=g) / width**0.5).to(device, dtype)
    w_in, b_in = w1[:nodes].contiguous(), b1[:nodes].contiguous()  # (nodes, hidden), (nodes,)
    w_out_t = w2[:, :nodes].t().contiguous()  # (nodes, hidden)
    fused = pack_rows(w_in, w_out_t) if w_in.device.type == "cpu" else (w_in, w_out_t)
    kernel = fff_prepare(fused[0], b_in, fused[1], depth, trees)  # on the CPU: the fused weights on 2 MiB pages
    for w in (w1, w2, w_in, w_out_t):  # and so the dense FF's and the gather walk's
        advise_huge_pages(w)
    return _Layers(w1, b1, w2, w_in, b_in, w_out_t, depth, trees, fused, kernel)


def _floor(layers: _Layers, xs: list[torch.Tensor]) -> Callable[[int], float]:
    """``floor(i)`` reads, once each, the fused layout's rows that batch ``xs[i % len(xs)]`` visits (CPU only).

    Each distinct visited node's input and output row, one stretch of the packed buffer, every address known
    up front: the memory traffic an exact FFF kernel cannot avoid, timed as the ``memory-floor`` peer.
    """
    w_in, w_out_t = layers.fused
    packed = torch.as_strided(w_in, (w_in.shape[0], w_in.shape[1] + w_out_t.shape[1]), w_in.stride())
    rows = [fff_route(x, layers.w_in, layers.b_in, layers.depth, layers.trees)[0].unique() for x in xs]
    readers = [row_reader(packed, r) for r in rows]
    return lambda i: readers[i % len(readers)]()


def _n_inputs(batch: int) -> int:
    """Distinct input batches cycled through by successive calls (so no call finds its path in cache)."""
    return max(2, min(64, 4096 // batch))


def _peer(case: SpeedCase, dtype: torch.dtype, device):
    """The ``fastfeedforward`` package's FFF (Belcak & Wattenhofer) with as many neurons, else None.

    None without the package, and for a forest, which it does not build. Its tree of depth D has 2^D − 1
    routing nodes and 2^D single-neuron leaves: 2^(D+1) − 1 neurons, the same count as our depth-D tree, of
    which a token uses D + 1 (D routers and one leaf).
    """
    if case.trees != 1:
        return None
    try:
        from fastfeedforward import FFF
    except ImportError:
        return None
    return FFF(case.hidden, 1, case.hidden, case.depth).to(device, dtype).eval()


def _launches(small: bool, depth: int) -> list[dict[str, int]]:
    """Launch configurations of the Triton kernel tried on CUDA (the fastest is reported as ``triton-tuned``).

    The first is the default, then (small batches) the default before the last H200 sweep, then the launches
    not yet timed on a GPU (a bounded sweep, ``sweep_s``, tries them first): the rows in the blocked layout
    (``blocked``, at most ``depth``; the sweep lays out a copy of the weights for them), at small batches with and
    without the L2 prefetch of the blocked subtrees the walk enters (``prefetch``, sm_90 or later). The others vary
    the levels per routing step (``spec``), the levels routed densely (``top``), the subtrees walked side by side
    (``split``, small batches), the kernel (``block_b`` asks for the block kernel, the small-batch default before
    the token kernel; ``kernel`` token, the token kernel at large batches), the register ceiling (``maxnreg`` 0:
    ptxas' own), bf16 rows read a feature at a time (``pairs`` 0, small batches), the tiles, the unrolling and the
    warps.
    Launches that H200 runs timed slower than the default (hidden 4096, 1 token) were taken out with the kernel
    options they tried, their records in git's history of ``results/gpu/fff.jsonl``: L2 prefetches of every
    candidate row a few steps ahead at each step (the earlier ``prefetch``), the output summed during the walk
    (``eager``) or gathered in its last step (``overlap``), a step's dot products on the tensor cores (``mma``),
    and ``spec=3, num_warps=8`` and ``block_d=4096, num_warps=8``.
    """
    if small:
        splits = [dict(split=3), dict(split=6), dict(split=6, spec=1)]
        # the layout alone first: a prefetch that faulted on the GPU would end the process, and the case with it;
        # block_o=512: eight column programs share out the prefetch, over eight SMs' copy engines instead of four
        blocked = [dict(blocked=8), dict(blocked=8, pairs=0), dict(blocked=6), dict(blocked=10),
                   dict(blocked=8, prefetch=1), dict(blocked=8, prefetch=1, pairs=0),
                   dict(blocked=8, prefetch=2), dict(blocked=10, prefetch=2),
                   dict(blocked=8, prefetch=1, block_o=512), dict(blocked=6, prefetch=1)]  # fmt: skip
        return [
            {},
            dict(pairs=0),  # the default until the last H200 sweep picked bf16 pairs in chunks of 1024 over it
            # not yet timed on a GPU, the likeliest first
            *(launch for launch in blocked if launch["blocked"] <= depth),
            # timed before
            dict(pairs=0, block_d=1024),
            dict(block_d=2048),
            dict(maxnreg=0),
            dict(kernel="block"),
            dict(block_b=1),
            dict(num_warps=2),
            dict(num_warps=8),
            dict(spec=1),
            dict(spec=3),
            dict(block_d=4096),
            dict(block_o=512),
            dict(block_o=2048),
            *(launch for launch in splits if launch["split"] <= depth),
        ]
    return (
        [{}]
        # not yet timed on a GPU: the block kernel on the rows a layer in the blocked layout would hold (at depth 13
        # and blocked 8 its dense top levels stay the default's)
        + ([dict(blocked=8)] if 8 <= depth else [])
        + [dict(kernel="token"), dict(top=0), dict(top=0, block_b=16, block_d=256, unroll=2)]
        + [dict(top=t) for t in (6, 7, 9)]
        + [dict(block_b=b) for b in (2, 4, 8)]
        + [dict(unroll=2), dict(unroll=8), dict(num_warps=4)]
    )


def _sweep(small: bool, depth: int, skip: tuple[str, ...] = ()) -> list[dict[str, int]]:
    """:func:`_launches` but those whose label (:func:`_label`) holds a word of ``skip``."""
    return [launch for launch in _launches(small, depth) if not any(word in _label(launch) for word in skip)]


def _label(launch: dict[str, int]) -> str:
    """The name of a sweep launch in its records (``triton:LABEL``): its options run together, or ``default``."""
    return "-".join(f"{k}{v}" for k, v in launch.items()) or "default"


def _budgeted(
    launches: list[dict[str, int]], sweep_s: float, clock: Callable[[], float] = perf_counter
) -> Iterator[dict[str, int]]:
    """``launches`` in order until ``sweep_s`` seconds (of ``clock``) have passed since the first (0: all of them).

    A launch is started only within the budget; a warning says how many were left untried.
    """
    start = clock()
    for tried, launch in enumerate(launches):
        if sweep_s and clock() - start > sweep_s:
            log.warning("fff sweep: %d of %d launches left untried after %.0f s (sweep_s)", len(launches) - tried,
                        len(launches), sweep_s)  # fmt: skip
            return
        yield launch


CHECK_TOKENS = 32  # tokens of each case's first batch checked against the float64 oracle


def _agree(got: torch.Tensor, expect: torch.Tensor) -> float:
    """Fraction of tokens (rows) on which two FFF outputs agree to 5% of the output's scale.

    Per token, not per element: a pre-activation within float rounding of 0 may route one token down the
    other branch when the summation order differs, which is not an error of either kernel.
    """
    if not len(got):
        return 1.0
    tol = 0.05 * expect.abs().amax().clamp_min(1e-6)
    return ((got - expect).abs().amax(1) <= tol).float().mean().item()


def _calls_beyond_l2(case: SpeedCase, device: torch.device, dtype: torch.dtype) -> int:
    """Calls whose FFF path rows (a ``w_in`` and a ``w_out_t`` row per level and token) total twice the L2."""
    l2 = torch.cuda.get_device_properties(device).L2_cache_size
    per_call = case.batch * case.trees * (case.depth + 1) * 2 * case.hidden * dtype.itemsize
    return max(16, min(1024, -(-2 * l2 // per_call)))


def _time_cycled(
    case: SpeedCase,
    device: torch.device,
    dtype: torch.dtype,
    g: torch.Generator,
    fns: dict[str, Callable[[torch.Tensor], torch.Tensor]],
) -> dict[str, float]:
    """Milliseconds per call of each of ``fns`` (input batch -> output), in a CUDA graph of many distinct inputs.

    As many calls as :func:`_calls_beyond_l2` asks, so that the FFF's rows come from memory, not L2.
    """
    calls = _calls_beyond_l2(case, device, dtype)
    xs = torch.randn(calls, case.batch, case.hidden, generator=g).to(device, dtype)  # (calls, B, hidden)
    return {
        name: measure.time_cuda_graph(lambda i, fn=fn: fn(xs[i]), device, calls=calls).median * 1e3
        for name, fn in fns.items()
    }


@dataclass
class CaseResult:
    """What :func:`measure_case` measured on one case.

    Attributes:
        ms: ``{"wall": {impl: ms}, "cuda_graph": {impl: ms}, "cuda_graph_cycled": {impl: ms}}`` (the last two on
            CUDA only).
        agreement: Fraction of the first :data:`CHECK_TOKENS` tokens of the first batch on which the fused FFF
            (``impl`` ``fff``, the path timed) agrees with :func:`~recruit.fff.kernels.fff_reference`.
        tuned: With the sweep, per CUDA-graph timing: the launch it found fastest, and that launch's and the dense
            FF's milliseconds per call timed again, together, in a pass of their own (so that the luck of the pick
            does not count: the fastest of many timings is biased low).
    """

    ms: dict[str, dict[str, float]]
    agreement: float
    tuned: dict[str, tuple[str, float, float]] = field(default_factory=dict)  # timing: (launch, ms, dense ms)


def measure_case(
    case: SpeedCase,
    device: torch.device,
    dtype: torch.dtype,
    repeats: int,
    gather: bool,
    tune: bool = False,
    sweep_s: float = 0.0,
    skip: tuple[str, ...] = (),
) -> CaseResult:
    """Milliseconds per call of dense, fused FFF and peers on one case, by timing method, and a correctness check.

    Times (:attr:`CaseResult.ms`): wall-clock time of single synchronised calls as a user sees them, GPU time
    per call inside a CUDA graph of 16 calls, and the same over :func:`_calls_beyond_l2` calls. Successive calls
    cycle through distinct random batches. The 16 calls of ``cuda_graph`` touch a few MB of FFF rows at small
    batches, which stay in L2 from one replay to the next; ``cuda_graph_cycled`` touches twice the L2 in rows,
    so that the deep levels come from memory as they would in a model whose other layers evict them. With
    ``tune``, both CUDA-graph timings also hold each of :func:`_launches` as ``triton:LABEL``: the fastest launch
    from L2 need not be the fastest from memory (L2 prefetching only pays there). ``sweep_s`` > 0 bounds the
    sweep's warm pass: once it has taken that many seconds no further launch is tried (a warning says how many
    were left), and the cycled pass, about as long again, times the launches tried. A launch whose label holds
    a word of ``skip`` is not tried.
    """
    g = torch.Generator().manual_seed(case.hidden * 1000 + case.depth)
    layers = _layers(case.hidden, case.depth, dtype, device, g, case.trees)
    fff = layers.w_in, layers.b_in, layers.w_out_t
    n = _n_inputs(case.batch)
    xs = [torch.randn(case.batch, case.hidden, generator=g).to(device, dtype) for _ in range(n)]
    fns: dict[str, Callable[[int], torch.Tensor]] = {"dense": lambda i: layers.dense(xs[i % n]),
                                                     "fff": lambda i: layers.fff(xs[i % n])}  # fmt: skip
    if gather:
        fns["gather"] = lambda i: fff_gather(xs[i % n], *fff, case.depth, case.trees)
    if device.type == "cpu" and dtype == torch.float32 and cpu_kernel_available():
        fns["memory-floor"] = _floor(layers, xs)
    peer = _peer(case, dtype, device) if case.batch <= 128 or case.hidden <= 768 else None
    if peer is not None:
        fns["fastfeedforward"] = lambda i: peer.eval_forward(xs[i % n])
    out: dict[str, dict[str, float]] = {"wall": {}}
    picks: dict[str, tuple[str, float, float]] = {}  # CaseResult.tuned
    with torch.no_grad():
        timed = fns["fff"](0).float()  # the timed path's output on the first batch: checked here and by the sweep
        oracle = fff_reference(xs[0][:CHECK_TOKENS], layers.w_in, layers.b_in, layers.w_out_t, case.depth, case.trees)
        agreement = _agree(timed[:CHECK_TOKENS], oracle.float())
        counter = itertools.count()
        cycled = {name: lambda fn=fn: fn(next(counter)) for name, fn in fns.items()}
        # Dense and FFF in alternating blocks, so a slow spell of a shared machine hits both; the peers are
        # slow at large batches and get a few calls of their own.
        slow = {"fastfeedforward", "gather"} if case.batch > 128 else set()
        budget = 0.2 if case.batch <= 128 else 1.0
        rounds = 5
        fast = {name: fn for name, fn in cycled.items() if name not in slow}
        timings = measure.time_interleaved(fast, device, rounds, warmup=3, repeats=max(1, repeats // rounds),
                                           min_time=budget / rounds)  # fmt: skip
        for name in slow & cycled.keys():
            timings[name] = measure.time_fn(cycled[name], device, warmup=1, repeats=2)
        out["wall"] = {name: timings[name].median * 1e3 for name in fns}
        if device.type == "cuda":
            calls = min(n, 16)

            def graph_ms(fn: Callable[[torch.Tensor], torch.Tensor]) -> float:  # ms per call of fn on the inputs
                return measure.time_cuda_graph(lambda i: fn(xs[i % n]), device, calls=calls).median * 1e3

            cycled_fns: _Impls = {"dense": layers.dense, "fff": layers.fff}
            graph = out["cuda_graph"] = {name: graph_ms(fn) for name, fn in cycled_fns.items()}
            if tune:
                from recruit.fff.kernels.triton_fff import SMALL_BATCH, fff_triton, to_blocked

                laid: dict[int, tuple[torch.Tensor, ...]] = {}  # the weights in each layout swept (0: fff itself)

                for launch in _budgeted(_sweep(case.batch <= SMALL_BATCH, case.depth, skip), sweep_s):
                    label = _label(launch)
                    if (level := launch.get("blocked", 0)) not in laid:
                        laid[level] = tuple(to_blocked(t, case.depth, case.trees, level) for t in fff)

                    def launched(x: torch.Tensor, launch=launch, weights=laid[level]) -> torch.Tensor:
                        return fff_triton(x, *weights, case.depth, case.trees, **launch)

                    try:
                        agree = _agree(launched(xs[0]).float(), timed)
                    except Exception as e:  # a configuration that does not compile (resources) is skipped
                        log.warning("fff launch %s failed: %s", label, str(e).splitlines()[0] if str(e) else e)
                        continue
                    if agree < 0.99:  # a configuration must compute the same function to count
                        log.warning("fff launch %s disagrees with the default on %.1f%% of tokens", label,
                                    100 * (1 - agree))  # fmt: skip
                        continue
                    graph[f"triton:{label}"] = graph_ms(launched)
                    cycled_fns[f"triton:{label}"] = launched
            out["cuda_graph_cycled"] = _time_cycled(case, device, dtype, g, cycled_fns)
            if tune:  # the fastest launch of each timing, timed again beside the dense FF

                def warm(pair: _Impls) -> dict[str, float]:
                    return {name: graph_ms(fn) for name, fn in pair.items()}

                def cold(pair: _Impls) -> dict[str, float]:
                    return _time_cycled(case, device, dtype, g, pair)

                for timing, time in (("cuda_graph", warm), ("cuda_graph_cycled", cold)):
                    if (pick := _time_pick(out[timing], cycled_fns, time)) is not None:
                        picks[timing] = pick
    return CaseResult(out, agreement, picks)


def _time_pick(
    per_impl: dict[str, float], fns: _Impls, time: Callable[[_Impls], dict[str, float]]
) -> tuple[str, float, float] | None:
    """The sweep's fastest launch in ``per_impl`` (ms by ``triton:LABEL``), timed again beside the dense FF.

    ``fns`` holds the dense FF and every launch by name; ``time`` times a dict of them in one pass. Returns
    (LABEL, its ms, the dense FF's ms) from that pass, or None without a sweep.
    """
    launches = {k: v for k, v in per_impl.items() if k.startswith("triton:")}
    if not launches:
        return None
    best = min(launches, key=launches.get)
    again = time({"dense": fns["dense"], "tuned": fns[best]})
    return best.split(":", 1)[1], again["tuned"], again["dense"]


def run(opts: BenchOptions, cases: tuple[SpeedCase, ...] | None = None) -> list[Record]:
    """Time every case on ``opts.device`` (CPU: fp32; CUDA: bf16, with a sweep of Triton launch configs).

    ``--set`` fields (:class:`Selection`) narrow the cases down and can turn the sweep off.
    """
    select = configure(opts, Selection(), BENCH)
    device = resolve_device(opts.device)
    env = environment(device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if cases is None:
        cases = QUICK_CASES if opts.quick else (GPU_CASES if device.type == "cuda" else CPU_CASES)
    cases = select.pick(cases)
    recs = opts.recorder()
    fused = "cpp" if device.type == "cpu" else "triton"
    for case in tqdm(cases, desc="fff speed", disable=not opts.progress):
        gather = case.batch <= 4096 and case.hidden <= 768 or case.batch <= 128
        result = measure_case(case, device, dtype, repeats=3 if opts.quick else 7, gather=gather,
                              tune=device.type == "cuda" and not opts.quick and select.tune,
                              sweep_s=select.sweep_s, skip=select.skip)  # fmt: skip
        forest = f"trees={case.trees}," if case.trees > 1 else ""
        c = (f"hidden={case.hidden},depth={case.depth},{forest}width={case.nodes},dense_width={case.dense_width},"
             f"B={case.batch},dtype={str(dtype).split('.')[-1]}")  # fmt: skip
        recs.add(Record(BENCH, c, "flops_ratio", (case.depth + 1) / 2 ** (case.depth + 1), "x", env))
        checked = f"{c},impl={fused},tokens={min(case.batch, CHECK_TOKENS)}"
        recs.add(Record(BENCH, checked, "tokens_agreeing_with_reference", result.agreement, "fraction", env))
        for timing, per_impl in result.ms.items():
            dense = per_impl["dense"]
            recs.add(Record(BENCH, f"{c},timing={timing},impl=dense", "latency_ms", dense, "ms", env))
            for name, value in per_impl.items():
                if name == "dense":
                    continue
                impl = fused if name == "fff" else name.replace("triton:", "triton,launch=")
                recs.add(Record(BENCH, f"{c},timing={timing},impl={impl}", "latency_ms", value, "ms", env))
                if not name.startswith("triton:"):
                    recs.add(Record(BENCH, f"{c},timing={timing},impl={impl}", "speedup", dense / value, "x", env))
            if timing in result.tuned:  # the sweep's pick, timed again beside the dense FF
                launch, tuned_ms, dense_again = result.tuned[timing]
                recs.add(Record(BENCH, f"{c},timing={timing},impl=dense,pass=tuned", "latency_ms", dense_again, "ms",
                                env))  # fmt: skip
                case = f"{c},timing={timing},impl=triton-tuned,launch={launch}"
                recs.add(Record(BENCH, case, "latency_ms", tuned_ms, "ms", env))
                recs.add(Record(BENCH, case, "speedup", dense_again / tuned_ms, "x", env))
    return recs.records


def section(records: list[Record]) -> str:
    """Speed-up tables per device and implementation."""
    from recruit.report.html import device_labels, table

    rs = [r for r in records if r.bench == BENCH and r.metric == "speedup"]
    if not rs:
        return ""
    dev = device_labels(rs)  # device, and commit where several runs on one device
    rows = [[dev(r), r.params["hidden"],
             r.params["depth"] + (f" x {r.params['trees']} trees" if "trees" in r.params else ""), r.params["B"],
             r.params.get("timing", "wall"), r.params["impl"] + (f" ({r.params['launch']})" if "launch" in r.params
             else ""), f"{r.value:.3g}x"] for r in rs]  # fmt: skip
    agree = [r.value for r in records if r.bench == BENCH and r.metric == "tokens_agreeing_with_reference"]
    span = (f"{min(agree):.0%} of them in every case" if min(agree) == max(agree)
            else f"{min(agree):.0%} to {max(agree):.0%} of them, by case") if agree else ""  # fmt: skip
    checked = (f" Each case's fused FFF was checked in the same run against the float64 oracle on the first "
               f"{CHECK_TOKENS} tokens of its first batch (all of them in batches of fewer): it agreed on {span}. A "
               "Triton launch of the sweep counts only where it agrees with the checked default."
               if agree else "")  # fmt: skip
    return (
        "<p>Dense FF (torch, aligned width) time ÷ FFF time, same run, distinct random input per token (<code>recruit"
        " bench fff</code>). Below 1 means FFF is slower. Timing <code>wall</code>: single synchronised calls; "
        "<code>cuda_graph</code>: GPU time per call in a graph of 16 calls, whose FFF rows stay in L2 at small "
        "batches; <code>cuda_graph_cycled</code>: the same over enough distinct inputs to touch twice the L2 in rows."
        " <code>triton-tuned</code>: the fastest of the Triton launch configurations tried (named in brackets), "
        "picked per row, then timed again with the dense FF in a pass of their own, so that the pick's luck does not"
        " count (the fastest of many timings is biased low). <code>memory-floor</code> (CPU) is no FFF: it only reads,"
        " once each, the weight rows the batch's paths visit, every address known in advance, so its speed-up "
        "estimates the most an exact FFF kernel can reach on that machine (a timing like the others, with their noise)."
        + checked
        + "</p>"
        + table(["device", "hidden", "depth", "tokens", "timing", "FFF implementation", "speed-up"], rows)
    )


register(Bench(BENCH, run, section, summary="FFF inference speed vs torch dense FF (same run)"))
