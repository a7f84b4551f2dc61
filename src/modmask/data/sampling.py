"""Batches from a dataset that has `len()` and `encode(index) -> (inputs, targets)`."""

from __future__ import annotations

import torch


class RandomBatches:
    """Endless batches drawn with replacement (as the original sampler), seeded and resumable
    (`state()` / `load_state()` carry the generator state into a checkpoint)."""

    def __init__(self, data, batch_size: int, seed: int):
        if len(data) == 0:
            raise ValueError("cannot draw batches from an empty dataset")
        self.data, self.batch_size = data, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self):
        return self

    def __next__(self):
        return self.data.encode(torch.randint(0, len(self.data), (self.batch_size,), generator=self.generator))

    def state(self) -> torch.Tensor:
        return self.generator.get_state()

    def load_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)

    def fork(self) -> "RandomBatches":
        """An independent stream at this one's position (the data shared, not copied)."""
        copy = RandomBatches(self.data, self.batch_size, 0)
        copy.load_state(self.state())
        return copy


class MappedBatches:
    """fn(batch) for every batch of `batches` (endless, with state() / load_state(), e.g.
    RandomBatches), resumable as they are: the state is theirs."""

    def __init__(self, batches, fn):
        self.batches, self.fn = batches, fn

    def __iter__(self):
        return self

    def __next__(self):
        return self.fn(next(self.batches))

    def state(self):
        return self.batches.state()

    def load_state(self, state) -> None:
        self.batches.load_state(state)


def fixed_batches(data, batch_size: int) -> list:
    """The whole set, in order, as a list of batches (for evaluation)."""
    return [data.encode(slice(i, i + batch_size)) for i in range(0, len(data), batch_size)]


class OrderedBatches:
    """fixed_batches encoded only when iterated (re-iterable): evaluation data that may never be
    read, e.g. of functions a study's settings leave out, costs no memory."""

    def __init__(self, data, batch_size: int):
        self.data, self.batch_size = data, batch_size

    def __iter__(self):
        return (self.data.encode(slice(i, i + self.batch_size)) for i in range(0, len(self.data), self.batch_size))


class IndexSubset:
    """The examples of `data` at `indices` (int64 [n]), without copying them."""

    def __init__(self, data, indices: torch.Tensor):
        self.data, self.indices = data, indices

    def __len__(self) -> int:
        return len(self.indices)

    def encode(self, index):
        return self.data.encode(self.indices[index])


def first_examples(data, count: int):
    """The first `count` examples of `data` (a dataset with len() and encode()); all of them for
    count 0 or a count beyond its size."""
    return data if not count or count >= len(data) else IndexSubset(data, torch.arange(count))


def balanced_subset(labels: torch.Tensor, count: int, seed: int = 0) -> torch.Tensor:
    """int64 [count] indices, in increasing order, of a seeded subset with the classes as equal as
    possible (the first examples of a class-sorted folder would hold one class only). Each class
    contributes a random sample of its examples; a class with too few gives all it has."""
    if not 0 < count <= len(labels):
        raise ValueError(f"a subset of {count} examples cannot be taken from {len(labels)}")
    generator = torch.Generator().manual_seed(seed)
    shuffled = [(labels == c).nonzero().flatten()[torch.randperm(int((labels == c).sum()), generator=generator)]
                for c in labels.unique()]
    # deal round by round (one example of each class per round) until `count` are taken
    rank = torch.cat([torch.arange(len(s)) for s in shuffled])
    order = torch.cat(shuffled)[torch.sort(rank, stable=True).indices]
    return order[:count].sort().values
