"""MMSS_MKR: MKR with multiple prediction, multiple calculation and an improved loss.

MMSS_MKR (Liu, Yang, Cheng: *Music recommendation algorithms based on knowledge graph and
multi-task feature learning*, Scientific Reports 2024).

The model is :class:`~dglrec.models.kg.mkr.MKR` with its three switches on by
default (the update rules are written there):

* multiple prediction: ``ŷ = σ((σ(s) + tanh(s) + softsign(s)) / 3)``, ``s = u_L^⊤ v_L``;
* multiple calculation: ``score = (σ(x) + tanh(x) + softsign(x) + softplus(x)) / 4``,
  ``x = t^⊤ t̂``;
* improved loss: ``L = L_RS - λ1 (Σ score(true) - Σ score(corrupted)) + λ2 ‖w‖²``,
  trained by alternation as in MKR (Algorithm 1 of the paper): the ``L_RS`` part in
  recommendation steps, the ``λ1`` part in KGE steps, ``λ2`` (``train.l2``) in both.

The ablations are recipes that switch parts off: SM_MKR (multiple prediction
only), MS_MKR (multiple calculation only), SS_MKR (improved loss only); Table 7
varies ``squashers`` over the seven non-empty subsets of {sigmoid, tanh, softsign}.
"""

from __future__ import annotations

from typing import Literal

from dglrec.models.kg.mkr import MKR
from dglrec.models.registry import register_model


@register_model(
    "mmss_mkr", inputs="ids", objective="bce_and_kge", binds="training_data", scores_grid=True
)
class MMSSMKR(MKR):
    def __init__(
        self,
        n_users: int,
        n_items: int,
        n_entities: int,
        n_relations: int,
        dim: int = 128,
        low_layers: int = 1,
        high_layers: int = 1,
        squashers: list[Literal["sigmoid", "tanh", "softsign"]] = (  # noqa: B006 (tuple)
            "sigmoid",
            "tanh",
            "softsign",
        ),
        multi_calculation: bool = True,
        improved_loss: bool = True,
        kge_weight: float = 1.0,
    ):
        super().__init__(
            n_users,
            n_items,
            n_entities,
            n_relations,
            dim=dim,
            low_layers=low_layers,
            high_layers=high_layers,
            squashers=squashers,
            multi_calculation=multi_calculation,
            improved_loss=improved_loss,
            kge_weight=kge_weight,
        )
