"""BDH against the dense baseline of equal size: same corpus, same trainer, same token budget.

``recruit bench bdh-compare --out DIR`` trains ``bdh-tiny`` and ``gpt-tiny`` (823k vs 824k parameters) on the
same batches for the same number of tokens, then a second GPT run with as many training FLOPs as the BDH run
used (the equal-compute view: BDH does several times the work per token). Held-out bits per byte per language
and the ratios BDH ÷ GPT are records; so are each run's training FLOPs and measured throughput.

Runs live under ``runs/bdh-compare/`` and resume like any training run, so an interrupted benchmark continues.
Both models train without dropout (the budget is far below one epoch) with their own learning rates: 3e-3 for
the GPT preset, 1e-3 for BDH (the paper's recipe).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from recruit import measure
from recruit.benchmarks import Bench, BenchOptions, register
from recruit.records import Record, environment
from recruit.train import Trainer, make_config, resolve_device

BENCH = "bdh-compare"


@dataclass
class CompareConfig:
    """Sizes of the comparison."""

    tokens: int = 2**19  # training tokens per equal-token run
    seq_len: int = 256
    batch_size: int = 8
    gpt: str = "gpt-tiny"
    bdh: str = "bdh-tiny"
    gpt_lr: float = 3e-3
    bdh_lr: float = 1e-3
    out_dir: str = "runs/bdh-compare"
    eval_bytes: int = 32768  # held-out bytes scored per language

    def __post_init__(self) -> None:
        if self.tokens < self.seq_len * self.batch_size:
            raise ValueError(f"tokens ({self.tokens}) must cover at least one batch ({self.seq_len * self.batch_size})")


QUICK = CompareConfig(
    tokens=4 * 32 * 4,
    seq_len=32,
    batch_size=4,
    gpt="gpt-nano",
    bdh="bdh-nano",
    out_dir="runs/bdh-compare-quick",
    eval_bytes=2048,
)


def train_flops_per_token(model: torch.nn.Module, seq_len: int, device: torch.device) -> float:
    """Training FLOPs per token: 3 × the forward FLOPs counted by torch's counter (backward ≈ 2 × forward)."""
    x = torch.randint(0, 256, (1, seq_len), device=device)
    return 3 * measure.count_flops(lambda: model(x)) / seq_len


def _train(corpus, name: str, preset: str, lr: float, steps: int, cfg: CompareConfig, opts: BenchOptions) -> Trainer:
    tcfg = make_config(
        None,
        overrides={
            "model": preset,
            "model.dropout": 0.0,
            "out_dir": f"{cfg.out_dir}/{name}",
            "seq_len": cfg.seq_len,
            "batch_size": cfg.batch_size,
            "max_steps": steps,
            "lr": lr,
            "warmup_steps": max(1, steps // 20),
            "eval_every": steps,
            "ckpt_every": max(1, steps // 10),
            "log_every": max(1, steps // 50),
            "device": opts.device,
        },
    )
    trainer = Trainer(tcfg, corpus.tokens("train"), corpus.tokens("val"), progress=opts.progress)
    trainer.fit()
    trainer.model.eval()
    return trainer


def run(opts: BenchOptions, cfg: CompareConfig | None = None) -> list[Record]:
    """Train the three runs (resuming any that exist) and measure them on the test split."""
    from recruit.data.corpus import Corpus

    cfg = cfg or (QUICK if opts.quick else CompareConfig())
    corpus = Corpus.load(opts.corpus)
    device = resolve_device(opts.device)
    env = environment(device)
    recs: list[Record] = []
    steps = cfg.tokens // (cfg.seq_len * cfg.batch_size)
    runs = {"bdh": _train(corpus, "bdh", cfg.bdh, cfg.bdh_lr, steps, cfg, opts)}
    runs["gpt"] = _train(corpus, "gpt", cfg.gpt, cfg.gpt_lr, steps, cfg, opts)
    fpt = {k: train_flops_per_token(t.model, cfg.seq_len, device) for k, t in runs.items()}
    eq_steps = max(1, round(steps * fpt["bdh"] / fpt["gpt"]))
    runs["gpt_eqflops"] = _train(corpus, "gpt-eqflops", cfg.gpt, cfg.gpt_lr, eq_steps, cfg, opts)
    fpt["gpt_eqflops"] = fpt["gpt"]
    bpb: dict[str, dict[str, float]] = {}
    for key, t in runs.items():
        preset = cfg.bdh if key == "bdh" else cfg.gpt
        tokens = t.step * cfg.seq_len * cfg.batch_size
        budget = "equal-flops" if key == "gpt_eqflops" else "equal-tokens"
        base = f"model={preset},budget={budget},train_tokens={tokens}"
        last = t.history[-1] if t.history else {}
        recs.append(Record(BENCH, base, "params", measure.count_params(t.model), "", env))
        recs.append(Record(BENCH, base, "train_flops", fpt[key] * tokens, "FLOP", env))
        if "tok_per_s" in last:
            recs.append(Record(BENCH, base, "train_tok_per_s", last["tok_per_s"], "tok/s", env))
        with torch.no_grad():
            res = measure.corpus_bits_per_byte(
                t.model, corpus, "test", seq_len=cfg.seq_len, max_bytes=cfg.eval_bytes, device=device
            )
        bpb[key] = {lang: v for lang, (v, _) in res.items()}
        for lang, v in bpb[key].items():
            recs.append(Record(BENCH, f"{base},split=test,lang={lang}", "bpb", v, "bits/byte", env))
        recs.append(Record(BENCH, f"{base},split=test,lang=mean", "bpb", _mean(bpb[key]), "bits/byte", env))
    for ref, budget in (("gpt", "equal-tokens"), ("gpt_eqflops", "equal-flops")):
        for lang in [*sorted(bpb["bdh"]), "mean"]:
            b = _mean(bpb["bdh"]) if lang == "mean" else bpb["bdh"][lang]
            g = _mean(bpb[ref]) if lang == "mean" else bpb[ref].get(lang, math.nan)
            recs.append(
                Record(
                    BENCH,
                    f"{cfg.bdh}_vs_{cfg.gpt},budget={budget},split=test,lang={lang}",
                    "bpb_ratio",
                    b / g,
                    "x",
                    env,
                )
            )
    return recs


def _mean(d: dict[str, float]) -> float:
    return sum(d.values()) / len(d)


def section(records: list[Record]) -> str:
    """A table of bits per byte per language for the three runs and the ratios."""
    from recruit.report.html import bar_chart, table

    rs = [r for r in records if r.bench == BENCH]
    if not rs:
        return ""
    ratios = [r for r in rs if r.metric == "bpb_ratio" and r.params.get("lang") == "mean"]
    parts = [
        "<p>BDH and the dense GPT of equal parameter count, trained by the same trainer on the same batches "
        "(<code>recruit bench bdh-compare</code>). A ratio below 1 means BDH compresses held-out text better."
        "</p>"
    ]
    if ratios:
        parts.append(
            bar_chart(
                [r.params["budget"] for r in ratios],
                [r.value for r in ratios],
                "BDH ÷ GPT bits per byte (mean over languages)",
                "ratio",
            )
        )
    rows = [[r.case, r.metric, f"{r.value:.4g}", r.unit] for r in rs]
    parts.append(table(["case", "metric", "value", "unit"], rows))
    return "\n".join(parts)


register(Bench(BENCH, run, section, summary="BDH vs the equal-size GPT at equal tokens and equal FLOPs"))
