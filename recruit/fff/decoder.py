"""FFF in a Hugging Face decoder (GPT-2, Llama, Mistral, Qwen2, Gemma, Phi, GPT-NeoX, Falcon and their kin).

Their blocks hold the feed-forward as one submodule named ``mlp`` that maps the stream (..., d) -> (..., d); the
block adds the residual around it. An FFF takes that submodule's place: the block's own ``forward`` runs
unchanged, only a submodule is swapped, as Hugging Face's module tree allows. Blocks whose feed-forward is not
an ``mlp`` submodule (OPT's ``fc1``/``fc2`` written into the block, Mixtral's experts) are not found, and an
``mlp`` that is no plain (..., d) -> (..., d) map (Qwen2-MoE's, which returns router logits too) is refused: the
functions say so. recruit's own :class:`~recruit.models.gpt.GPT` has such blocks too.

- :func:`decoder_layers` finds the blocks;
- :func:`replace_decoder_mlps` puts freshly initialised FFFs in every block (train from scratch);
- :func:`drop_decoder_mlps` takes the feed-forward out (the "no FF" arm of a comparison);
- :func:`distil_decoder` records each block's feed-forward inputs on the user's token ids, distils each dense
  ``mlp`` into an FFF (:func:`recruit.fff.convert.from_dense`) and swaps it in;
- :func:`save_fff_decoder` writes the converted model in the ``save_pretrained`` layout, its FFF shape in
  ``config.json`` under ``recruit_fff``; :func:`recruit.models.hf.load_hf_causal_lm` reads it back (a plain
  ``from_pretrained`` would not: it builds dense MLPs, warns that the FFF weights are unused and leaves the MLPs
  random).

Example, with a checkpoint of the user's on disk (no download)::

    model = AutoModelForCausalLM.from_pretrained("path/to/llama", torch_dtype=torch.float32).eval()
    reports = distil_decoder(model, input_ids, depth=11, attention_mask=mask)
    save_fff_decoder(model, "path/to/llama-fff")

``recruit fff convert path/to/llama --out path/to/llama-fff`` does the same on the corpus's text, with bits per
byte before and after.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file
from torch import nn

from recruit.errors import RecruitError
from recruit.fff.convert import DistillReport, ZeroFF, distil_all, like, record_hf_inputs
from recruit.fff.fff import FastFeedForward

log = logging.getLogger(__name__)


def _is_dense_block(module: nn.Module) -> bool:
    mlp = module._modules.get("mlp")
    if mlp is None or isinstance(mlp, (FastFeedForward, ZeroFF)):
        return False
    return next(mlp.parameters(), None) is not None


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """Every block of ``model`` that still has a dense ``mlp`` submodule, in module order."""
    return [m for m in model.modules() if _is_dense_block(m)]


def _found(model: nn.Module, what: str) -> list[nn.Module]:
    layers = decoder_layers(model)
    if not layers:
        raise RecruitError(f"{what}: found no decoder block with a dense `mlp` submodule (already converted, or "
                           f"{type(model).__name__} keeps its feed-forward elsewhere)")  # fmt: skip
    return layers


def _width(layer: nn.Module) -> int:
    """The width d of the stream that ``layer.mlp`` reads and writes, checked by one call on zeros."""
    p = next(layer.mlp.parameters())
    sizes = {s for q in layer.mlp.parameters() if q.dim() == 2 for s in q.shape}
    for d in sorted(sizes):  # the stream width is one of its weight matrices' sides
        try:
            with torch.no_grad():
                out = layer.mlp(torch.zeros(1, d, device=p.device, dtype=p.dtype))
        except (RuntimeError, ValueError):
            continue
        if not isinstance(out, torch.Tensor):  # a mixture of experts returns (output, router logits)
            raise RecruitError(f"{type(layer.mlp).__name__} returns {type(out).__name__}, not a tensor: not a plain "
                               "feed-forward (a mixture of experts?)")  # fmt: skip
        if out.shape == (1, d):
            return d
    raise RecruitError(f"{type(layer.mlp).__name__} does not map a width d to itself; not a decoder feed-forward")


def _put(layer: nn.Module, ff: nn.Module) -> None:
    """Put ``ff`` in place of ``layer.mlp``, on its device and dtype and in its mode (training or eval)."""
    layer.mlp = like(ff, layer.mlp)


def replace_decoder_mlps(
    model: nn.Module, depth: int, n_trees: int = 1, mode: Literal["hard", "soft"] = "hard", hardening: float = 0.0
) -> nn.Module:
    """Swap every block's dense ``mlp`` for a new ``FastFeedForward(d, d, depth, ...)``.

    Args:
        model: A Hugging Face decoder (``LlamaForCausalLM``, ``GPT2LMHeadModel`` ...); changed in place.
        depth: Tree depth D (2^(D+1) - 1 nodes per tree).
        n_trees: K parallel trees.
        mode: Training forward of the FFFs, ``hard`` or ``soft``.
        hardening: Weight of each FFF's entropy hardening loss (soft mode).

    Returns:
        ``model``, with FFFs on the device and dtype, and in the mode, of the feed-forwards they replace.
    """
    layers = _found(model, "replace_decoder_mlps")
    widths = [_width(layer) for layer in layers]  # all checked before any is swapped
    for layer, d in zip(layers, widths, strict=True):
        _put(layer, FastFeedForward(d, d, depth, n_trees, mode, hardening))
    log.info("replaced %d decoder feed-forwards by FFFs of depth %d x %d trees", len(layers), depth, n_trees)
    return model


def drop_decoder_mlps(model: nn.Module) -> nn.Module:
    """Take every block's dense ``mlp`` out: each block then adds nothing after its attention."""
    for layer in _found(model, "drop_decoder_mlps"):
        _put(layer, ZeroFF())
    return model


