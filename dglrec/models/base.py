"""What every user-item scoring model returns to the trainer."""

from __future__ import annotations

from dataclasses import dataclass

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
            times ``train.l2``, to the loss.
    """

    logits: torch.Tensor
    l2: torch.Tensor
    l2_batch: torch.Tensor


def half_sq(*tensors: torch.Tensor) -> torch.Tensor:
    """``½ Σ x²`` over all the given tensors."""
    return sum(t.pow(2).sum() for t in tensors) / 2
