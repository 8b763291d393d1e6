"""Global mean: predict every edge's score as the mean training score.

A trivial edge-regression baseline (MODELS.md: test MAE ≈ 0.121 on HetRec);
the GCN rows of the GCN paper (Ou, NUS) must be read against it. It has nothing to train:
the trainer only evaluates it.

.. math:: \\hat w_{ua} = \\frac{1}{|E_{train}|} \\sum_{(u',a') ∈ E_{train}} w_{u'a'}
"""

from __future__ import annotations

import torch
from torch import nn

from dglrec.models.edge.gcn_edge import EdgeOutput
from dglrec.models.registry import register_model


@register_model(
    "global_mean", inputs="ids", task="edge_regression", objective="mse", binds="training_edges"
)
class GlobalMean(nn.Module):
    def __init__(self, n_users: int, n_items: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(()))

    def bind_training_edges(self, users, items, scores) -> None:
        self.mean.fill_(float(scores.mean()))

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> EdgeOutput:
        return EdgeOutput(self.mean.expand(len(users)), self.mean.new_zeros(()))