def record_decoder_inputs(model: nn.Module, input_ids: torch.Tensor, **forward_kwargs) -> list[torch.Tensor]:
    """The inputs of every block's ``mlp`` when ``model`` reads ``input_ids`` (B, T).

    With an ``attention_mask`` in ``forward_kwargs`` only the unmasked positions are kept. Returns one (N, d)
    tensor per block, in the order of :func:`decoder_layers`.
    """
    layers = _found(model, "record_decoder_inputs")
    return record_hf_inputs(model, [layer.mlp for layer in layers], input_ids, **forward_kwargs)


def distil_decoder(
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
    """Distil every block's dense ``mlp`` into an FFF on the user's text, and swap it in.

    All blocks' inputs are recorded from the dense model in one pass over ``input_ids`` (B, T) (see
    :func:`record_decoder_inputs`), so each FFF learns the inputs its dense map really saw; each is fitted by
    :func:`recruit.fff.convert.from_dense` (MSE to the dense outputs, 10% of the positions held out).

    Args:
        model: A Hugging Face decoder, changed in place (put it in eval mode first if it has dropout).
        input_ids: Token ids (B, T) to record on.
        depth: Tree depth of the FFFs.
        n_trees: K parallel trees.
        steps: Adam steps per block.
        lr: Adam learning rate.
        progress: Show a progress bar over the blocks.
        **forward_kwargs: Passed to ``model`` while recording (``attention_mask`` ...).

    Returns:
        One :class:`~recruit.fff.convert.DistillReport` per block (held-out error before and after).
    """
    layers = _found(model, "distil_decoder")
    for layer in layers:  # refuse what is no plain feed-forward before the recording pass
        _width(layer)
    inputs = record_decoder_inputs(model, input_ids, **forward_kwargs)
    denses = [layer.mlp for layer in layers]
    return distil_all(denses, inputs, lambda i, fff: _put(layers[i], fff), depth, n_trees, steps=steps, lr=lr,
                      progress=progress)  # fmt: skip


CONFIG_KEY = "recruit_fff"
"""The ``config.json`` entry that marks a decoder with FFF feed-forwards: ``{"depth": D, "n_trees": K, "mode": M,
"hardening": W}`` (the training settings, so that a reloaded model fine-tunes as it was set up to; entries without
them load as hard routing without hardening)."""


def save_fff_decoder(model: nn.Module, out: str | Path, tokenizer=None) -> Path:
    """Save a decoder whose every ``mlp`` is an FFF of one shape, loadable by ``load_hf_causal_lm``.

    Writes ``model.save_pretrained(out)`` (safetensors) with ``config.recruit_fff`` (:data:`CONFIG_KEY`), and
    the tokenizer (a ``transformers`` tokenizer or :class:`~recruit.data.tokenizer.HFTokenizer`) beside it.

    Raises:
        RecruitError: When some blocks still have a dense ``mlp``, none has an FFF, or their shapes differ.
    """
    ffs = [m.mlp for m in model.modules() if isinstance(m._modules.get("mlp"), FastFeedForward)]
    shapes = {(f.config.depth, f.config.n_trees, f.config.mode, f.config.hardening) for f in ffs}
    dense = decoder_layers(model)
    if not ffs or dense or len(shapes) > 1:
        why = "no FFF" if not ffs else f"{len(dense)} dense feed-forwards left" if dense else f"shapes {sorted(shapes)}"
        raise RecruitError(f"save_fff_decoder needs every block's mlp to be an FFF of one shape ({why})")
    (depth, n_trees, mode, hardening), out = shapes.pop(), Path(out)
    model.config.update({CONFIG_KEY: {"depth": depth, "n_trees": n_trees, "mode": mode, "hardening": hardening}})
    model.save_pretrained(out)
    if tokenizer is not None:
        getattr(tokenizer, "tok", tokenizer).save_pretrained(out)
    log.info("saved a decoder with %d FFFs (depth %d x %d trees) to %s", len(ffs), depth, n_trees, out)
    return out


def load_fff_decoder(root: str | Path, config, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The model saved by :func:`save_fff_decoder` in ``root``, whose ``config`` carries ``recruit_fff``.

    Built from its config with FFFs in place of the dense feed-forwards, its parameters on the meta device
    (:func:`parameters_on_meta`: the dense MLPs and the random initial weights take no memory), then its
    safetensors weights loaded in their place (every key must match; tied embeddings are re-tied), in
    ``dtype``. What ``load_hf_causal_lm`` calls.

    Raises:
        RecruitError: When the entry is malformed, or the weights are missing or do not match.
    """
    from transformers import AutoModelForCausalLM

    spec, root = getattr(config, CONFIG_KEY), Path(root)
    spec = spec if isinstance(spec, dict) else {}
    depth, n_trees, mode = spec.get("depth"), spec.get("n_trees", 1), spec.get("mode", "hard")
    hardening = spec.get("hardening", 0.0)
    if not (isinstance(depth, int) and isinstance(n_trees, int) and depth >= 0 and n_trees >= 1
            and mode in ("hard", "soft") and isinstance(hardening, int | float) and hardening >= 0):  # fmt: skip
        raise RecruitError(f"{root / 'config.json'}: {CONFIG_KEY} must be {{'depth': D >= 0, 'n_trees': K >= 1, "
                           f"'mode': 'hard' or 'soft', 'hardening': W >= 0}}, "
                           f"got {getattr(config, CONFIG_KEY)!r}")  # fmt: skip
    with parameters_on_meta():  # no memory for weights that the file's replace (the dense MLPs above all)
        model = AutoModelForCausalLM.from_config(config)
        replace_decoder_mlps(model, depth, n_trees, mode, float(hardening))
    index = root / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else None
    state: dict[str, torch.Tensor] = {}
    for name in files or ["model.safetensors"]:
        if not (root / name).is_file():
            raise RecruitError(f"missing weights file {root / name}")
        state.update(load_file(root / name))
    try:
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as e:  # a tensor of another shape: another depth, width or model
        first = next((line.strip() for line in str(e).splitlines() if "size mismatch" in line), str(e)[:200])
        raise RecruitError(f"weights in {root} do not match an FFF decoder of {spec}: {first}") from None
    tied = getattr(model, "_tied_weights_keys", None) if getattr(config, "tie_word_embeddings", False) else None
    missing = [k for k in missing if k not in (tied or ())]  # a tied output matrix is not saved; tie_weights below
    if missing or unexpected:
        raise RecruitError(f"weights in {root} do not match an FFF decoder of {spec}: missing {missing[:4]}, "
                           f"unexpected {unexpected[:4]}")  # fmt: skip
    model.tie_weights()
    left = [n for n, p in model.named_parameters() if p.is_meta]
    if left:
        raise RecruitError(f"weights in {root} leave parameters without values: {left[:4]}")
    return model.to(dtype).eval()


@contextlib.contextmanager
def parameters_on_meta():
    """Modules built inside keep their parameters on the meta device (no memory); buffers stay real.

    For models whose weights are then loaded with ``load_state_dict(..., assign=True)``: a parameter exists
    in memory only while its module's constructor makes it. Buffers (rotary frequencies, masks) are computed
    by the constructors as usual, since a checkpoint need not hold them.
    """
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and not param.is_meta:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register
