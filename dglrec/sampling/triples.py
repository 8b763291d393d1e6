"""Batches of KG triples with corrupted tails, for the KGE steps of multi-task models."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from dglrec.seeding import KGE_STREAM, derived_seed


class KGETripleStream:
    """Batches of KG triples for the KGE steps of multi-task models.

    Only triples whose head entity is an item take part (the cross & compress
    unit pairs the head with its item); on Last.FM-KG that is every triple. Each
    epoch walks a fresh permutation cyclically, so any number of KGE steps works;
    the permutation and the corrupted tails depend only on ``(seed, epoch)``.
    """

    def __init__(self, triples: torch.Tensor, item_entity: torch.Tensor, n_entities: int):
        entity_item = torch.full((n_entities,), -1, dtype=torch.long)
        entity_item[item_entity] = torch.arange(len(item_entity))
        items = entity_item[triples[:, 0]]
        keep = items >= 0
        if not keep.any():
            raise ValueError("no KG triple has an item as its head: nothing for the KGE step")
        self.triples, self.items = triples[keep], items[keep]
        self.n_entities = n_entities

    def epoch(self, seed: int, epoch: int, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        generator = torch.Generator().manual_seed(derived_seed(seed, KGE_STREAM, epoch))
        order = torch.randperm(len(self.triples), generator=generator)
        start = 0
        while True:
            index = order[torch.arange(start, start + batch_size) % len(order)]
            start = (start + batch_size) % len(order)
            head, relation, tail = self.triples[index].unbind(1)
            corrupted = torch.randint(0, self.n_entities, (len(index),), generator=generator)
            yield {
                "items": self.items[index],
                "heads": head,
                "relations": relation,
                "tails": tail,
                "corrupted_tails": corrupted,
            }
