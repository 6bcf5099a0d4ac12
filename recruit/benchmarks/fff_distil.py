"""A trained Hugging Face decoder's MLPs distilled into FFFs: held-out loss before, after, and with no MLP.

``recruit bench fff-distil --out DIR``. What a user does with a checkpoint of their own, on a model this
machine can train (no download): a small Llama (``LlamaForCausalLM`` built from a config, the byte
vocabulary) is trained on the corpus's bytes, then every block's ``mlp`` is distilled into an FFF of the depth
whose 2^(D+1) − 1 nodes come closest below the MLP's width (:func:`recruit.fff.decoder.distil_decoder`, on
inputs recorded from training windows). The distilled model is then fine-tuned end to end on ``finetune_tokens``
further training tokens (the FFFs in their hard-routing training form), and so, for a fair comparison, is a copy
of the dense model, on the same batches with the same schedule (a quarter of the first training's peak learning
rate, warm-up, cosine decay). The records are the held-out next-byte loss (nats per byte, on windows spread
over the test split) of:

- ``dense``: the trained model; ``dense+ft``: it, fine-tuned;
- ``fff``: the distilled model, no further training; ``fff+ft``: it, fine-tuned;
- ``none``: the trained model with its MLPs dropped (the level an FFF that learnt nothing would sit near);
- ``fff-dDkK`` and ``fff-dDkK+ft`` for each of ``forests``: the same distillation into K trees of depth D of about
  the MLP's width (more neurons per token: (D + 1)·K), and its fine-tuned copy;

their ratios to ``dense`` (``dense+ft`` for the ``+ft`` arms), and each layer's held-out relative error of each
distillation. The dense training and each fine-tuning are checkpointed in ``out_dir``, each under a name that
hashes what it depends on (its part of the config and the corpus build): a run stopped part-way resumes there,
finished training is not repeated (the distillations, minutes at most, run again), and other settings train anew.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from recruit.benchmarks import Bench, BenchOptions, checks, configure, register
from recruit.benchmarks.fff_mlm import hf_data, training_settings
from recruit.data.stream import TokenStream
from recruit.data.tokenizer import ByteTokenizer
from recruit.records import Record
from recruit.train import keyed_checkpoint, train_steps

BENCH = "fff-distil"


@dataclass(frozen=True)
class DistilConfig:
    """Decoder size, its training budget, and the distillation (defaults: a few minutes on 2 cores)."""

    hidden: int = 128
    layers: int = 4
    heads: int = 4
    intermediate: int = 512  # the MLP's width; the FFF gets depth log2(width + 1) − 1 (511 nodes at 512)
    tokens: int = 2**22  # training tokens of the dense model
    seq_len: int = 128
    batch_size: int = 16
    lr: float = 2e-3
    record_windows: int = 64  # training windows whose MLP inputs the FFFs are fitted on (10% held out)
    distil_steps: int = 2000  # Adam steps per layer
    finetune_tokens: int = 2**20  # end-to-end training after the distillation (and of the dense copy)
    forests: tuple[tuple[int, int], ...] = ((5, 8),)  # further conversions: (depth, trees) of about the MLP's width
    eval_windows: int = 512  # test windows scored, spread evenly over the test split (all its languages)
    seed: int = 0
    out_dir: str = "runs/fff-distil"  # training checkpoints, dense-KEY.pt and one per fine-tuned arm ("": none)

    def __post_init__(self) -> None:
        checks.one_batch(self)
        checks.positive(self, "hidden", "layers", "heads", "intermediate", "lr", "record_windows", "distil_steps",
                        "finetune_tokens", "eval_windows")  # fmt: skip
        checks.non_negative(self, "seed")
        if self.hidden % self.heads or (self.hidden // self.heads) % 2:
            raise ValueError(f"hidden ({self.hidden}) must be a multiple of heads ({self.heads}) with an even "
                             "quotient (Llama's RoPE rotates pairs of a head's dimensions)")  # fmt: skip
        if any(d < 0 or k < 1 for d, k in self.forests):
            raise ValueError(f"forests must be (depth >= 0, trees >= 1) pairs, got {self.forests}")
        for i, (depth, trees) in enumerate(self.forests):
            checks.fff_shape(f"forests[{i}]", depth, trees)
        checks.fff_shape(f"intermediate {self.intermediate}", self.fff_depth)

    @property
    def fff_depth(self) -> int:
        """The depth whose 2^(D+1) − 1 nodes come closest below the MLP's width."""
        return max(0, (self.intermediate + 1).bit_length() - 2)


QUICK = DistilConfig(hidden=32, layers=1, heads=2, intermediate=64, tokens=4 * 32 * 4, seq_len=32, batch_size=4,
                     record_windows=8, distil_steps=20, finetune_tokens=2 * 32 * 4, eval_windows=4,
                     forests=((3, 4),), out_dir="")  # fmt: skip


