"""A KV cache that remembers each cached token's absolute position, so eviction keeps RoPE right."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class KVLayer:
    """Cached keys and values of one layer.

    Attributes:
        keys: (B, Hkv, S, hd), RoPE already applied at the token's absolute position.
        values: (B, Hkv, S, hd).
        positions: (S,) absolute positions of the cached tokens, ascending.
    """

    keys: torch.Tensor
    values: torch.Tensor
    positions: torch.Tensor


class KVCache:
    """Per-layer key/value store for incremental decoding.

    ``seen_tokens`` counts every token ever fed (the next absolute position), which stays correct when a
    policy drops cached entries with :meth:`keep`.
    """

    def __init__(self, n_layers: int) -> None:
        self.layers: list[KVLayer | None] = [None] * n_layers
        self.seen_tokens = 0

    def update(
        self, layer_idx: int, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Append ``k``, ``v`` (B, Hkv, T, hd) at ``positions`` (T,); return all cached keys, values, positions."""
        layer = self.layers[layer_idx]
        if layer is None:
            layer = KVLayer(k, v, positions)
        else:
            layer = KVLayer(
                torch.cat([layer.keys, k], dim=2),  # (B, Hkv, S + T, hd)
                torch.cat([layer.values, v], dim=2),
                torch.cat([layer.positions, positions]),  # (S + T,)
            )
        self.layers[layer_idx] = layer
        return layer.keys, layer.values, layer.positions

    def advance(self, n: int) -> None:
        """Record that ``n`` more tokens were fed (called once per forward, after all layers)."""
        self.seen_tokens += n

    def keep(self, layer_idx: int, index: torch.Tensor) -> None:
        """Keep only the cached tokens at ``index`` (S',) of layer ``layer_idx`` (ascending order preserved)."""
        layer = self.layers[layer_idx]
        if layer is None:
            return
        index = index.sort().values
        self.layers[layer_idx] = KVLayer(
            layer.keys.index_select(2, index), layer.values.index_select(2, index), layer.positions[index]
        )

    def truncate(self, n: int) -> None:
        """Roll back to the first ``n`` fed tokens (for caches that evicted nothing, e.g. to re-time a step)."""
        for i, layer in enumerate(self.layers):
            if layer is not None:
                keep = layer.positions < n
                self.layers[i] = KVLayer(layer.keys[:, :, keep], layer.values[:, :, keep], layer.positions[keep])
        self.seen_tokens = n

    def seq_len(self, layer_idx: int = 0) -> int:
        """Number of tokens cached in layer ``layer_idx``."""
        layer = self.layers[layer_idx]
        return 0 if layer is None else layer.keys.shape[2]

    def nbytes(self) -> int:
        """Bytes held by cached keys and values (positions not counted)."""
        return sum(x.keys.nbytes + x.values.nbytes for x in self.layers if x is not None)
