"""Recipe -> config -> dataset, model, sampler -> trainer -> MLflow, in one place.

``dglrec fit`` and ``dglrec evaluate`` are thin wrappers around :func:`fit` and
:func:`evaluate`; tests and benchmarks call :func:`build` directly.
"""

from __future__ import annotations

import copy
import tempfile
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data_prep.edge_dataset import EdgeRegressionDataset
from data_prep.kg_dataset import KGRecDataset
from dglrec.config import RecipeConfig, apply_overrides, parse_override
from dglrec.data import load_dataset
from dglrec.errors import ConfigError, RunError, RunInterrupted
from dglrec.models.base import TrainingTensors
from dglrec.models.registry import build_model, get_model, uses_kg
from dglrec.runs import tracking
from dglrec.runs.recipes import model_objective, resolve
from dglrec.sampling.blocks import PairSampler, build_sampler
from dglrec.seeding import ADJACENCY_STREAM, derived_seed, seed_everything
from dglrec.training.ctr import CTRTrainer
from dglrec.training.edge import EdgeRegressionTrainer
from dglrec.training.kge import kge_trainer, pretrained_tables
from dglrec.training.loop import EpochTrainer, FitResult, fault_point

Log = Callable[[str], None]


@dataclass
class Setup:
    """What a recipe builds before training: the dataset, the model and its sampler."""

    cfg: RecipeConfig
    dataset: KGRecDataset | EdgeRegressionDataset
    model: torch.nn.Module
    sampler: PairSampler | None


def build(cfg: RecipeConfig, dataset=None, log: Log = print) -> Setup:
    """Dataset, model and sampler of a recipe; the seed is set before the model's init.

    What the model is handed is read from its declared capabilities: its graph
    metadata, the training data it binds, pretrained TransE tables
    (``[model] init = "transe"``) and, for block models, the recipe's sampler.
    """
    capabilities = get_model(cfg.model_name).capabilities
    edge_model = capabilities.task == "edge_regression"
    if edge_model != (cfg.task.kind == "edge_regression"):
        raise ConfigError(
            f"model.name: {cfg.model_name} is {'an edge-regression' if edge_model else 'a CTR'} "
            f"model but the recipe's task.kind is {cfg.task.kind!r}"
        )
    if cfg.model["init"] == "transe" and not capabilities.kge_init:
        raise ConfigError(f"model.init: {cfg.model_name} cannot start from TransE tables")
    if cfg.modalities.wanted() and not capabilities.modalities and not _tag_graph_only(cfg):
        raise ConfigError(
            f"modalities: {cfg.model_name} reads no item texts or friendships; "
            "leave [modalities] text = [] and social = false (tag_graph may stay)"
        )
    if cfg.modalities.tag_graph and not uses_kg(cfg.model_name):
        raise ConfigError(f"modalities.tag_graph: {cfg.model_name} reads no knowledge graph")
    dataset = dataset if dataset is not None else load_dataset(cfg, log)
    if uses_kg(cfg.model_name) and not dataset.meta["stats"].get("triples", 1):
        raise ConfigError(
            f"model.name: {cfg.model_name} reads the knowledge graph, but {cfg.data.name}'s "
            "KG has no triples"
        )
    seed_everything(cfg.seed)
    model = _build_model(cfg, dataset.graph_args())
    if capabilities.binds == "training_edges":
        train = dataset.edges_of("train")  # training scores only
        users, items = dataset.user_item(train)
        model.bind_training_edges(users, items, dataset.weight[train])
    elif capabilities.binds == "training_data":
        model.bind_training_data(training_tensors(dataset, cfg.seed))
    if cfg.model["init"] == "transe":
        dim = model.entity_emb.embedding_dim
        entity, relation = pretrained_tables(dataset, cfg.pretrain, dim, cfg.seed, log)
        model.load_kge_embeddings(entity, relation, rescale=cfg.pretrain.rescale)
    if capabilities.task != "ctr":
        return Setup(cfg, dataset, model, None)
    return Setup(cfg, dataset, model, sampler_for(cfg, model))


def _tag_graph_only(cfg: RecipeConfig) -> bool:
    return not cfg.modalities.text and not cfg.modalities.social


