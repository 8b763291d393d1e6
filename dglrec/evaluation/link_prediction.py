"""Filtered link-prediction metrics of a KG embedding: MRR, MR, Hits@{1,3,10}.

Ranks are *filtered* (Bordes et al. 2013): the other true triples are removed
from the candidates before the true entity is ranked; ties count in its favour.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class KnownTriples:
    """Index of the true triples, to list the known tails of ``(h, r)`` and heads of ``(r, t)``."""

    def __init__(self, triples: torch.Tensor, n_entities: int, n_relations: int):
        self.n_entities, self.n_relations = n_entities, n_relations
        h, r, t = triples.unbind(1)
        self._by = {}
        for predict, group, member in (
            ("tail", h * n_relations + r, t),
            ("head", t * n_relations + r, h),
        ):
            order = torch.argsort(group)
            self._by[predict] = (group[order], member[order])

    def mask(self, anchors: torch.Tensor, relations: torch.Tensor, predict: str) -> torch.Tensor:
        """``[n, n_entities]`` True where the entity completes a known triple."""
        groups, members = self._by[predict]
        query = anchors * self.n_relations + relations
        lo = torch.searchsorted(groups, query)
        hi = torch.searchsorted(groups, query, right=True)
        count = hi - lo
        row = torch.repeat_interleave(torch.arange(len(query)), count)
        first = torch.cumsum(count, 0) - count
        slot = lo[row] + torch.arange(len(row)) - first[row]
        mask = torch.zeros(len(query), self.n_entities, dtype=torch.bool)
        mask[row, members[slot]] = True
        return mask


@torch.no_grad()
def link_prediction_metrics(
    model,
    triples: torch.Tensor,
    known: torch.Tensor,
    batch_size: int = 512,
    check: Callable[[], None] | None = None,
) -> dict[str, float]:
    """Filtered MRR, MR and Hits@{1,3,10} over head and tail prediction of ``triples``.

    Args:
        model: a TransE (``distance_to_all``).
        triples: ``[n, 3]`` triples to rank.
        known: every true triple (all splits), to filter the candidates.
        check: called before each batch; raises to stop (the trainer's interrupt check).
    """
    index = KnownTriples(known, model.entity_emb.num_embeddings, model.relation_emb.num_embeddings)
    ranks = []
    for start in range(0, len(triples), batch_size):
        if check is not None:
            check()
        h, r, t = triples[start : start + batch_size].unbind(1)
        rows = torch.arange(len(h))
        for predict, anchor, target in (("tail", h, t), ("head", t, h)):
            distance = model.distance_to_all(anchor, r, predict)
            true_distance = distance[rows, target].clone()
            distance = distance.masked_fill(index.mask(anchor, r, predict), float("inf"))
            ranks.append(1 + (distance < true_distance[:, None]).sum(1))
    rank = torch.cat(ranks).double()
    return {
        "mrr": float((1 / rank).mean()),
        "mr": float(rank.mean()),
        "hits1": float((rank <= 1).double().mean()),
        "hits3": float((rank <= 3).double().mean()),
        "hits10": float((rank <= 10).double().mean()),
    }
