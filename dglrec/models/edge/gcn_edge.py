"""GCN edge regression: predict how much a user likes an artist from the graph.

GCN edge regression on HetRec Last.FM (Ou: *Graph Convolutional Network for Music
Recommender*, NUS), MODELS.md "GCN edge regression". One model, four rows of the paper by switches:

.. math::

    h_i' = η\\Big(\\frac{1}{d_i} \\sum_{j ∈ N(i)} c_{ij}\\, W h_j + b\\Big), \\qquad
    c_{ij} = \\underbrace{1}_{\\text{naive}} \\;\\text{or}\\;
    \\underbrace{\\tilde w_{ij}}_{\\texttt{edge\\_weight}}
    \\;+\\; \\underbrace{a_{ij}}_{\\texttt{attention}},

* ``edge_weight``: ``w_ij``, the edge's liking score, multiplies the message;
* ``attention``: ``a_ij = softmax_{j ∈ N(i)}\\big(U [V h_i \\| V h_j]\\big)``, a learned
  per-edge attention normalised over ``i``'s in-edges, added to the weight;
* ``augmentation_std``: in training only, ``\\tilde w_{ij} = w_{ij} + n``, ``n ~ N(0, σ²)``
  (σ = 0.1 in the paper); evaluation uses ``w_ij``.

``h^0`` are learned node embeddings (no input features), ``η`` is ReLU between
layers and the identity after the last, ``d_i`` the in-degree in the block. The
liking score of edge ``(u, a)`` is ``ŷ = MLP([h_u \\| h_a])`` (one hidden ReLU layer),
plus, with ``bias_terms``, ``μ + b_u + b_a`` (our addition, to compete with the
per-user mean baseline; chosen on validation).

Which edges the messages may use is the trainer's business
(:mod:`dglrec.training.edge`): in the clean protocol no held-out edge, and never
the predicted edge or its reverse.

Args:
    n_users, n_items: node counts (users first, then artists).
    hidden: embedding and layer size.
    n_layers: graph-conv layers (blocks).
    edge_weight, attention, augmentation_std, bias_terms: see above.

Shapes:
    ``forward(blocks, src, dst)``: ``src``/``dst`` ``[n]`` positions among
    ``blocks[-1]``'s destination nodes -> :class:`EdgeOutput` with ``prediction`` ``[n]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import dgl
import dgl.function as fn
import torch
from dgl.nn.functional import edge_softmax
from torch import nn

from dglrec.models.base import half_sq
from dglrec.models.registry import register_model


@dataclass
class EdgeOutput:
    """Predicted scores of a batch of edges and the L2 penalty ``½ Σ w²`` of the model."""

    prediction: torch.Tensor
    l2: torch.Tensor


def node_ids(block: dgl.DGLGraph, side: str) -> torch.Tensor:
    """Global node ids of a block's source/destination nodes (a whole graph: 0..n-1)."""
    data = block.srcdata if side == "src" else block.dstdata
    if dgl.NID in data:
        return data[dgl.NID]
    n = block.num_src_nodes() if side == "src" else block.num_dst_nodes()
    return torch.arange(n, device=block.device)


