"""Every random stream dglrec draws from, named in one place.

A run has one seed. Each consumer draws from its own stream, an independent
seed derived from ``(seed, stream, ...)`` by :func:`derived_seed`, so adding
draws to one stream never shifts another, and a run resumed at epoch ``e``
draws exactly what the uninterrupted run drew.

Streams:

* training epoch ``e``: shuffling and neighbour sampling (``derived_seed(seed, e)``;
  epoch numbers are the stream ids ``1, 2, ...``);
* :data:`EVAL_STREAM`: neighbour sampling whenever a split is scored (the same
  draws at every evaluation, so epochs are compared on equal terms; the uniform
  sampler draws one sample of every entity's neighbours from it, used by every
  scoring pass whatever its batches);
* :data:`KGE_STREAM`: the KG triples and corrupted tails of multi-task KGE steps;
* :data:`TRAIN_NEGATIVES_STREAM`: the training negatives redrawn in epoch ``e``
  (``derived_seed(seed, TRAIN_NEGATIVES_STREAM, e)``, ``data.train_negatives = "resample"``);
* :data:`ADJACENCY_STREAM`: each entity's neighbours under ``sampler.resample = "fixed"``;
* :data:`TRANSE_INIT_STREAM`: the initial tables of pretrained TransE;
* :data:`HISTORY_STREAM`: the fixed sample of each user's training positives and
  friends that MKGCN's user aggregator reads (drawn once when the model binds its data);
* the split of a TransE fit's triples: the run's seed itself;
* :data:`SWEEP_STREAM`: a random search's trial draws;
* the raw-data builders' streams (negatives and the split of Last.FM-KG,
  :data:`NEGATIVES_STREAM`, :data:`SPLIT_STREAM`) live with the builders in
  :mod:`data_prep.protocol` and are listed here.
"""

from __future__ import annotations

import random

import dgl
import numpy as np
import torch

from data_prep.protocol import NEGATIVES_STREAM, SPLIT_STREAM

__all__ = [
    "EVAL_STREAM",
    "KGE_STREAM",
    "NEGATIVES_STREAM",
    "SPLIT_STREAM",
    "SWEEP_STREAM",
    "TRAIN_NEGATIVES_STREAM",
    "ADJACENCY_STREAM",
    "TRANSE_INIT_STREAM",
    "HISTORY_STREAM",
    "derived_seed",
    "reseed_sampling",
    "seed_everything",
]

# Any constants distinct from each other and from epoch numbers.
EVAL_STREAM = 1_000_003
KGE_STREAM = 2_000_003
TRANSE_INIT_STREAM = 7_000_001
TRAIN_NEGATIVES_STREAM = 3_000_017
ADJACENCY_STREAM = 4_000_037
SWEEP_STREAM = 0x5EE9
HISTORY_STREAM = 8_000_009


def derived_seed(seed: int, *stream: int) -> int:
    """An independent seed for ``stream`` (an epoch, evaluation); DGL takes 31 bits."""
    return int(np.random.SeedSequence([seed, *stream]).generate_state(1)[0]) & 0x7FFFFFFF


def reseed_sampling(seed: int) -> None:
    """Seed the generators that samplers draw from: torch's (ours) and DGL's (its samplers)."""
    torch.manual_seed(seed)
    dgl.seed(seed & 0x7FFFFFFF)


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's, torch's and DGL's global generators (before a model's init)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    reseed_sampling(seed)
