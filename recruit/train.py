"""One training loop for every model in the library.

AdamW with linear warm-up and cosine decay, gradient clipping, bf16 autocast on CUDA, periodic held-out
evaluation, atomic checkpoints and exact resume. Extra loss terms (regularisers of later techniques) plug
in from outside as :class:`LossTerm` objects; the trainer knows nothing about any technique.

A run directory holds ``config.json`` (the :class:`TrainConfig`), ``ckpt.pt`` (the latest state: model,
optimiser, step, RNG), ``log.csv`` and, at the end, ``final/`` (a loadable model checkpoint).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from recruit.config import from_dict, typed_fields
from recruit.data.probes import ProbeMixStream
from recruit.data.stream import TokenStream, eval_windows
from recruit.errors import RecruitError
from recruit.io import atomic_save_with, atomic_write_json, atomic_write_text, output_dir, remove_stale_tmp
from recruit.models import PRESETS, RecruitModel, build_model

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved as ``config.json`` in the run directory)."""

    model: str = "gpt-tiny"  # model preset (see recruit.models.PRESETS)
    model_args: dict[str, Any] = field(default_factory=dict)  # overrides of the preset's config fields
    corpus: str = "debian"  # corpus name under the cache dir, or a corpus directory
    out_dir: str = "runs/gpt-tiny"
    seq_len: int = 256
    batch_size: int = 16
    max_steps: int = 2000
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    eval_every: int = 200
    eval_windows: int = 32  # held-out windows of seq_len per evaluation
    ckpt_every: int = 100
    log_every: int = 10
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto = bf16 autocast on CUDA, fp32 on CPU
    threads: int = 0  # torch CPU threads; 0 keeps torch's default
    probe_mix: float = 0.0  # fraction of training windows carrying a key-retrieval episode (recruit.data.probes)

    def __post_init__(self) -> None:
        if self.model not in PRESETS:
            raise ValueError(f"model must be one of {', '.join(PRESETS)}, got {self.model!r}")
        for name in ("seq_len", "batch_size", "max_steps", "eval_every", "eval_windows", "ckpt_every", "log_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0) or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"need lr > 0 and 0 <= min_lr_ratio <= 1, got {self.lr}, {self.min_lr_ratio}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError(f"beta1 and beta2 must be in [0, 1), got {self.beta1}, {self.beta2}")
        if not math.isfinite(self.weight_decay) or not math.isfinite(self.grad_clip):
            raise ValueError(f"weight_decay and grad_clip must be finite, got {self.weight_decay}, {self.grad_clip}")
        for name in ("warmup_steps", "weight_decay", "grad_clip", "threads", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.out_dir:
            raise ValueError("out_dir must not be empty (the run's checkpoints and model go there)")
        if not 0 <= self.probe_mix <= 1:
            raise ValueError(f"probe_mix must be in [0, 1], got {self.probe_mix}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")


TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "gpt-nano": dict(
        model="gpt-nano",
        out_dir="runs/gpt-nano",
        seq_len=32,
        batch_size=4,
        max_steps=20,
        eval_every=10,
        eval_windows=4,
        ckpt_every=5,
        log_every=5,
        warmup_steps=2,
    ),
    "gpt-tiny": dict(
        model="gpt-tiny",
        out_dir="runs/gpt-tiny",
        seq_len=256,
        batch_size=16,
        max_steps=3000,
        lr=3e-3,
        warmup_steps=100,
        eval_every=250,
        ckpt_every=100,
    ),
    "gpt-small": dict(
        model="gpt-small",
        out_dir="runs/gpt-small",
        seq_len=512,
        batch_size=16,
        max_steps=5000,
        lr=2e-3,
        warmup_steps=200,
        eval_every=500,
        ckpt_every=250,
    ),
}
"""Named training setups for ``recruit train --preset NAME``; flags override their fields."""


def make_config(preset: str | None = None, file_data: dict | None = None, overrides: dict | None = None) -> TrainConfig:
    """Merge a preset, a config file's contents and ``--key value`` overrides (later wins) into a config.

    Keys ``model.FIELD`` set ``model_args[FIELD]``; an unknown key is an error that lists the valid ones.
    """
    data: dict[str, Any] = {}
    if preset is not None:
        if preset not in TRAIN_PRESETS:
            raise RecruitError(f"unknown training preset {preset!r}; presets: {', '.join(TRAIN_PRESETS)}")
        data.update(TRAIN_PRESETS[preset])
    for src in (file_data or {}, overrides or {}):
        for k, v in src.items():
            if k.startswith("model."):
                data.setdefault("model_args", {})
                data["model_args"] = {**data["model_args"], k[len("model.") :]: v}
            else:
                data[k] = v
    cfg = from_dict(TrainConfig, data, what="training config")
    build_model(cfg.model, cfg.model_args)  # validates model_args against the model's config now
    # kept typed: the same run resumes whether its fields came as strings (the command line) or numbers (a file)
    cfg.model_args = typed_fields(PRESETS[cfg.model][0].config_class, cfg.model_args, f"{cfg.model} model config")
    return cfg


class LossTerm(Protocol):
    """An extra loss added to the language-model loss, e.g. a sparsity or linearity regulariser.

    It is called after the forward pass; a term that needs internals (hidden states, gate decisions)
    registers forward hooks on the model in ``__enter__`` and removes them in ``__exit__``; the trainer
    enters every term that is a context manager for the whole run. A term with a ``set_progress(fraction)``
    method (a schedule, such as a ramped penalty) is told before each step which fraction of the run is done.
    """

    name: str

    def __call__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """The term's scalar value for this batch (already weighted)."""
        ...


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else is checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise RecruitError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise RecruitError(f"device {name!r} is not supported: use auto, cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RecruitError(f"device {name!r} asked for, but CUDA is not available here")
    return dev


@contextlib.contextmanager
def training_mode(model: torch.nn.Module, on: bool) -> Iterator[torch.nn.Module]:
    """``model`` in training (``on``) or eval mode for the block, then back in the mode it had."""
    was = model.training
    model.train(on)
    try:
        yield model
    finally:
        model.train(was)


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate at optimiser step ``step`` (0-based): linear warm-up, then cosine to ``lr*min_lr_ratio``."""
    return warmup_cosine(step, cfg.max_steps, cfg.warmup_steps, cfg.lr, cfg.min_lr_ratio)


def warmup_cosine(step: int, steps: int, warmup: int, lr: float, min_ratio: float) -> float:
    """The rate at 0-based ``step`` of ``steps``: linear warm-up over ``warmup`` steps, then cosine to lr·min_ratio."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def lm_loss(logits: torch.Tensor, y: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean next-token cross-entropy in nats; ``logits`` (B, T, V), ``y`` (B, T)."""
    return F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=ignore_index)


def _logits(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


class Trainer:
    """Trains ``model`` on token arrays according to ``cfg``; see the module docstring for the run layout.

    Args:
        cfg: The run's configuration.
        train_tokens: (N,) token ids to sample training windows from.
        val_tokens: (M,) held-out token ids for periodic evaluation.
        model: The model; built from ``cfg.model``/``cfg.model_args`` when omitted.
        extra_losses: Loss terms added to the LM loss (logged under their names), besides those the model
            asks for itself (``model.loss_terms()``, e.g. the FFF hardening loss in soft mode).
        progress: Show a progress bar.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        train_tokens: np.ndarray,
        val_tokens: np.ndarray,
        model: RecruitModel | None = None,
        extra_losses: list[LossTerm] | None = None,
        progress: bool = True,
    ) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.model = (model or build_model(cfg.model, cfg.model_args)).to(self.device)
        max_len = getattr(self.model.config, "max_seq_len", None)
        if max_len is not None and cfg.seq_len > max_len:
            raise RecruitError(f"seq_len {cfg.seq_len} is longer than the model's context of {max_len}")
        vocab = getattr(self.model.config, "vocab_size", None)
        top = max((int(t.max()) for t in (train_tokens, val_tokens) if len(t)), default=-1)
        signed = [t for t in (train_tokens, val_tokens) if len(t) and getattr(t.dtype, "kind", "i") != "u"]
        low = min((int(t.min()) for t in signed), default=0)  # a pass only where ids can be negative (not uint16)
        if (vocab is not None and top >= vocab) or low < 0:
            bad, ids = (low if low < 0 else top), ("0.." + str(vocab - 1)) if vocab is not None else "(ids are >= 0)"
            raise RecruitError(f"the data holds token id {bad}, outside the model's vocabulary {ids}")
        if cfg.probe_mix > 0:
            self.stream = ProbeMixStream(train_tokens, cfg.seq_len, cfg.batch_size, cfg.seed, cfg.probe_mix)
        else:
            self.stream = TokenStream(train_tokens, cfg.seq_len, cfg.batch_size, cfg.seed)
        if len(val_tokens) < cfg.seq_len + 1:
            raise RecruitError(
                f"the held-out (val) data has {len(val_tokens)} tokens, fewer than one window of "
                f"{cfg.seq_len + 1}: the corpus needs more documents (each split takes whole ones)"
            )
        self.val = eval_windows(val_tokens, cfg.seq_len, cfg.eval_windows)  # (W, T + 1)
        self.data_key = data_key(train_tokens, val_tokens)  # a resumed run must continue on the same data
        self.extra_losses = list(extra_losses or [])
        named = {t.name for t in self.extra_losses}  # the model's own terms (its regularisers), unless given
        self.extra_losses += [t for t in getattr(self.model, "loss_terms", list)() if t.name not in named]
        self.progress = progress
        decay = [p for n, p in self.model.named_parameters() if p.dim() >= 2]
        no_decay = [p for n, p in self.model.named_parameters() if p.dim() < 2]
        self.opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr,
            betas=(cfg.beta1, cfg.beta2),
            fused=self.device.type == "cuda",
        )
        self.step = 0
        self.out = Path(cfg.out_dir)
        use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and self.device.type == "cuda")
        self.autocast_dtype = torch.bfloat16 if use_bf16 else None
        self.history: list[dict[str, float]] = []

    # ---- checkpoints -------------------------------------------------------------------------------
    @property
    def ckpt_path(self) -> Path:
        """The run's resumable checkpoint file."""
        return self.out / "ckpt.pt"

    def save_checkpoint(self) -> None:
        """Atomically write model, optimiser, step, RNG states and history to ``ckpt.pt``."""
        _save_state(self.ckpt_path, self.model, self.opt, step=self.step, config=dataclasses.asdict(self.cfg),
                    history=self.history, data=self.data_key)  # fmt: skip

    def try_resume(self) -> bool:
        """Load ``ckpt.pt`` if present; a checkpoint of a different config or a corrupt file is an error."""
        if not self.ckpt_path.exists():
            return False
        state = _load_state(self.ckpt_path, self.device)
        free = ("max_steps", "eval_every", "ckpt_every", "log_every", "device", "threads")  # may change on resume
        # A field added to TrainConfig after the run was saved had its default then (probe_mix, say)
        defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}
        saved = {k: v for k, v in {**defaults, **state["config"]}.items() if k not in free}
        if saved.get("model") in PRESETS and isinstance(saved.get("model_args"), dict):  # typed, as make_config does
            with contextlib.suppress(RecruitError):  # (runs saved before it did kept the command line's strings)
                saved["model_args"] = typed_fields(PRESETS[saved["model"]][0].config_class, saved["model_args"])
        now = {k: v for k, v in dataclasses.asdict(self.cfg).items() if k in saved}
        if saved != now:
            diff = sorted(k for k in saved if saved[k] != now.get(k))
            raise RecruitError(
                f"{self.out} holds a run with a different config ({', '.join(diff)} differ); "
                "use another --out_dir or delete it"
            )
        if state.get("data", self.data_key) != self.data_key:  # checkpoints from before the key carry none
            raise RecruitError(
                f"{self.out} holds a run trained on other data (another corpus, or this one rebuilt since); "
                "use another --out_dir or delete it"
            )
        if int(state["step"]) > self.cfg.max_steps:
            raise RecruitError(
                f"{self.out} holds a run already at step {int(state['step'])}, past max_steps={self.cfg.max_steps}; "
                "give max_steps at least that to continue it, or use another --out_dir"
            )
        _restore_state(state, self.model, self.opt)
        self.step = int(state["step"])
        self.history = list(state.get("history", []))
        log.info("resumed %s at step %d", self.out, self.step)
        return True

    # ---- evaluation ------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, batch_size: int | None = None) -> float:
        """Mean held-out loss (nats/token) over the fixed validation windows (in eval mode; the model's mode kept)."""
        bs = batch_size or self.cfg.batch_size
        total, count = 0.0, 0
        with training_mode(self.model, False):
            for i in range(0, len(self.val), bs):
                w = self.val[i : i + bs].to(self.device)  # (b, T + 1)
                with self._autocast():
                    logits = _logits(self.model(w[:, :-1]))
                total += F.cross_entropy(logits.float().flatten(0, 1), w[:, 1:].flatten(), reduction="sum").item()
                count += w[:, 1:].numel()
        return total / count

    @torch.no_grad()
    def held_out_stats(self) -> dict[str, float]:
        """The model's own held-out figures, logged at each evaluation (e.g. BDH's activation density).

        A model opts in with a method ``held_out_stats(idx) -> dict[str, float]`` taking token ids (B, T);
        it gets the first batch of the fixed validation windows.
        """
        fn = getattr(self.model, "held_out_stats", None)
        if fn is None:
            return {}
        with training_mode(self.model, False), self._autocast():
            return {k: float(v) for k, v in fn(self.val[: self.cfg.batch_size, :-1].to(self.device)).items()}

    def _autocast(self):
        if self.autocast_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    # ---- the loop --------------------------------------------------------------------------------
    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """One optimiser step on batch (x, y); returns the losses and the gradient norm."""
        for g in self.opt.param_groups:
            g["lr"] = lr_at(self.cfg, self.step)
        for t in self.extra_losses:
            if callable(getattr(t, "set_progress", None)):
                t.set_progress(self.step / self.cfg.max_steps)
        with self._autocast():
            logits = _logits(self.model(x))
            loss = lm_loss(logits, y)
            terms = {t.name: t(self.model, x, y, logits) for t in self.extra_losses}
        total = loss + sum(terms.values()) if terms else loss
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip or float("inf"))
        self.opt.step()
        self.step += 1
        return {"loss": loss.item(), "grad_norm": gnorm.item(), **{k: v.item() for k, v in terms.items()}}

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while self.step < self.cfg.max_steps:
            x, y = self.stream.batch(self.step)
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def fit(self, stop_after: int | None = None, on_step: Callable[[int, dict], None] | None = None) -> RecruitModel:
        """Train to ``cfg.max_steps`` (resuming from ``ckpt.pt`` when present) and save ``final/``.

        Args:
            stop_after: Return early after this many steps of this call (for tests), checkpointing first.
            on_step: Callback ``(step, metrics)`` after every step.

        Returns:
            The trained model.
        """
        output_dir(self.out, "out_dir")
        for stale in remove_stale_tmp(self.ckpt_path):  # a checkpoint write that kill -9 cut short
            log.info("removed %s, a checkpoint that was never finished", stale)
        self.try_resume()  # before config.json: a refused resume leaves the run's files as they were
        atomic_write_json(self.out / "config.json", dataclasses.asdict(self.cfg))
        tb = _tensorboard(self.out)
        self.model.train()
        entered = [t for t in self.extra_losses if hasattr(t, "__enter__")]
        for t in entered:
            t.__enter__()
        bar = tqdm(
            total=self.cfg.max_steps,
            initial=self.step,
            disable=not self.progress,
            desc=f"train {self.cfg.model}",
            dynamic_ncols=True,
        )
        tokens_per_step = self.cfg.batch_size * self.cfg.seq_len
        done, t0 = 0, time.perf_counter()
        try:
            for x, y in self._batches():
                m = self.train_step(x, y)
                done += 1
                elapsed = time.perf_counter() - t0
                m.update(
                    step=self.step,
                    lr=lr_at(self.cfg, self.step - 1),
                    tokens=self.step * tokens_per_step,
                    tok_per_s=done * tokens_per_step / max(elapsed, 1e-9),
                )
                if self.step % self.cfg.eval_every == 0 or self.step == self.cfg.max_steps:
                    m["val_loss"] = self.evaluate()
                    m.update(self.held_out_stats())
                if self.step % self.cfg.log_every == 0 or "val_loss" in m:
                    self.history.append(m)
                    if tb is not None:
                        for k, v in m.items():
                            tb.add_scalar(k, v, self.step)
                bar.update(1)
                bar.set_postfix(
                    loss=f"{m['loss']:.3f}",
                    tok_s=f"{m['tok_per_s']:.0f}",
                    **({"val": f"{m['val_loss']:.3f}"} if "val_loss" in m else {}),
                )
                if on_step is not None:
                    on_step(self.step, m)
                last = self.step == self.cfg.max_steps
                if self.step % self.cfg.ckpt_every == 0 or last or (stop_after is not None and done >= stop_after):
                    self.save_checkpoint()
                    self._write_log()
                if stop_after is not None and done >= stop_after:
                    return self.model
        finally:
            bar.close()
            for t in reversed(entered):
                t.__exit__(None, None, None)
            if tb is not None:
                tb.close()
        self.model.eval()
        self.model.save_pretrained(
            self.out / "final", metadata={"train_config": json.dumps(dataclasses.asdict(self.cfg))}
        )
        self._write_log()
        return self.model

    def _write_log(self) -> None:
        """Rewrite ``log.csv`` from the history (atomic, so a resumed run's log has no duplicate rows)."""
        if not self.history:
            return
        keys = sorted({k for row in self.history for k in row}, key=lambda k: (k != "step", k))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys)
        w.writeheader()
        w.writerows(self.history)
        atomic_write_text(self.out / "log.csv", buf.getvalue())


