"""BDH activation sparsity under an L1 activity penalty: how many neurons fire, at what cost in bits per byte.

``recruit bench bdh-sparsity --out DIR``. The paper reports about 5% of x and y non-zero after long training
at 25M parameters; at the sizes and budgets a CPU allows, BDH trains to 33–46% (``recruit bench bdh``). This
benchmark trains the same model on the same batches (:func:`~recruit.benchmarks.equal_budget.train_arm`)
with ``BDHConfig.activity_l1`` = 0 and each weight of ``weights`` (a penalty on mean(x) + mean(y), see
:meth:`recruit.models.bdh.BDH.activity_loss`), then measures on the test split:

- ``density`` of x, y and x⊙y per layer (fraction of non-zero entries) and their mean over layers, on
  windows spread over the whole split (every language and kind);
- test bits per byte per language, and ``bpb_ratio`` = penalised ÷ unpenalised.

The unpenalised run is the ``bdh-compare`` run of the same preset, budget and learning rate (same run
directory, so it is trained once for both benchmarks).
"""

from __future__ import annotations

from dataclasses import dataclass

from tqdm.auto import tqdm

from recruit.benchmarks import Bench, BenchOptions, register
from recruit.benchmarks.equal_budget import Arm, prepare, ratio_records, score_arm, train_arm
from recruit.interp.bdh import activation_density
from recruit.records import Record

BENCH = "bdh-sparsity"


@dataclass(frozen=True)
class SparsityConfig:
    """The model, budget and penalty weights (defaults: ``bdh-tiny`` as in ``bdh-compare``)."""

    preset: str = "bdh-tiny"
    tokens: int = 2**20  # training tokens per run
    seq_len: int = 256
    batch_size: int = 8
    lr: float = 3e-3
    weights: tuple[float, ...] = (0.1, 0.3, 0.5, 1.0)  # activity_l1 of the penalised runs
    eval_bytes: int = 32768  # test bytes scored per language
    density_windows: int = 64  # test windows of seq_len tokens, spread over the split, on which density is measured
    out_dir: str = "runs/bdh-compare"

    def __post_init__(self) -> None:
        if self.tokens < self.seq_len * self.batch_size:
            raise ValueError(f"tokens ({self.tokens}) must cover at least one batch ({self.seq_len * self.batch_size})")
        if not self.weights or any(w <= 0 for w in self.weights):
            raise ValueError(f"weights must be positive penalty weights, got {self.weights}")


QUICK = SparsityConfig(preset="bdh-nano", tokens=4 * 32 * 8, seq_len=32, batch_size=4, weights=(1.0,),
                       eval_bytes=512, density_windows=2, out_dir="runs/bdh-sparsity-quick")  # fmt: skip


def arms(cfg: SparsityConfig) -> list[tuple[float, Arm]]:
    """(weight, arm) of every run; weight 0 is the unpenalised run, named as ``bdh-compare`` names it."""
    base = f"{cfg.preset}-lr{cfg.lr:g}"
    return [(0.0, Arm(base, cfg.preset, cfg.lr))] + [
        (w, Arm(f"{base}-l1{w:g}", cfg.preset, cfg.lr, {"activity_l1": w})) for w in cfg.weights
    ]


def run(opts: BenchOptions, cfg: SparsityConfig | None = None) -> list[Record]:
    """Train (or resume) every run, then record density per layer and test bits per byte."""
    cfg = cfg or (QUICK if opts.quick else SparsityConfig())
    corpus, device, env, steps = prepare(opts, cfg)
    out_dir = f"{cfg.out_dir}/tokens-{cfg.tokens}"
    recs: list[Record] = []
    bpb: dict[float, dict[str, float]] = {}
    for w, arm in tqdm(arms(cfg), desc="bdh sparsity", disable=not opts.progress):
        trainer = train_arm(corpus, arm, steps, cfg.seq_len, cfg.batch_size, out_dir, opts)
        case = f"model={cfg.preset},activity_l1={w:g},lr={cfg.lr:g}"
        r, bpb[w] = score_arm(BENCH, case, trainer, corpus, cfg.eval_bytes, device, env, 0.0)
        recs += [x for x in r if x.metric != "train_flops"]
        dens = activation_density(trainer.model, corpus.tokens("test"), cfg.seq_len, cfg.density_windows)
        for kind, values in dens.items():
            for layer, v in enumerate(values):
                recs.append(Record(BENCH, f"{case},neurons={kind},layer={layer}", "density", v, "fraction", env))
            recs.append(Record(BENCH, f"{case},neurons={kind},layer=mean", "density", sum(values) / len(values),
                               "fraction", env))  # fmt: skip
    for w in cfg.weights:
        recs += ratio_records(BENCH, f"model={cfg.preset},activity_l1={w:g}_vs_0,lr={cfg.lr:g}", bpb[w], bpb[0.0], env)
    return recs


def section(records: list[Record]) -> str:
    """Density against the penalty weight, and the bits-per-byte cost."""
    from recruit.report.html import table

    rs = [r for r in records if r.bench == BENCH]
    if not rs:
        return ""
    mean = {(r.params["activity_l1"], r.params["neurons"]): r.value for r in rs
            if r.metric == "density" and r.params.get("layer") == "mean"}  # fmt: skip
    bpb = {r.params["activity_l1"]: r.value for r in rs if r.metric == "bpb" and r.params.get("lang") == "mean"}
    rows = [[w, f"{mean.get((w, 'x'), float('nan')):.3f}", f"{mean.get((w, 'y'), float('nan')):.3f}",
             f"{mean.get((w, 'xy'), float('nan')):.3f}", f"{bpb.get(w, float('nan')):.4f}"]
            for w in sorted({k[0] for k in mean}, key=float)]  # fmt: skip
    return (
        "<p>BDH trained with an L1 penalty on its neurons' activity (<code>recruit bench bdh-sparsity</code>): "
        "fraction of non-zero x, y and x⊙y on test text (mean over layers), and test bits per byte (mean over "
        "languages). Same model, batches and budget in every row; weight 0 is the unpenalised run.</p>"
        + table(["activity_l1", "x", "y", "x⊙y", "bits/byte"], rows)
    )


register(Bench(BENCH, run, section, summary="BDH activation density vs an L1 activity penalty (same budget)"))
