"""The dense baseline's figures: held-out bits per byte per language, and its cost (params, FLOPs, time, memory).

Every technique's numbers are read against these. Run with ``recruit bench baseline --out DIR``.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import torch
from tqdm.auto import tqdm

from recruit import checkpoints, measure
from recruit.benchmarks import Bench, BenchOptions, fixed_cases, register
from recruit.errors import RecruitError
from recruit.models import GPT, load_model
from recruit.records import Record, environment
from recruit.train import resolve_device

log = logging.getLogger(__name__)
BENCH = "baseline"


def _load(opts: BenchOptions) -> tuple[GPT, str, torch.device]:
    device = resolve_device(opts.device)
    path = opts.model or checkpoints.path()
    model = load_model(path, device=device)
    if not isinstance(model, GPT):
        raise RecruitError(f"the baseline benchmark measures a recruit-gpt model, {path} holds {model.model_type}")
    return model, (str(path) if opts.model else checkpoints.DEFAULT), device


def _quality(model, corpus, opts: BenchOptions, device, seq: int, add) -> None:
    max_bytes = min(opts.max_bytes, 4096) if opts.quick else opts.max_bytes
    for group, prefix, lang in (("lang", "", None), ("kind", "lang=en,", "en")):  # kinds compared within English
        res = measure.corpus_bits_per_byte(
            model, corpus, "test", seq_len=seq, max_bytes=max_bytes, group=group, lang=lang, device=device
        )
        for key, (bpb, n) in res.items():
            case = f"split=test,{prefix}{group}={key}"
            add(case, "bpb", bpb, "bits/byte")
            add(case, "ppl", 2.0**bpb, "per byte")
            add(case, "bytes_scored", n, "bytes")


def _training(path, add) -> None:
    """The held-out loss per token, in bits, along the training of a checkpoint that ships its ``train_log.csv``.

    That is ``recruit train``'s ``log.csv``, copied beside the model as the shipped checkpoint's TRAINED.md does.
    """
    log_file = Path(path) / "train_log.csv"
    if not log_file.is_file():
        return
    with open(log_file, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("val_loss"):
                case = f"step={row['step']},tokens={row['tokens']}"
                add(case, "train_val_bits_per_token", float(row["val_loss"]) / math.log(2), "bits/token")


def _flops(model, opts: BenchOptions, device, seq: int, add) -> None:
    add("", "params", measure.count_params(model), "")
    x = torch.randint(0, 256, (1, seq), device=device)
    add(f"T={seq}", "flops_per_token", measure.count_flops(lambda: model(x)) / seq, "FLOP")
    add(f"T={seq}", "flops_analytic_per_token", measure.gpt_forward_flops(model.config, seq) / seq, "FLOP")


@torch.no_grad()
def _latency(model, opts: BenchOptions, device, seq: int, add) -> None:
    cfg = model.config
    repeats = 3 if opts.quick else 10
    x = torch.randint(0, 256, (1, seq), device=device)
    t = measure.time_fn(lambda: model(x), device, warmup=2, repeats=repeats)
    add(f"B=1,T={seq}", "prefill_ms", t.median * 1e3, "ms")
    add(f"B=1,T={seq}", "prefill_tok_per_s", seq / t.median, "tok/s")
    one = torch.randint(0, 256, (1, 1), device=device)
    for ctx in [c for c in (16, 64, 128, 255) if c < cfg.max_seq_len]:
        cache = model.new_cache()
        model(torch.randint(0, 256, (1, ctx), device=device), cache=cache)

        def step_once(cache=cache, ctx=ctx) -> None:  # decode one token at context ctx, then roll back
            model(one, cache=cache)
            cache.truncate(ctx)

        t = measure.time_fn(step_once, device, warmup=2, repeats=repeats * 3)
        add(f"B=1,context={ctx}", "decode_ms_per_token", t.median * 1e3, "ms")
        add(f"B=1,context={ctx}", "kv_bytes", cache.nbytes(), "bytes")
    add("", "kv_bytes_per_token", 2 * cfg.n_layer * cfg.n_kv_head * cfg.head_dim * 4, "bytes")


@torch.no_grad()
def _memory(model, opts: BenchOptions, device, seq: int, add) -> None:
    xb = torch.randint(0, 256, (8, seq), device=device)
    peak = measure.peak_memory(lambda: model(xb), device)
    if peak is not None:
        add(f"B=8,T={seq}", "peak_mem_bytes", peak, "bytes")


def run(opts: BenchOptions) -> list[Record]:
    """Quality per language and cost of the model (the shipped ``gpt-tiny`` unless ``opts.model`` is given)."""
    from recruit.data.corpus import Corpus

    fixed_cases(opts, BENCH)
    model, name, device = _load(opts)
    env = environment(device)
    recs = opts.recorder()

    def add(case: str, metric: str, value: float, unit: str = "") -> None:
        recs.add(Record(BENCH, f"model={name}" + (f",{case}" if case else ""), metric, value, unit, env))

    corpus = Corpus.load(opts.corpus)
    _training(opts.model or checkpoints.path(), add)
    seq = min(256, model.config.max_seq_len)
    bar = tqdm(desc="baseline", total=4, disable=not opts.progress, leave=False)
    _quality(model, corpus, opts, device, seq, add)
    for step in (_flops, _latency, _memory):
        bar.update(1)
        bar.set_postfix_str(step.__name__.strip("_"))
        step(model, opts, device, seq, add)
    bar.update(1)
    bar.close()
    return recs.records


def section(records: list[Record]) -> str:
    """HTML for the report: bits per byte per language and kind, the training curve, and the cost table."""
    from recruit.report.html import bar_chart, line_chart, table

    rs = [r for r in records if r.bench == BENCH]
    if not rs:
        return ""
    parts = [
        "<p>The dense baseline (<code>recruit.models.gpt</code>) that every technique is measured against: "
        "held-out bits per byte on the test split of the corpus (byte targets only), and its cost.</p>"
    ]
    for group, title in (("lang", "language"), ("kind", "kind of English text")):
        pts = sorted(
            (r.params[group], r.value)
            for r in rs
            if r.metric == "bpb" and group in r.params and (group == "kind" or "kind" not in r.params)
        )
        if pts:
            parts.append(bar_chart([k for k, _ in pts], [v for _, v in pts], f"bits per byte by {title}", "bits/byte"))
    langs = [r.value for r in rs if r.metric == "bpb" and "lang" in r.params and "kind" not in r.params]
    if langs:
        mean = sum(langs) / len(langs)
        parts.append(f"<p>Mean over languages: {mean:.3f} bits/byte (perplexity per byte {2**mean:.2f}).</p>")
    curve = sorted((int(r.params["tokens"]), r.value) for r in rs if r.metric == "train_val_bits_per_token")
    if curve:
        xs, ys = zip(*curve, strict=True)
        parts.append(
            line_chart(
                {"held-out": (xs, ys)},
                "training curve of the shipped checkpoint",
                "tokens seen",
                "bits/token (val split)",
            )
        )
    dec = sorted((int(r.params["context"]), r.value) for r in rs if r.metric == "decode_ms_per_token")
    if dec:
        xs, ys = zip(*dec, strict=True)
        parts.append(line_chart({"KV cache": (xs, ys)}, "decode latency", "context (tokens)", "ms per token"))
    cost = [r for r in rs if r.metric not in ("bpb", "ppl", "bytes_scored", "train_val_bits_per_token")]
    rows = [[r.case, r.metric, _fmt(r.value), r.unit] for r in cost]
    parts.append(table(["case", "metric", "value", "unit"], rows))
    return "\n".join(parts)


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"


register(Bench(BENCH, run, section, summary="dense baseline: bits/byte per language and cost", in_report=True,
               takes_model=True))  # fmt: skip
