"""The one epoch loop every trainer runs: selection, patience, checkpoints, resume, signals.

A trainer (:class:`EpochTrainer` subclass) supplies what differs between tasks:

* :meth:`~EpochTrainer.train_epoch`: one pass over its training data, returning
  the epoch's mean losses (``{"loss": ..., "loss_kge": ...}``);
* :meth:`~EpochTrainer.evaluate`: a split's metrics (``{}`` if it has no eval split);
* :meth:`~EpochTrainer.final_test`: the test metrics of the restored best model;
* its optimisers, built in its constructor (``optimizer``, optionally
  ``kge_optimizer`` and ``scheduler``).

The loop, written once here: after each epoch the eval split is scored, the
best epoch by the eval ``select_metric`` is kept, two checkpoints are written
(``best.pt`` when it improved, ``last.pt`` always), and only then is the epoch
logged (``epoch_seconds``, ``train_*``, ``eval_*`` at step ``epoch``) and its line
printed; ``patience`` epochs without improvement stop early. At the end the best
epoch's weights are restored and test is scored once. A run resumed from
``last.pt`` continues exactly as the uninterrupted run would have, since every
epoch's randomness is derived from ``(seed, epoch)`` (:mod:`dglrec.seeding`).

Every epoch's metrics appear exactly once, whatever instant the process dies:
an epoch killed before its checkpoint is redone on resume and logged then; one
killed between its checkpoint and its metrics is in ``last.pt``'s history, and
the resume logs the steps of that history the run lacks.

SIGINT (Ctrl-C) and SIGTERM set a flag that the trainers check between batches,
in training, evaluation, the final test and the full ranking alike: the run stops
with :class:`~dglrec.errors.RunInterrupted` (a :class:`KeyboardInterrupt`) at a
clean point, every finished epoch already checkpointed.

``$DGLREC_FAULT=POINT:EPOCH`` makes the process kill itself (SIGKILL) at a named
point of that epoch (:func:`fault_point`): the tests use it to die at exact instants.
"""

from __future__ import annotations

import contextlib
import copy
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dglrec.config import RecipeConfig
from dglrec.errors import RunInterrupted
from dglrec.evaluation.metrics import HIGHER_IS_BETTER

Log = Callable[[str], None]

FAULT_ENV = "DGLREC_FAULT"
# The signals that stop a fit at its next batch (SIGTERM: a scheduler, `kill`).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def fault_point(name: str, epoch: int) -> None:
    """SIGKILL this process if ``$DGLREC_FAULT`` is ``name:epoch`` (fault-injection tests)."""
    if os.environ.get(FAULT_ENV) == f"{name}:{epoch}":
        os.kill(os.getpid(), signal.SIGKILL)


class NullTracker:
    """Tracking that records nothing (pretraining, benchmarks, unit tests)."""

    run_id = None

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        pass

    def logged_steps(self, key: str) -> set[int]:
        return set()

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        pass


@dataclass
class FitResult:
    best_epoch: int
    best_eval: dict
    test: dict
    history: list[dict] = field(default_factory=list)


def recipe_settings(cfg: RecipeConfig) -> dict:
    """The loop's settings from a resolved recipe (``EpochTrainer(model, **settings, ...)``)."""
    return {
        "epochs": cfg.train.epochs,
        "patience": cfg.train.patience,
        "select_metric": cfg.eval.select_metric,
        "config": cfg.to_dict(),
    }


def describe(metrics: dict) -> str:
    """``"auc 0.7900 acc 0.7100 f1 0.7000 recall_at_10 ..."``: a split's headline metrics.

    Of the top-K metrics only recall and NDCG at 10 are shown; all are logged.
    """
    shown = {
        k: v
        for k, v in metrics.items()
        if "_at_" not in k
        and not k.endswith(("_users", "_pairs"))
        or k in ("recall_at_10", "ndcg_at_10")
    }
    return " ".join(f"{k} {v:.4f}" for k, v in shown.items())


