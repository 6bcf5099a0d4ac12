"""Model architectures, one per file, and the registries that build or load any of them."""

from __future__ import annotations

from typing import Any

from recruit.config import from_dict
from recruit.errors import RecruitError
from recruit.models.base import MODEL_TYPES, RecruitModel, load_model, register_model
from recruit.models.bdh import BDH, BDH_PRESETS, BDHConfig, BDHState, bdh_config
from recruit.models.gpt import GPT, GPT_PRESETS, GPTConfig, gpt_config

PRESETS: dict[str, tuple[type[RecruitModel], dict[str, Any]]] = {
    **{name: (GPT, f) for name, f in GPT_PRESETS.items()},
    **{name: (BDH, f) for name, f in BDH_PRESETS.items()},
}
"""Preset name -> (model class, config fields) for every architecture; later architectures add theirs."""


def build_model(preset: str, overrides: dict[str, Any] | None = None) -> RecruitModel:
    """A freshly initialised model from a preset, with config fields replaced by ``overrides``."""
    if preset not in PRESETS:
        raise RecruitError(f"unknown model preset {preset!r}; presets: {', '.join(PRESETS)}")
    cls, fields = PRESETS[preset]
    return cls(from_dict(cls.config_class, {**fields, **(overrides or {})}, what=f"{preset} model config"))


__all__ = [
    "BDH",
    "BDHConfig",
    "BDHState",
    "BDH_PRESETS",
    "GPT",
    "GPTConfig",
    "GPT_PRESETS",
    "MODEL_TYPES",
    "PRESETS",
    "RecruitModel",
    "bdh_config",
    "build_model",
    "gpt_config",
    "load_model",
    "register_model",
]
