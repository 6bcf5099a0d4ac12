"""A KV cache that remembers each cached token's absolute position, so eviction keeps RoPE right.

Keys and values live in buffers that grow by doubling, so appending a token costs O(1) amortised copies
instead of re-copying the whole cache each step (``torch.cat``), as a careful baseline should.
"""

from __future__ import annotations

import torch

from recruit.errors import RecruitError


class KVLayer:
    """Cached keys and values of one layer, as views of growable buffers.

    Attributes:
        keys: (B, Hkv, S, hd), RoPE already applied at the token's absolute position.
        values: (B, Hkv, S, hd).
        positions: (S,) absolute positions of the cached tokens, ascending.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor) -> None:
        self._k, self._v, self._p = keys, values, positions  # buffers: (B, Hkv, C, hd), (B, Hkv, C, hd), (C,)
        self.length = keys.shape[2]

    @property
    def keys(self) -> torch.Tensor:
        """(B, Hkv, S, hd) cached keys."""
        return self._k[:, :, : self.length]

    @property
    def values(self) -> torch.Tensor:
        """(B, Hkv, S, hd) cached values."""
        return self._v[:, :, : self.length]

    @property
    def positions(self) -> torch.Tensor:
        """(S,) absolute positions."""
        return self._p[: self.length]

    def append(self, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor) -> None:
        """Append ``k``, ``v`` (B, Hkv, T, hd) at ``positions`` (T,), growing the buffers by doubling."""
        n = self.length + k.shape[2]
        if n > self._k.shape[2]:
            cap = max(n, 2 * self._k.shape[2])
            self._k = _grow(self._k, self.length, cap, dim=2)
            self._v = _grow(self._v, self.length, cap, dim=2)
            self._p = _grow(self._p, self.length, cap, dim=0)
        self._k[:, :, self.length : n] = k
        self._v[:, :, self.length : n] = v
        self._p[self.length : n] = positions
        self.length = n

    def select(self, index: torch.Tensor) -> None:
        """Keep only the entries at ``index`` (S',), sorted ascending (compacts into fresh buffers)."""
        self._k, self._v = self.keys.index_select(2, index), self.values.index_select(2, index)
        self._p = self.positions[index]
        self.length = index.numel()


def _grow(buf: torch.Tensor, used: int, cap: int, dim: int) -> torch.Tensor:
    shape = list(buf.shape)
    shape[dim] = cap
    new = buf.new_empty(shape)
    new.narrow(dim, 0, used).copy_(buf.narrow(dim, 0, used))
    return new


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
            layer = self.layers[layer_idx] = KVLayer(k.clone(), v.clone(), positions.clone())
        else:
            layer.append(k, v, positions)
        return layer.keys, layer.values, layer.positions

    def advance(self, n: int) -> None:
        """Record that ``n`` more tokens were fed (called once per forward, after all layers)."""
        self.seen_tokens += n

    def keep(self, layer_idx: int, index: torch.Tensor) -> None:
        """Keep only the cached tokens at ``index`` (S',) of layer ``layer_idx`` (ascending order preserved)."""
        layer = self.layers[layer_idx]
        if layer is not None:
            layer.select(index.sort().values)

    def truncate(self, n: int) -> None:
        """Roll back to the first ``n`` fed tokens: drop cached entries at positions >= ``n`` (O(1), no copy)."""
        if not 0 <= n <= self.seen_tokens:
            raise RecruitError(f"cannot truncate to {n} tokens: the cache has seen {self.seen_tokens} (0 to that)")
        for layer in self.layers:
            if layer is not None:
                layer.length = int(torch.searchsorted(layer.positions, n))
        self.seen_tokens = n

    def seq_len(self, layer_idx: int = 0) -> int:
        """Number of tokens cached in layer ``layer_idx``."""
        layer = self.layers[layer_idx]
        return 0 if layer is None else layer.length

    def nbytes(self) -> int:
        """Bytes of the cached keys and values (positions and spare buffer capacity not counted)."""
        return sum(x.keys.nbytes + x.values.nbytes for x in self.layers if x is not None)