class EpochTrainer:
    """The epoch loop (module docstring); subclasses supply the step and the evaluation.

    Args:
        model: the model being trained.
        epochs: the most epochs to train.
        patience: stop after this many epochs without a better eval metric (0: never).
        select_metric: the eval metric that selects the best epoch (never a test one).
        config: the resolved recipe (``cfg.to_dict()``), saved in every checkpoint.
        tracker: where metrics and checkpoints go (:class:`dglrec.runs.tracking.MlflowRun`).
        log: one-line progress messages.
    """

    # Print every log_every-th epoch's line (and the last); all are logged to the tracker.
    log_every = 1
    # The split scored after every epoch to select the best one (logged as eval_*).
    selection_split = "eval"

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        epochs: int,
        patience: int,
        select_metric: str,
        config: dict | None = None,
        tracker=None,
        log: Log = print,
    ):
        self.model = model
        self.epochs = epochs
        self.patience = patience
        self.select_metric = select_metric
        self.config = config
        self.tracker = tracker or NullTracker()
        self.log = log
        self.optimizer: torch.optim.Optimizer | None = None
        self.kge_optimizer: torch.optim.Optimizer | None = None
        self.scheduler = None
        self.epoch_losses: dict[str, float] = {}
        self._interrupted: str | None = None

    # ------------------------------------------------------------ supplied by trainers
    def train_epoch(self, epoch: int) -> float:
        """One pass over the training data; sets :attr:`epoch_losses`, returns its ``loss``."""
        raise NotImplementedError

    def evaluate(self, split: str) -> dict:
        """Metrics of the current model on ``split``."""
        raise NotImplementedError

    def final_test(self) -> dict:
        """The test metrics reported for the run (the best epoch's weights are loaded)."""
        return self.evaluate("test")

    # ------------------------------------------------------------ shared by trainers
    def _adam(self, lr: float, lr_decay: float = 1.0) -> list[torch.nn.Parameter]:
        """Adam over the trainable parameters (and the LR decay); none if nothing trains."""
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        if trainable:
            # foreach: one multi-tensor kernel per Adam op, ~3x faster on CPU for large tables.
            self.optimizer = torch.optim.Adam(trainable, lr=lr, foreach=True)
            if lr_decay != 1.0:
                self.scheduler = torch.optim.lr_scheduler.ExponentialLR(
                    self.optimizer, gamma=lr_decay
                )
        return trainable

    def check_interrupt(self) -> None:
        """Raise :class:`RunInterrupted` if SIGINT or SIGTERM arrived (call between batches)."""
        if self._interrupted:
            raise RunInterrupted(self.tracker.run_id, self._interrupted)

    def _step(self, optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        # Gradients of every parameter are cleared, not only this optimizer's: the
        # objectives share tables, and one step must not see the other's gradients.
        self.model.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def _checkpoint(self, state: dict, name: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            torch.save(state, path)
            self.tracker.log_artifact(path, "checkpoints")

    def _training_state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "kge_optimizer": self.kge_optimizer and self.kge_optimizer.state_dict(),
            "scheduler": self.scheduler and self.scheduler.state_dict(),
        }

    def _restore(self, resume: dict) -> None:
        self.model.load_state_dict(resume["model"])
        self.optimizer.load_state_dict(resume["optimizer"])
        if self.kge_optimizer is not None:
            self.kge_optimizer.load_state_dict(resume["kge_optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(resume["scheduler"])

    # ------------------------------------------------------------ the loop
    def fit(self, resume: dict | None = None) -> FitResult:
        """Train to ``epochs`` (or early stop), restore the best epoch, score test.

        Args:
            resume: a checkpoint written by this method (``checkpoints/last.pt``);
                training continues after its epoch.
        """
        with self._stop_on_sigint():
            if self.optimizer is None:
                return self._evaluate_only()
            return self._fit(resume)

    @contextlib.contextmanager
    def _stop_on_sigint(self):
        # A KeyboardInterrupt raised wherever the signal lands can be swallowed by
        # library code (database retries, C extensions); a flag checked between
        # batches always stops the loop at a clean point.
        self._interrupted = None
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def request_stop(signum, frame):
            self._interrupted = signal.Signals(signum).name

        previous = {signum: signal.signal(signum, request_stop) for signum in STOP_SIGNALS}
        try:
            yield
            # A signal that arrived after the last check (e.g. during the last log line).
            self.check_interrupt()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _evaluate_only(self) -> FitResult:
        """Models with nothing to train (Pop): eval and test are scored once."""
        evaluation, test = self.evaluate(self.selection_split), self.final_test()
        record = {f"eval_{k}": v for k, v in evaluation.items()}
        self.tracker.log_metrics(record, step=0)
        self.log(f"no trainable parameters: evaluated only; test {describe(test)}")
        return FitResult(0, evaluation, test, [{"epoch": 0, **record}])

    def _fit(self, resume: dict | None) -> FitResult:
        progress = _Progress()
        if resume is not None:
            self._restore(resume)
            progress = _Progress(
                resume["epoch"] + 1, resume["history"], resume["best"], resume["bad_epochs"]
            )
            self.log(f"resuming after epoch {resume['epoch']}")
            # Killed between its checkpoint and its metrics: log what the run lacks.
            # (A tracker that cannot tell what it has, e.g. a test's recorder, is trusted.)
            logged_steps = getattr(self.tracker, "logged_steps", None)
            logged = logged_steps("epoch_seconds") if logged_steps else None
            for record in progress.history:
                if logged is not None and record["epoch"] not in logged:
                    self._log_record(record)
        for epoch in range(progress.start, self.epochs + 1):
            if self.patience and progress.bad_epochs >= self.patience:
                break
            self.check_interrupt()
            self._run_epoch(epoch, progress)
        best = progress.best
        if best is None:
            raise RuntimeError("no epoch was trained (train.epochs < 1?)")
        self.model.load_state_dict(best["state"])
        fault_point("before_test", progress.history[-1]["epoch"])
        test = self.final_test()
        selected = (
            f"eval {self.select_metric} {best['metric']:.4f}" if best["eval"] else "last epoch"
        )
        self.log(f"best epoch {best['epoch']} ({selected}); test {describe(test)}")
        return FitResult(best["epoch"], best["eval"], test, progress.history)

    def _run_epoch(self, epoch: int, progress: _Progress) -> None:
        """Train, evaluate, log, select and checkpoint one epoch."""
        began = time.perf_counter()
        train_loss = self.train_epoch(epoch)
        seconds = time.perf_counter() - began
        if self.scheduler is not None:
            self.scheduler.step()
        fault_point("after_train", epoch)
        evaluation = self.evaluate(self.selection_split)
        record = {"epoch": epoch, "epoch_seconds": seconds}
        record.update({f"train_{k}": v for k, v in self.epoch_losses.items()})
        record.update({f"eval_{k}": v for k, v in evaluation.items()})
        progress.history.append(record)
        improved = progress.select(epoch, evaluation, self.select_metric, self.model)
        if improved:
            best = {"epoch": epoch, "model": progress.best["state"], "eval": evaluation}
            self._checkpoint({**best, "config": self.config}, "best.pt")
        state = {"epoch": epoch, **self._training_state()}
        state.update(
            best=progress.best,
            bad_epochs=progress.bad_epochs,
            history=progress.history,
            config=self.config,
        )
        fault_point("before_checkpoint", epoch)
        self._checkpoint(state, "last.pt")
        # Logged after the checkpoint, so that a resume never logs a step twice (a
        # kill between the two is made good by the resume, see _fit).
        fault_point("before_metrics", epoch)
        self._log_record(record)
        fault_point("after_metrics", epoch)
        # Printed after the checkpoint: a line on screen means the epoch is saved.
        if epoch % self.log_every == 0 or epoch == self.epochs:
            extra = "".join(f" {k} {v:.4f}" for k, v in self.epoch_losses.items() if k != "loss")
            self.log(
                f"epoch {epoch:3d}  loss {train_loss:.4f}{extra}  eval {describe(evaluation)}"
                f"  {seconds:.1f}s" + ("  *" if improved and evaluation else "")
            )

    def _log_record(self, record: dict) -> None:
        metrics = {k: v for k, v in record.items() if k != "epoch"}
        self.tracker.log_metrics(metrics, step=record["epoch"])


@dataclass
class _Progress:
    """Where a fit stands: the next epoch, the records so far, the best epoch, its age."""

    start: int = 1
    history: list[dict] = field(default_factory=list)
    best: dict | None = None
    bad_epochs: int = 0

    def select(self, epoch: int, evaluation: dict, metric: str, model: torch.nn.Module) -> bool:
        """Keep ``epoch`` as the best if its eval ``metric`` improved; returns whether it did.

        Without an eval split (pretraining on every triple) the last epoch is kept.
        """
        sign = 1 if HIGHER_IS_BETTER[metric] else -1
        improved = (
            self.best is None
            or metric not in evaluation
            or sign * evaluation[metric] > sign * self.best["metric"]
        )
        if improved:
            self.best = {
                "epoch": epoch,
                "metric": evaluation.get(metric),
                "eval": evaluation,
                "state": copy.deepcopy(model.state_dict()),
            }
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        return improved
