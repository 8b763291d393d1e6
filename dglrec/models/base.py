"""What a model declares at registration, and what it returns to the trainer.

* :class:`Capabilities`: the task, inputs, objective and optional hooks of a
  model, declared by ``@register_model(name, ...)`` and checked against the class;
* :class:`ScoreOutput`, :class:`KGEOutput`: what a CTR model's forward pass and
  KGE step return (edge-regression models return
  :class:`~dglrec.models.edge.gcn_edge.EdgeOutput`);
* :class:`TrainingTensors`: the training data a model may bind at build time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

import torch

Task = Literal["ctr", "edge_regression", "kge"]
# blocks: user-conditioned KG blocks (``forward(blocks, pair_index)``, or for edge
# regression ``forward(blocks, src, dst)``); ids: ``forward(users, items)``;
# ids_and_graph: ``forward(users, items, graph)`` over the training user–item graph;
# triples: KG triples (``forward(positive, negative)``).
Inputs = Literal["blocks", "ids", "ids_and_graph", "triples"]
# bce: labelled pairs; bpr: positives against sampled negatives; bce_and_kge: bce
# steps alternating with KGE steps (``kge_loss``); mse: edge scores; margin: TransE.
Objective = Literal["bce", "bpr", "bce_and_kge", "mse", "margin"]
# What the builder hands the model once, before any checkpoint is loaded.
Binding = Literal["none", "training_data", "training_edges"]

OBJECTIVES_OF_TASK: dict[str, tuple[str, ...]] = {
    "ctr": ("bce", "bpr", "bce_and_kge"),
    "edge_regression": ("mse",),
    "kge": ("margin",),
}


@dataclass(frozen=True)
class Capabilities:
    """What a registered model needs and how it is trained.

    Attributes:
        task: what it predicts.
        inputs: what its forward pass takes (see :data:`Inputs`).
        objective: what the trainer minimises (see :data:`Objective`).
        binds: ``"training_data"``: ``bind_training_data(TrainingTensors)``;
            ``"training_edges"``: ``bind_training_edges(users, items, scores)``.
        kge_init: can start its entity/relation tables from pretrained TransE
            (``load_kge_embeddings``; ``[model] init = "transe"``).
        importance_sampling: scores ``importance_scores(users, relations)`` for
            KAISG's importance top-K sampler.
        explains: ``explain(block)`` gives per-edge attention (``dglrec recommend``).
        modalities: reads the item texts and friendships a recipe's ``[modalities]``
            asks for (:class:`TrainingTensors` ``item_features``, ``user_friends``);
            needs ``binds="training_data"``.
        scores_grid: scores many users against every item at once (the full
            ranking's fast path). Block models: ``score_grid(blocks, users,
            edge_filter, cache)`` gives ``[U, num_dst]`` logits against the destinations
            of sampled (unconditioned) blocks (``cache``: a dict kept over one ranking's
            passes, for what does not depend on the users), and ``dim`` is its state
            width. Id models:
            ``score_grid(users, items)`` (plus the interaction graph for
            ``ids_and_graph``) gives ``[U, I]`` logits, and ``grid_width`` is the
            floats it holds per (user, item).
        prepares_grid: an id model whose item side does not depend on the user
            (LightGCN's propagation): ``grid_scorer(items[, graph])`` returns
            ``users -> [U, I]`` logits, prepared once per ranking.
    """

    task: Task = "ctr"
    inputs: Inputs = "blocks"
    objective: Objective = "bce"
    binds: Binding = "none"
    kge_init: bool = False
    importance_sampling: bool = False
    explains: bool = False
    modalities: bool = False
    scores_grid: bool = False
    prepares_grid: bool = False

    def check(self, cls: type) -> None:
        """Raise ``TypeError`` naming ``cls`` if it lacks what it declares."""
        for name, allowed in (
            ("task", Task),
            ("inputs", Inputs),
            ("objective", Objective),
            ("binds", Binding),
        ):
            if getattr(self, name) not in get_args(allowed):
                raise TypeError(
                    f"{cls.__name__}: {name}={getattr(self, name)!r}; allowed: {get_args(allowed)}"
                )
        if self.objective not in OBJECTIVES_OF_TASK[self.task]:
            raise TypeError(
                f"{cls.__name__}: a {self.task} model is trained by one of "
                f"{OBJECTIVES_OF_TASK[self.task]}, not {self.objective!r}"
            )
        if self.modalities and self.binds != "training_data":
            raise TypeError(f"{cls.__name__}: modalities=True needs binds='training_data'")
        required = {
            "n_blocks": self.inputs == "blocks",
            "kge_loss": self.objective == "bce_and_kge",
            "bind_training_data": self.binds == "training_data",
            "bind_training_edges": self.binds == "training_edges",
            "load_kge_embeddings": self.kge_init,
            "importance_scores": self.importance_sampling,
            "explain": self.explains,
            "score_grid": self.scores_grid,
            "grid_width": self.scores_grid and self.inputs != "blocks",
            "grid_scorer": self.prepares_grid,
        }
        missing = [name for name, needed in required.items() if needed and not hasattr(cls, name)]
        if missing:
            raise TypeError(
                f"{cls.__name__} declares capabilities it does not implement: "
                f"missing {', '.join(missing)}"
            )


@dataclass
class ScoreOutput:
    """Scores of a batch of pairs and the model's L2 penalty for that batch.

    Attributes:
        logits: ``[n_pairs]`` pre-sigmoid scores, in the batch's pair order.
        l2: scalar L2 penalty ``½ Σ w²`` over the whole embedding tables and the
            weight matrices (TensorFlow's ``l2_loss`` as the KGCN code applies it).
        l2_batch: the same over only the table rows this batch looked up (and the
            weight matrices). ``[train] l2_scope`` picks which one the trainer adds,
            times ``train.l2``, to the loss. Either may be a zero-argument callable,
            evaluated only if picked (whole-table sums cost a pass over every table).
        aux: extra loss terms trained jointly with the data loss, already weighted
            (RippleNet's KGE term, KGNN-LS's label smoothness). The trainer adds
            them to the loss and logs each as ``train_<name>``.
    """

    logits: torch.Tensor
    l2: torch.Tensor
    l2_batch: torch.Tensor
    aux: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class KGEOutput:
    """A multi-task model's KGE-step loss on a batch of triples.

    Attributes:
        loss: the data term the KGE step minimises (logged as ``train_loss_kge``).
        l2, l2_batch: as in :class:`ScoreOutput`, for the parameters the step touches.
    """

    loss: torch.Tensor
    l2: torch.Tensor
    l2_batch: torch.Tensor


def half_sq(*tensors: torch.Tensor) -> torch.Tensor:
    """``½ Σ x²`` over all the given tensors; its gradient is ``x`` times the incoming one.

    A penalty over whole embedding tables (``[train] l2_scope = "tables"``) costs full
    passes over every table at every step, forward and backward. Autograd's
    ``x.pow(2).sum() / 2`` takes six (``pow``, ``sum``; ``pow(x, 1)`` and two products
    backward); this takes two (a dot product; one product), with the same gradient bit
    for bit (``(g / 2) · 2x`` and ``g · x`` round once, at the same value).
    """
    if not tensors:
        return torch.zeros(())
    return _HalfSquaredNorm.apply(*tensors)


class _HalfSquaredNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, *tensors: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(*tensors)
        flat = [t.reshape(-1) for t in tensors]
        return sum(torch.dot(f, f) for f in flat) / 2

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        return tuple(
            t * grad if needed else None
            for t, needed in zip(ctx.saved_tensors, ctx.needs_input_grad, strict=True)
        )


@dataclass
class TrainingTensors:
    """What a model may read from the dataset when it is built: training data only.

    Models that need more than table sizes (MKR: the item–entity alignment;
    RippleNet: ripple sets; KGNN-LS: training labels) declare
    ``binds="training_data"`` and define ``bind_training_data(tensors)``; the
    builder calls it once, before any checkpoint is loaded, so what it stores can
    be buffers saved with the model.

    Attributes:
        train_pairs: ``[n, 3]`` (user, item, label) of the training split only.
        item_entity: ``[n_items]`` entity id of each item.
        triples: ``[m, 3]`` (head, relation, tail) KG triples as released.
        n_entities: number of entities.
        seed: the run's seed (for anything the model samples once, e.g. ripple sets).
        item_features: text modality name -> ``[n_items, D]`` vectors (``[modalities]``;
            built with tags counted from non-held-out pairs only).
        item_feature_mask: modality name -> ``[n_items]`` bool, False where an item has none.
        user_friends: ``[n, 2]`` (user, friend) pairs, or None if not asked for.
    """

    train_pairs: torch.Tensor
    item_entity: torch.Tensor
    triples: torch.Tensor
    n_entities: int
    seed: int
    item_features: dict[str, torch.Tensor] = field(default_factory=dict)
    item_feature_mask: dict[str, torch.Tensor] = field(default_factory=dict)
    user_friends: torch.Tensor | None = None
