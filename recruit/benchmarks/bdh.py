"""The BDH benchmark: decode latency and memory vs context, sparsity, form equivalence, quality and recall.

Run with ``recruit bench bdh --out DIR [--model BDH_CHECKPOINT] [--quick]``. It records, under bench ``bdh``:

1. Per-token decode latency at growing contexts for BDH in its recurrent form and for the dense GPT with
   its KV cache, random-initialised at (nearly) equal parameter counts. One decode step's cost depends only
   on the cache's size, not on its content, so instead of prefilling c real tokens the KV cache is filled
   with c random keys/values (positions 0..c−1) and the BDH state with random synapses and position c; the
   records say ``fill=random``. Median of repeats after warm-up, both models timed in the same run, in turn.
2. Activation density (non-zero fraction of x, y, x⊙y) per layer on held-out text, of ``opts.model`` or of a
   random-initialised model (``init=random``).
3. The largest absolute logit difference between the recurrent and the parallel form (fp32).
4. With a checkpoint: held-out bits per byte per language, and key-retrieval accuracy vs distance in the
   recurrent form (:mod:`recruit.data.probes`), also at distances beyond the parallel form's ``max_seq_len``.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from recruit import measure
from recruit.benchmarks import Bench, BenchOptions, checks, configure, register
from recruit.data.probes import probe_accuracy
from recruit.errors import RecruitError
from recruit.interp.bdh import activation_density
from recruit.models import BDH, GPT, bdh_config, gpt_config, load_model
from recruit.models.base import read_config
from recruit.models.kv_cache import KVLayer
from recruit.records import Record, environment
from recruit.train import resolve_device

log = logging.getLogger(__name__)
BENCH = "bdh"


@dataclass
class BDHBenchConfig:
    """Sizes of the benchmark (tests inject tiny ones; ``--quick`` uses :data:`QUICK`)."""

    bdh_preset: str = "bdh-tiny"  # random-init BDH timed (and measured when no checkpoint is given)
    gpt_preset: str = "gpt-tiny"  # random-init dense baseline timed; max_seq_len raised to max(contexts) + 1
    contexts: tuple[int, ...] = (1024, 4096, 16384, 32768, 65536)  # tokens in the state / KV cache
    warmup: int = 3
    repeats: int = 20
    seq_len: int = 256  # held-out window (cut to the model's max_seq_len) for density and equivalence
    density_windows: int = 32
    probe_distances: tuple[int, ...] = (256, 1024, 4096)  # filler bytes between key and question
    probes: int = 20  # probes per distance
    bpb_max_bytes: int | None = None  # held-out bytes per language (> 0); None: BenchOptions.max_bytes (--max-bytes)

    def __post_init__(self) -> None:
        checks.preset("bdh_preset", self.bdh_preset, "bdh")
        checks.preset("gpt_preset", self.gpt_preset, "gpt")
        if not self.contexts or any(c <= 0 for c in self.contexts) or list(self.contexts) != sorted(set(self.contexts)):
            raise ValueError(f"contexts must be positive, ascending and distinct, got {self.contexts}")
        checks.positive(self, "repeats", "seq_len", "density_windows", "probes")
        checks.non_negative(self, "warmup")
        if not self.probe_distances or any(d < 0 for d in self.probe_distances):
            raise ValueError(f"probe_distances must be one or more filler lengths >= 0, got {self.probe_distances}")
        if self.bpb_max_bytes is not None and self.bpb_max_bytes <= 0:
            raise ValueError(f"bpb_max_bytes must be positive, or none for --max-bytes, got {self.bpb_max_bytes}")


QUICK = BDHBenchConfig(
    contexts=(1024, 4096), repeats=5, density_windows=4, probe_distances=(256,), probes=5, bpb_max_bytes=4096
)


def _k(c: int) -> str:
    return f"{c // 1024}k" if c % 1024 == 0 else str(c)


@torch.no_grad()
def _latency(cfg: BDHBenchConfig, device: torch.device, add) -> None:
    """Decode ms/token and state/KV bytes at each context, for BDH (recurrent) and GPT (KV cache).

    Every state and cache is built first; then each repeat times one step of every (model, context) in
    turn, so a slow spell of a shared machine hits all contexts alike instead of biasing their ratios.
    """
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    bdh = BDH(bdh_config(cfg.bdh_preset, dropout=0.0)).to(device).eval()
    gpt = GPT(gpt_config(cfg.gpt_preset, max_seq_len=max(cfg.contexts) + 1)).to(device).eval()
    names = {
        "bdh": f"model={cfg.bdh_preset},init=random,mode=recurrent",
        "gpt": f"model={cfg.gpt_preset},init=random,mode=kv_cache",
    }
    add(names["bdh"], "params", measure.count_params(bdh))
    add(names["gpt"], "params", measure.count_params(gpt))
    tok = torch.randint(0, 256, (1,), device=device)
    steps: dict[tuple[str, int], tuple[Callable[[], None], str, int]] = {}  # -> (step, bytes metric, bytes)
    for c in cfg.contexts:
        state = bdh.new_state(1)
        for S in state.synapses:  # (1, h, N, d) fp32, random content
            S.copy_(torch.randn(S.shape, generator=g))
        state.pos = c

        def bdh_step(state=state, c=c) -> None:
            bdh.step(tok, state)
            state.pos = c  # the position counter rolls back; the synapses keep drifting (cost unchanged)

        steps["bdh", c] = (bdh_step, "state_bytes", state.nbytes())
        gcfg, cache = gpt.config, gpt.new_cache()
        shape = (1, gcfg.n_kv_head, c, gcfg.head_dim)  # (B, Hkv, S, hd)
        for i in range(gcfg.n_layer):
            kv = [torch.randn(shape, generator=g).to(device) for _ in range(2)]
            cache.layers[i] = KVLayer(kv[0], kv[1], torch.arange(c, device=device))
        cache.seen_tokens = c

        def gpt_step(cache=cache, c=c) -> None:
            gpt(tok[None], cache=cache)  # appends into the cache's growable buffers
            cache.truncate(c)  # roll back in O(1)

        steps["gpt", c] = (gpt_step, "kv_bytes", cache.nbytes())
    for fn, _, _ in steps.values():
        measure.time_fn(fn, device, warmup=cfg.warmup, repeats=1)
    fns = {k: fn for k, (fn, _, _) in steps.items()}
    times = measure.time_interleaved(fns, device, rounds=cfg.repeats, warmup=0, repeats=1)
    ref = cfg.contexts[0]
    for (model, c), (_, metric, nbytes) in steps.items():
        case = f"{names[model]},context={c},fill=random"
        ms = times[model, c].median * 1e3
        add(case, "decode_ms_per_token", ms, "ms")
        add(case, metric, nbytes, "bytes")
        add(case, f"latency_ratio_vs_{_k(ref)}", ms / (times[model, ref].median * 1e3), "x")


def _short(model: str) -> str:
    """A checkpoint path's run name for a legend: ``runs/x/final`` -> ``x``."""
    parts = [p for p in model.split("/") if p and p != "final"]
    return parts[-1] if parts else model


