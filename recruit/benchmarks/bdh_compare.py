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

from dataclasses import dataclass

from recruit.benchmarks import Bench, BenchOptions, register
from recruit.benchmarks.equal_budget import Arm, ratio_records, score_arm, train_arm, train_flops_per_token
from recruit.records import Record, environment
from recruit.train import resolve_device

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


def run(opts: BenchOptions, cfg: CompareConfig | None = None) -> list[Record]:
    """Train the three runs (resuming any that exist) and measure them on the test split."""
    from recruit.data.corpus import Corpus

    cfg = cfg or (QUICK if opts.quick else CompareConfig())
    corpus = Corpus.load(opts.corpus)
    device = resolve_device(opts.device)
    env = environment(device)
    steps = cfg.tokens // (cfg.seq_len * cfg.batch_size)
    bdh_arm, gpt_arm = Arm("bdh", cfg.bdh, cfg.bdh_lr), Arm("gpt", cfg.gpt, cfg.gpt_lr)
    runs = {k: train_arm(corpus, a, steps, cfg.seq_len, cfg.batch_size, cfg.out_dir, opts)
            for k, a in (("bdh", bdh_arm), ("gpt", gpt_arm))}  # fmt: skip
    fpt = {k: train_flops_per_token(t.model, cfg.seq_len, device) for k, t in runs.items()}
    eq_steps = max(1, round(steps * fpt["bdh"] / fpt["gpt"]))
    eq_arm = Arm("gpt-eqflops", cfg.gpt, cfg.gpt_lr)
    runs["gpt_eqflops"] = train_arm(corpus, eq_arm, eq_steps, cfg.seq_len, cfg.batch_size, cfg.out_dir, opts)
    fpt["gpt_eqflops"] = fpt["gpt"]
    recs: list[Record] = []
    bpb: dict[str, dict[str, float]] = {}
    for key, t in runs.items():
        preset = cfg.bdh if key == "bdh" else cfg.gpt
        budget = "equal-flops" if key == "gpt_eqflops" else "equal-tokens"
        r, bpb[key] = score_arm(
            BENCH, f"model={preset},budget={budget}", t, corpus, cfg.eval_bytes, device, env, fpt[key]
        )
        recs += r
    for ref, budget in (("gpt", "equal-tokens"), ("gpt_eqflops", "equal-flops")):
        recs += ratio_records(BENCH, f"{cfg.bdh}_vs_{cfg.gpt},budget={budget}", bpb["bdh"], bpb[ref], env)
    return recs


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
