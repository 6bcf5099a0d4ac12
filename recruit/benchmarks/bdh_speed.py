"""BDH speed: training throughput of the fast and fused parallel forms against the Appendix-E form; generation.

``recruit bench bdh-speed --out DIR [--device cuda]``. Two parts, each timed in one run:

1. **Training**: tokens per second and peak memory of one optimiser step (forward, cross-entropy, backward,
   AdamW) at a fixed batch, for the reference parallel form (the paper's Appendix E, kept in
   :mod:`recruit.models.bdh` as the oracle), for the fast form (``impl="fast"``) and, on CUDA with Triton,
   for the fused form (``impl="fused"``, :mod:`recruit.models.bdh_triton`), each eager and under
   ``torch.compile`` (the reference trainer compiles its model; the fused heads stay outside the graph).
   Same weights, same batch, bf16 autocast on CUDA, fp32 on the CPU. ``train_speedup`` = a form ÷ the faster
   of the reference's two variants (so the baseline gets its best), and ``peak_memory_ratio`` is taken against
   that same variant; both are recorded as soon as a form is timed (the reference's variants are timed first), so
   a run cut short keeps whole comparisons. ``first_step_loss`` and ``last_step_loss``, the loss of each
   variant's first step and of its last, after the same number of AdamW steps on the same batch (same initial
   weights; dropout masks differ), show that the forms compute the same model and the same gradients. Peak
   memory on CUDA is the whole allocation peak of a step (weights, optimiser state, batch, activations), the
   figure the issue quotes for the reference code; on the CPU, where the process's resident set holds much
   else, it is what one step adds (:func:`recruit.measure.peak_memory`).
2. **Generation** at contexts 1k and 8k: ms per new token of the recurrent form (state filled to the context,
   eager and replayed from a CUDA graph) against re-running the whole prefix through the parallel form, as
   the reference's ``generate`` does (bf16 autocast on CUDA; the faster of the two parallel forms).
   ``generate_speedup`` = re-run ÷ recurrent.

On the CPU the defaults shrink to ``bdh-tiny`` so that the benchmark finishes in minutes; the acceptance
figures of the BDH issue are the CUDA ones at ``bdh-ref`` (25.3M parameters, batch 32 × 512).
``--set impls=reference,fused`` times only those forms (the reference always among them, as the baseline of the
same run), and ``--set generation=false`` leaves part 2 out.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from recruit import measure
from recruit.benchmarks import Bench, BenchOptions, checks, configure, register
from recruit.models import BDH, bdh_config
from recruit.records import Record, environment
from recruit.train import resolve_device

log = logging.getLogger(__name__)
BENCH = "bdh-speed"
IMPLS = ("reference", "fast", "fused")


@dataclass
class SpeedConfig:
    """Sizes of the BDH speed benchmark."""

    preset: str = "bdh-ref"
    batch: int = 32
    seq_len: int = 512
    warmup: int = 3  # untimed training steps (compilation happens here)
    steps: int = 10  # timed training steps
    compile: bool = True  # also time both forms under torch.compile
    extra_modes: tuple[str, ...] = ()  # further torch.compile modes to time the fast and fused forms in
    impls: tuple[str, ...] = ()  # parallel forms to time (empty: every one the device runs); "reference" among them
    generation: bool = True  # also time generation (part 2)
    contexts: tuple[int, ...] = (1024, 8192)  # generation contexts
    gen_repeats: int = 10  # timed decode steps per context and method

    def __post_init__(self) -> None:
        checks.preset("preset", self.preset, "bdh")
        checks.positive(self, "batch", "seq_len", "steps", "gen_repeats")
        if self.warmup < 0 or not self.contexts or any(c <= 0 for c in self.contexts):
            raise ValueError(f"warmup must be >= 0 and contexts positive (one or more), got warmup={self.warmup}, "
                             f"contexts={self.contexts}")  # fmt: skip
        if unknown := set(self.impls) - set(IMPLS):
            raise ValueError(f"impls must be among {', '.join(IMPLS)}, got {', '.join(sorted(unknown))}")
        if self.impls and "reference" not in self.impls:
            raise ValueError("impls must include 'reference': every form is timed against it in the same run")
        if self.extra_modes:
            modes = checks.compile_modes()
            if unknown := [m for m in self.extra_modes if m not in modes]:
                raise ValueError(f"extra_modes must be torch.compile modes ({', '.join(modes)}), got "
                                 f"{', '.join(map(repr, unknown))}")  # fmt: skip
            if set(self.impls) == {"reference"}:
                raise ValueError("extra_modes time the fast and fused forms, but impls has only 'reference'")


CPU = SpeedConfig(preset="bdh-tiny", batch=8, seq_len=256, warmup=1, steps=3, compile=False, gen_repeats=5)
QUICK = SpeedConfig(preset="bdh-nano", batch=2, seq_len=32, warmup=1, steps=2, compile=False, contexts=(64, 256),
                    gen_repeats=2)  # fmt: skip


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _train_variant(cfg: SpeedConfig, impl: str, compiled: bool | str, device: torch.device) -> dict[str, float]:
    """Median seconds per optimiser step, peak memory and compile time of one (impl, compiled) variant.

    ``compiled`` is False (eager), True (``torch.compile`` default mode) or the name of a compile mode.
    """
    torch.manual_seed(0)
    model = BDH(bdh_config(cfg.preset, impl=impl, max_seq_len=max(cfg.seq_len, 1))).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1, fused=device.type == "cuda")
    if isinstance(compiled, str):
        fwd = torch.compile(model, mode=compiled)
    else:
        fwd = torch.compile(model) if compiled else model
    g = torch.Generator().manual_seed(1)
    V = model.config.vocab_size
    idx = torch.randint(0, V, (cfg.batch, cfg.seq_len + 1), generator=g).to(device)
    x, y = idx[:, :-1], idx[:, 1:]

    def step() -> torch.Tensor:
        with _autocast(device):
            loss = F.cross_entropy(fwd(x).float().flatten(0, 1), y.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    t0 = time.perf_counter()
    first_loss = step().item()  # the first step compiles
    first = time.perf_counter() - t0
    timing = measure.time_fn(step, device, warmup=cfg.warmup, repeats=cfg.steps)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        step()
        measure.sync(device)
        peak = float(torch.cuda.max_memory_allocated(device))
    else:
        peak = float(measure.peak_memory(step, device) or 0)
    last_loss = step().item()  # every variant has taken as many steps on the same batch by now
    return {"step_s": timing.median, "peak_bytes": peak, "first_step_s": first, "first_loss": first_loss,
            "last_loss": last_loss, "params": measure.count_params(model)}  # fmt: skip


def _impls(cfg: SpeedConfig, device: torch.device) -> tuple[str, ...]:
    """The parallel forms to time: those asked for, and the fused form only where its Triton kernels run."""
    from recruit.triton_support import triton_available

    runs = ("reference", "fast") + (("fused",) if device.type == "cuda" and triton_available() else ())
    if "fused" in cfg.impls and "fused" not in runs:
        log.warning("the fused form needs CUDA and triton; left out")
    return tuple(impl for impl in runs if not cfg.impls or impl in cfg.impls)


def _training(cfg: SpeedConfig, device: torch.device, add, progress: bool) -> None:
    impls = _impls(cfg, device)
    others = [impl for impl in impls if impl != "reference"]
    compiles = [False, True] if cfg.compile else [False]
    # the reference first, so that each other form's ratios are recorded as soon as it is timed (against the
    # faster reference variant): a run cut short keeps whole comparisons
    variants: list[tuple[str, bool | str]] = [("reference", c) for c in compiles]
    variants += [(impl, c) for c in compiles for impl in others]
    variants += [(impl, mode) for mode in cfg.extra_modes for impl in others]
    res: dict[tuple[str, bool | str], dict[str, float]] = {}

    def tag(compiled: bool | str) -> str:
        return f"1,mode={compiled}" if isinstance(compiled, str) else str(int(compiled))

    tokens = cfg.batch * cfg.seq_len
    prec = "bf16-autocast" if device.type == "cuda" else "fp32"
    base = f"model={cfg.preset},B={cfg.batch},T={cfg.seq_len},precision={prec}"
    for impl, compiled in tqdm(variants, desc="bdh train speed", disable=not progress, leave=False):
        try:
            r = _train_variant(cfg, impl, compiled, device)
            _free(device)  # the variant's model, optimiser and activations
        except Exception as e:  # noqa: BLE001  a compiler failure is a result to report, not a crash
            if not compiled and impl != "fused":  # the fused form's Triton kernels compile at its first step
                raise
            log.warning("the %s form (compiled=%s) failed: %s", impl, compiled, e)
            add(f"{base},impl={impl},compiled={tag(compiled)}", "failed", 1.0, "")
            _free(device)
            continue
        res[impl, compiled] = r
        case = f"{base},impl={impl},compiled={tag(compiled)}"
        add(case, "train_tokens_per_s", tokens / r["step_s"], "tokens/s")
        add(case, "train_step_ms", r["step_s"] * 1e3, "ms")
        add(case, "peak_memory_bytes", r["peak_bytes"], "bytes")
        add(case, "first_step_s", r["first_step_s"], "s")
        add(case, "first_step_loss", r["first_loss"], "nats")
        add(case, "last_step_loss", r["last_loss"], "nats")
        add(case, "params", r["params"], "")
        refs = [k for k in res if k[0] == "reference"]
        if impl == "reference" or not refs:
            continue
        best = min(refs, key=lambda k: res[k]["step_s"])
        case = f"{base},impl={impl},compiled={tag(compiled)},vs=reference,vs_compiled={tag(best[1])}"
        add(case, "train_speedup", res[best]["step_s"] / r["step_s"], "x")
        add(case, "peak_memory_ratio", r["peak_bytes"] / max(res[best]["peak_bytes"], 1.0), "x")


@torch.no_grad()
def _generation(cfg: SpeedConfig, device: torch.device, add, progress: bool) -> None:
    torch.manual_seed(0)
    models = {
        impl: BDH(bdh_config(cfg.preset, impl=impl, dropout=0.0, max_seq_len=max(cfg.contexts))).to(device).eval()
        for impl in ("reference", "fast")
    }
    models["fast"].load_state_dict(models["reference"].state_dict())
    g = torch.Generator().manual_seed(2)
    for c in tqdm(cfg.contexts, desc="bdh generation speed", disable=not progress, leave=False):
        _generation_at(c, cfg, models, g, device, add)
        _free(device)


def _generation_at(c: int, cfg: SpeedConfig, models: dict[str, BDH], g, device: torch.device, add) -> None:
    """Milliseconds per new token at context ``c``: re-running the prefix (each parallel form) vs the recurrent form."""
    prec = "bf16-autocast" if device.type == "cuda" else "fp32"
    idx = torch.randint(0, 256, (1, c), generator=g).to(device)
    rerun: dict[str, float] = {}
    for impl, m in models.items():

        def again(m=m) -> None:
            with _autocast(device):
                m(idx)[:, -1]

        rerun[impl] = measure.time_fn(again, device, warmup=1, repeats=cfg.gen_repeats).median
        add(f"model={cfg.preset},context={c},method=rerun_prefix,impl={impl},precision={prec}",
            "ms_per_token", rerun[impl] * 1e3, "ms")  # fmt: skip
    model, tok = models["reference"], torch.randint(0, 256, (1,), generator=g).to(device)
    state = model.new_state(1)
    for S in state.synapses:  # a step's cost depends on the state's size (fixed), not on its content
        S.copy_(torch.randn(S.shape, generator=g) * 1e-3)
    state.pos = c
    steppers = {"eager": lambda: model.step(tok, state)}
    if device.type == "cuda":
        graphed = model.cuda_graph_step(state)
        steppers["cuda_graph"] = lambda: graphed(tok)
    for name, fn in steppers.items():

        def one(fn=fn) -> None:
            fn()
            state.pos = c  # back to context c; the synapses drift, which leaves the cost unchanged

        ms = measure.time_fn(one, device, warmup=2, repeats=max(cfg.gen_repeats, 20)).median * 1e3
        case = f"model={cfg.preset},context={c},method=recurrent,impl={name},precision=fp32"
        add(case, "ms_per_token", ms, "ms")
        add(case, "state_bytes", state.nbytes(), "bytes")
        add(f"{case},vs=rerun_prefix", "generate_speedup", min(rerun.values()) * 1e3 / ms, "x")


def run(opts: BenchOptions, cfg: SpeedConfig | None = None) -> list[Record]:
    """Training and generation speed (see the module docstring)."""
    device = resolve_device(opts.device)
    if cfg is None:
        cfg = QUICK if opts.quick else (SpeedConfig() if device.type == "cuda" else CPU)
    cfg = configure(opts, cfg, BENCH)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # as the reference trainer does
    env = environment(device)
    recs = opts.recorder()

    def add(case: str, metric: str, value: float, unit: str = "") -> None:
        recs.add(Record(BENCH, case, metric, value, unit, env))

    _training(cfg, device, add, opts.progress)
    if cfg.generation:
        _generation(cfg, device, add, opts.progress)
    return recs.records


def section(records: list[Record]) -> str:
    """HTML tables: training throughput and memory per form, generation ms/token per method."""
    from recruit.report.html import device_labels, table

    rs = [r for r in records if r.bench == BENCH]
    if not rs:
        return ""
    dev = device_labels(rs)  # device, and commit where several runs on one device

    train = [r for r in rs if r.metric in ("train_tokens_per_s", "peak_memory_bytes", "train_speedup",
                                            "peak_memory_ratio", "first_step_loss", "last_step_loss")]  # fmt: skip
    gen = [r for r in rs if r.metric in ("ms_per_token", "generate_speedup")]
    rows_t = [[dev(r), r.case, r.metric, f"{r.value:.4g}", r.unit] for r in train]
    rows_g = [[dev(r), r.case, r.metric, f"{r.value:.4g}", r.unit] for r in gen]
    best: dict[str, float] = {}
    for r in rs:
        if r.metric == "train_speedup":
            best[dev(r)] = max(best.get(dev(r), 0.0), r.value)
    note = " Fastest fast or fused variant ÷ fastest reference variant: "
    note += ", ".join(f"{d} {v:.3g}x" for d, v in best.items())
    note = note + "." if best else ""
    return (
        "<p>Training: one optimiser step of BDH's fast (and, on CUDA, fused) parallel forms against the Appendix-E "
        f"form (best of eager and compiled), same weights and batch (<code>recruit bench bdh-speed</code>).{note}</p>"
        + table(["device", "case", "metric", "value", "unit"], rows_t)
        + "<p>Generation: the recurrent form against re-running the prefix, per new token.</p>"
        + table(["device", "case", "metric", "value", "unit"], rows_g)
    )


register(Bench(BENCH, run, section, summary="BDH: fast vs Appendix-E training speed; recurrent vs re-run generation"))
