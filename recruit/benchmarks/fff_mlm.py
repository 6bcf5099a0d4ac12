"""FFF in a masked-language-model encoder: dense FF vs FFF vs no FF at an equal token budget.

``recruit bench fff-mlm --out DIR``. The same small BERT (Hugging Face ``BertForMaskedLM`` built from a config,
no download) is trained from scratch on the corpus's bytes three times, on the same batches and masks: with
its dense feed-forward, with an FFF of the same width in every layer
(:func:`recruit.fff.encoder.replace_encoder_mlps`), and with no feed-forward at all. The records are the
held-out masked-token loss (nats per masked byte, on windows spread over the test split, with fixed masks)
of each arm and ``mlm_loss_ratio`` against dense: the encoder counterpart of ``fff-quality`` (the decoder
comparison).

Masking follows BERT: 15% of the positions are predicted; of those 80% become ``<mask>``, 10% a random
byte and 10% stay; a training step's masks are drawn from a generator seeded by the step. Training is
:func:`~recruit.train.train_steps` (AdamW, warm-up, cosine decay; the library's :class:`~recruit.train.Trainer`
trains next-token models), checkpointed per arm in ``out_dir`` under a name that hashes everything the training
depends on (the config, the arm and the corpus build): a run stopped part-way resumes where it was, a finished
arm is not trained again, and other settings train anew.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from recruit.benchmarks import Bench, BenchOptions, checks, configure, register
from recruit.benchmarks.equal_budget import prepare
from recruit.data.stream import TokenStream, spread_windows
from recruit.data.tokenizer import ByteTokenizer
from recruit.records import Record
from recruit.train import keyed_checkpoint, train_steps

BENCH = "fff-mlm"
ARMS = ("dense", "fff", "none")


@dataclass(frozen=True)
class MLMConfig:
    """Encoder size, budget and masking (defaults train each arm in a few minutes on 2 cores)."""

    hidden: int = 128
    layers: int = 2
    heads: int = 4
    intermediate: int = 512  # dense FF width; the FFF gets depth log2(width + 1) - 1 (511 nodes at 512)
    tokens: int = 2**22  # training tokens per arm
    seq_len: int = 128
    batch_size: int = 16
    lr: float = 1e-3
    mask_prob: float = 0.15
    eval_windows: int = 512  # test windows scored, spread evenly over the test split (all its languages)
    seed: int = 0
    out_dir: str = "runs/fff-mlm"  # each arm's training checkpoint, ARM-KEY.pt ("": none)

    def __post_init__(self) -> None:
        checks.one_batch(self)
        checks.positive(self, "hidden", "layers", "heads", "intermediate", "lr", "eval_windows")
        checks.non_negative(self, "seed")
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be a multiple of heads ({self.heads})")
        if not 0 < self.mask_prob < 1:
            raise ValueError(f"mask_prob must be in (0, 1), got {self.mask_prob}")
        checks.fff_shape(f"intermediate {self.intermediate}", self.fff_depth)

    @property
    def fff_depth(self) -> int:
        """The depth whose 2^(D+1) − 1 nodes come closest below the dense width."""
        return max(0, (self.intermediate + 1).bit_length() - 2)


QUICK = MLMConfig(hidden=32, layers=1, heads=2, intermediate=64, tokens=4 * 32 * 4, seq_len=32, batch_size=4,
                  eval_windows=4, out_dir="")  # fmt: skip


def build(cfg: MLMConfig, arm: str):
    """The arm's freshly initialised ``BertForMaskedLM`` (same seed, so dense weights start alike)."""
    from transformers import BertConfig, BertForMaskedLM

    from recruit.fff.encoder import drop_encoder_mlps, replace_encoder_mlps

    tok = ByteTokenizer()
    torch.manual_seed(cfg.seed)
    bert = BertConfig(vocab_size=tok.vocab_size, hidden_size=cfg.hidden, num_hidden_layers=cfg.layers,
                      num_attention_heads=cfg.heads, intermediate_size=cfg.intermediate,
                      max_position_embeddings=cfg.seq_len, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                      pad_token_id=tok.pad_id)  # fmt: skip
    model = BertForMaskedLM(bert)
    if arm == "fff":
        replace_encoder_mlps(model, cfg.fff_depth)
    elif arm == "none":
        drop_encoder_mlps(model)
    return model


