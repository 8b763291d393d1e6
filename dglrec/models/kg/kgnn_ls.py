"""KGNN-LS: KGCN with label-smoothness regularisation.

Wang, Zhang, Zhang, Leskovec, Zhao, Li, Wang. KDD 2019. https://arxiv.org/abs/1905.04413

The recommendation score is KGCN's (:mod:`dglrec.models.kg.kgcn`): user-specific
edge weights ``Ã_u(v, e) = softmax_{e ∈ N(v)}(e_u^⊤ e_{r_{v,e}})`` aggregate ``H``
hops. Label smoothness asks the *same* user-specific weights to explain the
user's labels: starting from ``l^0_u(e) = y_{ue}`` for items ``e`` the user has a
training label for and ``½`` for every other entity, label propagation runs

.. math::

    l^{k+1}_u(v) = \\sum_{e ∈ N(v)} Ã_u(v, e)\\, l^k_u(e),
    \\qquad l^{k+1}_u(v) ← y_{uv} \\text{ if } v \\text{ is labelled (reset)},

over the receptive field, and the predicted label of the target item, whose own
label is held out, is trained with ``R = Σ_{(u,v)} J(y_{uv}, l_u(v))`` (BCE). The
loss is ``BCE(ŷ, y) + ls_weight · R + λ‖θ‖²``; ``R`` is returned as the ``aux``
term ``loss_ls``. Labels come from the training split only (bound at build time),
and every pair of the batch is held out wherever it appears in the field.

Why ``label_hops`` (default 2) may exceed ``H``: on Last.FM-KG an item's
neighbours are attribute entities (genres, countries...), never labelled. With
``H = 1`` the propagated label of every item is therefore exactly ½ whatever the
weights: the regulariser is a constant with zero gradient (this is what a public
implementation run at the paper's ``H = 1`` computes). Labels must travel
item -> attribute -> item, so the label field is ``max(H, label_hops)`` hops deep;
the score still aggregates only the top ``H`` of those blocks.

Args:
    n_users, n_entities, n_relations: table sizes; ``n_items`` for the label table.
    dim, n_layers, aggregator: as in KGCN (``n_layers`` is ``H``).
    ls_weight: weight of ``R``.
    label_hops: depth of label propagation.
"""

from __future__ import annotations

from typing import Literal

import dgl
import torch
import torch.nn.functional as F

from dglrec.models.base import ScoreOutput, TrainingTensors
from dglrec.models.kg.kgcn import KGCN, sum_by_destination
from dglrec.models.registry import register_model

UNLABELLED = 0.5


@register_model(
    "kgnn_ls",
    binds="training_data",
    kge_init=True,
    importance_sampling=True,
    explains=True,
    scores_grid=True,
)
class KGNNLS(KGCN):
    def __init__(
        self,
        n_users: int,
        n_items: int,
        n_entities: int,
        n_relations: int,
        dim: int = 16,
        n_layers: int = 1,
        aggregator: Literal["sum", "concat", "neighbor"] = "sum",
        ls_weight: float = 0.1,
        label_hops: int = 2,
    ):
        super().__init__(n_users, n_entities, n_relations, dim, n_layers, aggregator)
        if label_hops < 1:
            raise ValueError("label_hops must be >= 1")
        self.n_entities = n_entities
        self.ls_weight = ls_weight
        self.label_hops = label_hops
        # Training labels, keyed user * n_entities + entity and sorted.
        self.register_buffer("label_keys", torch.zeros(0, dtype=torch.long))
        self.register_buffer("label_values", torch.zeros(0))

    @property
    def n_blocks(self) -> int:
        """The sampler draws the wider of the two fields: aggregation and label propagation."""
        return max(self.n_layers, self.label_hops)

    def bind_training_data(self, data: TrainingTensors) -> None:
        """Keep the training labels (never eval or test) for label propagation."""
        pairs = data.train_pairs
        keys = pairs[:, 0] * self.n_entities + data.item_entity[pairs[:, 1]]
        order = torch.argsort(keys)
        self.label_keys = keys[order]
        self.label_values = pairs[order, 2].float()

    def _initial_labels(self, users, nodes, held_out):
        """``(label, known)`` of states: the training label, or ½ if unknown or held out."""
        keys = users * self.n_entities + nodes
        if len(self.label_keys) == 0:
            return torch.full(keys.shape, UNLABELLED, device=keys.device), torch.zeros_like(
                keys, dtype=torch.bool
            )
        pos = torch.searchsorted(self.label_keys, keys).clamp(max=len(self.label_keys) - 1)
        known = (self.label_keys[pos] == keys) & ~torch.isin(keys, held_out)
        return torch.where(known, self.label_values[pos], UNLABELLED), known

    def label_smoothness(
        self, blocks: list[dgl.DGLGraph], pair_index: torch.Tensor
    ) -> torch.Tensor:
        """``R``: mean BCE between each pair's propagated label and its training label."""
        top = blocks[-1].dstdata
        target_keys = top["user"] * self.n_entities + top["node"]
        src = blocks[0].srcdata
        labels, _ = self._initial_labels(src["user"], src["node"], target_keys)
        for depth, block in enumerate(blocks):
            user = self.user_emb(block.dstdata["user"])
            rel = self.relation_emb(block.edata["rel"])
            src, dst, weights = self.attention.edge_weights(block, user, rel)
            n_dst = block.num_dst_nodes()
            propagated = sum_by_destination(weights * labels.index_select(0, src), dst, n_dst)
            has_neighbours = torch.zeros(n_dst, dtype=torch.bool, device=dst.device)
            has_neighbours[dst] = True
            propagated = torch.where(has_neighbours, propagated, UNLABELLED)
            if depth < len(blocks) - 1:  # reset labelled entities (not the held-out targets)
                initial, known = self._initial_labels(
                    block.dstdata["user"], block.dstdata["node"], target_keys
                )
                propagated = torch.where(known, initial, propagated)
            labels = propagated
        truth, known = self._initial_labels(
            top["user"], top["node"], torch.zeros(0, dtype=torch.long, device=labels.device)
        )
        predicted = labels.index_select(0, pair_index)
        truth, known = truth[pair_index], known[pair_index]
        if not known.any():
            return labels.new_zeros(())
        predicted = predicted[known].clamp(1e-6, 1 - 1e-6)
        return F.binary_cross_entropy(predicted, truth[known])

    def score_grid(self, blocks, users, edge_filter=None, cache=None) -> torch.Tensor:
        """KGCN's grid over the top ``H`` of the sampled blocks (the score's field)."""
        return super().score_grid(blocks[-self.n_layers :], users, edge_filter, cache)

    def forward(self, blocks: list[dgl.DGLGraph], pair_index: torch.Tensor) -> ScoreOutput:
        output = super().forward(blocks[-self.n_layers :], pair_index)
        if self.training and self.ls_weight > 0:
            output.aux["loss_ls"] = self.ls_weight * self.label_smoothness(blocks, pair_index)
        return output
