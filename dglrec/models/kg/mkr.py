"""MKR: multi-task feature learning for knowledge-graph-enhanced recommendation.

Wang, Zhang, Zhao, Li, Xie, Guo. WWW 2019. https://arxiv.org/abs/1901.08907

Two towers share each item's vector with its aligned KG entity through *cross &
compress* units. For an item vector ``v_l`` and entity vector ``e_l`` (``d``-dim):

.. math::

    C_l = v_l e_l^⊤ ∈ ℝ^{d×d}, \\qquad
    v_{l+1} = C_l w^{VV}_l + C_l^⊤ w^{EV}_l + b^V_l, \\qquad
    e_{l+1} = C_l w^{VE}_l + C_l^⊤ w^{EE}_l + b^E_l,

with ``w`` ``d``-vectors. Since ``C w = v (e^⊤ w)`` and ``C^⊤ w = e (v^⊤ w)``, the
unit never forms ``C``: it costs ``O(d)`` per pair.

* Recommendation tower: ``u_L = MLP^L(u)`` (ReLU layers), ``(v_L, e_L) = C^L(v, e)``,
  ``s = u_L^⊤ v_L`` and ``ŷ = σ(s)`` (MKR's inner-product head; MMSS_MKR's
  *multiple prediction* replaces it, see :class:`MKR` ``squashers``).
* KGE tower, for a triple ``(h, r, t)`` with ``h`` the entity of item ``i``:
  ``(v_L, h_L) = C^L(i, h)``, ``r_L = MLP^L(r)``, ``t̂ = σ(MLP^H([h_L ‖ r_L]))``
  (``H - 1`` hidden ReLU layers of width ``2d``, then a layer to ``d``), and
  ``score(h, r, t) = σ(t^⊤ t̂)``. The KGE step minimises ``-Σ score`` over the
  batch's true triples (+ L2).

Training alternates (the trainer's ``objectives = ("rs", "kge")``): a BCE step on
user–item pairs every batch, a KGE step every ``train.kge_interval`` batches,
each with its own Adam optimizer (``train.lr``, ``train.lr_kge``). The reference
code alternates per epoch instead; MODELS.md and dglrec count batches.

MMSS_MKR (Liu, Yang, Cheng, Sci. Rep. 2024; :mod:`dglrec.models.kg.mmss_mkr`) is this
class with three switches:

* ``squashers`` (multiple prediction): ``ŷ = σ(mean_{f ∈ S} f(s))`` over a set
  ``S ⊆ {sigmoid, tanh, softsign}``; empty ``S`` is MKR's ``ŷ = σ(s)``;
* ``multi_calculation``: ``score = (σ(x) + tanh(x) + softsign(x) + softplus(x)) / 4``
  with ``x = t^⊤ t̂``, instead of ``σ(x)``;
* ``improved_loss``: the KGE step minimises ``-λ1 (Σ score(true) - Σ score(corrupted))``
  (+ L2), with corrupted triples ``(h, r, t')``, ``t'`` a uniform random entity;
  ``λ1`` is ``kge_weight``.

Args:
    n_users, n_items, n_entities, n_relations: table sizes (item ``i`` pairs with
        entity ``item_entity[i]``, which the batches supply).
    dim: ``d``.
    low_layers: ``L``, cross & compress units and user/relation MLP layers.
    high_layers: ``H``, KGE prediction layers.

Shapes:
    ``forward(users, items)``: ``[n]`` ids -> logits ``[n]``;
    ``kge_loss(items, heads, relations, tails, corrupted_tails)``: ``[m]`` ids.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from dglrec.models.base import KGEOutput, ScoreOutput, TrainingTensors, half_sq
from dglrec.models.registry import register_model

SQUASHERS = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "softsign": F.softsign}
KGE_SCORE_FUNCTIONS = (torch.sigmoid, torch.tanh, F.softsign, F.softplus)


def multiple_prediction(s: torch.Tensor, squashers: list[str]) -> torch.Tensor:
    """The pre-sigmoid logit: ``mean_{f ∈ S} f(s)``, or ``s`` itself for an empty ``S``."""
    if not squashers:
        return s
    return torch.stack([SQUASHERS[name](s) for name in squashers]).mean(0)


def kge_score(x: torch.Tensor, multi_calculation: bool) -> torch.Tensor:
    """``σ(x)`` (MKR) or the mean of sigmoid, tanh, softsign and softplus of ``x`` (MMSS)."""
    if not multi_calculation:
        return torch.sigmoid(x)
    return torch.stack([f(x) for f in KGE_SCORE_FUNCTIONS]).mean(0)


class CrossCompressUnit(nn.Module):
    """One cross & compress layer: ``(v, e) -> (v', e')`` (see the module docstring)."""

    def __init__(self, dim: int):
        super().__init__()
        self.w_vv = nn.Parameter(torch.empty(dim))
        self.w_ev = nn.Parameter(torch.empty(dim))
        self.w_ve = nn.Parameter(torch.empty(dim))
        self.w_ee = nn.Parameter(torch.empty(dim))
        self.b_v = nn.Parameter(torch.zeros(dim))
        self.b_e = nn.Parameter(torch.zeros(dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = (6 / (len(self.w_vv) + 1)) ** 0.5  # Glorot for the reference's [d, 1] weights
        for w in (self.w_vv, self.w_ev, self.w_ve, self.w_ee):
            nn.init.uniform_(w, -bound, bound)
        nn.init.zeros_(self.b_v)
        nn.init.zeros_(self.b_e)

    def forward(self, v: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # C w = v (e·w) and Cᵀ w = e (v·w): the d×d cross matrix is never built.
        v_next = v * (e @ self.w_vv)[:, None] + e * (v @ self.w_ev)[:, None] + self.b_v
        e_next = v * (e @ self.w_ve)[:, None] + e * (v @ self.w_ee)[:, None] + self.b_e
        return v_next, e_next

    def weights(self) -> list[torch.Tensor]:
        return [self.w_vv, self.w_ev, self.w_ve, self.w_ee]


def _mlp(in_dim: int, out_dims: list[int]) -> nn.ModuleList:
    layers, dim = [], in_dim
    for out in out_dims:
        layers.append(nn.Linear(dim, out))
        dim = out
    return nn.ModuleList(layers)


@register_model(
    "mkr", inputs="ids", objective="bce_and_kge", binds="training_data", scores_grid=True
)
class MKR(nn.Module):
    def __init__(
        self,
        n_users: int,
        n_items: int,
        n_entities: int,
        n_relations: int,
        dim: int = 4,
        low_layers: int = 2,
        high_layers: int = 1,
        squashers: list[Literal["sigmoid", "tanh", "softsign"]] = (),  # noqa: B006 (tuple)
        multi_calculation: bool = False,
        improved_loss: bool = False,
        kge_weight: float = 1.0,
    ):
        super().__init__()
        if low_layers < 1 or high_layers < 1:
            raise ValueError("low_layers and high_layers must be >= 1")
        unknown = set(squashers) - set(SQUASHERS)
        if unknown:
            raise ValueError(f"unknown squashers {sorted(unknown)}; allowed: {sorted(SQUASHERS)}")
        self.squashers = list(squashers)
        self.multi_calculation = multi_calculation
        self.improved_loss = improved_loss
        self.kge_weight = kge_weight
        self.user_emb = nn.Embedding(n_users, dim)
        self.item_emb = nn.Embedding(n_items, dim)
        self.entity_emb = nn.Embedding(n_entities, dim)
        self.relation_emb = nn.Embedding(n_relations, dim)
        self.user_mlp = _mlp(dim, [dim] * low_layers)
        self.relation_mlp = _mlp(dim, [dim] * low_layers)
        self.cross_compress = nn.ModuleList(CrossCompressUnit(dim) for _ in range(low_layers))
        self.tail_mlp = _mlp(2 * dim, [2 * dim] * (high_layers - 1) + [dim])
        self.register_buffer("item_entity", torch.arange(n_items), persistent=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for table in (self.user_emb, self.item_emb, self.entity_emb, self.relation_emb):
            nn.init.xavier_uniform_(table.weight)
        for mlp in (self.user_mlp, self.relation_mlp, self.tail_mlp):
            for layer in mlp:
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)
        for unit in self.cross_compress:
            unit.reset_parameters()

    def bind_training_data(self, data: TrainingTensors) -> None:
        """Which entity each item is aligned with."""
        self.item_entity.copy_(data.item_entity)

    # --------------------------------------------------------------- towers
    @staticmethod
    def _run_mlp(layers: nn.ModuleList, x: torch.Tensor, last_activation=torch.relu):
        for i, layer in enumerate(layers):
            x = layer(x)
            x = last_activation(x) if i == len(layers) - 1 else torch.relu(x)
        return x

    def _cross(self, items: torch.Tensor, entities: torch.Tensor):
        v, e = self.item_emb(items), self.entity_emb(entities)
        for unit in self.cross_compress:
            v, e = unit(v, e)
        return v, e

    def _matrices(self) -> torch.Tensor:
        linear = [
            layer.weight
            for mlp in (self.user_mlp, self.relation_mlp, self.tail_mlp)
            for layer in mlp
        ]
        cross = [w for unit in self.cross_compress for w in unit.weights()]
        return half_sq(*linear, *cross)

    def _tables(self) -> torch.Tensor:
        return half_sq(
            self.user_emb.weight,
            self.item_emb.weight,
            self.entity_emb.weight,
            self.relation_emb.weight,
        )

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> ScoreOutput:
        user = self._run_mlp(self.user_mlp, self.user_emb(users))
        item, _ = self._cross(items, self.item_entity[items])
        s = (user * item).sum(-1)
        matrices = self._matrices()
        rows = half_sq(
            self.user_emb(users), self.item_emb(items), self.entity_emb(self.item_entity[items])
        )
        return ScoreOutput(
            logits=multiple_prediction(s, self.squashers),
            l2=lambda: self._tables() + matrices,
            l2_batch=rows + matrices,
        )

    @property
    def grid_width(self) -> int:
        """Floats per (user, item) of :meth:`score_grid`: ``s`` and one per squasher."""
        return 1 + len(self.squashers)

    def score_grid(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``[U, I]`` logits of :meth:`forward`: each tower once, then one matrix product."""
        user = self._run_mlp(self.user_mlp, self.user_emb(users))
        item, _ = self._cross(items, self.item_entity[items])
        return multiple_prediction(user @ item.T, self.squashers)

    def triple_scores(
        self, items: torch.Tensor, heads: torch.Tensor, relations: torch.Tensor, tails: torch.Tensor
    ) -> torch.Tensor:
        """``score(h, r, t)`` of each triple (``h`` the entity of ``items``)."""
        _, head = self._cross(items, heads)
        relation = self._run_mlp(self.relation_mlp, self.relation_emb(relations))
        tail_pred = self._run_mlp(
            self.tail_mlp, torch.cat([head, relation], -1), last_activation=torch.sigmoid
        )
        return kge_score((self.entity_emb(tails) * tail_pred).sum(-1), self.multi_calculation)

    def kge_loss(
        self,
        items: torch.Tensor,
        heads: torch.Tensor,
        relations: torch.Tensor,
        tails: torch.Tensor,
        corrupted_tails: torch.Tensor,
    ) -> KGEOutput:
        true = self.triple_scores(items, heads, relations, tails).sum()
        if self.improved_loss:
            false = self.triple_scores(items, heads, relations, corrupted_tails).sum()
            loss = -self.kge_weight * (true - false)
        else:
            loss = -true  # MKR: raise the score of true triples
        matrices = self._matrices()
        used_tails = torch.cat([tails, corrupted_tails]) if self.improved_loss else tails
        rows = half_sq(
            self.item_emb(items),
            self.entity_emb(heads),
            self.entity_emb(used_tails),
            self.relation_emb(relations),
        )
        return KGEOutput(loss=loss, l2=lambda: self._tables() + matrices, l2_batch=rows + matrices)
