"""BDH activation sparsity under an L1 activity penalty: how many neurons fire, at what cost in bits per byte.

``recruit bench bdh-sparsity --out DIR``. The paper reports about 5% of x and y non-zero after long training
at 25M parameters; at the sizes and budgets a CPU allows, BDH trains to 33–46% (``recruit bench bdh``). This
benchmark trains the same model on the same batches (:func:`~recruit.benchmarks.equal_budget.train_arm`)
with ``BDHConfig.activity_l1`` = 0 and each weight of ``weights`` (a penalty on mean(x) + mean(y), see
:meth:`recruit.models.bdh.BDH.activity_loss`), and with each (weight, warm-up) of ``ramps`` (the weight
reached linearly over that fraction of the run, ``BDHConfig.activity_warmup``), then measures on the test
split:

- ``density`` of x, y and x⊙y per layer (fraction of non-zero entries) and their mean over layers, on
  windows spread over the whole split (every language and kind);
- test bits per byte per language, and ``bpb_ratio`` = penalised ÷ unpenalised.

The unpenalised run is the ``bdh-compare`` run of the same preset, budget and learning rate (same run
directory, so it is trained once for both benchmarks).
"""

from __future__ import annotations

from dataclasses import dataclass

from tqdm.auto import tqdm

from recruit.benchmarks import Bench, BenchOptions, checks, configure, register
from recruit.benchmarks.equal_budget import Arm, prepare, ratio_records, run_root, score_arm, train_arm
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
    ramps: tuple[tuple[float, float], ...] = ((0.5, 0.5),)  # (activity_l1, activity_warmup) of ramped runs
    eval_bytes: int = 32768  # test bytes scored per language
    density_windows: int = 64  # test windows of seq_len tokens, spread over the split, on which density is measured
    out_dir: str = "runs/bdh-compare"  # the runs, resumed by a rerun ("": a temporary directory)

    def __post_init__(self) -> None:
        checks.one_batch(self)
        checks.positive(self, "lr", "eval_bytes", "density_windows")
        checks.preset("preset", self.preset, "bdh")
        checks.fits_context("preset", self.preset, self.seq_len)
        if not self.weights or any(not w > 0 for w in self.weights):
            raise ValueError(f"weights must be positive penalty weights, got {self.weights}")
        if any(not w > 0 or not 0 < f <= 1 for w, f in self.ramps):
            raise ValueError(f"ramps must be (weight > 0, warm-up fraction in (0, 1]) pairs, got {self.ramps}")


QUICK = SparsityConfig(preset="bdh-nano", tokens=4 * 32 * 8, seq_len=32, batch_size=4, weights=(1.0,),
                       ramps=((1.0, 0.5),), eval_bytes=512, density_windows=2,
                       out_dir="")  # fmt: skip


def arms(cfg: SparsityConfig) -> list[tuple[tuple[float, float], Arm]]:
    """((weight, warm-up), arm) of every run; (0, 0) is the unpenalised run, named as ``bdh-compare`` names it."""
    base = f"{cfg.preset}-lr{cfg.lr:g}"
    fixed = [((w, 0.0), Arm(f"{base}-l1{w:g}", cfg.preset, cfg.lr, {"activity_l1": w})) for w in cfg.weights]
    ramped = [((w, f), Arm(f"{base}-l1{w:g}-ramp{f:g}", cfg.preset, cfg.lr, {"activity_l1": w, "activity_warmup": f}))
              for w, f in cfg.ramps]  # fmt: skip
    return [((0.0, 0.0), Arm(base, cfg.preset, cfg.lr))] + fixed + ramped


def _case(preset: str, weight: str, warmup: float, lr: float) -> str:
    """A record's case: the preset, the penalty weight (or a comparison of weights), the ramp if any, the lr."""
    ramp = f",activity_warmup={warmup:g}" if warmup else ""
    return f"model={preset},activity_l1={weight}{ramp},lr={lr:g}"


def run(opts: BenchOptions, cfg: SparsityConfig | None = None) -> list[Record]:
    """Train (or resume) every run, then record density per layer and test bits per byte."""
    cfg = configure(opts, cfg or (QUICK if opts.quick else SparsityConfig()), BENCH)
    corpus, device, env, steps = prepare(opts, cfg)
    out_dir = f"{run_root(cfg.out_dir)}/tokens-{cfg.tokens}"
    recs = opts.recorder()
    bpb: dict[tuple[float, float], dict[str, float]] = {}
    for (w, f), arm in tqdm(arms(cfg), desc="bdh sparsity", disable=not opts.progress):
        trainer = train_arm(corpus, arm, steps, cfg.seq_len, cfg.batch_size, out_dir, opts)
        case = _case(cfg.preset, f"{w:g}", f, cfg.lr)
        r, bpb[w, f] = score_arm(BENCH, case, trainer, corpus, cfg.eval_bytes, device, env, 0.0)
        recs.extend(x for x in r if x.metric != "train_flops")
        dens = activation_density(trainer.model, corpus.tokens("test"), cfg.seq_len, cfg.density_windows)
        for kind, values in dens.items():
            for layer, v in enumerate(values):
                recs.add(Record(BENCH, f"{case},neurons={kind},layer={layer}", "density", v, "fraction", env))
            recs.add(Record(BENCH, f"{case},neurons={kind},layer=mean", "density", sum(values) / len(values),
                            "fraction", env))  # fmt: skip
    for w, f in bpb:
        if w:
            case = _case(cfg.preset, f"{w:g}_vs_0", f, cfg.lr)
            recs.extend(ratio_records(BENCH, case, bpb[w, f], bpb[0.0, 0.0], env))
    return recs.records


def section(records: list[Record]) -> str:
    """Density against the penalty weight, and the bits-per-byte cost."""
    from recruit.report.html import table

    rs = [r for r in records if r.bench == BENCH]
    if not rs:
        return ""

    def arm(r: Record) -> tuple[str, str]:
        return r.params["activity_l1"], r.params.get("activity_warmup", "0")

    mean = {(arm(r), r.params["neurons"]): r.value for r in rs
            if r.metric == "density" and r.params.get("layer") == "mean"}  # fmt: skip
    bpb = {arm(r): r.value for r in rs if r.metric == "bpb" and r.params.get("lang") == "mean"}
    nan = float("nan")
    rows = [[w, f, f"{mean.get(((w, f), 'x'), nan):.3f}", f"{mean.get(((w, f), 'y'), nan):.3f}",
             f"{mean.get(((w, f), 'xy'), nan):.3f}", f"{bpb.get((w, f), nan):.4f}"]
            for w, f in sorted({k[0] for k in mean}, key=lambda a: (float(a[0]), float(a[1])))]  # fmt: skip
    return (
        "<p>BDH trained with an L1 penalty on its neurons' activity (<code>recruit bench bdh-sparsity</code>): "
        "fraction of non-zero x, y and x⊙y on test text (mean over layers), and test bits per byte (mean over "
        "languages). Same model, batches and budget in every row; weight 0 is the unpenalised run; a warm-up "
        "f > 0 ramps the weight up linearly over the first fraction f of the run.</p>"
        + table(["activity_l1", "warm-up", "x", "y", "x⊙y", "bits/byte"], rows)
    )


register(Bench(BENCH, run, section, summary="BDH activation density vs an L1 activity penalty (same budget)"))