def mask(ids: torch.Tensor, cfg: MLMConfig, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking of ids (B, T): (inputs, labels), labels −100 where nothing is predicted."""
    tok = ByteTokenizer()
    pick = torch.rand(ids.shape, generator=g) < cfg.mask_prob  # (B, T)
    how = torch.rand(ids.shape, generator=g)  # 80% <mask>, 10% random byte, 10% unchanged
    rand = torch.randint(0, tok.n_bytes, ids.shape, generator=g)
    inputs = torch.where(pick & (how < 0.8), tok.special_id("<mask>"), ids)
    inputs = torch.where(pick & (how >= 0.8) & (how < 0.9), rand, inputs)
    return inputs, torch.where(pick, ids, -100)


@torch.no_grad()
def held_out_loss(model, windows: torch.Tensor, cfg: MLMConfig, device) -> float:
    """Mean masked-token cross-entropy (nats) on ``windows`` (W, T) with masks fixed by ``cfg.seed``."""
    g = torch.Generator().manual_seed(cfg.seed + 1)
    total, count = 0.0, 0
    model.eval()
    for i in range(0, len(windows), cfg.batch_size):
        inputs, labels = mask(windows[i : i + cfg.batch_size], cfg, g)
        logits = model(input_ids=inputs.to(device)).logits  # (B, T, V)
        keep = labels != -100
        total += torch.nn.functional.cross_entropy(logits[keep.to(device)], labels[keep].to(device),
                                                   reduction="sum").item()  # fmt: skip
        count += int(keep.sum())
    return total / max(count, 1)


def hf_data(opts: BenchOptions, cfg) -> tuple:
    """What a Hugging Face model's bench starts from: (corpus, device, env, steps, train stream, test windows).

    ``cfg`` has ``tokens``, ``seq_len``, ``batch_size``, ``seed`` and ``eval_windows``: the stream draws
    (batch_size, seq_len) batches of the train split from ``seed``; the windows (eval_windows, seq_len) are spread
    evenly over the test split.
    """
    corpus, device, env, steps = prepare(opts, cfg)
    stream = TokenStream(corpus.tokens("train"), cfg.seq_len, cfg.batch_size, cfg.seed)
    windows = spread_windows(corpus.tokens("test"), cfg.seq_len, cfg.eval_windows)[:, :-1]  # (W, T)
    return corpus, device, env, steps, stream, windows


def train(
    model, stream: TokenStream, steps: int, cfg: MLMConfig, device, progress: bool, desc: str,
    arm: str | None = None, corpus: str = "",
) -> None:  # fmt: skip
    """:func:`~recruit.train.train_steps` on the MLM loss over the stream's batches.

    Step s masks its batch with a generator seeded by ``cfg.seed`` and s (apart from the held-out masks), so a
    resumed run draws what an uninterrupted one would. With ``arm`` and ``cfg.out_dir``, checkpoints go to
    ``cfg.out_dir/ARM-KEY.pt``, KEY a hash of the config, the arm and ``corpus`` (the corpus's fingerprint).
    """

    def loss_of(model, batch: tuple[int, torch.Tensor]) -> torch.Tensor:
        step, ids = batch
        inputs, labels = mask(ids, cfg, torch.Generator().manual_seed((cfg.seed << 32) + 2 + step))
        return model(input_ids=inputs.to(device), labels=labels.to(device)).loss

    meta = {**training_settings(cfg, corpus), "arm": arm}
    train_steps(model, lambda step: (step, stream.batch(step)[0]), steps, cfg.lr, loss_of, device, progress, desc,
                **keyed_checkpoint(cfg.out_dir if arm else "", str(arm), meta))  # fmt: skip


def training_settings(cfg, corpus: str) -> dict:
    """What a benchmark's training depends on.

    Its config's fields (not ``eval_windows``, ``out_dir``) and the corpus build (``corpus``, its fingerprint).
    """
    return {**{k: v for k, v in asdict(cfg).items() if k not in ("eval_windows", "out_dir")}, "corpus": corpus}


def run(opts: BenchOptions, cfg: MLMConfig | None = None) -> list[Record]:
    """Train the three arms on the same batches and masks, then score each on the test split."""
    cfg = configure(opts, cfg or (QUICK if opts.quick else MLMConfig()), BENCH)
    corpus, device, env, steps, stream, windows = hf_data(opts, cfg)
    tokens = steps * cfg.seq_len * cfg.batch_size
    base = f"hidden={cfg.hidden},layers={cfg.layers},width={cfg.intermediate},train_tokens={tokens}"
    recs = opts.recorder()
    loss: dict[str, float] = {}
    for arm in ARMS:
        model = build(cfg, arm)
        train(model, stream, steps, cfg, device, opts.progress, f"fff-mlm {arm}", arm, corpus.fingerprint)
        loss[arm] = held_out_loss(model, windows, cfg, device)
        case = f"{base},ff={arm}"
        recs.add(Record(BENCH, case, "params", sum(p.numel() for p in model.parameters()), "", env))
        recs.add(Record(BENCH, f"{case},split=test", "mlm_loss", loss[arm], "nats/masked byte", env))
    for arm in ("fff", "none"):
        recs.add(Record(BENCH, f"{base},ff={arm}_vs_dense,split=test", "mlm_loss_ratio", loss[arm] / loss["dense"],
                        "x", env))  # fmt: skip
    used = (cfg.fff_depth + 1) / (2 ** (cfg.fff_depth + 1) - 1)
    recs.add(Record(BENCH, f"{base},ff=fff,depth={cfg.fff_depth}", "density", used, "fraction", env))
    return recs.records


def section(records: list[Record]) -> str:
    """The three arms' held-out masked-token loss."""
    from recruit.report.html import table

    rs = [r for r in records if r.bench == BENCH and r.metric in ("mlm_loss", "mlm_loss_ratio", "density")]
    if not rs:
        return ""
    rows = [[r.case, r.metric, f"{r.value:.4g}", r.unit] for r in rs]
    return (
        "<p>A small BERT trained from scratch as a masked language model with its dense feed-forward, an FFF of "
        "the same width, or none, on the same batches and masks (<code>recruit bench fff-mlm</code>).</p>"
        + table(["case", "metric", "value", "unit"], rows)
    )


register(Bench(BENCH, run, section, summary="MLM encoder: dense FF vs FFF vs no FF at equal tokens"))
