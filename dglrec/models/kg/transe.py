"""TransE: Translating Embeddings for Modeling Multi-relational Data.

Bordes, Usunier, Garcia-Durán, Weston, Yakhnenko. NeurIPS 2013.
https://papers.nips.cc/paper/5071-translating-embeddings-for-modeling-multi-relational-data

A triple ``(h, r, t)`` holds when ``e_h + e_r ≈ e_t``:

.. math::

    d(h, r, t) = \\lVert e_h + e_r - e_t \\rVert_p, \\qquad
    \\mathcal{L} = \\sum_{(h,r,t)} \\sum_{(h',r,t')} [\\gamma + d(h, r, t) - d(h', r, t')]_+

with ``(h', r, t')`` the triple with its head or its tail replaced by a random
entity ("corrupted"), margin ``γ`` and ``p ∈ {1, 2}``. As in the paper, both
tables start uniform in ``±6/√d``, relation vectors are L2-normalised once, and
entity vectors are L2-normalised before every step (:meth:`normalize_entities`).

Used on its own for link prediction (``recipes/transe.toml``) and to initialise
the entity and relation tables of KG recommenders (``[model] init = "transe"``).

Args:
    n_entities: number of entities.
    n_relations: number of relations.
    dim: embedding size ``d``.
    p_norm: 1 (L1) or 2 (L2) distance.
    margin: ``γ``.

Shapes:
    :meth:`distance`: ``heads, relations, tails`` ``[n]`` -> ``[n]``;
    :meth:`distance_to_all`: ``[n]`` anchors -> ``[n, n_entities]``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from dglrec.models.registry import register_model


@register_model("transe", task="kge", inputs="triples", objective="margin")
class TransE(nn.Module):
    def __init__(
        self,
        n_entities: int,
        n_relations: int,
        dim: int = 16,
        p_norm: Literal[1, 2] = 1,
        margin: float = 1.0,
    ):
        super().__init__()
        if p_norm not in (1, 2):
            raise ValueError(f"p_norm must be 1 or 2, got {p_norm}")
        self.p_norm = p_norm
        self.margin = margin
        self.entity_emb = nn.Embedding(n_entities, dim)
        self.relation_emb = nn.Embedding(n_relations, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 6 / math.sqrt(self.entity_emb.embedding_dim)
        nn.init.uniform_(self.entity_emb.weight, -bound, bound)
        nn.init.uniform_(self.relation_emb.weight, -bound, bound)
        with torch.no_grad():
            self.relation_emb.weight.copy_(F.normalize(self.relation_emb.weight, dim=-1))
        self.normalize_entities()

    @torch.no_grad()
    def normalize_entities(self) -> None:
        self.entity_emb.weight.copy_(F.normalize(self.entity_emb.weight, dim=-1))

    def distance(
        self, heads: torch.Tensor, relations: torch.Tensor, tails: torch.Tensor
    ) -> torch.Tensor:
        translated = self.entity_emb(heads) + self.relation_emb(relations)
        return torch.linalg.vector_norm(
            translated - self.entity_emb(tails), ord=self.p_norm, dim=-1
        )

    def distance_to_all(
        self, anchors: torch.Tensor, relations: torch.Tensor, predict: Literal["head", "tail"]
    ) -> torch.Tensor:
        """``[n, n_entities]`` distances with every entity as the missing tail (or head)."""
        rel = self.relation_emb(relations)
        anchor = self.entity_emb(anchors)
        # ‖a + r - e‖ for a missing tail e; ‖e + r - a‖ = ‖e - (a - r)‖ for a missing head.
        query = anchor + rel if predict == "tail" else anchor - rel
        return torch.cdist(query, self.entity_emb.weight, p=self.p_norm)

    def forward(self, positive: torch.Tensor, corrupted: torch.Tensor) -> torch.Tensor:
        """Mean margin ranking loss of ``[n, 3]`` positive and corrupted ``(h, r, t)`` triples."""
        d_pos = self.distance(positive[:, 0], positive[:, 1], positive[:, 2])
        d_neg = self.distance(corrupted[:, 0], corrupted[:, 1], corrupted[:, 2])
        return F.relu(self.margin + d_pos - d_neg).mean()
