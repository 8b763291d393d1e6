"""Biased matrix factorisation for edge regression (user + artist biases, optional factors).

Koren, Bell, Volinsky. Matrix factorization techniques for recommender systems.
IEEE Computer 2009. The trivial-but-strong row next to the GCN (Ou, NUS).

.. math:: \\hat w_{ua} = μ + b_u + b_a + p_u^⊤ q_a

trained with MSE (+ ``train.l2`` · ½‖θ‖² over the batch's rows, the artist biases
weighted ``item_l2_scale`` times more: most artists have one or two listeners, and
their biases overfit first); ``dim = 0`` is the biases-only model. ``μ`` starts at
the training mean.

Args:
    n_users, n_items: table sizes.
    dim: factor size (0: biases only).
    item_l2_scale: extra weight of the artist-bias penalty.
"""

from __future__ import annotations

import torch
from torch import nn

from dglrec.models.base import half_sq
from dglrec.models.edge.gcn_edge import EdgeOutput
from dglrec.models.registry import register_model


@register_model(
    "biased_mf", inputs="ids", task="edge_regression", objective="mse", binds="training_edges"
)
class BiasedMF(nn.Module):
    def __init__(self, n_users: int, n_items: int, dim: int = 0, item_l2_scale: float = 1.0):
        super().__init__()
        self.dim = dim
        self.item_l2_scale = item_l2_scale
        self.global_bias = nn.Parameter(torch.zeros(()))
        self.user_bias = nn.Embedding(n_users, 1)
        self.item_bias = nn.Embedding(n_items, 1)
        nn.init.zeros_(self.user_bias.weight)
        nn.init.zeros_(self.item_bias.weight)
        if dim > 0:
            self.user_factors = nn.Embedding(n_users, dim)
            self.item_factors = nn.Embedding(n_items, dim)
            nn.init.normal_(self.user_factors.weight, std=0.01)
            nn.init.normal_(self.item_factors.weight, std=0.01)

    def bind_training_edges(self, users, items, scores) -> None:
        with torch.no_grad():
            self.global_bias.fill_(float(scores.float().mean()))

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> EdgeOutput:
        bu, bi = self.user_bias(users).squeeze(-1), self.item_bias(items).squeeze(-1)
        prediction = self.global_bias + bu + bi
        rows = [bu, bi * self.item_l2_scale**0.5]
        if self.dim > 0:
            p, q = self.user_factors(users), self.item_factors(items)
            prediction = prediction + (p * q).sum(-1)
            rows += [p, q]
        return EdgeOutput(prediction, half_sq(*rows))
