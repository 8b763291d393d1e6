"""One trainer for every user-item CTR model.

Loop: Adam on ``mean BCE(logits, labels) + Σ aux + train.l2 * L2`` (``L2`` over
whole tables or the batch's rows, ``train.l2_scope``; ``aux`` the weighted extra
terms a model returns, e.g. RippleNet's KGE term); after each epoch, metrics on
the eval split, a checkpoint, and early stopping on ``eval.select_metric``. At the
end the best epoch's weights are restored and the test split is scored once.

Multi-task models (MKR) declare ``objectives = ("rs", "kge")``: after every
``train.kge_interval``-th recommendation step, counted over the whole run, the
trainer takes one KGE step (``model.kge_loss`` on a batch of KG triples) with a
second Adam optimizer at ``train.lr_kge``. Each objective's loss is logged on
its own (``train_loss``, ``train_loss_kge``).

Reproducibility: the seed of epoch ``e``'s shuffling and neighbour sampling is
derived from ``(seed, e)``, and evaluation always samples with the same derived
seed. A run resumed from the checkpoint of epoch ``e`` therefore continues
exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import contextlib
import copy
import random
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dgl
import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dglrec.config import RecipeConfig
from dglrec.data import KGRecDataset
from dglrec.metrics import HIGHER_IS_BETTER, ctr_metrics
from dglrec.sampling import PairBatch, PairSampler

EVAL_STREAM = 1_000_003  # any constant distinct from epoch numbers


KGE_STREAM = 2_000_003


def derived_seed(seed: int, *stream: int) -> int:
    """An independent seed for ``stream`` (an epoch, evaluation); DGL takes 31 bits."""
    return int(np.random.SeedSequence([seed, *stream]).generate_state(1)[0]) & 0x7FFFFFFF


def reseed_sampling(seed: int) -> None:
    """Seed the generators that samplers draw from: torch's (ours) and DGL's (its samplers)."""
    torch.manual_seed(seed)
    dgl.seed(seed & 0x7FFFFFFF)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    reseed_sampling(seed)


def uses_blocks(model: torch.nn.Module) -> bool:
    """KG models score from conditioned blocks; others (``uses_blocks = False``) from ids."""
    return getattr(model, "uses_blocks", True)


def objective_of(model: torch.nn.Module) -> str:
    """``"bce"`` on the labelled pairs (default) or ``"bpr"`` on positives + sampled negatives."""
    return getattr(model, "objective", "bce")


def objectives_of(model: torch.nn.Module) -> tuple[str, ...]:
    """``("rs",)``, or ``("rs", "kge")`` for multi-task models trained by alternation."""
    return tuple(getattr(model, "objectives", ("rs",)))


def needs_graph(model: torch.nn.Module) -> bool:
    """Id-scoring models that propagate over the training user–item graph (LightGCN)."""
    return getattr(model, "needs_graph", False)


def score(model: torch.nn.Module, batch: PairBatch, graph: dgl.DGLGraph | None = None):
    """The model's :class:`~dglrec.models.base.ScoreOutput` for a batch."""
    if uses_blocks(model):
        return model(batch.blocks, batch.pair_index)
    return score_ids(model, batch.users, batch.items, graph)


def score_ids(model, users: torch.Tensor, items: torch.Tensor, graph: dgl.DGLGraph | None = None):
    """Scores of ``(user, item)`` ids for models that need no KG blocks."""
    if needs_graph(model):
        return model(users, items, graph)
    return model(users, items)


