"""Which samples an epoch visits, in which order: weighted across manifests, seeded, resumable.

A manifest's ``weight`` multiplies how often its samples are seen per epoch (1.0: each once;
2.0: each twice; 0.5: a random half), so a small, valuable corpus can be up-sampled next to a big
one. The order is a pure function of (seed, epoch), so resuming at position p of epoch e replays
exactly the samples an uninterrupted run would have seen; no sampler state needs saving beyond
(epoch, position).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence

import torch


def _generator(seed: int, epoch: int) -> torch.Generator:
    digest = hashlib.blake2b(f"sampler\x1f{seed}\x1f{epoch}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little"))


class WeightedEpochSampler:
    """Global indices into the concatenation of the sources (source 0's rows first)."""

    def __init__(self, sizes: Sequence[int], weights: Sequence[float], seed: int):
        if len(sizes) != len(weights):
            raise ValueError(f"{len(sizes)} sources but {len(weights)} weights")
        if any(s <= 0 for s in sizes):
            raise ValueError(f"every source needs at least one sample, got sizes {list(sizes)}")
        if any(w <= 0 for w in weights):
            raise ValueError(f"weights must be > 0, got {list(weights)}")
        self.sizes, self.weights, self.seed = list(sizes), list(weights), seed
        self.offsets = [sum(self.sizes[:i]) for i in range(len(self.sizes))]

    def samples_per_source(self) -> list[int]:
        return [max(1, round(w * s)) for s, w in zip(self.sizes, self.weights, strict=True)]

    def __len__(self) -> int:
        return sum(self.samples_per_source())

    def epoch_order(self, epoch: int) -> torch.Tensor:
        generator = _generator(self.seed, epoch)
        parts = []
        for size, offset, count in zip(self.sizes, self.offsets, self.samples_per_source(),
                                       strict=True):
            repeats, remainder = divmod(count, size)
            chunks = [torch.randperm(size, generator=generator) for _ in range(repeats)]
            if remainder:
                chunks.append(torch.randperm(size, generator=generator)[:remainder])
            parts.append(torch.cat(chunks) + offset)
        order = torch.cat(parts)
        return order[torch.randperm(order.numel(), generator=generator)]

    def iterate(self, epoch: int, start: int = 0) -> Iterator[int]:
        """This epoch's indices from ``start`` on (``start`` = samples already consumed)."""
        yield from self.epoch_order(epoch)[start:].tolist()
