"""A frozen encoder's outputs kept in memory, keyed by the bytes of each clip's input.

Why: a small CPU run (the demo) shows every clip to a frozen Whisper encoder once an epoch, and
with no augmentation its log-mels are the same each time, so is the output (frozen weights, eval
mode). Keyed by content, not by sample id, a lookup cannot return another clip's output and an
augmented clip is only a miss. Bounded in bytes; the least recently used entry goes first.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable

import torch


def content_key(features: torch.Tensor) -> bytes:
    """One clip's input (any shape, dtype) -> a 16-byte BLAKE2b digest of shape, dtype, values."""
    data = features.detach().contiguous().cpu()
    digest = hashlib.blake2b(repr((tuple(data.shape), str(data.dtype))).encode(), digest_size=16)
    digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.digest()


class EncoderMemo:
    """``encode(fn, features)``: ``fn(features)`` row by row, computing only unseen rows."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.entries: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def encode(self, fn: Callable[[torch.Tensor], torch.Tensor],
               features: torch.Tensor) -> torch.Tensor:
        """[B, ...] -> [B, ...] as ``fn(features)``; ``fn`` sees only the rows not kept (in
        their order, so for a batch-invariant ``fn`` the result equals ``fn(features)``)."""
        keys = [content_key(row) for row in features]
        rows: list[torch.Tensor | None] = [self.entries.get(key) for key in keys]
        missing = [i for i, row in enumerate(rows) if row is None]
        if missing:
            fresh = fn(features[missing])
            for i, out in zip(missing, fresh, strict=True):
                rows[i] = out
                self._keep(keys[i], out)
        for key in keys:
            if key in self.entries:
                self.entries.move_to_end(key)
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        return torch.stack(rows)

    def _keep(self, key: bytes, output: torch.Tensor) -> None:
        size = output.numel() * output.element_size()
        if key in self.entries or size > self.max_bytes:
            return
        self.entries[key] = output.detach().clone()  # not a view that pins the whole batch
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, dropped = self.entries.popitem(last=False)
            self.bytes -= dropped.numel() * dropped.element_size()
