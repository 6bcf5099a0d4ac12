"""Checks shared by the benchmarks' config dataclasses, each raising ``ValueError`` with the field and its value.

A config calls them in ``__post_init__``, so that ``recruit bench NAME --set FIELD=VALUE`` refuses a bad value in one
line (:func:`recruit.benchmarks.configure`) before anything is trained or timed.
"""

from __future__ import annotations

from typing import Any, Literal

from recruit.config import from_dict
from recruit.errors import RecruitError

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
"""``torch.compile``'s documented modes, used where torch cannot list its own."""


def positive(cfg: Any, *names: str) -> None:
    """Each field ``names`` of ``cfg`` must be > 0 (not NaN)."""
    for name in names:
        if not (value := getattr(cfg, name)) > 0:
            raise ValueError(f"{name} must be positive, got {value}")


def non_negative(cfg: Any, *names: str) -> None:
    """Each field ``names`` of ``cfg`` must be >= 0 (not NaN)."""
    for name in names:
        if not (value := getattr(cfg, name)) >= 0:
            raise ValueError(f"{name} must be >= 0, got {value}")


def one_batch(cfg: Any) -> None:
    """``cfg.tokens``, ``cfg.seq_len`` and ``cfg.batch_size`` positive, and the tokens at least one batch."""
    positive(cfg, "seq_len", "batch_size", "tokens")
    if cfg.tokens < cfg.seq_len * cfg.batch_size:
        raise ValueError(f"tokens ({cfg.tokens}) must cover at least one batch ({cfg.seq_len * cfg.batch_size})")


Family = Literal["bdh", "gpt"] | None


def family_presets(family: Family = None) -> list[str]:
    """The model presets of ``family`` (``"bdh"``, ``"gpt"``; ``None``: every one)."""
    from recruit.models import BDH, GPT, PRESETS

    cls = {"bdh": BDH, "gpt": GPT}.get(family or "")
    return [name for name, (c, _) in PRESETS.items() if cls is None or c is cls]


def preset(field: str, name: str, family: Family = None) -> None:
    """``name`` (the value of ``field``) must be a model preset, of ``family`` when given; the error lists them."""
    allowed = family_presets(family)
    if name not in allowed:
        what = f"a {family.upper()} model preset" if family else "a model preset"
        raise ValueError(f"{field} must be {what} ({', '.join(allowed)}), got {name!r}")


def fits_context(field: str, name: str, seq_len: int) -> None:
    """Windows of ``seq_len`` tokens must fit preset ``name``'s ``max_seq_len`` (the trainer refuses longer ones)."""
    from recruit.models import PRESETS

    cls, fields = PRESETS[name]
    limit = cls.config_class(**fields).max_seq_len
    if seq_len > limit:
        raise ValueError(f"seq_len ({seq_len}) is longer than the context of {field} {name!r} ({limit} tokens)")


def bdh_args(args: tuple[tuple[str, object], ...], presets: list[str]) -> None:
    """``bdh_args`` must be BDH config fields with values each BDH preset of ``presets`` accepts."""
    from recruit.models import PRESETS, BDHConfig

    for name in presets:
        try:
            from_dict(BDHConfig, {**PRESETS[name][1], **dict(args)}, what=f"bdh_args (on {name})")
        except RecruitError as e:
            raise ValueError(str(e)) from None


def fff_shape(field: str, depth: int, trees: int = 1) -> None:
    """An FFF of ``trees`` trees of ``depth`` must be one :class:`~recruit.fff.fff.FFFConfig` accepts."""
    from recruit.fff.fff import FFFConfig

    try:
        FFFConfig(1, 1, depth, n_trees=trees)
    except ValueError as e:
        raise ValueError(f"{field}: FFF {e}") from None


def compile_modes() -> tuple[str, ...]:
    """The modes ``torch.compile`` accepts: torch's own list where it has one, else :data:`COMPILE_MODES`."""
    try:
        from torch._inductor import list_mode_options

        return tuple(list_mode_options())
    except (ImportError, AttributeError, TypeError):  # a private API: fall back to the documented modes
        return COMPILE_MODES
