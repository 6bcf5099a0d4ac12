"""Model surgery and distillation for FFF: put FFF layers (or nothing) where a GPT's dense MLPs were.

- :func:`replace_mlps` swaps every dense :class:`~recruit.models.gpt.MLP` for a freshly initialised
  :class:`~recruit.fff.fff.FastFeedForward` (train from scratch);
- :func:`drop_mlps` swaps every MLP for :class:`ZeroFF` (the "no FF" arm of the quality comparison);
- :func:`from_dense` distils one trained dense MLP into an FFF on recorded inputs
  (:func:`record_mlp_inputs`), and reports the error before and after;
- :func:`record_inputs` and :func:`distil_all` do the recording and the distilling for any set of feed-forwards
  (what :mod:`recruit.fff.encoder` and :mod:`recruit.fff.decoder` use on Hugging Face models).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from recruit.errors import RecruitError
from recruit.fff.fff import FastFeedForward
from recruit.models.gpt import GPT, MLP

log = logging.getLogger(__name__)


class ZeroFF(nn.Module):
    """A feed-forward block that contributes nothing: (..., d) -> zeros (..., d)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Zeros shaped and typed like ``x``."""
        return torch.zeros_like(x)


def _replace(module: nn.Module, make: Callable[[MLP], nn.Module]) -> int:
    """Replace every :class:`MLP` below ``module`` by ``make(mlp)``, recursively; returns how many."""
    count = 0
    for name, child in module.named_children():
        if isinstance(child, MLP):
            setattr(module, name, make(child))
            count += 1
        else:
            count += _replace(child, make)
    return count


def like(new: nn.Module, old: nn.Module) -> nn.Module:
    """``new`` in the mode (training or eval) of ``old``, which it replaces, and on its device and dtype if it has any.

    What every swap of a feed-forward block uses (GPT, Hugging Face decoders and encoders).
    """
    p = next(old.parameters(), None)
    new.train(old.training)
    return new if p is None else new.to(device=p.device, dtype=p.dtype)


def _describe(model: nn.Module, **fields) -> None:
    """Write the new feed-forward blocks into a GPT's config, so that it saves and loads as what it now is."""
    if isinstance(model, GPT):
        model.config = dataclasses.replace(model.config, **fields)


def replace_mlps(
    model: GPT, depth: int, n_trees: int = 1, mode: Literal["hard", "soft"] = "hard", hardening: float = 0.0
) -> GPT:
    """Swap every dense MLP of ``model`` for a new ``FastFeedForward(d_model, d_model, depth, ...)``.

    Args:
        model: A GPT (any module holding :class:`MLP` children works); changed in place.
        depth: Tree depth D (2^(D+1) - 1 nodes per tree).
        n_trees: K parallel trees.
        mode: Training forward of the FFFs, ``hard`` or ``soft``.
        hardening: Weight of each FFF's entropy hardening loss (soft mode; see ``HardeningLoss``).

    Returns:
        ``model``, with FFFs on the device and dtype, and in the mode, of the MLPs they replace; a GPT's config
        says ``mlp="fff"`` with these settings, so that it saves and loads as it now is.
    """

    def make(mlp: MLP) -> nn.Module:
        d_in, d_out = mlp.fc_in.in_features, mlp.fc_out.out_features
        return like(FastFeedForward(d_in, d_out, depth, n_trees, mode, hardening), mlp)

    # the hardening loss acts in soft mode only (a GPT's config refuses it in hard mode, where it is inert)
    fields = dict(mlp="fff", fff_depth=depth, fff_trees=n_trees, fff_mode=mode,
                  fff_hardening=hardening if mode == "soft" else 0.0)  # fmt: skip
    if isinstance(model, GPT):  # a setting the GPT's config refuses is refused before anything changes
        dataclasses.replace(model.config, **fields)
    n = _replace(model, make)
    if n == 0:
        raise RecruitError("replace_mlps found no dense MLP to replace (already converted?)")
    _describe(model, **fields)
    log.info("replaced %d MLPs by FFFs of depth %d x %d trees", n, depth, n_trees)
    return model


def drop_mlps(model: GPT) -> GPT:
    """Swap every dense MLP of ``model`` for :class:`ZeroFF`; returns ``model`` (changed in place, config too)."""
    if _replace(model, lambda m: like(ZeroFF(), m)) == 0:
        raise RecruitError("drop_mlps found no dense MLP to drop")
    _describe(model, mlp="none")
    return model


