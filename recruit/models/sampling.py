"""Choosing the next tokens from logits: the decoding loop shared by every model's ``generate``."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from recruit.errors import RecruitError


def check_prompt(idx: torch.Tensor) -> None:
    """Reject a prompt that ``generate`` cannot continue: it takes token ids (B, T) with B, T >= 1."""
    if idx.dim() != 2 or idx.shape[0] == 0 or idx.shape[1] == 0:
        raise RecruitError(f"generate takes a non-empty prompt of token ids (B, T), got shape {tuple(idx.shape)}")


def check_sampling(temperature: float, greedy: bool, top_k: int | None = None, max_new_tokens: int = 0) -> None:
    """Reject a temperature, top-k or number of new tokens that ``generate`` cannot use."""
    if max_new_tokens < 0:
        raise RecruitError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if not greedy and not (math.isfinite(temperature) and temperature > 0):
        raise RecruitError(f"temperature must be a finite number > 0 (or use greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise RecruitError(f"top_k must be at least 1, got {top_k}")


def next_token(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    greedy: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The next token of each sequence: (B, V) logits -> (B, 1) ids.

    ``greedy`` takes the arg-max; otherwise samples from ``softmax(logits / temperature)``, restricted to the
    ``top_k`` most likely tokens when given.
    """
    if greedy:
        return logits.argmax(-1, keepdim=True)  # (B, 1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)  # (B, 1)


def decode_loop(
    idx: torch.Tensor,
    logits: torch.Tensor,
    step: Callable[[torch.Tensor], torch.Tensor],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    greedy: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Append ``max_new_tokens`` tokens to ``idx`` (B, T); returns (B, T + new).

    Args:
        idx: The prompt.
        logits: (B, V) next-token logits after the prompt (the model's prefill).
        step: Feeds one chosen token (B, 1) to the model's cache or state and returns the next (B, V) logits.
        max_new_tokens: Tokens to add.
        temperature: Sampling temperature.
        top_k: Sample among the ``top_k`` most likely tokens.
        greedy: Take the arg-max instead of sampling.
        generator: Random generator for sampling.
    """
    out = [idx]
    for i in range(max_new_tokens):
        nxt = next_token(logits, temperature, top_k, greedy, generator)  # (B, 1)
        out.append(nxt)
        if i + 1 < max_new_tokens:
            logits = step(nxt)
    return torch.cat(out, dim=1)