def _build_model(cfg: RecipeConfig, graph_args: dict[str, int]) -> torch.nn.Module:
    """The model, or a :class:`ConfigError` naming ``model.<key>`` if it rejects its values.

    Ranges in :mod:`dglrec.config` catch most bad values; what only the model knows
    (combinations of keys) surfaces here as its ``ValueError``, before any run is opened.
    """
    try:
        return build_model(cfg.model_name, graph_args, cfg.model_kwargs)
    except ValueError as exc:
        named = [k for k in cfg.model_kwargs if k in str(exc)] or list(cfg.model_kwargs)
        keys = ", ".join(f"model.{k} = {cfg.model[k]!r}" for k in named)
        raise ConfigError(f"{keys}: {cfg.model_name} rejects this: {exc}") from None


def training_tensors(dataset: KGRecDataset, seed: int) -> TrainingTensors:
    """The training split, alignment, triples and modalities a model may see (never eval/test)."""
    modalities = dataset.modalities
    return TrainingTensors(
        train_pairs=dataset.splits["train"],
        item_entity=dataset.item_entity,
        triples=dataset.kg_triples(),
        n_entities=dataset.n_entities,
        seed=seed,
        item_features=dict(modalities.features) if modalities else {},
        item_feature_mask=dict(modalities.masks) if modalities else {},
        user_friends=modalities.friends
        if modalities and modalities.meta["request"]["social"]
        else None,
    )


def sampler_for(cfg: RecipeConfig, model: torch.nn.Module) -> PairSampler:
    """The recipe's sampler; models that read no KG blocks get id-only batches."""
    if model.capabilities.inputs != "blocks":
        return PairSampler(None)
    # Blocks to sample: the model's hops, or more where it reads a wider field (KGNN-LS).
    sampler = cfg.sampler
    return build_sampler(
        sampler.kind,
        model.n_blocks,
        sampler.n_neighbors,
        model,
        resample=sampler.resample,
        seed=derived_seed(cfg.seed, ADJACENCY_STREAM),
    )


def protocol_of(cfg: RecipeConfig, dataset: KGRecDataset) -> str:
    """The run's whole protocol in words: the data's, then how training and selection went."""
    parts = [dataset.meta["protocol"]]
    if cfg.data.train_negatives is not None:
        parts.append(
            "training negatives redrawn every epoch"
            if cfg.data.train_negatives == "resample"
            else "training negatives fixed (drawn once before the split)"
        )
    if cfg.eval.select_on == "test":
        parts.append(f"epoch selected by TEST {cfg.eval.select_metric} (LEAKY)")
    else:
        parts.append(f"epoch selected by eval {cfg.eval.select_metric}")
    if cfg.eval.auc == "batch_mean":
        parts.append(f"AUC = mean over batches of {cfg.eval.batch_size} (nonstandard)")
    if cfg.sampler.resample == "fixed":
        parts.append("each entity's neighbours drawn once per run")
    elif (
        cfg.task.kind == "ctr"
        and cfg.sampler.kind == "uniform"
        and get_model(cfg.model_name).capabilities.inputs == "blocks"
    ):
        parts.append("scored on one neighbour sample per entity (eval stream)")
    m = cfg.modalities
    if m.wanted():
        what = [f"text {'+'.join(m.text)} ({m.encoder})"] if m.text else []
        what += ["tag graph"] * m.tag_graph + ["friendships"] * m.social
        parts.append(f"modalities: {', '.join(what)}; tags counted without eval/test pairs")
    return "; ".join(parts)


def run_name_of(cfg: RecipeConfig) -> str:
    """``kgcn-s1``; protocol departures in brackets: ``kgcn-s1 [select_on=test (LEAKY)]``."""
    name = cfg.tracking.run_name or f"{cfg.model_name}-s{cfg.seed}"
    departures = cfg.protocol_departures()
    return f"{name} [{'; '.join(departures)}]" if departures else name