class UnseenItemSampler:
    """Draw, for each user, one item uniformly among those it has no positive for.

    Exact and vectorised: with the user's sorted positives ``p_0 < p_1 < ...``, the
    ``r``-th unseen item is ``r + #{m : p_m - m <= r}``, counted with one
    ``searchsorted`` over all users' keys at once.

    Args:
        positives: ``[n, 2]`` (user, item) pairs to avoid.
        n_items: number of items.
    """

    def __init__(self, positives: torch.Tensor, n_items: int):
        self.n_items = n_items
        keys = torch.unique(positives[:, 0] * n_items + positives[:, 1])  # sorted
        self.keys = keys
        user = keys // n_items
        local = torch.arange(len(keys)) - torch.searchsorted(keys, user * n_items)
        self.adjusted = user * n_items + (keys % n_items - local)  # non-decreasing

    def __call__(self, users: torch.Tensor) -> torch.Tensor:
        base = users * self.n_items
        start = torch.searchsorted(self.keys, base)
        n_positive = torch.searchsorted(self.keys, base + self.n_items) - start
        n_unseen = (self.n_items - n_positive).clamp(min=1)  # a user who saw all: item 0..
        rank = (torch.rand(len(users)) * n_unseen).long().clamp(max=n_unseen - 1)
        before = torch.searchsorted(self.adjusted, base + rank, right=True) - start
        return (rank + before).clamp(max=self.n_items - 1)


def describe(metrics: dict) -> str:
    """``"auc 0.7900 acc 0.7100 f1 0.7000 recall_at_10 ..."``: a split's headline metrics.

    Of the top-K metrics only recall and NDCG at 10 are shown; all are logged.
    """
    shown = {
        k: v
        for k, v in metrics.items()
        if "_at_" not in k and k != "ranking_users" or k in ("recall_at_10", "ndcg_at_10")
    }
    return " ".join(f"{k} {v:.4f}" for k, v in shown.items())


