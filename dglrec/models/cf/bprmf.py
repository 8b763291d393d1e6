"""BPR-MF: matrix factorisation trained with Bayesian Personalized Ranking.

Rendle, Freudenthaler, Gantner, Schmidt-Thieme. UAI 2009. https://arxiv.org/abs/1205.2618

A non-KG baseline: on Last.FM's uniform-negative CTR protocol a well-trained
BPR-MF has been measured above the KG models' published settings (MODELS.md).

.. math::

    \\hat y_{ui} = e_u^⊤ e_i, \\qquad
    \\mathcal{L} = -\\sum_{(u,i,j)} \\log σ(\\hat y_{ui} - \\hat y_{uj}) + λ \\lVert Θ \\rVert^2

over training positives ``(u, i)`` and an item ``j`` drawn uniformly among those
``u`` has no training positive for (the trainer's ``"bpr"`` objective). It needs no
KG blocks: it scores ``(user, item)`` ids directly. For CTR metrics the score
passes through a sigmoid; AUC is unaffected, ACC/F1 at 0.5 depend on calibration,
which the ranking loss does not train.

Args:
    n_users, n_items: table sizes.
    dim: embedding size.

Shapes:
    input ``users, items`` ``[n]``; output :class:`~dglrec.models.base.ScoreOutput`
    with logits ``[n]``.
"""

from __future__ import annotations

import torch
from torch import nn

from dglrec.models.base import ScoreOutput, half_sq
from dglrec.models.registry import register_model


@register_model("bprmf", inputs="ids", objective="bpr", scores_grid=True)
class BPRMF(nn.Module):
    def __init__(self, n_users: int, n_items: int, dim: int = 64):
        super().__init__()
        self.user_emb = nn.Embedding(n_users, dim)
        self.item_emb = nn.Embedding(n_items, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.user_emb.weight, std=0.1)
        nn.init.normal_(self.item_emb.weight, std=0.1)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> ScoreOutput:
        user, item = self.user_emb(users), self.item_emb(items)
        return ScoreOutput(
            logits=(user * item).sum(-1),
            l2=half_sq(self.user_emb.weight, self.item_emb.weight),
            l2_batch=half_sq(user, item),
        )

    grid_width = 1  # floats per (user, item) of score_grid

    def score_grid(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``[U, I]`` logits ``e_u^⊤ e_i``: one matrix product."""
        return self.user_emb(users) @ self.item_emb(items).T