def run_tags(cfg: RecipeConfig, dataset: KGRecDataset) -> dict:
    tags = {
        "model": cfg.model_name,
        "recipe": recipe_label(cfg),
        "dataset": cfg.data.name,
        "protocol": protocol_of(cfg, dataset),
        "protocol_departures": "; ".join(cfg.protocol_departures()) or "none",
        "sampler": cfg.sampler.kind,
        "seed": str(cfg.seed),
        "git_commit": tracking.git_commit(),
    }
    tags.update({f"data_sha256.{name}": sha for name, sha in dataset.meta["checksums"].items()})
    return tags


def recipe_label(cfg: RecipeConfig) -> str:
    """What ``dglrec compare`` groups a run under: the recipe's name, else the model's."""
    return cfg.tracking.recipe or cfg.model_name


def fit(
    cfg: RecipeConfig,
    resume_run_id: str | None = None,
    resume_state: dict | None = None,
    log: Log = print,
    parent_run_id: str | None = None,
    extra_tags: dict[str, str] | None = None,
) -> tuple[str, FitResult]:
    """Train a recipe into an MLflow run, new or resumed from a checkpoint of that run.

    ``extra_tags`` (e.g. a batch task and its Slurm job id) are set on new and resumed runs.
    The tracking store is checked first (a server that does not answer fails in
    seconds), then the data and model are built, and only then is a run opened.
    A signal stops the run KILLED with :class:`RunInterrupted` carrying its id.
    """
    tracking.configure()
    if resume_run_id is not None and resume_state is None:
        resume_state = load_checkpoint(resume_run_id)
    setup = build(cfg, log=log)
    run_id = None
    try:
        with tracking.MlflowRun(
            cfg.tracking.experiment or cfg.data.name,
            run_name=run_name_of(cfg),
            run_id=resume_run_id,
            parent_run_id=parent_run_id,
        ) as run:
            run_id = run.run_id
            log(f"MLflow run {run.run_id} ({tracking.configure()}; artifacts {run.artifact_uri})")
            if resume_run_id is None:
                run.log_params(cfg.flat())
                run.set_tags(run_tags(cfg, setup.dataset))
                run.log_text(cfg.to_toml(), "recipe.toml")
                run.log_metrics(data_metrics(setup.dataset.meta))
            if extra_tags:
                run.set_tags(extra_tags)
            trainer = trainer_for(setup, run, log)
            result = trainer.fit(resume=resume_state)
            if isinstance(trainer, CTRTrainer):
                log_test_predictions(trainer, run)
            last_epoch = result.history[-1]["epoch"] if result.history else 0
            fault_point("before_test_metrics", last_epoch)
            # One call, so that a kill leaves all of them logged or none; at the step of
            # the last epoch trained, so that a finished run trained longer adds a point
            # at a new step rather than a second one at the same step.
            # A resumed run killed after logging them (while logging the model) has them.
            if resume_run_id is None or last_epoch not in run.logged_steps("best_epoch"):
                run.log_metrics(
                    {
                        **{f"test_{k}": v for k, v in result.test.items()},
                        "best_epoch": result.best_epoch,
                        **{f"best_eval_{k}": v for k, v in result.best_eval.items()},
                    },
                    step=last_epoch,
                )
            if cfg.tracking.log_model:
                run.log_model(setup.model)
            return run.run_id, result
    except KeyboardInterrupt as exc:
        if run_id is None or isinstance(exc, RunInterrupted) and exc.run_id == run_id:
            raise
        raise RunInterrupted(run_id, getattr(exc, "signal_name", "SIGINT")) from None


def data_metrics(meta: dict) -> dict[str, float]:
    """The dataset's statistics and what its build cleaned, as ``data_*`` metrics."""
    metrics = {f"data_{k}": v for k, v in meta["stats"].items()}
    metrics.update({f"data_cleaned_{k}": v for k, v in meta.get("cleaned", {}).items()})
    return metrics


PREDICTIONS_ARTIFACT = "predictions/test.npz"


def log_test_predictions(trainer: CTRTrainer, run: tracking.MlflowRun) -> None:
    """The best model's test predictions (``user, item, label, score``): ROC curves need them."""
    pairs = trainer.dataset.splits["test"]
    # final_test has scored the best model on test already (same sampling seed, same scores).
    scores = trainer.last_predictions.get("test")
    if scores is None:
        scores = trainer.predict(pairs)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(PREDICTIONS_ARTIFACT).name
        np.savez_compressed(
            path,
            user=pairs[:, 0].numpy(),
            item=pairs[:, 1].numpy(),
            label=pairs[:, 2].numpy(),
            score=scores,
        )
        run.log_artifact(path, str(Path(PREDICTIONS_ARTIFACT).parent))


