"""FFF in a Hugging Face BERT-style encoder (BERT, RoBERTa, ELECTRA, XLM-R and their kin).

Such an encoder layer computes its feed-forward in two modules: ``intermediate`` (``act(dense(h))``, d -> 4d)
and ``output`` (``LayerNorm(dropout(dense(i)) + h)``, 4d -> d). The FFF takes the place of both linear
maps: ``intermediate`` becomes a :class:`~recruit.fff.fff.FastFeedForward` (d -> d) and ``output.dense``
an identity, so ``output`` still adds the residual and normalises. The layer's own ``forward`` runs
unchanged; only submodules are swapped, as Hugging Face's module tree allows.

- :func:`encoder_layers` finds the layers; :func:`dense_feed_forward` is one layer's dense map as a module;
- :func:`replace_encoder_mlps` puts freshly initialised FFFs in every layer (train from scratch);
- :func:`drop_encoder_mlps` takes the feed-forward out (the "no FF" arm of a comparison);
- :func:`distil_encoder` records each layer's feed-forward inputs on the user's token ids, distils each
  dense map into an FFF (:func:`recruit.fff.convert.from_dense`) and swaps it in.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
from torch import nn

from recruit.errors import RecruitError
from recruit.fff.convert import DistillReport, ZeroFF, distil_all, like, record_hf_inputs
from recruit.fff.fff import FastFeedForward

log = logging.getLogger(__name__)


def _is_dense_layer(module: nn.Module) -> bool:
    inter, out = getattr(module, "intermediate", None), getattr(module, "output", None)
    return isinstance(getattr(inter, "dense", None), nn.Linear) and isinstance(getattr(out, "dense", None), nn.Linear)


def encoder_layers(model: nn.Module) -> list[nn.Module]:
    """Every encoder layer of ``model`` that still has a dense feed-forward, in module order."""
    return [m for m in model.modules() if _is_dense_layer(m)]


def dense_feed_forward(layer: nn.Module) -> nn.Module:
    """The layer's dense feed-forward without residual or norm, ``output.dense(intermediate(h))``.

    Maps (..., d) -> (..., d); the returned module shares the layer's weights.
    """
    if not _is_dense_layer(layer):
        raise RecruitError(f"{type(layer).__name__} has no dense intermediate/output feed-forward")
    return nn.Sequential(layer.intermediate, layer.output.dense)


def _swap(layer: nn.Module, ff: nn.Module) -> None:
    """Put ``ff`` in place of the layer's feed-forward, on its device and dtype and in its mode."""
    layer.intermediate = like(ff, layer.intermediate)
    layer.output.dense = nn.Identity()


def replace_encoder_mlps(
    model: nn.Module, depth: int, n_trees: int = 1, mode: Literal["hard", "soft"] = "hard", hardening: float = 0.0
) -> nn.Module:
    """Swap every encoder layer's dense feed-forward for a new ``FastFeedForward(d, d, depth, ...)``.

    Args:
        model: A Hugging Face encoder (``BertModel``, ``BertForMaskedLM``, ``RobertaModel`` ...); changed in place.
        depth: Tree depth D (2^(D+1) - 1 nodes per tree).
        n_trees: K parallel trees.
        mode: Training forward of the FFFs, ``hard`` or ``soft``.
        hardening: Weight of each FFF's entropy hardening loss (soft mode).

    Returns:
        ``model``, with FFFs on the device and dtype, and in the mode, of the layers they replace.
    """
    layers = encoder_layers(model)
    if not layers:
        raise RecruitError("found no encoder layer with a dense intermediate/output feed-forward (already converted?)")
    for layer in layers:
        d_in, d_out = layer.intermediate.dense.in_features, layer.output.dense.out_features
        _swap(layer, FastFeedForward(d_in, d_out, depth, n_trees, mode, hardening))
    log.info("replaced %d encoder feed-forwards by FFFs of depth %d x %d trees", len(layers), depth, n_trees)
    return model


def drop_encoder_mlps(model: nn.Module) -> nn.Module:
    """Take every encoder layer's dense feed-forward out: each layer then outputs LayerNorm(h) of its input h."""
    layers = encoder_layers(model)
    if not layers:
        raise RecruitError("found no encoder layer with a dense intermediate/output feed-forward to drop")
    for layer in layers:
        _swap(layer, ZeroFF())
    return model


def record_encoder_inputs(model: nn.Module, input_ids: torch.Tensor, **forward_kwargs) -> list[torch.Tensor]:
    """The inputs of every encoder layer's feed-forward when ``model`` reads ``input_ids`` (B, T).

    Forward pre-hooks on each layer's ``intermediate`` record them (removed in ``finally``). With an
    ``attention_mask`` in ``forward_kwargs`` only the unmasked positions are kept. Returns one (N, d)
    tensor per layer, in the order of :func:`encoder_layers`.
    """
    layers = encoder_layers(model)
    if not layers:
        raise RecruitError("found no encoder layer with a dense intermediate/output feed-forward")
    return record_hf_inputs(model, [layer.intermediate for layer in layers], input_ids, **forward_kwargs)


def distil_encoder(
    model: nn.Module,
    input_ids: torch.Tensor,
    depth: int,
    n_trees: int = 1,
    *,
    steps: int = 2000,
    lr: float = 3e-3,
    progress: bool = True,
    **forward_kwargs,
) -> list[DistillReport]:
    """Distil every encoder layer's dense feed-forward into an FFF on the user's text, and swap it in.

    All layers' inputs are recorded from the dense model in one pass over ``input_ids`` (B, T) (see
    :func:`record_encoder_inputs`), so each FFF learns the inputs its dense map really saw; each is fitted
    by :func:`recruit.fff.convert.from_dense` (MSE to the dense outputs, 10% of the positions held out).

    Args:
        model: A Hugging Face encoder, changed in place (put it in eval mode first if it has dropout).
        input_ids: Token ids (B, T) to record on.
        depth: Tree depth of the FFFs.
        n_trees: K parallel trees.
        steps: Adam steps per layer.
        lr: Adam learning rate.
        progress: Show a progress bar over the layers.
        **forward_kwargs: Passed to ``model`` while recording (``attention_mask``, ``token_type_ids``).

    Returns:
        One :class:`~recruit.fff.convert.DistillReport` per layer (held-out error before and after).
    """
    layers = encoder_layers(model)
    inputs = record_encoder_inputs(model, input_ids, **forward_kwargs)
    denses = [dense_feed_forward(layer) for layer in layers]
    return distil_all(denses, inputs, lambda i, fff: _swap(layers[i], fff), depth, n_trees, steps=steps, lr=lr,
                      progress=progress)  # fmt: skip
