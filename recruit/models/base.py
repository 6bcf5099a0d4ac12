"""What every recruit model shares: a typed config, save/load (safetensors + JSON), and a type registry.

A checkpoint directory holds ``config.json`` (with ``model_type``) and ``model.safetensors``. Any
registered architecture loads through :func:`load_model`, so tools never need to know which one it is.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from recruit.config import from_dict
from recruit.errors import RecruitError
from recruit.io import atomic_save_with, atomic_write_json

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MODEL_TYPES: dict[str, type[RecruitModel]] = {}
"""``model_type`` string -> model class; filled by :func:`register_model`."""


def register_model(cls: type[RecruitModel]) -> type[RecruitModel]:
    """Class decorator: make ``cls`` loadable by :func:`load_model` under ``cls.model_type``."""
    MODEL_TYPES[cls.model_type] = cls
    return cls


class RecruitModel(nn.Module):
    """Base of the library's own models.

    Subclasses set ``model_type`` and ``config_class`` and implement ``forward(idx) -> logits (B, T, V)``.
    """

    model_type: ClassVar[str] = ""
    config_class: ClassVar[type] = object
    tied_weights: ClassVar[dict[str, str]] = {}
    """Parameter name -> name it is tied to (dropped on save, re-tied on load) when the config ties them."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config

    def loss_terms(self) -> list:
        """Loss terms (:class:`recruit.train.LossTerm`) that this model asks the trainer to add; none by default."""
        return []

    def num_params(self) -> int:
        """Number of distinct parameters (tied weights counted once)."""
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())

    def _tied(self) -> dict[str, str]:
        return self.tied_weights if getattr(self.config, "tie_embeddings", False) else {}

    def save_pretrained(self, path: str | Path, dtype: torch.dtype | None = None, metadata: dict | None = None) -> None:
        """Write ``config.json`` and ``model.safetensors`` under ``path`` (each atomically).

        Args:
            path: Directory to create or overwrite.
            dtype: Optional storage dtype for floating-point weights (e.g. ``torch.bfloat16`` to ship small).
            metadata: Extra string metadata stored in the safetensors header.
        """
        own = self.state_dict(keep_vars=True)
        for name, target in self._tied().items():  # dropped on save, re-tied on load: they must be one tensor
            if own[name] is not own[target] and own[name].data_ptr() != own[target].data_ptr():
                raise RecruitError(f"the config ties {name} to {target}, but they are different tensors now "
                                   "(replaced after construction?): tie them again or untie the config")  # fmt: skip
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items() if k not in self._tied()}
        if dtype is not None:
            state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        meta = {"format": "pt", "model_type": self.model_type, **{k: str(v) for k, v in (metadata or {}).items()}}
        atomic_save_with(path / WEIGHTS_NAME, lambda tmp: save_file(state, str(tmp), metadata=meta))
        atomic_write_json(path / CONFIG_NAME, {"model_type": self.model_type, **dataclasses.asdict(self.config)})

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> RecruitModel:
        """Load a model saved by :meth:`save_pretrained`; every failure is a one-line :class:`RecruitError`."""
        model_type, cfg = read_config(path)
        if cls.model_type and model_type != cls.model_type:
            raise RecruitError(f"{path} holds a {model_type!r} checkpoint, not {cls.model_type!r}")
        model = MODEL_TYPES[model_type](cfg) if not cls.model_type else cls(cfg)
        _load_weights(model, Path(path) / WEIGHTS_NAME)
        return model.to(device).eval()


def read_config(path: str | Path) -> tuple[str, Any]:
    """Read and validate ``config.json`` of a checkpoint directory: ``(model_type, typed config)``."""
    path = Path(path)
    if not path.is_dir():
        raise RecruitError(f"no checkpoint directory at {path}")
    cfg_file = path / CONFIG_NAME
    if not cfg_file.is_file():
        raise RecruitError(f"{path} is not a recruit checkpoint: {CONFIG_NAME} is missing")
    try:
        data = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RecruitError(f"corrupt checkpoint config {cfg_file}: {e}") from None
    if not isinstance(data, dict) or "model_type" not in data:
        if isinstance(data, dict) and "max_steps" in data and "out_dir" in data:  # a TrainConfig: a run directory
            final = path / "final"
            hint = f"its model is {final}" if final.is_dir() else "it has no finished model (final/) yet"
            raise RecruitError(f"{path} is a training run directory, not a model checkpoint: {hint}")
        raise RecruitError(f"{cfg_file} has no model_type; is it a Hugging Face checkpoint? use recruit.models.hf")
    model_type = data.pop("model_type")
    if model_type not in MODEL_TYPES:
        raise RecruitError(f"unknown model_type {model_type!r} in {cfg_file}; known: {', '.join(sorted(MODEL_TYPES))}")
    config_class = MODEL_TYPES[model_type].config_class
    if "transformers_version" in data:  # saved by Hugging Face (recruit.models.hf_auto): keep our fields only
        fields = {f.name for f in dataclasses.fields(config_class)}
        tie = data.get("tie_word_embeddings")
        data = {k: v for k, v in data.items() if k in fields}
        if tie is not None and "tie_embeddings" in fields:
            data["tie_embeddings"] = tie
    return model_type, from_dict(config_class, data, what=f"{model_type} config")


def _load_weights(model: RecruitModel, file: Path) -> None:
    if not file.is_file():
        raise RecruitError(f"checkpoint weights missing: {file}")
    try:
        state = load_file(str(file))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise RecruitError(f"corrupt or truncated checkpoint {file}: {e}") from None
    own = model.state_dict()
    tied = model._tied()
    missing = [k for k in own if k not in state and k not in tied]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise RecruitError(
            f"checkpoint {file} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    for k, v in state.items():
        if v.shape != own[k].shape:
            raise RecruitError(
                f"checkpoint {file}: {k} has shape {tuple(v.shape)}, config expects {tuple(own[k].shape)}"
            )
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=False)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> RecruitModel:
    """Load any registered recruit model from a checkpoint directory."""
    return RecruitModel.from_pretrained(path, device=device)
