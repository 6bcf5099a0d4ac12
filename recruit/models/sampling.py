"""Choosing the next token from logits: shared by every model's ``generate``."""

from __future__ import annotations

import torch

from recruit.errors import RecruitError


def check_sampling(temperature: float, greedy: bool) -> None:
    """Reject a temperature that cannot be used for sampling."""
    if temperature <= 0 and not greedy:
        raise RecruitError(f"temperature must be > 0 (or use greedy), got {temperature}")


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