class KGETripleStream:
    """Batches of KG triples for the KGE steps of multi-task models.

    Only triples whose head entity is an item take part (the cross & compress
    unit pairs the head with its item); on Last.FM-KG that is every triple. Each
    epoch walks a fresh permutation cyclically, so any number of KGE steps works;
    the permutation and the corrupted tails depend only on ``(seed, epoch)``.
    """

    def __init__(self, triples: torch.Tensor, item_entity: torch.Tensor, n_entities: int):
        entity_item = torch.full((n_entities,), -1, dtype=torch.long)
        entity_item[item_entity] = torch.arange(len(item_entity))
        items = entity_item[triples[:, 0]]
        keep = items >= 0
        if not keep.any():
            raise ValueError("no KG triple has an item as its head: nothing for the KGE step")
        self.triples, self.items = triples[keep], items[keep]
        self.n_entities = n_entities

    def epoch(self, seed: int, epoch: int, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        generator = torch.Generator().manual_seed(derived_seed(seed, KGE_STREAM, epoch))
        order = torch.randperm(len(self.triples), generator=generator)
        start = 0
        while True:
            index = order[torch.arange(start, start + batch_size) % len(order)]
            start = (start + batch_size) % len(order)
            head, relation, tail = self.triples[index].unbind(1)
            corrupted = torch.randint(0, self.n_entities, (len(index),), generator=generator)
            yield {
                "items": self.items[index],
                "heads": head,
                "relations": relation,
                "tails": tail,
                "corrupted_tails": corrupted,
            }


class NullTracker:
    """Tracking that records nothing (benchmarks, unit tests)."""

    run_id = None

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        pass

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        pass


@dataclass
class FitResult:
    best_epoch: int
    best_eval: dict
    test: dict
    history: list[dict] = field(default_factory=list)


class Trainer:
    """Train and evaluate ``model`` on ``dataset`` with block ``sampler``.

    Args:
        model: a registered model: ``model(blocks, pair_index) -> ScoreOutput``.
        dataset: the processed dataset (its splits and KG).
        sampler: a :class:`~dglrec.sampling.PairSampler` giving the model's blocks.
        cfg: the resolved recipe.
        tracker: where metrics and checkpoints go (:class:`dglrec.tracking.MlflowRun`).
        log: one-line progress messages.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        dataset: KGRecDataset,
        sampler: PairSampler,
        cfg: RecipeConfig,
        tracker=None,
        log: Callable[[str], None] = print,
    ):
        self.model = model.to(cfg.train.device)
        self.dataset = dataset
        self.sampler = sampler
        self.cfg = cfg
        self.tracker = tracker or NullTracker()
        self.log = log
        self.kg = dataset.kg_graph()
        self.graph = (
            dataset.interaction_graph().to(cfg.train.device) if needs_graph(model) else None
        )
        self._init_optimizers(kge="kge" in objectives_of(model))
        self.kge_stream = None
        if self.kge_optimizer is not None:
            from dglrec.kge import kg_triples  # kge imports this module

            self.kge_stream = KGETripleStream(
                kg_triples(dataset), dataset.item_entity, dataset.n_entities
            )
        self._unseen: UnseenItemSampler | None = None
        self.rs_steps = 0  # recommendation steps over the whole run (the KGE schedule's clock)
        self.kge_steps = 0
        self.last_predictions: dict[str, np.ndarray] = {}  # split -> probabilities

    def _init_optimizers(self, kge: bool) -> None:
        """Adam for the main objective (none if nothing trains), one for KGE steps, the LR decay."""
        cfg = self.cfg
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        # Count-based baselines (Pop) have nothing to train: they are only evaluated.
        # foreach: one multi-tensor kernel per Adam op, ~3x faster on CPU for large tables.
        self.optimizer = (
            torch.optim.Adam(trainable, lr=cfg.train.lr, foreach=True) if trainable else None
        )
        self.kge_optimizer = None
        if kge and trainable:
            if cfg.train.kge_interval < 1:
                raise ValueError("train.kge_interval must be >= 1")
            # Its own Adam state: the two objectives' gradients differ in scale and direction.
            self.kge_optimizer = torch.optim.Adam(trainable, lr=cfg.train.lr_kge, foreach=True)
        self.scheduler = None
        if self.optimizer is not None and cfg.train.lr_decay != 1.0:
            self.scheduler = torch.optim.lr_scheduler.ExponentialLR(
                self.optimizer, gamma=cfg.train.lr_decay
            )
        self._interrupted = False
        self.epoch_losses: dict[str, float] = {}

    # ------------------------------------------------------------------ batches
    def batches(
        self, pairs: torch.Tensor, batch_size: int, generator: torch.Generator | None = None
    ) -> Iterator[PairBatch]:
        order = (
            torch.randperm(len(pairs), generator=generator)
            if generator is not None
            else torch.arange(len(pairs))
        )
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[order[start : start + batch_size]]
            batch = self.sampler.sample(self.kg, chunk, self.dataset.item_entity, self.model)
            yield batch.to(self.cfg.train.device)

    @torch.no_grad()
    def score_pairs(self, pairs: torch.Tensor) -> np.ndarray:
        """Logits for ``pairs`` (``[n, 3]``), with a fixed sampling seed."""
        self.model.eval()
        reseed_sampling(derived_seed(self.cfg.seed, EVAL_STREAM))
        out = [
            score(self.model, batch, self.graph).logits.float().cpu()
            for batch in self.batches(pairs, self.cfg.eval.batch_size)
        ]
        return torch.cat(out).numpy()

    def predict(self, pairs: torch.Tensor) -> np.ndarray:
        """Probabilities for ``pairs`` (``[n, 3]``), with a fixed sampling seed."""
        return torch.sigmoid(torch.from_numpy(self.score_pairs(pairs))).numpy()

    def final_test(self) -> dict:
        """The test split's metrics, with full-ranking top-K ones (``[eval] ranking_ks``)."""
        test = self.evaluate("test")
        if self.cfg.eval.ranking_ks:
            from dglrec.ranking import evaluate_ranking

            began = time.perf_counter()
            test.update(
                evaluate_ranking(
                    self, "test", self.cfg.eval.ranking_ks, self.cfg.eval.ranking_users
                )
            )
            self.log(
                f"full ranking of {int(test['ranking_users'])} test users in "
                f"{time.perf_counter() - began:.1f}s"
            )
        return test

    def evaluate(self, split: str) -> dict:
        pairs = self.dataset.splits[split]
        probabilities = self.predict(pairs)
        # Kept for what is logged beside the metrics (the test predictions, for ROC curves).
        self.last_predictions[split] = probabilities
        return ctr_metrics(pairs[:, 2].numpy(), probabilities, self.cfg.eval.threshold)

    # ------------------------------------------------------------------ training
    def train_epoch(self, epoch: int) -> float:
        """One pass over the training pairs; returns the mean data loss.

        Every objective's mean loss of the epoch is left in :attr:`epoch_losses`
        (``loss``, ``loss_kge``, one per ``aux`` term).
        """
        self.model.train()
        reseed_sampling(derived_seed(self.cfg.seed, epoch))
        generator = torch.Generator().manual_seed(derived_seed(self.cfg.seed, epoch))
        pairs = self.dataset.splits["train"]
        if objective_of(self.model) == "bpr":  # BPR learns from positives and sampled negatives
            pairs = pairs[pairs[:, 2] == 1]
        n_batches = -(-len(pairs) // self.cfg.train.batch_size)
        # The KGE clock runs over the whole run: epoch e starts after (e - 1) full epochs.
        self.rs_steps = (epoch - 1) * n_batches
        kge_batches = (
            self.kge_stream.epoch(self.cfg.seed, epoch, self.cfg.train.batch_size)
            if self.kge_stream is not None
            else None
        )
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}

        def add(name: str, value: torch.Tensor, weight: int) -> None:
            sums[name] = sums.get(name, 0.0) + float(value) * weight
            counts[name] = counts.get(name, 0) + weight

        bar = tqdm(
            self.batches(pairs, self.cfg.train.batch_size, generator),
            total=n_batches,
            desc=f"epoch {epoch}",
            leave=False,
            disable=None,
        )
        for batch in bar:
            if self._interrupted:
                raise KeyboardInterrupt
            aux: dict[str, torch.Tensor] = {}
            if objective_of(self.model) == "bpr":
                data_loss, penalty = self._bpr_terms(batch)
            else:
                output = score(self.model, batch, self.graph)
                data_loss = F.binary_cross_entropy_with_logits(output.logits, batch.labels)
                penalty = self._penalty(output)
                aux = output.aux
            loss = data_loss + sum(aux.values()) + self.cfg.train.l2 * penalty
            self._step(self.optimizer, loss)
            self.rs_steps += 1
            add("loss", data_loss, len(batch.labels))
            for name, value in aux.items():
                add(name, value, len(batch.labels))
            if kge_batches is not None and self.rs_steps % self.cfg.train.kge_interval == 0:
                triples = {k: v.to(self.cfg.train.device) for k, v in next(kge_batches).items()}
                kge = self.model.kge_loss(**triples)
                self._step(self.kge_optimizer, kge.loss + self.cfg.train.l2 * self._penalty(kge))
                self.kge_steps += 1
                add("loss_kge", kge.loss, 1)
            bar.set_postfix(loss=f"{sums['loss'] / counts['loss']:.4f}")
        self.epoch_losses = {name: sums[name] / counts[name] for name in sums}
        return self.epoch_losses["loss"]

    def _step(self, optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        # Gradients of every parameter are cleared, not only this optimizer's: the
        # objectives share tables, and one step must not see the other's gradients.
        self.model.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def _penalty(self, output) -> torch.Tensor:
        penalty = output.l2 if self.cfg.train.l2_scope == "tables" else output.l2_batch
        return penalty() if callable(penalty) else penalty  # models may defer the unused one

    def _bpr_terms(self, batch: PairBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """BPR: ``-log σ(s_ui - s_uj)`` with ``j`` drawn among the user's non-positives."""
        if self._unseen is None:
            train = self.dataset.splits["train"]
            self._unseen = UnseenItemSampler(train[train[:, 2] == 1][:, :2], self.dataset.n_items)
        negatives = self._unseen(batch.users.cpu()).to(batch.users.device)
        # One call scores positives and negatives: graph models propagate once per step.
        n = len(batch.users)
        both = score_ids(
            self.model,
            torch.cat([batch.users, batch.users]),
            torch.cat([batch.items, negatives]),
            self.graph,
        )
        loss = F.softplus(both.logits[n:] - both.logits[:n]).mean()
        return loss, self._penalty(both)

    def _checkpoint(self, state: dict, name: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            torch.save(state, path)
            self.tracker.log_artifact(path, "checkpoints")

    def fit(self, resume: dict | None = None) -> FitResult:
        """Train to ``train.epochs`` (or early stop), restore the best epoch, score test.

        Ctrl-C (SIGINT) stops at the next batch with :class:`KeyboardInterrupt`;
        every finished epoch is already checkpointed.

        Args:
            resume: a checkpoint written by this method (``checkpoints/last.pt``);
                training continues after its epoch.
        """
        with self._stop_on_sigint():
            return self._fit(resume)

    @contextlib.contextmanager
    def _stop_on_sigint(self):
        # A KeyboardInterrupt raised wherever the signal lands can be swallowed by
        # library code (database retries, C extensions); a flag checked between
        # batches always stops the loop at a clean point.
        self._interrupted = False
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def request_stop(signum, frame):
            self._interrupted = True

        previous = signal.signal(signal.SIGINT, request_stop)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def _fit(self, resume: dict | None) -> FitResult:
        cfg = self.cfg
        if self.optimizer is None:
            evaluation, test = self.evaluate("eval"), self.final_test()
            self.tracker.log_metrics({f"eval_{k}": v for k, v in evaluation.items()}, step=0)
            self.log(f"no trainable parameters: evaluated only; test {describe(test)}")
            return FitResult(
                0,
                evaluation,
                test,
                [{"epoch": 0, **{f"eval_{k}": v for k, v in evaluation.items()}}],
            )
        metric = cfg.eval.select_metric
        sign = 1 if HIGHER_IS_BETTER[metric] else -1
        start, history, best, bad_epochs = 1, [], None, 0
        if resume is not None:
            self.model.load_state_dict(resume["model"])
            self.optimizer.load_state_dict(resume["optimizer"])
            if self.kge_optimizer is not None:
                self.kge_optimizer.load_state_dict(resume["kge_optimizer"])
            if self.scheduler is not None:
                self.scheduler.load_state_dict(resume["scheduler"])
            start, history = resume["epoch"] + 1, resume["history"]
            best, bad_epochs = resume["best"], resume["bad_epochs"]
            self.log(f"resuming after epoch {resume['epoch']}")

        for epoch in range(start, cfg.train.epochs + 1):
            if cfg.train.patience and bad_epochs >= cfg.train.patience:
                break
            if self._interrupted:
                raise KeyboardInterrupt
            began = time.perf_counter()
            train_loss = self.train_epoch(epoch)
            seconds = time.perf_counter() - began
            if self.scheduler is not None:
                self.scheduler.step()
            evaluation = self.evaluate("eval")
            record = {"epoch": epoch, "epoch_seconds": seconds}
            record.update({f"train_{k}": v for k, v in self.epoch_losses.items()})
            record.update({f"eval_{k}": v for k, v in evaluation.items()})
            history.append(record)
            self.tracker.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=epoch)
            improved = best is None or sign * evaluation[metric] > sign * best["metric"]
            if improved:
                best = {
                    "epoch": epoch,
                    "metric": evaluation[metric],
                    "eval": evaluation,
                    "state": copy.deepcopy(self.model.state_dict()),
                }
                bad_epochs = 0
            else:
                bad_epochs += 1
            state = {
                "epoch": epoch,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "kge_optimizer": self.kge_optimizer and self.kge_optimizer.state_dict(),
                "scheduler": self.scheduler and self.scheduler.state_dict(),
                "best": best,
                "bad_epochs": bad_epochs,
                "history": history,
                "config": cfg.to_dict(),
            }
            if improved:
                self._checkpoint(
                    {
                        "epoch": epoch,
                        "model": best["state"],
                        "eval": evaluation,
                        "config": cfg.to_dict(),
                    },
                    "best.pt",
                )
            self._checkpoint(state, "last.pt")
            # Logged after the checkpoint: a line on screen means the epoch is saved.
            extra = "".join(f" {k} {v:.4f}" for k, v in self.epoch_losses.items() if k != "loss")
            self.log(
                f"epoch {epoch:3d}  loss {train_loss:.4f}{extra}  eval {describe(evaluation)}"
                f"  {seconds:.1f}s" + ("  *" if improved else "")
            )

        if best is None:
            raise RuntimeError("no epoch was trained (train.epochs < 1?)")
        self.model.load_state_dict(best["state"])
        test = self.final_test()
        self.log(
            f"best epoch {best['epoch']} (eval {metric} {best['metric']:.4f}); "
            f"test {describe(test)}"
        )
        return FitResult(best["epoch"], best["eval"], test, history)
