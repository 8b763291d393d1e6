"""Pop: rank items by their number of training positives.

The floor of the CTR protocol: with uniform negatives, ranking by popularity alone
has been measured at AUC ≈ 0.79 on Last.FM-KG (MODELS.md), level with KG models at
their published settings. Nothing is learned:

.. math::

    \\hat y_{ui} = \\log(1 + |\\{u' : (u', i) \\text{ a training positive}\\}|)

read from the in-degree of item ``i`` in the training user–item graph
(:meth:`data_prep.kg_dataset.KGRecDataset.interaction_graph`). Only AUC is meaningful: the
score is not a probability, so ACC/F1 at a 0.5 threshold call every pair positive.

Args:
    n_users, n_items: graph sizes (items are nodes ``n_users + i``).
"""

from __future__ import annotations

import dgl
import torch
from torch import nn

from dglrec.models.base import ScoreOutput
from dglrec.models.registry import register_model


@register_model("pop", inputs="ids_and_graph")
class Pop(nn.Module):
    def __init__(self, n_users: int, n_items: int):
        super().__init__()
        self.n_users = n_users
        self.n_items = n_items

    def forward(self, users: torch.Tensor, items: torch.Tensor, graph: dgl.DGLGraph) -> ScoreOutput:
        count = graph.in_degrees(items + self.n_users).float()
        zero = torch.zeros((), device=count.device)
        return ScoreOutput(logits=torch.log1p(count), l2=zero, l2_batch=zero)
