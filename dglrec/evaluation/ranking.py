"""Full-ranking top-K evaluation: every test user against every item she has not trained on.

For each user with at least one positive in the evaluated split, every item is
scored; items that are her *training* positives are removed; the rest are ranked
(ties broken towards the smaller item id) and the split's positives are the
relevant items. Per K (``[eval] ranking_ks``), averaged over users:

* ``recall_at_K = |top_K ∩ P_u| / |P_u|``;
* ``ndcg_at_K = Σ_{r ≤ K, item_r ∈ P_u} 1/log2(r + 1) / Σ_{r ≤ min(K, |P_u|)} 1/log2(r + 1)``;

and over all users' lists:

* ``coverage_at_K``: the fraction of the catalogue recommended to anyone;
* ``popularity_at_K``: the mean number of training positives of the recommended
  items, divided by the catalogue's mean (1: no popularity bias; larger: the
  list favours popular items).

Scoring runs in chunks of users × all items through a scoring function: the
trainer's grid scorer where the model has one (a chunk of users against every item
at once: KGCN-family models run their layers once per chunk over blocks sampled once),
else its pair scorer (KG models then get user-conditioned blocks per pair, others
score ids). Memory is bounded by ``ranking_users`` × n_items scores (users' training
and held-out items are kept as sorted rows, not ``n_users × n_items`` masks); a
progress bar shows the chunks.
Checked against a per-user brute-force reference in ``tests/test_ranking.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from tqdm.auto import tqdm


class UserItemSets:
    """Each user's set of items, as CSR rows: a dense ``[B, n_items]`` mask per chunk only.

    A full ``[n_users, n_items]`` mask is ``n_users × n_items`` bytes (72 GB at 100×
    Last.FM); the rows of one chunk of users are ``chunk × n_items``.
    """

    def __init__(self, users: torch.Tensor, items: torch.Tensor, n_users: int, n_items: int):
        keys = torch.unique(users * n_items + items)  # sorted: by user, then item
        self.n_items = n_items
        self.keys = keys
        self.items = keys % n_items
        counts = torch.bincount(keys // n_items, minlength=n_users)
        self.indptr = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(counts, 0)])

    @classmethod
    def positives(cls, pairs: torch.Tensor, n_users: int, n_items: int) -> UserItemSets:
        positive = pairs[pairs[:, 2] == 1]
        return cls(positive[:, 0], positive[:, 1], n_users, n_items)

    def sizes(self) -> torch.Tensor:
        return self.indptr[1:] - self.indptr[:-1]

    def contains(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``[n]`` whether each ``(user, item)`` is in the sets."""
        return torch.isin(users * self.n_items + items, self.keys)

    def rows(self, users: torch.Tensor) -> torch.Tensor:
        """``[len(users), n_items]`` bool mask of these users' items."""
        start, size = self.indptr[users], self.sizes()[users]
        row = torch.repeat_interleave(torch.arange(len(users)), size)
        first = torch.cumsum(size, 0) - size
        slot = start[row] + torch.arange(len(row)) - first[row]
        mask = torch.zeros(len(users), self.n_items, dtype=torch.bool)
        mask[row, self.items[slot]] = True
        return mask


