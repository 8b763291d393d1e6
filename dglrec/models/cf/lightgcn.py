"""LightGCN: Simplifying and Powering Graph Convolution Network for Recommendation.

He, Deng, Wang, Li, Zhang, Wang. SIGIR 2020. https://arxiv.org/abs/2002.02126

A non-KG baseline on the training user–item graph
(:meth:`data_prep.kg_dataset.KGRecDataset.interaction_graph`): no feature transforms or
non-linearities, only normalised neighbourhood sums,

.. math::

    e^{(k+1)}_u = \\sum_{i ∈ N(u)} \\frac{1}{\\sqrt{|N(u)||N(i)|}} e^{(k)}_i, \\qquad
    e_u = \\frac{1}{K+1} \\sum_{k=0}^{K} e^{(k)}_u

(and symmetrically for items), scored by :math:`\\hat y_{ui} = e_u^⊤ e_i` and trained
with BPR on the layer-0 embeddings' batch rows as the L2 term. Only training
positives are in the graph, so eval and test pairs never carry messages.

Args:
    n_users, n_items: table sizes.
    dim: embedding size.
    n_layers: ``K`` propagation steps.

Shapes:
    input ``users, items`` ``[n]`` and the interaction graph (``U + I`` nodes, edge
    data ``norm``); output :class:`~dglrec.models.base.ScoreOutput` with logits ``[n]``.
"""

from __future__ import annotations

from collections.abc import Callable

import dgl
import dgl.function as fn
import torch
from torch import nn

from dglrec.models.base import ScoreOutput, half_sq
from dglrec.models.registry import register_model


@register_model(
    "lightgcn", inputs="ids_and_graph", objective="bpr", scores_grid=True, prepares_grid=True
)
class LightGCN(nn.Module):
    def __init__(self, n_users: int, n_items: int, dim: int = 64, n_layers: int = 3):
        super().__init__()
        if n_layers < 0:
            raise ValueError("n_layers must be >= 0")
        self.n_users = n_users
        self.n_layers = n_layers
        self.embedding = nn.Embedding(n_users + n_items, dim)  # users, then items
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.embedding.weight, std=0.1)

    def propagate(self, graph: dgl.DGLGraph) -> torch.Tensor:
        """``[U + I, d]``: the mean of the ``K + 1`` layer embeddings."""
        h = self.embedding.weight
        layers = [h]
        with graph.local_scope():
            for _ in range(self.n_layers):
                graph.ndata["h"] = h
                graph.update_all(fn.u_mul_e("h", "norm", "m"), fn.sum("m", "h"))
                h = graph.ndata["h"]
                layers.append(h)
        return torch.stack(layers).mean(0)

    def forward(self, users: torch.Tensor, items: torch.Tensor, graph: dgl.DGLGraph) -> ScoreOutput:
        final = self.propagate(graph)
        item_nodes = items + self.n_users
        logits = (final.index_select(0, users) * final.index_select(0, item_nodes)).sum(-1)
        ego_users, ego_items = self.embedding(users), self.embedding(item_nodes)
        return ScoreOutput(
            logits=logits,
            l2=half_sq(self.embedding.weight),
            l2_batch=half_sq(ego_users, ego_items),
        )

    grid_width = 1  # floats per (user, item) of score_grid

    def grid_scorer(
        self, items: torch.Tensor, graph: dgl.DGLGraph
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """``users -> [U, I]`` logits against ``items``, propagating once for every call.

        The propagation does not depend on the users scored, so a full ranking runs it
        once, not once per pass of users.
        """
        final = self.propagate(graph)
        item_vectors = final[items + self.n_users]

        def score(users: torch.Tensor) -> torch.Tensor:
            return final[users] @ item_vectors.T

        return score

    def score_grid(
        self, users: torch.Tensor, items: torch.Tensor, graph: dgl.DGLGraph
    ) -> torch.Tensor:
        """``[U, I]`` logits: one propagation, then one matrix product."""
        return self.grid_scorer(items, graph)(users)
