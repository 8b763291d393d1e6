"""Negative items drawn uniformly among a user's non-positives.

* BPR steps draw one negative per positive at every step (:class:`UnseenItemSampler`);
* BCE-trained CTR models under ``data.train_negatives = "resample"`` draw the
  training split's negatives afresh every epoch (:func:`resample_negatives`).
"""

from __future__ import annotations

import torch


class UnseenItemSampler:
    """Draw, for each user, one item uniformly among those it has no positive for.

    Exact and vectorised: with the user's sorted positives ``p_0 < p_1 < ...``, the
    ``r``-th unseen item is ``r + #{m : p_m - m <= r}``, counted with one
    ``searchsorted`` over all users' keys at once.

    Args:
        positives: ``[n, 2]`` (user, item) pairs to avoid.
        n_items: number of items.
    """

    def __init__(self, positives: torch.Tensor, n_items: int):
        self.n_items = n_items
        keys = torch.unique(positives[:, 0] * n_items + positives[:, 1])  # sorted
        self.keys = keys
        user = keys // n_items
        local = torch.arange(len(keys)) - torch.searchsorted(keys, user * n_items)
        self.adjusted = user * n_items + (keys % n_items - local)  # non-decreasing

    def __call__(
        self, users: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        base = users * self.n_items
        start = torch.searchsorted(self.keys, base)
        n_positive = torch.searchsorted(self.keys, base + self.n_items) - start
        n_unseen = (self.n_items - n_positive).clamp(min=1)  # a user who saw all: item 0..
        uniform = torch.rand(len(users), generator=generator)
        rank = (uniform * n_unseen).long().clamp(max=n_unseen - 1)
        before = torch.searchsorted(self.adjusted, base + rank, right=True) - start
        return (rank + before).clamp(max=self.n_items - 1)


def resample_negatives(
    train: torch.Tensor, sampler: UnseenItemSampler, generator: torch.Generator
) -> torch.Tensor:
    """The training pairs with every negative's item drawn afresh.

    Each negative ``(u, i, 0)`` of ``train`` (``[n, 3]``) becomes ``(u, j, 0)`` with
    ``j`` uniform over the items ``u`` has no known positive for (``sampler``'s
    positives: those of every split), so every user keeps as many negatives as the
    split gives her; draws are independent (with replacement) and fixed by
    ``generator``. Positives and the pairs' order are kept.
    """
    pairs = train.clone()
    negative = pairs[:, 2] == 0
    pairs[negative, 1] = sampler(pairs[negative, 0], generator)
    return pairs
