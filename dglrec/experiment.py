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

from data_prep.hetrec import EdgeProtocol
from data_prep.hetrec import prepare as prepare_edges
from data_prep.kg_ctr import CTRProtocol, prepare
from dglrec import tracking
from dglrec.config import RecipeConfig, apply_overrides, parse_override, resolve
from dglrec.data import KGRecDataset
from dglrec.edge_training import EdgeRegressionTrainer
from dglrec.errors import ConfigError, RunError
from dglrec.kge import kg_triples, kge_fit, pretrained_tables
from dglrec.models.base import TrainingTensors
from dglrec.registry import build_model, get_model
from dglrec.sampling import PairSampler, build_sampler
from dglrec.training import FitResult, Trainer, seed_everything, uses_blocks

Log = Callable[[str], None]


def protocol_of(cfg: RecipeConfig) -> CTRProtocol:
    data = cfg.data
    return CTRProtocol(
        dataset=data.name,
        ratings_file=data.ratings_file,
        ratings_sep=data.ratings_sep,
        ratings_header=data.ratings_header,
        positive_threshold=data.positive_threshold,
        negatives_per_positive=data.negatives_per_positive,
        split=tuple(data.split),
        seed=cfg.data_seed,
    )


def edge_protocol_of(cfg: RecipeConfig) -> EdgeProtocol:
    return EdgeProtocol(
        dataset=cfg.data.name,
        split=tuple(cfg.data.split),
        seed=cfg.data_seed,
        paper_protocol=cfg.task.paper_protocol,
    )


def load_dataset(cfg: RecipeConfig, log: Log = print):
    """The processed dataset of the recipe, built on first use and cached after."""
    if cfg.task.kind == "edge_regression":
        dataset, _ = prepare_edges(edge_protocol_of(cfg), raw_dir=cfg.data.raw_dir or None, log=log)
        return dataset
    if cfg.task.paper_protocol:
        raise ConfigError("task.paper_protocol: only edge_regression has a paper protocol")
    dataset, _ = prepare(protocol_of(cfg), raw_dir=cfg.data.raw_dir or None, log=log)
    return dataset


@dataclass
class Experiment:
    cfg: RecipeConfig
    dataset: KGRecDataset
    model: torch.nn.Module
    sampler: object


def build(cfg: RecipeConfig, dataset: KGRecDataset | None = None, log: Log = print) -> Experiment:
    """Dataset, model and sampler of a recipe; the seed is set before the model's init."""
    edge_model = task_of(get_model(cfg.model_name)) == "edge_regression"
    if edge_model != (cfg.task.kind == "edge_regression"):
        raise ConfigError(
            f"model.name: {cfg.model_name} is {'an edge-regression' if edge_model else 'a CTR'} "
            f"model but the recipe's task.kind is {cfg.task.kind!r}"
        )
    dataset = dataset if dataset is not None else load_dataset(cfg, log)
    seed_everything(cfg.seed)
    graph_args = {
        name: getattr(dataset, name)
        for name in ("n_users", "n_items", "n_entities", "n_relations")
        if hasattr(dataset, name)
    }
    model = build_model(cfg.model_name, graph_args, cfg.model_kwargs)
    if edge_model:
        if hasattr(model, "bind_training_edges"):
            train = dataset.edges_of("train")  # training scores only
            users, items = dataset.user_item(train)
            model.bind_training_edges(users, items, dataset.weight[train])
        return Experiment(cfg, dataset, model, None)
    if hasattr(model, "bind_training_data"):
        model.bind_training_data(training_tensors(dataset, cfg.seed))
    if cfg.model["init"] == "transe":
        if not hasattr(model, "load_kge_embeddings"):
            raise ConfigError(f"model.init: {cfg.model_name} cannot start from TransE tables")
        dim = model.entity_emb.embedding_dim
        entity, relation = pretrained_tables(dataset, cfg.pretrain, dim, cfg.seed, log)
        model.load_kge_embeddings(entity, relation, rescale=cfg.pretrain.rescale)
    if task_of(model) == "kge":
        return Experiment(cfg, dataset, model, None)
    return Experiment(cfg, dataset, model, sampler_for(cfg, model))