def load_bdh(path: str | Path, device: str | torch.device = "cpu") -> BDH:
    """Load a BDH checkpoint in eval mode; another model type is a :class:`RecruitError` naming it."""
    model_type, _ = read_config(path)
    if model_type != BDH.model_type:
        raise RecruitError(f"{path} holds a {model_type} model, not BDH")
    return load_model(path, device=device).eval()


def _bdh_model(opts: BenchOptions, cfg: BDHBenchConfig, device: torch.device) -> tuple[BDH, str]:
    """The checkpoint of ``opts.model`` (must be BDH), else a random-initialised preset; and its case prefix."""
    if opts.model:
        return load_bdh(opts.model, device).float(), f"model={opts.model},init=checkpoint"
    torch.manual_seed(0)
    model = BDH(bdh_config(cfg.bdh_preset, dropout=0.0)).to(device).eval()
    return model, f"model={cfg.bdh_preset},init=random"


def density_over_training(checkpoint: Path, add) -> None:
    """Density records from the training log beside a checkpoint (``RUN/final`` -> ``RUN/log.csv``), if any.

    The trainer logs BDH's mean non-zero fractions on the first validation batch at every evaluation; each
    becomes ``add(case, metric, value, unit)`` with case ``split=val,step=S,tokens=N``.
    """
    import csv

    log_file = (checkpoint.parent if checkpoint.name == "final" else checkpoint) / "log.csv"
    if not log_file.is_file():
        return
    try:  # read whole before anything is added: a damaged log adds nothing
        with open(log_file, newline="", encoding="utf-8") as f:
            found = [(f"split=val,step={row['step']},tokens={row.get('tokens', '')}", f"train_density_{k}",
                      float(row[f"density_{k}"])) for row in csv.DictReader(f) for k in ("x", "y", "xy")
                     if row.get(f"density_{k}")]  # fmt: skip
    except (OSError, UnicodeDecodeError, ValueError, KeyError, csv.Error) as e:
        log.warning("%s is not a readable training log (%s: %s); density over training left out",
                    log_file, type(e).__name__, e)  # fmt: skip
        return
    for case, metric, value in found:
        add(case, metric, value, "fraction")


