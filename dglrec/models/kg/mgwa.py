"""MGWA: multi-layer gated weighted aggregation over the KG.

*A music recommendation model based on graph neural network with weighted
aggregation* (in Chinese, with an English abstract).

KAISG's neighbour weighting (softmax over the kept neighbours of
``sigmoid(e_u · e_r)``, TransE-initialised tables, importance top-K sampling) with
a *gated* aggregator, a gated linear unit over the node and its neighbourhood:

.. math::

    x = [e_v[n] \\,\\|\\, e_{N(v)}[n]], \\qquad
    e_v[n+1] = (x W + b) ⊗ \\mathrm{sigmoid}(x V + c)

iterated for ``N`` layers, then :math:`\\hat y = \\mathrm{sigmoid}(e_v[N]^⊤ e_u)`.
The gate decides, per dimension, how much of the mixed node/neighbourhood signal
passes. ``aggregator = "sum"`` swaps in KAISG's sum aggregator (the ablation).

Args:
    n_users, n_entities, n_relations: graph sizes.
    dim: embedding size.
    n_layers: ``N``; must match the sampler.
    aggregator: ``"gated"`` (MGWA) or ``"sum"``.

Shapes: as :class:`~dglrec.models.kg.kgcn.KGCN`.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from dglrec.models.kg.kaisg import ImportanceAttention
from dglrec.models.kg.kgcn import KGCN
from dglrec.models.registry import register_model


class GatedAggregator(nn.Module):
    """``(xW + b) ⊗ sigmoid(xV + c)`` with ``x = [h_v ‖ h_N]``."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(2 * dim, dim)
        self.gate = nn.Linear(2 * dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for layer in (self.linear, self.gate):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, h_dst: torch.Tensor, neighborhood: torch.Tensor) -> torch.Tensor:
        x = torch.cat([h_dst, neighborhood], dim=-1)
        return self.linear(x) * torch.sigmoid(self.gate(x))

    def linear_parts(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(W_v, W_N, b)`` of both halves stacked: pre-activation ``[xW + b ‖ xV + c]``."""
        weight = torch.cat([self.linear.weight, self.gate.weight])  # [2d, 2d]
        dim = self.linear.weight.shape[0]
        return weight[:, :dim], weight[:, dim:], torch.cat([self.linear.bias, self.gate.bias])

    def activate_(self, pre_activation: torch.Tensor) -> torch.Tensor:
        """``(xW + b) ⊗ sigmoid(xV + c)`` from a grid's stacked pre-activation ``[n, 2m, U]``
        (:meth:`linear_parts`)."""
        value, gate = pre_activation.chunk(2, dim=1)
        return value * gate.sigmoid_()


@register_model("mgwa", kge_init=True, importance_sampling=True, explains=True, scores_grid=True)
class MGWA(KGCN):
    def __init__(
        self,
        n_users: int,
        n_entities: int,
        n_relations: int,
        dim: int = 16,
        n_layers: int = 1,
        aggregator: Literal["gated", "sum"] = "gated",
    ):
        super().__init__(n_users, n_entities, n_relations, dim, n_layers, aggregator="sum")
        self.attention = ImportanceAttention()
        if aggregator == "gated":
            self.aggregators = nn.ModuleList(GatedAggregator(dim) for _ in range(n_layers))
        elif aggregator != "sum":
            raise ValueError(f"aggregator must be 'gated' or 'sum', got {aggregator!r}")
        self.reset_parameters()