def top_items(scores: torch.Tensor, exclude: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` best items per row (``[..., n_items]``), ``exclude`` left out.

    Ties go to the smaller item id (a tiny id-proportional amount is subtracted in
    float64). Never more than the items left per row where every row leaves as many.
    """
    n_items = scores.shape[-1]
    keyed = scores.double() - torch.arange(n_items, dtype=torch.float64) * 1e-12
    keyed = keyed.masked_fill(exclude, -math.inf)
    return torch.topk(keyed, min(k, n_items), dim=-1).indices


def rank_metrics(
    scores: torch.Tensor, exclude: torch.Tensor, relevant: torch.Tensor, ks: list[int]
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per-user recall@K and ndcg@K for one chunk, and the chunk's top-``max(ks)`` lists.

    Args:
        scores: ``[B, n_items]``.
        exclude: ``[B, n_items]`` items removed from the ranking (training positives).
        relevant: ``[B, n_items]`` the held-out positives.
    """
    top = top_items(scores, exclude, max(ks))  # [B, k_max]
    hits = relevant.gather(1, top).double()
    n_relevant = relevant.sum(1).double()
    discount = 1 / torch.log2(torch.arange(2, top.shape[1] + 2, dtype=torch.float64))
    out = {}
    for k in ks:
        out[f"recall_at_{k}"] = hits[:, :k].sum(1) / n_relevant
        dcg = (hits[:, :k] * discount[:k]).sum(1)
        ideal_len = n_relevant.clamp(max=k).long()
        ideal = torch.cumsum(discount, 0)[ideal_len - 1]
        out[f"ndcg_at_{k}"] = dcg / ideal
    return out, top


def _cold_recalls(top: torch.Tensor, relevant_cold: torch.Tensor, ks: list[int]) -> dict:
    """Per-user recall of the cold relevant items (0 for users without one, counted apart)."""
    has = relevant_cold.any(1)
    hits = relevant_cold.gather(1, top).double()
    n_cold = relevant_cold.sum(1).double().clamp(min=1)
    out = {f"cold_recall_at_{k}": hits[:, :k].sum(1) / n_cold * has for k in ks}
    out["cold_ranking_users"] = has.double()
    return out


@torch.no_grad()
def evaluate_ranking(
    score_pairs: Callable[[torch.Tensor], np.ndarray],
    train: torch.Tensor,
    held_out: torch.Tensor,
    n_users: int,
    n_items: int,
    ks: list[int],
    chunk_users: int = 64,
    split: str = "test",
    cold: torch.Tensor | None = None,
    check: Callable[[], None] | None = None,
    score_grid: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """Top-K metrics of a scoring function on a held-out split (see the module docstring).

    Args:
        score_pairs: ``[n, 3]`` (user, item, label) pairs -> ``[n]`` scores.
        train: ``[m, 3]`` training pairs; their positives are left out of the ranking.
        held_out: ``[k, 3]`` the evaluated split; its positives are the relevant items.
        n_users, n_items: the catalogue's size.
        ks: the cut-offs K.
        chunk_users: users scored at a time (memory: ``chunk_users × n_items`` scores).
        split: the split's name, for the progress bar.
        cold: ``[n_items]`` bool, the cold items: adds ``cold_recall_at_K``, the recall
            of each user's cold relevant items among her top K (over the
            ``cold_ranking_users`` users who have one).
        check: called before each chunk; raises to stop (the trainer's interrupt check).
        score_grid: ``[B]`` users -> ``[B, n_items]`` scores against every item; used
            instead of ``score_pairs`` when given (the same scores, without the pairs).
    """
    seen = UserItemSets.positives(train, n_users, n_items)
    held = held_out[held_out[:, 2] == 1]
    held = held[~seen.contains(held[:, 0], held[:, 1])]
    relevant = UserItemSets(held[:, 0], held[:, 1], n_users, n_items)
    users = torch.nonzero(relevant.sizes() > 0, as_tuple=True)[0]
    popularity = torch.bincount(seen.items, minlength=n_items).double()
    sums: dict[str, float] = {}
    recommended = {k: torch.zeros(n_items, dtype=torch.bool) for k in ks}
    pop_sum = {k: 0.0 for k in ks}
    items = torch.arange(n_items)
    chunks = range(0, len(users), chunk_users)
    for start in tqdm(chunks, desc=f"ranking {split}", leave=False, disable=None):
        if check is not None:
            check()
        chunk = users[start : start + chunk_users]
        if score_grid is not None:
            scores = score_grid(chunk)
        else:
            pairs = torch.stack(
                [
                    chunk.repeat_interleave(n_items),
                    items.repeat(len(chunk)),
                    torch.zeros(len(chunk) * n_items, dtype=torch.long),
                ],
                1,
            )
            scores = torch.from_numpy(score_pairs(pairs)).view(len(chunk), n_items)
        chunk_relevant = relevant.rows(chunk)
        per_user, top = rank_metrics(scores, seen.rows(chunk), chunk_relevant, ks)
        if cold is not None:
            per_user.update(_cold_recalls(top, chunk_relevant & cold, ks))
        for name, values in per_user.items():
            sums[name] = sums.get(name, 0.0) + float(values.sum())
        for k in ks:
            recommended[k][top[:, :k].reshape(-1)] = True
            pop_sum[k] += float(popularity[top[:, :k]].sum())
    n = max(len(users), 1)
    n_cold = sums.pop("cold_ranking_users", 0.0)
    out = {
        name: total / n if not name.startswith("cold_") else total / n_cold if n_cold else math.nan
        for name, total in sums.items()
    }
    if cold is not None:
        out["cold_ranking_users"] = n_cold
    mean_popularity = float(popularity.mean()) or 1.0
    for k in ks:
        out[f"coverage_at_{k}"] = float(recommended[k].double().mean())
        out[f"popularity_at_{k}"] = pop_sum[k] / (n * k) / mean_popularity
    out["ranking_users"] = float(len(users))
    return out
