"""What every user-item scoring model returns to the trainer."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


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
    """``½ Σ x²`` over all the given tensors."""
    return sum(t.pow(2).sum() for t in tensors) / 2


@dataclass
class TrainingTensors:
    """What a model may read from the dataset when it is built: training data only.

    Models that need more than table sizes (MKR: the item–entity alignment;
    RippleNet: ripple sets; KGNN-LS: training labels) define
    ``bind_training_data(tensors)``; the builder calls it once, before any
    checkpoint is loaded, so what it stores can be buffers saved with the model.

    Attributes:
        train_pairs: ``[n, 3]`` (user, item, label) of the training split only.
        item_entity: ``[n_items]`` entity id of each item.
        triples: ``[m, 3]`` (head, relation, tail) KG triples as released.
        n_entities: number of entities.
        seed: the run's seed (for anything the model samples once, e.g. ripple sets).
    """

    train_pairs: torch.Tensor
    item_entity: torch.Tensor
    triples: torch.Tensor
    n_entities: int
    seed: int
