"""Resumable training order and exact test shards (``src.data.samplers``)."""

from __future__ import annotations

import torch

from src.data.samplers import ResumableLoader, ResumableSampler, ShardSampler


def loader(num_replicas: int = 1, rank: int = 0, seed: int = 3) -> ResumableLoader:
    data = list(range(10))
    sampler = ResumableSampler(data, num_replicas=num_replicas, rank=rank, seed=seed)
    return ResumableLoader(data, sampler=sampler, batch_size=2, collate_fn=lambda items: list(items))


def epoch_batches(dl: ResumableLoader, epoch: int) -> list[list[int]]:
    dl.sampler.set_epoch(epoch)
    return list(dl)


def test_order_is_the_seeded_permutation_per_epoch():
    dl = loader()
    first, second = epoch_batches(dl, 0), epoch_batches(dl, 1)
    expected = torch.randperm(10, generator=torch.Generator().manual_seed(3 + 0)).tolist()
    assert sum(first, []) == expected
    assert sum(second, []) == torch.randperm(10, generator=torch.Generator().manual_seed(3 + 1)).tolist()


def test_resumed_loader_continues_with_the_next_batch():
    full = epoch_batches(loader(), 0)
    dl = loader()
    dl.sampler.set_epoch(0)
    seen = []
    for batch in dl:
        seen.append(batch)
        if len(seen) == 2:
            break
    position = dl.position()
    assert position == {"epoch": 0, "batches": 2}
    fresh = loader()
    fresh.restore(position)
    rest = list(fresh)  # Lightning calls set_epoch(0) again: same epoch, the skip stays
    assert seen + rest == full
    assert fresh.position() == {"epoch": 0, "batches": 5}
    # the next epoch starts from its beginning
    assert epoch_batches(fresh, 1) == epoch_batches(loader(), 1)


def test_restored_at_the_end_of_an_epoch_starts_the_next_one_whole():
    fresh = loader()
    fresh.restore({"epoch": 0, "batches": 5})
    assert epoch_batches(fresh, 1) == epoch_batches(loader(), 1)


def test_ranks_split_the_padded_permutation():
    shards = [sum(epoch_batches(loader(3, rank), 0), []) for rank in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]  # 10 padded to 12, like DistributedSampler
    assert set(sum(shards, [])) == set(range(10))


def test_shard_sampler_gives_each_example_to_exactly_one_rank():
    data = list(range(7))
    shards = [list(ShardSampler(data, num_replicas=3, rank=r)) for r in range(3)]
    assert shards == [[0, 3, 6], [1, 4], [2, 5]]
    assert [len(ShardSampler(data, num_replicas=3, rank=r)) for r in range(3)] == [3, 2, 2]
