"""Ripple sets (RippleNet): each user's KG triples reached from her training positives.

Hop 0 starts from the entities of the user's *training positives only* (eval and
test pairs never seed a ripple); hop ``k`` holds triples ``(h, r, t)`` with ``h``
a tail of hop ``k - 1`` (for hop 0, a seed entity). Each hop keeps ``n_memory``
triples per user: a uniform sample without replacement when the user has at
least that many candidates, with replacement otherwise (RippleNet's rule). A
user with no candidate at hop ``k > 0`` repeats hop ``k - 1`` (RippleNet's
rule); one with none at hop 0 gets an empty mask and a zero response.

The KG is walked undirected, as the KGCN family does (MODELS.md): a triple is
usable from its head and, with the same relation, from its tail. On Last.FM-KG
every head is an item, so a directed walk would stop after one hop.

Everything is vectorised over users: candidates are built by expanding
``(user, entity)`` seeds along a CSR adjacency, and sampled with one sort.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class RippleSets:
    """Memories ``[n_users, n_hop, n_memory]`` and ``mask`` ``[n_users]`` (False: no memory)."""

    heads: torch.Tensor
    relations: torch.Tensor
    tails: torch.Tensor
    mask: torch.Tensor


def undirected_adjacency(triples: torch.Tensor, n_entities: int):
    """CSR over ``head -> tail`` and ``tail -> head`` edges: ``(indptr, neighbour, relation)``."""
    h, r, t = triples.unbind(1)
    src, dst, rel = torch.cat([h, t]), torch.cat([t, h]), torch.cat([r, r])
    order = torch.argsort(src * n_entities + dst, stable=True)
    src, dst, rel = src[order], dst[order], rel[order]
    indptr = torch.zeros(n_entities + 1, dtype=torch.long)
    indptr[1:] = torch.cumsum(torch.bincount(src, minlength=n_entities), 0)
    return indptr, dst, rel


def sample_per_group(
    group: torch.Tensor, n_groups: int, k: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``k`` members per group (``group`` sorted ascending): indices ``[n_groups, k]`` and a mask.

    Without replacement where the group has ``>= k`` members, with replacement
    where it has fewer, none (mask False) where it is empty.
    """
    size = torch.bincount(group, minlength=n_groups)
    first = torch.cumsum(size, 0) - size
    # Without replacement: random keys, each group's k smallest (one sort for all groups).
    keys = group.double() + torch.rand(len(group), generator=generator, dtype=torch.float64)
    order = torch.argsort(keys)
    rank = torch.arange(len(group)) - first[group[order]]
    without = torch.zeros(n_groups, k, dtype=torch.long)
    rich_rows = order[rank < k]  # in group order, k per rich group
    rich = size >= k
    without[rich] = rich_rows[rich[group[rich_rows]]].view(-1, k)
    # With replacement: k uniform offsets into the group's range.
    offsets = (torch.rand(n_groups, k, generator=generator) * size[:, None]).long()
    with_replacement = first[:, None] + offsets.clamp(max=(size[:, None] - 1).clamp(min=0))
    chosen = torch.where(rich[:, None], without, with_replacement)
    return chosen, size > 0


def build_ripple_sets(
    positives: torch.Tensor,
    triples: torch.Tensor,
    n_users: int,
    n_entities: int,
    n_hop: int,
    n_memory: int,
    seed: int,
) -> RippleSets:
    """Ripple sets from ``positives`` (``[n, 2]`` user, *entity*: training positives only).

    Args:
        positives: the users' training positives, items already mapped to entities.
        triples: ``[m, 3]`` (head, relation, tail).
        seed: fixes the memory samples.
    """
    generator = torch.Generator().manual_seed(seed)
    indptr, neighbour, relation = undirected_adjacency(triples, n_entities)
    seeds = torch.unique(positives[:, 0] * n_entities + positives[:, 1])
    heads = torch.zeros(n_users, n_hop, n_memory, dtype=torch.long)
    relations = torch.zeros_like(heads)
    tails = torch.zeros_like(heads)
    mask = torch.zeros(n_users, dtype=torch.bool)
    for hop in range(n_hop):  # a loop over hops (2-3), never over users
        seed_user, seed_entity = seeds // n_entities, seeds % n_entities
        degree = indptr[seed_entity + 1] - indptr[seed_entity]
        cand_seed = torch.repeat_interleave(torch.arange(len(seeds)), degree)
        first = torch.cumsum(degree, 0) - degree
        slot = indptr[seed_entity][cand_seed] + torch.arange(len(cand_seed)) - first[cand_seed]
        cand_user = seed_user[cand_seed]  # sorted: seeds are sorted by user
        if len(cand_user):
            chosen, has = sample_per_group(cand_user, n_users, n_memory, generator)
            chosen = chosen.clamp(max=len(cand_user) - 1)  # empty groups: masked below
            hop_heads = seed_entity[cand_seed[chosen]]
            hop_tails, hop_relations = neighbour[slot[chosen]], relation[slot[chosen]]
        else:
            has = torch.zeros(n_users, dtype=torch.bool)
            hop_heads = hop_tails = hop_relations = torch.zeros_like(heads[:, 0])
        if hop == 0:
            mask = has
            heads[:, 0], relations[:, 0], tails[:, 0] = hop_heads, hop_relations, hop_tails
        else:
            # No candidate at this hop: repeat the previous hop (RippleNet).
            keep = has[:, None]
            heads[:, hop] = torch.where(keep, hop_heads, heads[:, hop - 1])
            relations[:, hop] = torch.where(keep, hop_relations, relations[:, hop - 1])
            tails[:, hop] = torch.where(keep, hop_tails, tails[:, hop - 1])
        users = torch.arange(n_users)[:, None].expand(-1, n_memory)
        next_seeds = (users * n_entities + tails[:, hop])[mask]
        seeds = torch.unique(next_seeds)
    return RippleSets(heads, relations, tails, mask)