def training_tensors(dataset: KGRecDataset, seed: int) -> TrainingTensors:
    """The training split, alignment and triples a model may see (never eval/test)."""
    return TrainingTensors(
        train_pairs=dataset.splits["train"],
        item_entity=dataset.item_entity,
        triples=kg_triples(dataset),
        n_entities=dataset.n_entities,
        seed=seed,
    )


def sampler_for(cfg: RecipeConfig, model: torch.nn.Module) -> PairSampler:
    """The recipe's sampler; models that need no KG blocks get id-only batches."""
    if not uses_blocks(model):
        return PairSampler(None)
    # Blocks to sample: the model's hops, or more where it reads a wider field (KGNN-LS).
    n_blocks = getattr(model, "n_blocks", getattr(model, "n_layers", 1))
    return build_sampler(cfg.sampler.kind, n_blocks, cfg.sampler.n_neighbors, model)


def task_of(model) -> str:
    """``"ctr"`` unless the model (instance or class) declares another task (``"kge"``, ...)."""
    return getattr(model, "task", "ctr")


def run_tags(cfg: RecipeConfig, dataset: KGRecDataset) -> dict:
    tags = {
        "model": cfg.model_name,
        "recipe": recipe_label(cfg),
        "dataset": cfg.data.name,
        "protocol": dataset.meta["protocol"] + f"; epoch selected by eval {cfg.eval.select_metric}",
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
    """
    if resume_run_id is not None and resume_state is None:
        resume_state = load_checkpoint(resume_run_id)
    experiment = build(cfg, log=log)
    with tracking.MlflowRun(
        cfg.tracking.experiment or cfg.data.name,
        run_name=cfg.tracking.run_name or f"{cfg.model_name}-s{cfg.seed}",
        run_id=resume_run_id,
        parent_run_id=parent_run_id,
    ) as run:
        log(f"MLflow run {run.run_id} ({tracking.configure()})")
        if resume_run_id is None:
            run.log_params(cfg.flat())
            run.set_tags(run_tags(cfg, experiment.dataset))
            run.log_text(cfg.to_toml(), "recipe.toml")
            run.log_metrics({f"data_{k}": v for k, v in experiment.dataset.meta["stats"].items()})
        if extra_tags:
            run.set_tags(extra_tags)
        if task_of(experiment.model) == "kge":
            if resume_state is not None:
                raise RunError("resuming is supported for CTR models; KGE fits are short, rerun it")
            result = kge_fit(cfg, experiment.dataset, experiment.model, run, log)
        else:
            trainer = trainer_for(experiment, run, log)
            result = trainer.fit(resume=resume_state)
            log_test_predictions(trainer, run)
        run.log_metrics({f"test_{k}": v for k, v in result.test.items()})
        run.log_metrics({"best_epoch": result.best_epoch})
        run.log_metrics({f"best_eval_{k}": v for k, v in result.best_eval.items()})
        if cfg.tracking.log_model:
            run.log_model(experiment.model)
        return run.run_id, result


PREDICTIONS_ARTIFACT = "predictions/test.npz"


def log_test_predictions(trainer: Trainer, run: tracking.MlflowRun) -> None:
    """The best model's test predictions (``user, item, label, score``): ROC curves need them."""
    if trainer.cfg.task.kind != "ctr":  # edge regression: no labelled pairs to plot
        return
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


def trainer_for(experiment: Experiment, tracker=None, log: Log = print) -> Trainer:
    """The task's trainer: user–item CTR, or edge regression (same loop, other batches)."""
    if experiment.cfg.task.kind == "edge_regression":
        return EdgeRegressionTrainer(
            experiment.model, experiment.dataset, experiment.cfg, tracker, log
        )
    return Trainer(
        experiment.model, experiment.dataset, experiment.sampler, experiment.cfg, tracker, log
    )


def load_checkpoint(run_id: str, name: str = "last.pt") -> dict:
    path = tracking.download_artifact(run_id, f"checkpoints/{name}")
    return torch.load(path, map_location="cpu")


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
    state = load_checkpoint(run_id)
    raw = apply_overrides(copy.deepcopy(state["config"]), overrides)
    return resolve(raw), state


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
    trainer = trainer_for(Experiment(cfg, dataset, model, sampler), log=log)
    test = trainer.evaluate("test")
    logged = {k[len("test_") :]: v for k, v in logged_metrics.items() if k.startswith("test_")}
    return {"test": test, "logged": logged}
