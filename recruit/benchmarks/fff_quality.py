"""FFF's quality at equal budget: the baseline with (a) its dense MLP, (b) an FFF of the same width, (c) no MLP.

``recruit bench fff-quality --out DIR`` trains the three arms of ``gpt-tiny`` on the same batches for the same
number of tokens with the same trainer, then scores held-out bits per byte per language. Published replications
found FFF close to "no FF" on some tasks, so (c) is the honest floor to read (b) against. The records also give
the fraction of FF neurons an FFF token uses ((depth + 1) · trees of the width).

Further arms (``forests``) split about the same width into K shallower trees (depth D, K · (2^(D+1) − 1) nodes):
a token then uses (D + 1) · K neurons, several times the single tree's D + 1, and still a tenth or less of the
width. They show how much of the gap to dense the single tree's few neurons per token account for.
"""

from __future__ import annotations

from dataclasses import dataclass

from recruit.benchmarks import Bench, BenchOptions, checks, configure, register
from recruit.benchmarks.equal_budget import (
    Arm,
    prepare,
    ratio_records,
    run_root,
    score_arm,
    train_arm,
    train_flops_per_token,
)
from recruit.models import build_model
from recruit.records import Record

BENCH = "fff-quality"


@dataclass
class QualityConfig:
    """Sizes of the comparison."""

    tokens: int = 2**20  # training tokens per arm
    seq_len: int = 256
    batch_size: int = 16
    preset: str = "gpt-tiny"
    lr: float = 3e-3
    fff_trees: int = 1
    forests: tuple[tuple[int, int], ...] = ((6, 4), (5, 8))  # further FFF arms: (depth, trees) of about the width
    out_dir: str = "runs/fff-quality"  # the runs (under tokens-N), resumed by a rerun ("": a temporary directory)
    eval_bytes: int = 32768

    def __post_init__(self) -> None:
        checks.one_batch(self)
        checks.positive(self, "lr", "fff_trees", "eval_bytes")
        checks.preset("preset", self.preset, "gpt")
        checks.fits_context("preset", self.preset, self.seq_len)
        if any(d < 1 or k < 1 for d, k in self.forests):  # a forest of single-neuron trees is no comparison
            raise ValueError(f"forests must be (depth >= 1, trees >= 1) pairs, got {self.forests}")
        for i, (depth, trees) in enumerate(self.forests):
            checks.fff_shape(f"forests[{i}]", depth, trees)


QUICK = QualityConfig(tokens=4 * 32 * 4, seq_len=32, batch_size=4, preset="gpt-nano", out_dir="",
                      eval_bytes=2048, forests=((3, 4),))  # fmt: skip


def _forest(depth: int, trees: int) -> str:
    return f"fff-d{depth}k{trees}"


def run(opts: BenchOptions, cfg: QualityConfig | None = None) -> list[Record]:
    """Train dense / FFF / no-FF arms (resuming any that exist) and score them on the test split."""
    cfg = configure(opts, cfg or (QUICK if opts.quick else QualityConfig()), BENCH)
    corpus, device, env, steps = prepare(opts, cfg)
    root = f"{run_root(cfg.out_dir)}/tokens-{cfg.tokens}"  # another budget trains anew, as in the BDH comparisons
    arms = [
        Arm("dense", cfg.preset, cfg.lr),
        Arm("fff", cfg.preset, cfg.lr, {"mlp": "fff", "fff_trees": cfg.fff_trees}),
        Arm("none", cfg.preset, cfg.lr, {"mlp": "none"}),
    ] + [Arm(_forest(d, k), cfg.preset, cfg.lr, {"mlp": "fff", "fff_depth": d, "fff_trees": k}) for d, k in cfg.forests]
    recs = opts.recorder()
    bpb: dict[str, dict[str, float]] = {}
    for arm in arms:
        t = train_arm(corpus, arm, steps, cfg.seq_len, cfg.batch_size, root, opts)
        case = f"model={cfg.preset},ff={arm.name}"
        r, bpb[arm.name] = score_arm(
            BENCH, case, t, corpus, cfg.eval_bytes, device, env, train_flops_per_token(t.model, cfg.seq_len, device)
        )
        recs.extend(r)
    mc = build_model(cfg.preset, {"mlp": "fff", "fff_trees": cfg.fff_trees}).config
    for name, depth, trees in [("fff", mc.fff_depth, cfg.fff_trees), *((_forest(d, k), d, k) for d, k in cfg.forests)]:
        width = trees * (2 ** (depth + 1) - 1)
        used = (depth + 1) * trees
        case = f"model={cfg.preset},ff={name},depth={depth},trees={trees},width={width}"
        recs.add(Record(BENCH, case, "neurons_per_token", used, "", env))
        recs.add(Record(BENCH, case, "density", used / width, "fraction", env))
    recs.add(Record(BENCH, f"model={cfg.preset},ff=dense,width={mc.d_ff}", "density", 1.0, "fraction", env))
    for arm in ("fff", "none", *(_forest(d, k) for d, k in cfg.forests)):
        recs.extend(ratio_records(BENCH, f"model={cfg.preset},ff={arm}_vs_dense", bpb[arm], bpb["dense"], env))
    return recs.records


def section(records: list[Record]) -> str:
    """Bits per byte of the three arms (mean over languages) and the full table."""
    from recruit.report.html import bar_chart, table

    rs = [r for r in records if r.bench == BENCH]
    if not rs:
        return ""
    means = [(r.params["ff"], r.value) for r in rs if r.metric == "bpb" and r.params.get("lang") == "mean"]
    parts = [
        "<p>The baseline trained on the same batches and token budget (<code>recruit bench fff-quality</code>): "
        "dense MLP, an FFF tree of the same width, no MLP, and FFF forests (<code>fff-dDkK</code>: K trees of "
        "depth D, about the same width, (D + 1)·K neurons per token).</p>"
    ]
    if means:
        parts.append(
            bar_chart([k for k, _ in means], [v for _, v in means], "held-out bits per byte (mean)", "bits/byte")
        )
    parts.append(table(["case", "metric", "value", "unit"], [[r.case, r.metric, f"{r.value:.4g}", r.unit] for r in rs]))
    return "\n".join(parts)


register(Bench(BENCH, run, section, summary="FFF vs dense vs no MLP at equal tokens (three-way quality table)"))