def _save_state(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, **extra: Any) -> None:
    """Atomically write model, optimiser and RNG states (and ``extra``: step, config...) to ``path``."""
    state = {
        **extra,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "rng_torch": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    atomic_save_with(path, lambda tmp: torch.save(state, tmp))


def _load_state(path: Path, device: str | torch.device) -> dict[str, Any]:
    """A state written by :func:`_save_state`; a file torch cannot read is a one-line error."""
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except Exception as e:  # torch raises many types for truncated/corrupt pickles
        raise RecruitError(
            f"corrupt or truncated checkpoint {path} ({type(e).__name__}); delete it to start over"
        ) from None


def _restore_state(state: dict[str, Any], model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    """Put a saved state's model, optimiser and RNG states back (a state of another model is a one-line error)."""
    try:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:  # another architecture or size: names or shapes differ
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise RecruitError(f"the checkpoint holds another model than this one ({first}); "
                           "use another run directory or delete it") from None  # fmt: skip
    torch.set_rng_state(state["rng_torch"].cpu())
    if state.get("rng_cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["rng_cuda"]])


def data_key(*arrays: np.ndarray) -> str:
    """A short hash of token arrays (their dtypes, shapes and contents): the same data, the same key."""
    h = hashlib.blake2b(digest_size=8)
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def keyed_checkpoint(out_dir: str | Path, name: str, meta: dict[str, Any]) -> dict[str, Any]:
    """:func:`train_steps`' ``checkpoint`` and ``meta`` for run ``name``: ``OUT_DIR/NAME-KEY.pt``.

    KEY is a short stable hash of ``meta`` (JSON-like values), so that runs with other settings keep their own
    files; without ``out_dir``, no checkpoint.
    """
    key = hashlib.sha1(json.dumps(meta, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return {"checkpoint": Path(out_dir) / f"{name}-{key}.pt" if out_dir else None, "meta": meta}


def _step_settings(steps: int, lr: float, meta: dict[str, Any] | None) -> dict[str, Any]:
    """What a :func:`train_steps` checkpoint is saved with: ``meta``, and the run's own steps and peak rate."""
    return {**(meta or {}), "steps": steps, "lr": lr}


def _matching_state(checkpoint: Path, settings: dict[str, Any], device: str | torch.device) -> dict[str, Any] | None:
    """The state saved at ``checkpoint`` (None if there is none); saved with other ``settings``, an error."""
    if not checkpoint.exists():
        return None
    state = _load_state(checkpoint, device)
    if state.get("meta") != settings:
        saved = state.get("meta") or {}
        diff = sorted(k for k in {**saved, **settings} if saved.get(k) != settings.get(k))
        raise RecruitError(f"{checkpoint} holds a run with other settings ({', '.join(diff)} differ); delete it "
                           "or train elsewhere")  # fmt: skip
    return state


def check_resumable(checkpoint: str | Path, steps: int, lr: float, meta: dict[str, Any] | None = None) -> None:
    """Raise now the error :func:`train_steps` would raise for ``checkpoint`` (nothing if there is none).

    For callers with long work before the training (a distillation, say) that would otherwise be lost.
    """
    _matching_state(Path(checkpoint), _step_settings(steps, lr, meta), "cpu")


def train_steps(
    model: torch.nn.Module,
    batch: Callable[[int], Any],
    steps: int,
    lr: float,
    loss_of: Callable[[Any, Any], torch.Tensor],
    device: str | torch.device = "cpu",
    progress: bool = True,
    desc: str = "train",
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 100,
    meta: dict[str, Any] | None = None,
) -> None:
    """AdamW (weight decay 0.01) on ``loss_of(model, batch(step))`` for ``steps`` steps, on ``device``.

    Linear warm-up over 5% of the steps, then cosine decay to 10% of ``lr``; the model is left in train mode. For
    models the :class:`Trainer` (recruit models on a corpus, with checkpoints and evaluation) does not train:
    Hugging Face models in the benchmarks, and a converted model's fine-tuning in ``recruit fff convert``.

    With ``checkpoint``, the run resumes exactly: model, optimiser and RNG states are saved there atomically every
    ``checkpoint_every`` steps and after the last, and a run that finds the file continues from it, on the same
    batches (``batch`` must depend on the step alone) to the same weights; a finished run's file makes a rerun
    skip the training. ``meta`` (the run's settings, e.g. its config as a dict) is saved with it, and a file saved
    with other settings, another ``steps`` or ``lr`` is refused.

    Args:
        model: Any module whose parameters all train.
        batch: Step -> that step's batch (token ids (B, T), say; on any device, moved by ``loss_of`` as it needs).
        steps: Optimiser steps.
        lr: Peak learning rate.
        loss_of: (model, batch) -> scalar loss.
        device: Where the model trains.
        progress: Show a progress bar.
        desc: The progress bar's label.
        checkpoint: File to resume from and save to; ``None``: no checkpoints.
        checkpoint_every: Steps between saves.
        meta: Settings the checkpoint must have been saved with.
    """
    if checkpoint_every < 1 or steps < 1 or not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"need steps >= 1, lr > 0 and checkpoint_every >= 1, got {steps}, {lr}, {checkpoint_every}")
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    settings = _step_settings(steps, lr, meta)
    start = 0
    if checkpoint is not None:
        remove_stale_tmp(checkpoint)  # a save that kill -9 cut short
    state = None if checkpoint is None else _matching_state(Path(checkpoint), settings, device)
    if state is not None:
        _restore_state(state, model, opt)
        start = int(state["step"])
        log.info("resumed %s at step %d of %d", checkpoint, start, steps)
    warm = max(1, steps // 20)
    for step in tqdm(range(start, steps), desc=desc, disable=not progress, initial=start, total=steps):
        for group in opt.param_groups:
            group["lr"] = warmup_cosine(step, steps, warm, lr, 0.1)  # the Trainer's schedule
        loss = loss_of(model, batch(step))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if checkpoint is not None and ((step + 1) % checkpoint_every == 0 or step + 1 == steps):
            _save_state(Path(checkpoint), model, opt, step=step + 1, meta=settings)


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tb"))
