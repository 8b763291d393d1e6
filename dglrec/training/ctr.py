"""The CTR trainer: user–item pairs, for every CTR model whatever its objective.

Runs the one epoch loop (:mod:`dglrec.training.loop`) and supplies the training
step and the evaluation. The objective is read once, from the model's declared
:class:`~dglrec.models.base.Capabilities`, when the trainer is built:

* ``bce``: Adam on ``mean BCE(logits, labels) + Σ aux + train.l2 * L2`` over the
  labelled training pairs (``L2`` over whole tables or the batch's rows,
  ``train.l2_scope``; ``aux`` the weighted extra terms a model returns, e.g.
  RippleNet's KGE term). With ``data.train_negatives = "resample"`` the training
  negatives are redrawn every epoch (:func:`~dglrec.sampling.negatives.resample_negatives`,
  seeded by ``(seed, epoch)``); with ``"fixed"`` they are the split's own;
* ``bpr``: ``-log σ(s_ui - s_uj)`` over the training positives, ``j`` drawn
  uniformly among the user's non-positives at every step;
* ``bce_and_kge`` (MKR family): the BCE step, and after every
  ``train.kge_interval``-th of them, counted over the whole run, one KGE step
  (``model.kge_loss`` on a batch of KG triples) with a second Adam optimizer at
  ``train.lr_kge``. Each objective's loss is logged on its own (``train_loss``,
  ``train_loss_kge``).

What the model reads is read once too (``inputs``): user-conditioned KG blocks
from the recipe's sampler, ``(user, item)`` ids, or ids and the training
user–item graph (LightGCN, Pop).

Reproducibility: the seed of epoch ``e``'s shuffling and neighbour sampling is
derived from ``(seed, e)``, and evaluation always samples with the same derived
seed (:mod:`dglrec.seeding`).

Scoring (eval and test metrics, the full ranking) never draws per batch: the uniform
sampler scores on one ``K``-neighbour sample per entity drawn from the eval stream
(:meth:`~dglrec.sampling.blocks.PairSampler.for_scoring`), so a pair's score does not
depend on its batch, and training draws nothing less or more for it. Models that
declare ``scores_grid`` are ranked on a grid (:meth:`CTRTrainer.score_grid`): blocks
sampled once over every item, then chunks of users scored against all items at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from data_prep.kg_dataset import KGRecDataset
from dglrec.config import RecipeConfig
from dglrec.evaluation.metrics import cold_auc, cold_items, ctr_metrics
from dglrec.evaluation.ranking import evaluate_ranking
from dglrec.sampling.blocks import PairBatch, PairSampler
from dglrec.sampling.negatives import UnseenItemSampler, resample_negatives
from dglrec.sampling.triples import KGETripleStream
from dglrec.seeding import EVAL_STREAM, TRAIN_NEGATIVES_STREAM, derived_seed, reseed_sampling
from dglrec.training.loop import EpochTrainer, Log, recipe_settings

TRAIN_DEDUP = True  # conditioning of training batches (see train_epoch)
# Grid scoring's memory bound: users per pass so that a layer holds about this many floats
# (128 MB; its [E, U] attention and [N, U, d] states, CTRTrainer.grid_scorer).
GRID_FLOATS = 1 << 25


class CTRTrainer(EpochTrainer):
    """Train and evaluate a CTR ``model`` on ``dataset`` (see the module docstring).

    Args:
        model: a registered CTR model.
        dataset: the processed dataset (its splits and KG).
        sampler: a :class:`~dglrec.sampling.blocks.PairSampler` giving the model's blocks.
        cfg: the resolved recipe.
        tracker: where metrics and checkpoints go (:class:`dglrec.runs.tracking.MlflowRun`).
        log: one-line progress messages.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        dataset: KGRecDataset,
        sampler: PairSampler,
        cfg: RecipeConfig,
        tracker=None,
        log: Log = print,
    ):
        super().__init__(
            model.to(cfg.train.device), **recipe_settings(cfg), tracker=tracker, log=log
        )
        self.dataset = dataset
        self.sampler = sampler
        self.cfg = cfg
        self.selection_split = cfg.eval.select_on  # "test": the LEAKY reference protocol
        self.kg = dataset.kg_graph()
        capabilities = model.capabilities
        self.inputs = capabilities.inputs
        self.graph = (
            dataset.interaction_graph().to(cfg.train.device)
            if self.inputs == "ids_and_graph"
            else None
        )
        train = dataset.splits["train"]
        self.bpr = capabilities.objective == "bpr"
        # BPR learns from positives and sampled negatives; BCE from the labelled pairs.
        self.train_pairs = train[train[:, 2] == 1] if self.bpr else train
        self._unseen = (
            UnseenItemSampler(train[train[:, 2] == 1][:, :2], dataset.n_items) if self.bpr else None
        )
        self._fresh_negatives = None
        if not self.bpr and cfg.data.train_negatives == "resample":
            # Never a known positive of any split, as the split's own negatives.
            known = torch.cat([pairs[pairs[:, 2] == 1] for pairs in dataset.splits.values()])
            self._fresh_negatives = UnseenItemSampler(known[:, :2], dataset.n_items)
        self._init_optimizers()
        self.kge_stream = None
        if capabilities.objective == "bce_and_kge" and self.kge_optimizer is not None:
            self.kge_stream = KGETripleStream(
                dataset.kg_triples(), dataset.item_entity, dataset.n_entities
            )
        self.rs_steps = 0  # recommendation steps over the whole run (the KGE schedule's clock)
        self.kge_steps = 0
        self.last_predictions: dict[str, np.ndarray] = {}  # split -> probabilities

    def _init_optimizers(self) -> None:
        """Adam for the main objective (none if nothing trains), one for KGE steps, the LR decay."""
        train = self.cfg.train
        trainable = self._adam(train.lr, train.lr_decay)
        if trainable and self.model.capabilities.objective == "bce_and_kge":
            if train.kge_interval < 1:
                raise ValueError("train.kge_interval must be >= 1")
            # Its own Adam state: the two objectives' gradients differ in scale and direction.
            self.kge_optimizer = torch.optim.Adam(trainable, lr=train.lr_kge, foreach=True)

    # ------------------------------------------------------------------ scoring
    def score(self, batch: PairBatch):
        """The model's :class:`~dglrec.models.base.ScoreOutput` for a batch."""
        if self.inputs == "blocks":
            return self.model(batch.blocks, batch.pair_index)
        return self.score_ids(batch.users, batch.items)

    def score_ids(self, users: torch.Tensor, items: torch.Tensor):
        """Scores of ``(user, item)`` ids for models that read no KG blocks."""
        if self.inputs == "ids_and_graph":
            return self.model(users, items, self.graph)
        return self.model(users, items)

    def batches(
        self,
        pairs: torch.Tensor,
        batch_size: int,
        generator: torch.Generator | None = None,
        dedup: bool | None = None,
        sampler: PairSampler | None = None,
    ) -> Iterator[PairBatch]:
        """Shuffled (with ``generator``) batches; ``dedup`` as in ``PairSampler.sample``.

        ``sampler``: the training sampler unless given (scoring passes its own).
        """
        sampler = sampler or self.sampler
        order = (
            torch.randperm(len(pairs), generator=generator)
            if generator is not None
            else torch.arange(len(pairs))
        )
        for start in range(0, len(pairs), batch_size):
            # Scoring (eval, test, ranking) goes through here too: a signal stops it.
            self.check_interrupt()
            chunk = pairs[order[start : start + batch_size]]
            batch = sampler.sample(
                self.kg, chunk, self.dataset.item_entity, self.model, dedup=dedup
            )
            yield batch.to(self.cfg.train.device)

    def scoring_sampler(self) -> PairSampler:
        """The sampler that scores: per-batch uniform draws become one eval-stream sample."""
        return self.sampler.for_scoring(derived_seed(self.cfg.seed, EVAL_STREAM))

    @torch.no_grad()
    def score_pairs(self, pairs: torch.Tensor) -> np.ndarray:
        """Logits for ``pairs`` (``[n, 3]``); the same whatever the batch size."""
        self.model.eval()
        # No scoring sampler draws from the global generators; seeded all the same, so
        # that nothing drawn while scoring can depend on the training run before it.
        reseed_sampling(derived_seed(self.cfg.seed, EVAL_STREAM))
        sampler = self.scoring_sampler()
        batch_size = sampler.scoring_batch_size(self.cfg.eval.batch_size)
        out = [
            self.score(batch).logits.float().cpu()
            for batch in self.batches(pairs, batch_size, sampler=sampler)
        ]
        return torch.cat(out).numpy()

    @torch.no_grad()
    def grid_scorer(self, items: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """``users -> [U, len(items)]`` logits, for a model that declares ``scores_grid``.

        The scoring sampler samples its blocks once, over ``items``' entities (not
        conditioned on users); each call runs ``model.score_grid`` on them for as many
        users at a time as keep a layer near :data:`GRID_FLOATS` floats. Equal to
        :meth:`score_pairs` of every (user, item) pair (``tests/test_fast_paths.py``).
        """
        self.model.eval()
        device = self.cfg.train.device
        if self.inputs != "blocks":
            return self._id_grid_scorer(items.to(device))
        sampler = self.scoring_sampler()
        seeds, seed_pos = torch.unique(self.dataset.item_entity[items], return_inverse=True)
        _, _, blocks = sampler.block_sampler.sample(self.kg, seeds)
        blocks = [block.to(device) for block in blocks]
        edge_filter = sampler.grid_edge_filter(self.model)
        # Per user, a layer holds about 4 floats per edge and 6 states of width dim per node.
        per_user = max(
            4 * b.num_edges() + self.model.dim * (b.num_src_nodes() + 5 * b.num_dst_nodes())
            for b in blocks
        )
        step = max(1, GRID_FLOATS // per_user)
        seed_pos = seed_pos.to(device)
        cache: dict = {}  # what the passes share: the weights do not change while ranking

        def score_users(users: torch.Tensor) -> torch.Tensor:
            logits = self.model.score_grid(blocks, users.to(device), edge_filter, cache)
            return logits[:, seed_pos]

        return self._in_passes(score_users, step, len(items))

    def _id_grid_scorer(self, items: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """:meth:`grid_scorer` of a model that reads ids.

        A model that declares ``prepares_grid`` (its item side does not depend on the
        user: LightGCN's propagation) prepares it once per ranking with
        ``model.grid_scorer(items[, graph])``; otherwise each pass calls
        ``model.score_grid(users, items[, graph])``.
        """
        graph = (self.graph,) if self.inputs == "ids_and_graph" else ()
        if self.model.capabilities.prepares_grid:
            score_users = self.model.grid_scorer(items, *graph)
        else:

            def score_users(users: torch.Tensor) -> torch.Tensor:
                return self.model.score_grid(users, items, *graph)

        step = max(1, GRID_FLOATS // max(1, len(items) * self.model.grid_width))
        device = items.device
        return self._in_passes(lambda users: score_users(users.to(device)), step, len(items))

    def _in_passes(
        self, score_users: Callable[[torch.Tensor], torch.Tensor], step: int, n_items: int
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """``users -> [U, n_items]`` float32 CPU logits; ``score_users`` gets ≤ ``step`` at once.

        Passes are as even as possible (64 users, step 61: 32 + 32, not 61 + 3), so no
        pass is a sliver that costs a whole pass's overhead; a signal stops between passes.
        """

        @torch.no_grad()
        def score(users: torch.Tensor) -> torch.Tensor:
            self.model.eval()
            if len(users) == 0:
                return torch.zeros(0, n_items)
            n_passes = -(-len(users) // step)
            size = -(-len(users) // n_passes)
            out = []
            for start in range(0, len(users), size):
                self.check_interrupt()
                out.append(score_users(users[start : start + size]).float().cpu())
            return torch.cat(out)

        return score

    def score_grid(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``[len(users), len(items)]`` logits of every (user, item) (see :meth:`grid_scorer`)."""
        return self.grid_scorer(items)(users)

    def predict(self, pairs: torch.Tensor) -> np.ndarray:
        """Probabilities for ``pairs`` (``[n, 3]``), with a fixed sampling seed."""
        return torch.sigmoid(torch.from_numpy(self.score_pairs(pairs))).numpy()

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, split: str) -> dict:
        pairs = self.dataset.splits[split]
        probabilities = self.predict(pairs)
        # Kept for what is logged beside the metrics (the test predictions, for ROC curves).
        self.last_predictions[split] = probabilities
        ev = self.cfg.eval
        return ctr_metrics(pairs[:, 2].numpy(), probabilities, ev.threshold, ev.auc, ev.batch_size)

    def final_test(self) -> dict:
        """The test split's metrics, with full-ranking top-K ones (``[eval] ranking_ks``)."""
        test = self.evaluate("test")
        splits = self.dataset.splits
        cold = cold_items(splits["train"], self.dataset.n_items)
        test.update(cold_auc(splits["test"], self.last_predictions["test"], cold))
        if self.cfg.eval.ranking_ks:
            began = time.perf_counter()
            test.update(self.ranking_metrics(splits["test"], cold=cold))
            self.log(
                f"full ranking of {int(test['ranking_users'])} test users in "
                f"{time.perf_counter() - began:.1f}s"
            )
        return test

    def ranking_metrics(
        self, held_out: torch.Tensor, split: str = "test", cold: torch.Tensor | None = None
    ) -> dict:
        """Full-ranking top-K metrics on ``held_out`` (``[eval] ranking_ks``, ``ranking_users``).

        Scored on the grid (:meth:`grid_scorer`) where the model declares ``scores_grid``,
        else pair by pair (:meth:`score_pairs`); the same scores either way.
        """
        splits, ev = self.dataset.splits, self.cfg.eval
        n_items = self.dataset.n_items
        grid = None
        if self.model.capabilities.scores_grid:
            grid = self.grid_scorer(torch.arange(n_items))
        return evaluate_ranking(
            self.score_pairs,
            splits["train"],
            held_out,
            self.dataset.n_users,
            n_items,
            ev.ranking_ks,
            ev.ranking_users,
            split=split,
            check=self.check_interrupt,
            cold=cold,
            score_grid=grid,
        )

    # ------------------------------------------------------------------ training
    def train_epoch(self, epoch: int) -> float:
        """One pass over the training pairs; returns the mean data loss.

        Every objective's mean loss of the epoch is left in :attr:`epoch_losses`
        (``loss``, ``loss_kge``, one per ``aux`` term).
        """
        self.model.train()
        reseed_sampling(derived_seed(self.cfg.seed, epoch))
        generator = torch.Generator().manual_seed(derived_seed(self.cfg.seed, epoch))
        pairs, batch_size = self.epoch_pairs(epoch), self.cfg.train.batch_size
        n_batches = -(-len(pairs) // batch_size)
        # The KGE clock runs over the whole run: epoch e starts after (e - 1) full epochs.
        self.rs_steps = (epoch - 1) * n_batches
        kge_batches = (
            self.kge_stream.epoch(self.cfg.seed, epoch, batch_size)
            if self.kge_stream is not None
            else None
        )
        totals = _WeightedMeans()
        bar = tqdm(
            # Training keeps one state per distinct (user, node) (dedup): pair trees give the
            # same step within 1e-5 (tests/test_fast_paths.py), but float32 rounding, which
            # Adam rescales, drifts over a run (KAISG seed 1: popularity@K moved in the 4th
            # decimal); scoring, where pair trees are bit-for-bit stable, uses the fast path.
            self.batches(pairs, batch_size, generator, dedup=TRAIN_DEDUP),
            total=n_batches,
            desc=f"epoch {epoch}",
            leave=False,
            disable=None,
        )
        for batch in bar:
            self.check_interrupt()
            loss, data_loss, aux = self.batch_loss(batch)
            self._step(self.optimizer, loss)
            self.rs_steps += 1
            totals.add("loss", data_loss, len(batch.labels))
            for name, value in aux.items():
                totals.add(name, value, len(batch.labels))
            if kge_batches is not None and self.rs_steps % self.cfg.train.kge_interval == 0:
                totals.add("loss_kge", self._kge_step(next(kge_batches)), 1)
            bar.set_postfix(loss=f"{totals.mean('loss'):.4f}")
        self.epoch_losses = totals.means()
        return self.epoch_losses["loss"]

    def epoch_pairs(self, epoch: int) -> torch.Tensor:
        """Epoch ``epoch``'s training pairs: with resampled negatives, drawn for that epoch."""
        if self._fresh_negatives is None:
            return self.train_pairs
        seed = derived_seed(self.cfg.seed, TRAIN_NEGATIVES_STREAM, epoch)
        generator = torch.Generator().manual_seed(seed)
        return resample_negatives(self.train_pairs, self._fresh_negatives, generator)

    def batch_loss(self, batch: PairBatch):
        """``(loss, data loss, aux terms)`` of a training batch: the objective's data loss
        plus every ``aux`` term plus ``train.l2`` times the penalty."""
        data_loss, penalty, aux = self._bpr_terms(batch) if self.bpr else self._bce_terms(batch)
        return data_loss + sum(aux.values()) + self.cfg.train.l2 * penalty, data_loss, aux

    def _bce_terms(self, batch: PairBatch):
        output = self.score(batch)
        data_loss = F.binary_cross_entropy_with_logits(output.logits, batch.labels)
        return data_loss, self._penalty(output), output.aux

    def _bpr_terms(self, batch: PairBatch):
        """BPR: ``-log σ(s_ui - s_uj)`` with ``j`` drawn among the user's non-positives."""
        negatives = self._unseen(batch.users.cpu()).to(batch.users.device)
        # One call scores positives and negatives: graph models propagate once per step.
        n = len(batch.users)
        both = self.score_ids(
            torch.cat([batch.users, batch.users]), torch.cat([batch.items, negatives])
        )
        loss = F.softplus(both.logits[n:] - both.logits[:n]).mean()
        return loss, self._penalty(both), {}

    def _kge_step(self, triples: dict[str, torch.Tensor]) -> torch.Tensor:
        triples = {k: v.to(self.cfg.train.device) for k, v in triples.items()}
        kge = self.model.kge_loss(**triples)
        self._step(self.kge_optimizer, kge.loss + self.cfg.train.l2 * self._penalty(kge))
        self.kge_steps += 1
        return kge.loss

    def _penalty(self, output) -> torch.Tensor:
        penalty = output.l2 if self.cfg.train.l2_scope == "tables" else output.l2_batch
        return penalty() if callable(penalty) else penalty  # models may defer the unused one


class _WeightedMeans:
    """Running means of an epoch's losses, each weighted by its batch size."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, name: str, value: torch.Tensor, weight: int) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + float(value) * weight
        self.counts[name] = self.counts.get(name, 0) + weight

    def mean(self, name: str) -> float:
        return self.sums[name] / self.counts[name]

    def means(self) -> dict[str, float]:
        return {name: self.mean(name) for name in self.sums}