def build(cfg: DistilConfig):
    """The freshly initialised ``LlamaForCausalLM`` of ``cfg`` over the byte vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = ByteTokenizer()
    torch.manual_seed(cfg.seed)
    llama = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=cfg.hidden, intermediate_size=cfg.intermediate,
                        num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=cfg.heads,
                        max_position_embeddings=cfg.seq_len, pad_token_id=tok.pad_id,
                        tie_word_embeddings=True)  # fmt: skip
    return LlamaForCausalLM(llama)


def _next_byte_loss(model, ids: torch.Tensor) -> torch.Tensor:
    """Hugging Face's shifted next-token cross-entropy of ``model`` on ``ids`` (B, T), on the model's device."""
    ids = ids.to(next(model.parameters()).device)
    return model(input_ids=ids, labels=ids).loss


@torch.no_grad()
def held_out_loss(model, windows: torch.Tensor, batch_size: int) -> float:
    """Mean next-byte cross-entropy (nats) over ``windows`` (W, T), every window weighted by its T − 1 targets."""
    model.eval()
    losses = [_next_byte_loss(model, windows[i : i + batch_size]).item() * len(windows[i : i + batch_size])
              for i in range(0, len(windows), batch_size)]  # fmt: skip
    return sum(losses) / len(windows)


def run(opts: BenchOptions, cfg: DistilConfig | None = None) -> list[Record]:
    """Train the dense decoder, distil its MLPs, fine-tune both, and score every arm on the test split."""
    from recruit.fff.decoder import distil_decoder, drop_decoder_mlps

    cfg = configure(opts, cfg or (QUICK if opts.quick else DistilConfig()), BENCH)
    corpus, device, env, steps, stream, windows = hf_data(opts, cfg)
    tokens = steps * cfg.seq_len * cfg.batch_size
    base = f"model=llama,hidden={cfg.hidden},layers={cfg.layers},width={cfg.intermediate},train_tokens={tokens}"
    model = build(cfg)
    settings = training_settings(cfg, corpus.fingerprint)
    dense_settings = {k: settings[k] for k in ("hidden", "layers", "heads", "intermediate", "tokens", "seq_len",
                                                "batch_size", "lr", "seed", "corpus")}  # fmt: skip
    train_steps(model, lambda step: stream.batch(step)[0], steps, cfg.lr, _next_byte_loss, device, opts.progress,
                "fff-distil dense",
                **keyed_checkpoint(cfg.out_dir, "dense", {**dense_settings, "run": "dense"}))  # fmt: skip
    model.eval()
    recs, loss = opts.recorder(), {}

    def score(arm: str, m) -> None:  # an arm's held-out loss, recorded as soon as it is measured
        loss[arm] = held_out_loss(m, windows, cfg.batch_size)
        recs.add(Record(BENCH, f"{base},ff={arm},split=test", "loss", loss[arm], "nats/byte", env))

    def ratio(arm: str, ref: str, extra: str = "") -> None:
        recs.add(Record(BENCH, f"{base},ff={arm}_vs_{ref}{extra},split=test", "loss_ratio", loss[arm] / loss[ref],
                        "x", env))  # fmt: skip

    score("dense", model)
    score("none", drop_decoder_mlps(copy.deepcopy(model)))
    ratio("none", "dense")
    dense = copy.deepcopy(model)
    record = TokenStream(corpus.tokens("train"), cfg.seq_len, cfg.record_windows, cfg.seed + 2).batch(0)[0]  # (W, T)
    shapes = {"fff": (cfg.fff_depth, 1), **{f"fff-d{d}k{k}": (d, k) for d, k in cfg.forests}}  # name -> (D, K)
    converted = {}
    for name, (depth, trees) in shapes.items():  # each from the same trained model, on the same recorded inputs
        m = model if name == "fff" else copy.deepcopy(dense)
        report = distil_decoder(m, record.to(device), depth, trees, steps=cfg.distil_steps, progress=opts.progress)
        score(name, m)
        ratio(name, "dense")
        forest = f",trees={trees}" if trees > 1 else ""
        case = f"{base},ff={name},depth={depth}{forest},distil_steps={cfg.distil_steps}"
        for i, r in enumerate(report):
            recs.add(Record(BENCH, f"{case},layer={i},stage=before", "rel_error", r.initial_rel_error, "", env))
            recs.add(Record(BENCH, f"{case},layer={i},stage=after", "rel_error", r.final_rel_error, "", env))
        recs.add(Record(BENCH, case, "density", (depth + 1) / (2 ** (depth + 1) - 1), "fraction", env))
        converted[name] = m
    ft_steps = max(1, cfg.finetune_tokens // (cfg.seq_len * cfg.batch_size))
    ft_tokens = f",finetune_tokens={ft_steps * cfg.seq_len * cfg.batch_size}"
    for arm, m in (("dense+ft", dense), *((f"{name}+ft", m) for name, m in converted.items())):  # the same batches
        ft = TokenStream(corpus.tokens("train"), cfg.seq_len, cfg.batch_size, cfg.seed + 3)
        train_steps(m, lambda step, ft=ft: ft.batch(step)[0], ft_steps, cfg.lr / 4, _next_byte_loss, device,
                    opts.progress, f"fff-distil {arm}",
                    **keyed_checkpoint(cfg.out_dir, arm, {**settings, "run": arm}))  # fmt: skip
        score(arm, m)
        if arm != "dense+ft":
            ratio(arm, "dense+ft", ft_tokens)
    return recs.records


def section(records: list[Record]) -> str:
    """Every arm's held-out loss and the distillation's error per layer."""
    from recruit.report.html import table

    rs = [r for r in records if r.bench == BENCH]
    if not rs:
        return ""
    rows = [[r.case, r.metric, f"{r.value:.4g}", r.unit] for r in rs]
    return (
        "<p>A small Llama trained on the corpus, then its MLPs distilled into FFFs (<code>recruit bench "
        "fff-distil</code>): held-out loss of the dense model, the distilled one, the dense model without MLPs, "
        "FFF forests (<code>fff-dDkK</code>: K trees of depth D), and the distilled and dense models each "
        "fine-tuned on the same further tokens (<code>+ft</code>); each "
        "layer's relative error on held-out recorded inputs.</p>" + table(["case", "metric", "value", "unit"], rows)
    )


register(Bench(BENCH, run, section, summary="a trained HF decoder's MLPs distilled into FFF: loss before/after"))
