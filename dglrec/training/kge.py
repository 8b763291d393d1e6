"""Knowledge-graph embedding: the TransE trainer and cached TransE pretraining.

* :class:`KGETrainer` trains a :class:`~dglrec.models.kg.transe.TransE` on the KG's
  triples (``head -> tail`` as released, no inverse copies), split by the run's
  seed into train/eval/test (``KGE_SPLIT``), selects the epoch by eval MRR, and
  reports filtered MRR, MR and Hits@1/3/10 on the test triples
  (:mod:`dglrec.evaluation.link_prediction`). It runs the one epoch loop, so a
  TransE fit is checkpointed and resumable like any other.
* :func:`pretrained_tables` returns TransE entity and relation tables to
  initialise a recommender (``[model] init = "transe"``). They are trained on all
  triples with the ``[pretrain]`` settings and cached under
  ``$DGLREC_DATA_DIR/pretrained/`` by data checksums, settings, size and seed.
"""

from __future__ import annotations

import hashlib
import json

import torch

from data_prep.cache import write_atomic
from data_prep.kg_dataset import KGRecDataset
from data_prep.sources import data_home
from dglrec.config import PretrainConfig, RecipeConfig
from dglrec.evaluation.link_prediction import link_prediction_metrics
from dglrec.models.kg.transe import TransE
from dglrec.seeding import TRANSE_INIT_STREAM, derived_seed
from dglrec.training.loop import EpochTrainer, Log

KGE_SPLIT = (0.9, 0.05, 0.05)


def split_triples(triples: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    order = torch.randperm(len(triples), generator=torch.Generator().manual_seed(seed))
    n_eval = int(len(triples) * KGE_SPLIT[1])
    n_test = int(len(triples) * KGE_SPLIT[2])
    return {
        "eval": triples[order[:n_eval]],
        "test": triples[order[n_eval : n_eval + n_test]],
        "train": triples[order[n_eval + n_test :]],
    }


def corrupt(triples: torch.Tensor, n_entities: int, generator: torch.Generator) -> torch.Tensor:
    """Replace the head or the tail (each with probability ½) by a uniform random entity."""
    corrupted = triples.clone()
    replace_tail = torch.rand(len(triples), generator=generator) < 0.5
    random_entity = torch.randint(0, n_entities, (len(triples),), generator=generator)
    corrupted[:, 2] = torch.where(replace_tail, random_entity, triples[:, 2])
    corrupted[:, 0] = torch.where(replace_tail, triples[:, 0], random_entity)
    return corrupted


class KGETrainer(EpochTrainer):
    """Train a TransE with Adam on the margin loss in the one epoch loop; select by eval MRR.

    Args:
        model: the TransE.
        triples: ``{"train", "eval", "test"}`` splits (eval/test may be empty: the
            last epoch is then kept and no metric is reported).
        known: all true triples, for filtered ranking.
        epochs, batch_size, lr: the optimisation.
        seed: fixes the shuffles and the corruptions of every epoch.
        config: the resolved recipe saved in checkpoints (``None`` for pretraining).
    """

    log_every = 10

    def __init__(
        self,
        model,
        triples: dict[str, torch.Tensor],
        known: torch.Tensor,
        epochs: int,
        batch_size: int,
        lr: float,
        seed: int,
        tracker=None,
        log: Log = print,
        config: dict | None = None,
    ):
        super().__init__(
            model,
            epochs=epochs,
            patience=0,
            select_metric="mrr",
            config=config,
            tracker=tracker,
            log=log,
        )
        self.triples = triples
        self.known = known
        self.batch_size = batch_size
        self.seed = seed
        self.optimizer = torch.optim.Adam(model.parameters(), lr=lr)

    def train_epoch(self, epoch: int) -> float:
        self.model.train()
        generator = torch.Generator().manual_seed(derived_seed(self.seed, epoch))
        train = self.triples["train"]
        order = torch.randperm(len(train), generator=generator)
        total = 0.0
        for start in range(0, len(train), self.batch_size):
            self.check_interrupt()
            positive = train[order[start : start + self.batch_size]]
            negative = corrupt(positive, self.model.entity_emb.num_embeddings, generator)
            self.model.normalize_entities()
            loss = self.model(positive, negative)
            self._step(self.optimizer, loss)
            total += float(loss) * len(positive)
        self.model.normalize_entities()
        self.epoch_losses = {"loss": total / len(train)}
        return self.epoch_losses["loss"]

    def evaluate(self, split: str) -> dict:
        if len(self.triples[split]) == 0:
            return {}
        self.model.eval()
        return link_prediction_metrics(
            self.model, self.triples[split], self.known, check=self.check_interrupt
        )


def pretrained_tables(
    dataset: KGRecDataset, settings: PretrainConfig, dim: int, seed: int, log=print
) -> tuple[torch.Tensor, torch.Tensor]:
    """TransE ``(entity [n_entities, dim], relation [n_relations, dim])`` tables, cached."""
    key_source = {
        "checksums": dataset.meta["checksums"],
        # Rescaling happens when the tables are loaded, not in the cache.
        "settings": {k: v for k, v in settings.__dict__.items() if k != "rescale"},
        "dim": dim,
        "seed": seed,
        "entities": dataset.n_entities,
    }
    key = hashlib.sha256(json.dumps(key_source, sort_keys=True).encode()).hexdigest()[:16]
    path = data_home() / "pretrained" / f"transe-{dataset.meta['dataset']}-{key}.pt"
    if path.is_file():
        log(f"using cached TransE tables {path}")
        tables = torch.load(path)
        return tables["entity"], tables["relation"]
    log(f"pretraining TransE ({settings.epochs} epochs) for the entity and relation tables")
    torch.manual_seed(derived_seed(seed, TRANSE_INIT_STREAM))
    model = TransE(dataset.n_entities, dataset.n_relations, dim, settings.p_norm, settings.margin)
    triples = dataset.kg_triples()
    empty = triples[:0]
    KGETrainer(
        model,
        {"train": triples, "eval": empty, "test": empty},
        triples,
        settings.epochs,
        settings.batch_size,
        settings.lr,
        seed,
        log=log,
    ).fit()
    path.parent.mkdir(parents=True, exist_ok=True)
    entity, relation = (
        model.entity_emb.weight.detach().clone(),
        model.relation_emb.weight.detach().clone(),
    )
    tables = {"entity": entity, "relation": relation, "key": key_source}
    write_atomic(path, lambda partial: torch.save(tables, partial))
    return entity, relation


def kge_trainer(cfg: RecipeConfig, dataset: KGRecDataset, model, tracker=None, log: Log = print):
    """The trainer of a KGE recipe on the dataset's KG (``dglrec fit recipes/transe.toml``)."""
    triples = dataset.kg_triples()
    splits = split_triples(triples, cfg.seed)
    return KGETrainer(
        model,
        splits,
        triples,
        cfg.train.epochs,
        cfg.train.batch_size,
        cfg.train.lr,
        cfg.seed,
        tracker=tracker,
        log=log,
        config=cfg.to_dict(),
    )