class EdgeWeightedConv(nn.Module):
    """One layer of the update rule above, on a DGL block or a whole graph."""

    def __init__(self, in_dim: int, out_dim: int, attention: bool, activation: bool):
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim, bias=False)
        self.bias = nn.Parameter(torch.zeros(out_dim))
        self.activation = activation
        self.attention = attention
        if attention:
            self.att_project = nn.Linear(in_dim, out_dim, bias=False)  # V
            self.att_dst = nn.Linear(out_dim, 1, bias=False)  # U, the h_i half
            self.att_src = nn.Linear(out_dim, 1, bias=False)  # U, the h_j half

    def attention_weights(self, block: dgl.DGLGraph, h: torch.Tensor) -> torch.Tensor:
        """``[E]`` ``a_ij``: softmax over each destination's in-edges."""
        projected = self.att_project(h)
        with block.local_scope():
            block.srcdata["s"] = self.att_src(projected)
            block.dstdata["d"] = self.att_dst(projected[: block.num_dst_nodes()])
            block.apply_edges(fn.u_add_v("s", "d", "e"))
            return edge_softmax(block, block.edata["e"]).squeeze(-1)

    def forward(self, block: dgl.DGLGraph, h: torch.Tensor, coefficient: torch.Tensor | None):
        if self.attention:
            a = self.attention_weights(block, h)
            coefficient = a if coefficient is None else coefficient + a
        with block.local_scope():
            block.srcdata["h"] = self.linear(h)
            if coefficient is None:
                block.update_all(fn.copy_u("h", "m"), fn.mean("m", "out"))
            else:
                block.edata["c"] = coefficient.unsqueeze(-1)
                block.update_all(fn.u_mul_e("h", "c", "m"), fn.mean("m", "out"))
            out = block.dstdata["out"] + self.bias
        return torch.relu(out) if self.activation else out


@register_model("gcn_edge", task="edge_regression", objective="mse", binds="training_edges")
class GCNEdgeRegressor(nn.Module):
    def __init__(
        self,
        n_users: int,
        n_items: int,
        hidden: int = 64,
        n_layers: int = 2,
        edge_weight: bool = False,
        attention: bool = False,
        augmentation_std: float = 0.0,
        bias_terms: bool = False,
    ):
        super().__init__()
        if n_layers < 1:
            raise ValueError("n_layers must be >= 1")
        if augmentation_std > 0 and not edge_weight:
            raise ValueError("augmentation perturbs edge weights: it needs edge_weight = true")
        self.n_layers = n_layers
        self.edge_weight = edge_weight
        self.augmentation_std = augmentation_std
        self.bias_terms = bias_terms
        self.embedding = nn.Embedding(n_users + n_items, hidden)
        self.layers = nn.ModuleList(
            EdgeWeightedConv(hidden, hidden, attention, activation=i < n_layers - 1)
            for i in range(n_layers)
        )
        self.predictor = nn.Sequential(
            nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )
        if bias_terms:
            self.node_bias = nn.Embedding(n_users + n_items, 1)
            self.global_bias = nn.Parameter(torch.zeros(()))
            nn.init.zeros_(self.node_bias.weight)
        nn.init.normal_(self.embedding.weight, std=0.1)

    @property
    def n_blocks(self) -> int:
        """How many blocks (graph-conv layers) the edge sampler draws."""
        return self.n_layers

    def bind_training_edges(self, users, items, scores) -> None:
        """Start the global bias at the training mean (bias_terms only)."""
        if self.bias_terms:
            with torch.no_grad():
                self.global_bias.fill_(float(scores.mean()))

    def message_coefficients(self, block: dgl.DGLGraph) -> torch.Tensor | None:
        if not self.edge_weight:
            return None
        w = block.edata["w"]
        if self.training and self.augmentation_std > 0:
            w = w + torch.randn_like(w) * self.augmentation_std  # training only
        return w

    def embed(self, blocks: list[dgl.DGLGraph]) -> torch.Tensor:
        """Representations of ``blocks[-1]``'s destination nodes."""
        h = self.embedding(node_ids(blocks[0], "src"))
        for block, layer in zip(blocks, self.layers, strict=True):
            h = layer(block, h, self.message_coefficients(block))
        return h

    def forward(self, blocks: list[dgl.DGLGraph], src: torch.Tensor, dst: torch.Tensor):
        h = self.embed(blocks)
        pair = torch.cat([h.index_select(0, src), h.index_select(0, dst)], -1)
        prediction = self.predictor(pair).squeeze(-1)
        if self.bias_terms:
            ids = node_ids(blocks[-1], "dst")
            prediction = (
                prediction
                + self.global_bias
                + self.node_bias(ids[src]).squeeze(-1)
                + self.node_bias(ids[dst]).squeeze(-1)
            )
        weights = [m.weight for m in self.modules() if isinstance(m, nn.Linear)]
        return EdgeOutput(prediction, half_sq(*weights))