def _density(model: BDH, name: str, corpus, cfg: BDHBenchConfig, add) -> None:
    seq = min(cfg.seq_len, model.config.max_seq_len)
    dens = activation_density(model, corpus.tokens("test"), seq, cfg.density_windows)
    for k, per_layer in dens.items():
        for i, v in enumerate(per_layer):
            add(f"{name},split=test,T={seq},layer={i}", f"density_{k}", v, "fraction")
        add(f"{name},split=test,T={seq},layer=mean", f"density_{k}", sum(per_layer) / len(per_layer), "fraction")


@torch.no_grad()
def _equivalence(model: BDH, name: str, corpus, cfg: BDHBenchConfig, device, add) -> None:
    T = min(cfg.seq_len, model.config.max_seq_len)
    idx = torch.from_numpy(corpus.tokens("test")[:T].astype("int64"))[None].to(device)  # (1, T)
    full = model(idx)[0]  # (T, V)
    state = model.new_state(1)
    steps = torch.stack([model.step(idx[:, t], state)[0] for t in range(T)])  # (T, V)
    add(f"{name},T={T},mode=step", "recurrent_max_abs_diff", (steps - full).abs().max().item(), "logit")
    chunk = max(1, T // 4)
    last = model.prefill(idx, model.new_state(1), chunk=chunk)[0]  # (V,)
    add(
        f"{name},T={T},mode=prefill,chunk={chunk}",
        "recurrent_max_abs_diff",
        (last - full[-1]).abs().max().item(),
        "logit",
    )


def _quality(model: BDH, name: str, corpus, opts: BenchOptions, cfg: BDHBenchConfig, device, add) -> None:
    seq = min(256, model.config.max_seq_len)
    max_bytes = opts.max_bytes if cfg.bpb_max_bytes is None else cfg.bpb_max_bytes
    res = measure.corpus_bits_per_byte(model, corpus, "test", seq_len=seq, max_bytes=max_bytes, device=device)
    for lang, (bpb, n) in res.items():
        add(f"{name},split=test,lang={lang}", "bpb", bpb, "bits/byte")
        add(f"{name},split=test,lang={lang}", "bytes_scored", n, "bytes")

    def generate(prompt: list[int], k: int) -> list[int]:
        out = model.generate(torch.tensor([prompt], device=device), k, greedy=True)  # recurrent form
        return out[0, len(prompt) :].tolist()

    for s in probe_accuracy(generate, corpus, cfg.probe_distances, cfg.probes, split="test"):
        case = f"{name},mode=recurrent,distance={s.distance},max_seq_len={model.config.max_seq_len},n={s.n}"
        add(case, "probe_exact", s.exact, "fraction")
        add(case, "probe_char_acc", s.char, "fraction")
        add(case, "probe_prompt_tokens", s.prompt_tokens, "tokens")


def run(opts: BenchOptions, cfg: BDHBenchConfig | None = None) -> list[Record]:
    """All BDH figures (see the module docstring); ``cfg`` defaults to :data:`QUICK` with ``opts.quick``."""
    from recruit.data.corpus import Corpus

    cfg = configure(opts, cfg or (QUICK if opts.quick else BDHBenchConfig()), BENCH)
    device = resolve_device(opts.device)
    env = environment(device)
    recs = opts.recorder()

    def add(case: str, metric: str, value: float, unit: str = "") -> None:
        recs.add(Record(BENCH, case, metric, value, unit, env))

    corpus = Corpus.load(opts.corpus)
    model, name = _bdh_model(opts, cfg, device)
    steps = [
        ("latency", lambda: _latency(cfg, device, add)),
        ("density", lambda: _density(model, name, corpus, cfg, add)),
        ("equivalence", lambda: _equivalence(model, name, corpus, cfg, device, add)),
    ]
    if opts.model:
        steps.append(("quality", lambda: _quality(model, name, corpus, opts, cfg, device, add)))
    for label, fn in tqdm(steps, desc="bdh", disable=not opts.progress, leave=False):
        log.info("bdh bench: %s", label)
        fn()
    return recs.records


def section(records: list[Record]) -> str:
    """HTML: latency and memory vs context (BDH recurrent vs GPT with KV cache), density per layer, a table."""
    from recruit.report.html import bar_chart, line_chart, table

    rs = [r for r in records if r.bench == BENCH]
    if not rs:
        return ""
    parts = [
        "<p>BDH (<code>recruit.models.bdh</code>) decoding in its recurrent form against the dense GPT with a KV "
        "cache, both random-initialised at equal size; the state / cache is filled with random values to the "
        "context length (a step's cost depends on its size only).</p>"
    ]

    def series(metric: str) -> dict[str, tuple[list[int], list[float]]]:
        out: dict[str, list[tuple[int, float]]] = {}
        for r in rs:
            if r.metric == metric and "context" in r.params:
                out.setdefault(f"{r.params['model']} ({r.params['mode']})", []).append(
                    (int(r.params["context"]), r.value)
                )
        return {k: tuple(map(list, zip(*sorted(v), strict=True))) for k, v in out.items()}

    lat = series("decode_ms_per_token")
    if lat:
        parts.append(line_chart(lat, "decode latency vs context", "context (tokens)", "ms per token", logx=True))
    mem = {**series("state_bytes"), **series("kv_bytes")}
    if mem:
        parts.append(line_chart(mem, "state / KV cache size", "context (tokens)", "bytes", logx=True, logy=True))
    dens = [r for r in rs if r.metric in ("density_x", "density_y") and r.params.get("layer", "mean") != "mean"]
    first = (dens[0].params.get("model"), "init" in dens[0].params) if dens else None
    dens = [r for r in dens if (r.params.get("model"), "init" in r.params) == first]  # one run's bars
    if dens:
        dens.sort(key=lambda r: (int(r.params["layer"]), r.metric))
        labels = [f"L{r.params['layer']} {r.metric[-1]}" for r in dens]
        title = f"non-zero fraction per layer ({html.escape(dens[0].params.get('init', ''))} init)"
        parts.append(bar_chart(labels, [r.value for r in dens], title, "fraction non-zero"))
    over: dict[str, list[tuple[int, float]]] = {}  # a curve needs several evaluations: single points are dropped
    for r in rs:
        if r.metric.startswith("train_density_"):
            label = f"{_short(r.params.get('model', ''))} {r.metric.removeprefix('train_')}"
            over.setdefault(label, []).append((int(r.params["step"]), r.value))
    over = {k: v for k, v in over.items() if len(v) > 1}
    if over:
        curves = {k: tuple(map(list, zip(*sorted(v), strict=True))) for k, v in over.items()}
        parts.append(line_chart(curves, "activation density during training (validation batch, mean over layers)",
                                "training step", "fraction non-zero"))  # fmt: skip
    ccdf: dict[str, list[tuple[int, float]]] = {}
    for r in rs:
        if r.metric == "graph_ccdf":
            label = f"{_short(r.params.get('model', ''))} {r.params['direction']}-degree"
            ccdf.setdefault(label, []).append((int(r.params["degree"]), r.value))
    if ccdf:
        curves = {k: tuple(map(list, zip(*sorted(v), strict=True))) for k, v in ccdf.items()}
        parts.append(line_chart(curves, "neuron graph G = E·D_x: degree CCDF", "degree k", "fraction with degree ≥ k",
                                logx=True, logy=True))  # fmt: skip
    concept = [r for r in rs if r.metric.startswith("concept_")]
    if concept:
        parts.append(
            "<p>Currency concept across languages (<code>recruit bdh inspect</code>): features picked on some "
            "languages by the rank-biserial effect of sentences naming currencies vs units of measure, and "
            "judged again on the other languages.</p>"
        )
    shown = {"decode_ms_per_token", "state_bytes", "kv_bytes", "density_x", "density_y", "graph_ccdf",
             "train_density_x", "train_density_y", "train_density_xy"}  # fmt: skip
    rows = [[r.case, r.metric, f"{r.value:.4g}", r.unit] for r in rs if r.metric not in shown]
    parts.append(table(["case", "metric", "value", "unit"], rows))
    return "\n".join(parts)


register(Bench(BENCH, run, section, summary="BDH: recurrent decode vs KV cache, sparsity, equivalence, recall",
               takes_model=True))  # fmt: skip