@torch.no_grad()
def record_inputs(
    entries: Sequence[nn.Module], run: Callable[[], object], keep: torch.Tensor | None = None
) -> list[torch.Tensor]:
    """The first positional input each module of ``entries`` receives while ``run()`` executes.

    Forward pre-hooks record them (removed in ``finally``), flattened over the leading dimensions; with
    ``keep`` (a bool mask over those rows, (B·T,)) only the kept rows. Returns one (N, d) tensor per module.
    """
    seen: list[list[torch.Tensor]] = [[] for _ in entries]

    def hook(i: int, args: tuple) -> None:
        h = args[0].detach().reshape(-1, args[0].shape[-1])  # (B·T, d)
        seen[i].append(h if keep is None else h[keep])

    handles = [m.register_forward_pre_hook(lambda _m, a, i=i: hook(i, a)) for i, m in enumerate(entries)]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return [torch.cat(s) for s in seen]


def record_hf_inputs(
    model: nn.Module, entries: Sequence[nn.Module], input_ids: torch.Tensor, **forward_kwargs
) -> list[torch.Tensor]:
    """:func:`record_inputs` while a Hugging Face ``model`` reads ``input_ids`` (B, T) with ``forward_kwargs``.

    With an ``attention_mask`` among them, only the unmasked positions are kept.
    """
    mask = forward_kwargs.get("attention_mask")
    keep = None if mask is None else mask.reshape(-1).bool()  # (B·T,)
    return record_inputs(entries, lambda: model(input_ids=input_ids, **forward_kwargs), keep)


def record_mlp_inputs(model: GPT, tokens: torch.Tensor, layer: int) -> torch.Tensor:
    """Inputs that block ``layer``'s MLP receives when ``model`` reads ``tokens`` (B, T); returns (B·T, d)."""
    if not 0 <= layer < len(model.blocks):
        raise RecruitError(f"layer must be in 0..{len(model.blocks) - 1}, got {layer}")
    return record_inputs([model.blocks[layer].mlp], lambda: model(tokens))[0]


def distil_all(
    denses: Sequence[nn.Module],
    inputs: Sequence[torch.Tensor],
    put: Callable[[int, FastFeedForward], None],
    depth: int,
    n_trees: int = 1,
    *,
    steps: int = 2000,
    lr: float = 3e-3,
    progress: bool = True,
) -> list[DistillReport]:
    """:func:`from_dense` of each dense map on its recorded inputs, then ``put(i, fff)``; the reports in order."""
    from tqdm.auto import tqdm

    reports = []
    pairs = list(zip(denses, inputs, strict=True))
    for i, (dense, x) in enumerate(tqdm(pairs, desc="fff distil", disable=not progress)):
        fff, report = from_dense(dense, depth, n_trees, inputs=x, steps=steps, lr=lr)
        put(i, fff)
        reports.append(report)
    return reports


@dataclass
class DistillReport:
    """Quality of an FFF distilled from a dense MLP, measured on held-out recorded inputs."""

    initial_mse: float  # MSE to the dense outputs before training (random FFF, output RMS matched)
    final_mse: float  # ... after training
    initial_rel_error: float  # ‖fff - dense‖ / ‖dense‖ before training
    final_rel_error: float  # ... after training
    dense_mse_to_zero: float  # MSE of predicting zeros: the "no FF" reference level
    steps: int
    n_train: int  # recorded inputs trained on
    n_eval: int  # held-out recorded inputs measured on


@torch.no_grad()
def _errors(fff: FastFeedForward, x: torch.Tensor, target: torch.Tensor, chunk: int = 4096) -> tuple[float, float]:
    """(MSE, relative error) of ``fff``'s hard forward against ``target`` on ``x`` (N, d)."""
    sq = 0.0
    for i in range(0, len(x), chunk):
        sq += F.mse_loss(fff.forward_masked(x[i : i + chunk]), target[i : i + chunk], reduction="sum").item()
    return sq / target.numel(), math.sqrt(sq / max(target.pow(2).sum().item(), 1e-30))


