"""Knowledge-graph embedding: TransE training, link-prediction metrics, cached pretraining.

* :class:`KGETrainer` trains a :class:`~dglrec.models.transe.TransE` on the KG's
  triples (``head -> tail`` as released, no inverse copies), split by the run's
  seed into train/eval/test (``KGE_SPLIT``), selects the epoch by eval MRR, and
  reports filtered MRR, MR and Hits@1/3/10 on the test triples.
* :func:`pretrained_tables` returns TransE entity and relation tables to
  initialise a recommender (``[model] init = "transe"``). They are trained on all
  triples with the ``[pretrain]`` settings and cached under
  ``$DGLREC_DATA_DIR/pretrained/`` by data checksums, settings, size and seed.

Ranks are *filtered* (Bordes et al. 2013): the other true triples are removed
from the candidates before the true entity is ranked; ties count in its favour.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from data_prep.sources import data_home
from dglrec.config import PretrainConfig, RecipeConfig
from dglrec.data import KGRecDataset
from dglrec.training import FitResult, NullTracker, derived_seed

KGE_SPLIT = (0.9, 0.05, 0.05)


def kg_triples(dataset: KGRecDataset) -> torch.Tensor:
    """``[n_triples, 3]`` ``(head, relation, tail)`` as released (inverse copies dropped)."""
    graph = dataset.graph
    forward = graph.edges["kg"].data["inverse"] == 0
    heads, tails = graph.edges(etype="kg")
    return torch.stack([heads[forward], graph.edges["kg"].data["rel"][forward], tails[forward]], 1)


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


class KnownTriples:
    """Index of the true triples, to list the known tails of ``(h, r)`` and heads of ``(r, t)``."""

    def __init__(self, triples: torch.Tensor, n_entities: int, n_relations: int):
        self.n_entities, self.n_relations = n_entities, n_relations
        h, r, t = triples.unbind(1)
        self._by = {}
        for predict, group, member in (
            ("tail", h * n_relations + r, t),
            ("head", t * n_relations + r, h),
        ):
            order = torch.argsort(group)
            self._by[predict] = (group[order], member[order])

    def mask(self, anchors: torch.Tensor, relations: torch.Tensor, predict: str) -> torch.Tensor:
        """``[n, n_entities]`` True where the entity completes a known triple."""
        groups, members = self._by[predict]
        query = anchors * self.n_relations + relations
        lo = torch.searchsorted(groups, query)
        hi = torch.searchsorted(groups, query, right=True)
        count = hi - lo
        row = torch.repeat_interleave(torch.arange(len(query)), count)
        first = torch.cumsum(count, 0) - count
        slot = lo[row] + torch.arange(len(row)) - first[row]
        mask = torch.zeros(len(query), self.n_entities, dtype=torch.bool)
        mask[row, members[slot]] = True
        return mask


@torch.no_grad()
def link_prediction_metrics(
    model, triples: torch.Tensor, known: torch.Tensor, batch_size: int = 512
) -> dict[str, float]:
    """Filtered MRR, MR and Hits@{1,3,10} over head and tail prediction of ``triples``.

    Args:
        model: a TransE (``distance_to_all``).
        triples: ``[n, 3]`` triples to rank.
        known: every true triple (all splits), to filter the candidates.
    """
    index = KnownTriples(known, model.entity_emb.num_embeddings, model.relation_emb.num_embeddings)
    ranks = []
    for start in range(0, len(triples), batch_size):
        h, r, t = triples[start : start + batch_size].unbind(1)
        rows = torch.arange(len(h))
        for predict, anchor, target in (("tail", h, t), ("head", t, h)):
            distance = model.distance_to_all(anchor, r, predict)
            true_distance = distance[rows, target].clone()
            distance = distance.masked_fill(index.mask(anchor, r, predict), float("inf"))
            ranks.append(1 + (distance < true_distance[:, None]).sum(1))
    rank = torch.cat(ranks).double()
    return {
        "mrr": float((1 / rank).mean()),
        "mr": float(rank.mean()),
        "hits1": float((rank <= 1).double().mean()),
        "hits3": float((rank <= 3).double().mean()),
        "hits10": float((rank <= 10).double().mean()),
    }


class KGETrainer:
    """Train a TransE with Adam on the margin loss; select the epoch by eval MRR.

    Args:
        model: the TransE.
        triples: ``{"train", "eval", "test"}`` splits (eval/test may be empty).
        known: all true triples, for filtered ranking.
        epochs, batch_size, lr: the optimisation.
        seed: fixes the shuffles and the corruptions of every epoch.
    """

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
        log: Callable[[str], None] = print,
    ):
        self.model = model
        self.triples = triples
        self.known = known
        self.epochs = epochs
        self.batch_size = batch_size
        self.seed = seed
        self.tracker = tracker or NullTracker()
        self.log = log
        self.optimizer = torch.optim.Adam(model.parameters(), lr=lr)

    def train_epoch(self, epoch: int) -> float:
        self.model.train()
        generator = torch.Generator().manual_seed(derived_seed(self.seed, epoch))
        train = self.triples["train"]
        order = torch.randperm(len(train), generator=generator)
        total = 0.0
        for start in range(0, len(train), self.batch_size):
            positive = train[order[start : start + self.batch_size]]
            negative = corrupt(positive, self.model.entity_emb.num_embeddings, generator)
            self.model.normalize_entities()
            loss = self.model(positive, negative)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            total += float(loss) * len(positive)
        self.model.normalize_entities()
        return total / len(train)

    def fit(self) -> FitResult:
        evaluate = len(self.triples["eval"]) > 0
        history, best = [], None
        for epoch in tqdm(range(1, self.epochs + 1), desc="TransE", leave=False, disable=None):
            began = time.perf_counter()
            loss = self.train_epoch(epoch)
            record = {
                "epoch": epoch,
                "train_loss": loss,
                "epoch_seconds": time.perf_counter() - began,
            }
            if evaluate:
                self.model.eval()
                metrics = link_prediction_metrics(self.model, self.triples["eval"], self.known)
                record.update({f"eval_{k}": v for k, v in metrics.items()})
                if best is None or metrics["mrr"] > best["metric"]:
                    best = {
                        "epoch": epoch,
                        "metric": metrics["mrr"],
                        "eval": metrics,
                        "state": copy.deepcopy(self.model.state_dict()),
                    }
            history.append(record)
            self.tracker.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=epoch)
            if evaluate and (epoch % 10 == 0 or epoch == self.epochs):
                self.log(
                    f"TransE epoch {epoch:3d}  loss {loss:.4f}  eval mrr {record['eval_mrr']:.4f} "
                    f"hits@10 {record['eval_hits10']:.4f}"
                )
        if not evaluate:
            return FitResult(self.epochs, {}, {}, history)
        self.model.load_state_dict(best["state"])
        test = link_prediction_metrics(self.model, self.triples["test"], self.known)
        self.log(
            f"best epoch {best['epoch']} (eval mrr {best['metric']:.4f}); "
            f"test mrr {test['mrr']:.4f} hits@10 {test['hits10']:.4f}"
        )
        return FitResult(best["epoch"], best["eval"], test, history)


def pretrained_tables(
    dataset: KGRecDataset, settings: PretrainConfig, dim: int, seed: int, log=print
) -> tuple[torch.Tensor, torch.Tensor]:
    """TransE ``(entity [n_entities, dim], relation [n_relations, dim])`` tables, cached."""
    from dglrec.models.transe import TransE

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
    torch.manual_seed(derived_seed(seed, 7_000_001))
    model = TransE(dataset.n_entities, dataset.n_relations, dim, settings.p_norm, settings.margin)
    triples = kg_triples(dataset)
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
    tmp = path.with_suffix(".tmp")
    torch.save({"entity": entity, "relation": relation, "key": key_source}, tmp)
    tmp.replace(path)
    return entity, relation


def kge_fit(cfg: RecipeConfig, dataset: KGRecDataset, model, tracker, log) -> FitResult:
    """Train a KGE model of a recipe on the dataset's KG (``dglrec fit recipes/transe.toml``)."""
    triples = kg_triples(dataset)
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
    ).fit()
