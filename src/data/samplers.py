"""Samplers and a loader that make runs resumable and test metrics exact under DDP.

* ``ResumableSampler``: the shuffled, rank-sharded order of ``DistributedSampler``
  (a permutation seeded by ``seed + epoch``, padded so every rank gets as many
  examples), which can start part-way into an epoch.
* ``ResumableLoader``: a ``DataLoader`` that counts the batches it has handed to
  the training loop, so a checkpoint records the exact position inside the epoch
  (``position()``), and a resumed run continues with the next batch
  (``restore()``). Counting in the main process, not in the sampler, keeps
  worker prefetching out of the count.
* ``ShardSampler``: rank ``r`` of ``W`` gets examples ``r, r + W, ...``: every
  example exactly once, no padding (``DistributedSampler`` repeats examples to
  even out the ranks, which would count them twice in test metrics).

Both samplers subclass ``DistributedSampler`` so that Lightning keeps them
instead of injecting its own.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sized
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler


def derived_seed(*parts: object) -> int:
    """A 63-bit seed that depends on every part (e.g. ``(seed, "loader", epoch)``), stable across runs."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (shuffled by ``seed + epoch``) that can skip the first ``k``
    examples of one epoch."""

    def __init__(self, dataset: Sized, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 shuffle: bool = True) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=False)
        self._skip = 0
        self._skip_epoch: int | None = None

    def skip_in_epoch(self, epoch: int, count: int) -> None:
        """Start epoch ``epoch`` at its ``count``-th example of this rank (once)."""
        self.epoch = epoch
        self._skip, self._skip_epoch = count, epoch

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        start = self._skip if self._skip_epoch == self.epoch else 0
        self._skip, self._skip_epoch = 0, None
        return iter(indices[start:])


class ShardSampler(DistributedSampler):
    """Rank ``r`` of ``W`` gets examples ``r, r + W, r + 2W, ...`` in order: each example exactly once."""

    def __init__(self, dataset: Sized, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.num_samples = len(range(rank, len(dataset), num_replicas))
        self.total_size = len(dataset)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, len(self.dataset), self.num_replicas))


class ResumableLoader(DataLoader):
    """A training ``DataLoader`` over a ``ResumableSampler`` that knows how far into the epoch it is.

    The worker seed of each epoch is drawn from a generator seeded by
    ``(sampler seed, epoch)``, so it does not depend on how much of torch's
    global random stream earlier steps used.
    """

    sampler: ResumableSampler

    def __init__(self, dataset: Any, *, sampler: ResumableSampler, **kwargs: Any) -> None:
        if not isinstance(sampler, ResumableSampler):
            raise TypeError(f"ResumableLoader needs a ResumableSampler, got {type(sampler).__name__}")
        super().__init__(dataset, sampler=sampler, **kwargs)
        self._epoch = sampler.epoch
        self._batches = 0

    def __iter__(self) -> Iterator[Any]:
        # A generator: nothing is read until the first batch is requested, by which time Lightning
        # has called set_epoch() and a resumed run has restored the position.
        epoch = self.sampler.epoch
        start = self._batches if epoch == self._epoch else 0
        self.sampler.skip_in_epoch(epoch, start * self.batch_size)
        self.generator = torch.Generator().manual_seed(derived_seed(self.sampler.seed, "workers", epoch))
        self._epoch, self._batches = epoch, start
        for batch in super().__iter__():
            self._batches += 1
            yield batch

    def position(self) -> dict[str, int]:
        """Epoch and number of batches of it already handed out (what a checkpoint stores)."""
        return {"epoch": int(self._epoch), "batches": int(self._batches)}

    def restore(self, position: dict[str, int]) -> None:
        """Continue after ``position["batches"]`` batches of ``position["epoch"]``."""
        self._epoch, self._batches = int(position["epoch"]), int(position["batches"])
        self.sampler.set_epoch(self._epoch)

    # Lightning saves/loads the state of loaders that have these two methods (and then does
    # not warn about a mid-epoch resume); the DataModule's state_dict carries the same data,
    # which also works when Lightning builds the loader before restoring the checkpoint.
    def state_dict(self) -> dict[str, int]:
        return self.position()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.restore(state)
