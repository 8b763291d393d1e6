"""KAISG: Knowledge-aware Importance Sampling Graph network.

Xiao, You, Sun: *Knowledge Aggregation of Importance Sampling Based on GNN for Music
Recommendation*.

A KGCN (:mod:`dglrec.models.kg.kgcn`) with three changes:

1. entity and relation tables initialised by TransE (``[model] init = "transe"``,
   see :mod:`dglrec.training.kge`);
2. *importance top-K sampling*: every (user, entity) keeps only the ``K`` neighbours
   of highest importance for that user (``[sampler] kind = "importance_topk"``,
   :class:`dglrec.sampling.blocks.ImportanceTopK`);
3. neighbours weighted by the softmax of the importance itself:

.. math::

    s^u_r = \\mathrm{sigmoid}(e_u^⊤ e_r), \\qquad
    \\tilde s^u_{r_{v,a}} =
        \\frac{\\exp s^u_{r_{v,a}}}{\\sum_{a' ∈ N_K(v)} \\exp s^u_{r_{v,a'}}}, \\qquad
    e_{N(v)} = \\sum_{a ∈ N_K(v)} \\tilde s^u_{r_{v,a}} e_a

with the sum aggregator :math:`e_v[n+1] = σ(W(e_v[n] + e_{N(v)}[n]) + b)` for
``N`` layers and :math:`\\hat y = \\mathrm{sigmoid}(e_v[N]^⊤ e_u)`. The paper leaves
σ unnamed; as in KGCN it is ReLU, and tanh in the last layer. ``K`` and ``N`` are
not given in the paper: the defaults are 8 and 1 (``recipes/kaisg_sweep_*.toml``
vary them).

Args:
    n_users, n_entities, n_relations: graph sizes.
    dim: embedding size (16 in the paper).
    n_layers: ``N``; must match the sampler.

Shapes: as :class:`~dglrec.models.kg.kgcn.KGCN`.
"""

from __future__ import annotations

import torch

from dglrec.models.kg.kgcn import KGCN, UserRelationAttention
from dglrec.models.registry import register_model


class ImportanceAttention(UserRelationAttention):
    """Edge weights = softmax over a state's neighbours of ``sigmoid(e_u · e_r)``."""

    def logit(self, affinity: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(affinity)


@register_model("kaisg", kge_init=True, importance_sampling=True, explains=True, scores_grid=True)
class KAISG(KGCN):
    def __init__(
        self, n_users: int, n_entities: int, n_relations: int, dim: int = 16, n_layers: int = 1
    ):
        super().__init__(n_users, n_entities, n_relations, dim, n_layers, aggregator="sum")
        self.attention = ImportanceAttention()
