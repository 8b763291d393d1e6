"""Per-user mean: predict an edge's score as the user's mean training score.

A trivial edge-regression baseline that beats every variant of the GCN paper's (Ou, NUS) public
code on HetRec (MODELS.md: test MAE ≈ 0.080); a user without training edges gets
the global mean. Nothing to train: the trainer only evaluates it.

.. math:: \\hat w_{ua} = \\frac{1}{|N_{train}(u)|} \\sum_{a' ∈ N_{train}(u)} w_{ua'}
"""

from __future__ import annotations

import torch
from torch import nn

from dglrec.models.edge.gcn_edge import EdgeOutput
from dglrec.models.registry import register_model


@register_model(
    "user_mean", inputs="ids", task="edge_regression", objective="mse", binds="training_edges"
)
class UserMean(nn.Module):
    def __init__(self, n_users: int, n_items: int):
        super().__init__()
        self.register_buffer("user_mean", torch.zeros(n_users))

    def bind_training_edges(self, users, items, scores) -> None:
        total = torch.zeros_like(self.user_mean).index_add_(0, users, scores.float())
        count = torch.zeros_like(self.user_mean).index_add_(0, users, torch.ones_like(total[users]))
        fallback = scores.float().mean()
        self.user_mean.copy_(torch.where(count > 0, total / count.clamp(min=1), fallback))

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> EdgeOutput:
        return EdgeOutput(self.user_mean[users], self.user_mean.new_zeros(()))
