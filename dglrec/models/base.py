"""What every user-item scoring model returns to the trainer."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ScoreOutput:
    """Scores of a batch of pairs and the model's L2 penalty for that batch.

    Attributes:
        logits: ``[n_pairs]`` pre-sigmoid scores, in the batch's pair order.
        l2: scalar L2 penalty, ``½ Σ w²`` over the weights the model chooses
            to regularise (TensorFlow's ``l2_loss``, as in the KGCN code); the
            trainer adds ``train.l2 * l2`` to the loss.
    """

    logits: torch.Tensor
    l2: torch.Tensor


def half_sq(*tensors: torch.Tensor) -> torch.Tensor:
    """``½ Σ x²`` over all the given tensors."""
    return sum(t.pow(2).sum() for t in tensors) / 2