def from_dense(
    mlp: nn.Module,
    depth: int,
    n_trees: int = 1,
    *,
    inputs: torch.Tensor,
    steps: int = 2000,
    lr: float = 3e-3,
    batch: int = 256,
    holdout: float = 0.1,
    seed: int = 0,
) -> tuple[FastFeedForward, DistillReport]:
    """Distil a trained dense MLP into an FFF layer-wise: hard-mode FFF, Adam on the MSE to the MLP's outputs.

    Args:
        mlp: The dense feed-forward module, (..., d_in) -> (..., d_out); it is not changed.
        depth: Tree depth D of the FFF.
        n_trees: K parallel trees.
        inputs: (N, d_in) recorded inputs of the MLP (see :func:`record_mlp_inputs`).
        steps: Adam steps.
        lr: Adam learning rate.
        batch: Inputs per step, sampled with replacement from the training part.
        holdout: Fraction of ``inputs`` (the last ones) kept out of training to measure the report on.
        seed: Seeds the FFF's initialisation and the batch sampling.

    Returns:
        The trained FFF (in eval mode, on the inputs' device, fp32) and its :class:`DistillReport`.
    """
    if inputs.dim() != 2 or len(inputs) < 2:
        raise RecruitError("from_dense needs recorded inputs of shape (N >= 2, d); see record_mlp_inputs")
    if steps < 0 or lr <= 0 or batch <= 0 or not 0 <= holdout < 1:
        raise RecruitError(
            f"need steps >= 0, lr > 0, batch > 0 and 0 <= holdout < 1; got {steps}, {lr}, {batch}, {holdout}"
        )
    x = inputs.detach().float()
    dt = next(mlp.parameters(), x).dtype
    with torch.no_grad():
        try:
            target = torch.cat([mlp(x[i : i + 4096].to(dt)).float() for i in range(0, len(x), 4096)])  # (N, d_out)
        except RuntimeError as e:  # most often the width: a matmul's "shapes cannot be multiplied"
            raise RecruitError(f"the MLP does not run on the recorded inputs {tuple(inputs.shape)}: {e}") from e
    if target.dim() != 2 or len(target) != len(x):
        raise RecruitError(f"the MLP maps inputs {tuple(inputs.shape)} to {tuple(target.shape)}: need (N, d_out)")
    n_eval = min(len(x) - 1, max(1, round(holdout * len(x)))) if holdout > 0 else 0
    x_tr, y_tr = x[: len(x) - n_eval], target[: len(x) - n_eval]
    x_ev, y_ev = (x[len(x) - n_eval :], target[len(x) - n_eval :]) if n_eval else (x_tr, y_tr)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fff = FastFeedForward(x.shape[1], target.shape[1], depth, n_trees, mode="hard").to(x.device)
    scale = y_tr.pow(2).mean().sqrt().clamp_min(1e-12)  # the dense outputs' RMS
    with torch.no_grad():  # match the dense output scale (a trained MLP's can be far below the FFF init's)
        rms = fff.forward_masked(x_tr[:4096]).pow(2).mean().sqrt()
        fff.w_out.mul_(scale / rms.clamp_min(1e-12))
    mse0, rel0 = _errors(fff, x_ev, y_ev)
    # Fit the outputs in units of their RMS, so that Adam's steps suit any output scale (an MLP at its init
    # writes about 1e-3; Adam moves each weight by about lr whatever the gradient's size); the FFF's output is
    # linear in w_out, so dividing w_out by the scale and multiplying it back afterwards is exact.
    with torch.no_grad():
        fff.w_out.div_(scale)
    opt = torch.optim.Adam(fff.parameters(), lr=lr)
    fff.train()
    for step in range(steps):
        idx = torch.randint(0, len(x_tr), (batch,), generator=gen).to(x.device)  # (batch,)
        loss = F.mse_loss(fff.forward_masked(x_tr[idx]), y_tr[idx] / scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % max(1, steps // 10) == 0:
            log.info("from_dense step %d/%d: train mse %.4g", step + 1, steps, loss.item() * scale.item() ** 2)
    fff.eval()
    with torch.no_grad():
        fff.w_out.mul_(scale)
    mse1, rel1 = _errors(fff, x_ev, y_ev)
    report = DistillReport(mse0, mse1, rel0, rel1, y_ev.pow(2).mean().item(), steps, len(x_tr), len(x_ev))
    return fff, report