def trainer_for(setup: Setup, tracker=None, log: Log = print) -> EpochTrainer:
    """The model's task's trainer: CTR, edge regression or KGE (one loop, other steps)."""
    task = setup.model.capabilities.task
    if task == "edge_regression":
        return EdgeRegressionTrainer(setup.model, setup.dataset, setup.cfg, tracker, log)
    if task == "kge":
        return kge_trainer(setup.cfg, setup.dataset, setup.model, tracker, log)
    return CTRTrainer(setup.model, setup.dataset, setup.sampler, setup.cfg, tracker, log)


def load_checkpoint(run_id: str, name: str = "last.pt") -> dict:
    """A run's checkpoint, or a one-line :class:`RunError` if it is missing or unreadable."""
    path = tracking.download_artifact(run_id, f"checkpoints/{name}")
    try:
        state = torch.load(path, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 (truncated or garbled: zip, pickle or torch errors)
        raise RunError(
            f"run {run_id}: checkpoints/{name} is unreadable ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'corrupted'}); it cannot be resumed"
        ) from None
    if not isinstance(state, dict) or "config" not in state:
        raise RunError(f"run {run_id}: checkpoints/{name} is not a dglrec checkpoint")
    return state


# What a resumed run may change: how long it goes on, nothing that alters its results so far.
RESUME_OVERRIDES = ("train.epochs", "train.patience")


def resume_point(run_id: str, overrides: list[str] | None = None) -> tuple[RecipeConfig, dict]:
    """The recipe and last checkpoint of a run; ``overrides`` may extend ``train.epochs``."""
    overrides = list(overrides or [])
    for item in overrides:
        key, _ = parse_override(item)
        if key not in RESUME_OVERRIDES:
            raise ConfigError(
                f"--set {key}: a resumed run keeps its recipe; only "
                f"{', '.join(RESUME_OVERRIDES)} may change"
            )
    status = tracking.run_status(run_id)  # RunError if there is no such run
    state = load_checkpoint(run_id)
    raw = apply_overrides(copy.deepcopy(state["config"]), overrides)
    data = raw.setdefault("data", {})
    if "train_negatives" not in data and model_objective(raw["model"]["name"]) != "bpr":
        # Checkpoints of dglrec 0.1.0 predate the switch: those runs trained on fixed negatives.
        data["train_negatives"] = "fixed"
    cfg = resolve(raw)
    if status == "FINISHED" and cfg.train.epochs <= state["epoch"]:
        raise RunError(
            f"run {run_id} already finished after epoch {state['epoch']}; nothing to resume "
            f"(`dglrec evaluate {run_id}` re-scores it; --set train.epochs=N with N > "
            f"{state['epoch']} trains it longer)"
        )
    return cfg, state


def config_of_run(run_id: str) -> RecipeConfig:
    """The resolved recipe a run was trained with (its ``recipe.toml`` artifact)."""
    text = tracking.download_artifact(run_id, "recipe.toml").read_text()
    return resolve(tomllib.loads(text))


def evaluate(run_id: str, log: Log = print) -> dict:
    """Reload a run's logged model and re-score its test split.

    Returns ``{"test": metrics now, "logged": metrics the run logged}``.
    """
    _, logged_metrics, _ = tracking.get_run(run_id)
    cfg = config_of_run(run_id)
    if not any(key.startswith("test_") for key in logged_metrics):
        raise RunError(f"run {run_id} has no test metrics (did it finish?)")
    model = tracking.load_model(run_id)
    dataset = load_dataset(cfg, log)
    cfg.train.device = "cpu"
    sampler = None if cfg.task.kind == "edge_regression" else sampler_for(cfg, model)
    trainer = trainer_for(Setup(cfg, dataset, model, sampler), log=log)
    test = trainer.evaluate("test")
    logged = {k[len("test_") :]: v for k, v in logged_metrics.items() if k.startswith("test_")}
    return {"test": test, "logged": logged}
