"""Recipes: TOML files resolved into typed dataclasses.

Resolution order, later wins: dataclass defaults < the recipe file < ``--set
section.key=value`` overrides < ``--seed``. Every section is a dataclass; the
``[model]`` section is checked against the hyper-parameters of the model named
by ``model.name`` (the keyword arguments of its constructor). Unknown keys and
values of the wrong type raise :class:`~dglrec.errors.ConfigError` naming the key
and what is allowed.

This module is the bottom layer: it knows no model. :func:`resolve` and
:func:`load_recipe` take the model schema as a function (``model.name`` ->
``{hyper-parameter: (type, default)}``); :mod:`dglrec.runs.recipes` binds it to
the model registry, and is what the commands call.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import tomllib
import types
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from dglrec.errors import ConfigError


@dataclass
class DataConfig:
    """``[data]``: which dataset, and the CTR protocol applied to it."""

    name: str = "lastfm-kg"
    # Directory holding the three files; empty: $DGLREC_RAW_DIR/<name>/ or a download.
    raw_dir: str = ""
    ratings_file: str = "user_artists.dat"
    ratings_sep: str = "\t"
    ratings_header: bool = True
    # Ratings >= this are positives (0 for Last.FM play counts, e.g. 4 for MovieLens).
    positive_threshold: float = 0.0
    negatives_per_positive: int = 1
    split: list[float] = field(default_factory=lambda: [0.6, 0.2, 0.2])
    # Seed of negatives and split; unset: the run's seed.
    split_seed: int | None = None
    # Training negatives of BCE-trained CTR models. "resample": drawn afresh every epoch,
    # uniformly over the items the user has no known positive for (in any split), as many
    # per user as the training split holds (seeded by the run's seed and the epoch);
    # "fixed": the ones drawn once before the split (KGCN's reference code). Unset:
    # "resample" ("fixed" with negative_pool = "inverse_popularity"). BPR models draw
    # their own negatives at every step: the key is an error there.
    train_negatives: Literal["resample", "fixed"] | None = None
    # Where every split's labelled negatives come from. "items": items the user never
    # rated (the clean protocol); "all_entities": any KG entity the user never rated,
    # genres and countries included, all entities then being rankable items (the
    # KGCN-pytorch lineage); "inverse_popularity": items drawn with probability
    # proportional to 1 / (1 + training-free popularity), the user's positives NOT
    # excluded (MKGCN's public code). The last two are nonstandard and marked so.
    negative_pool: Literal["items", "all_entities", "inverse_popularity"] = "items"


@dataclass
class ModalitiesConfig:
    """``[modalities]``: item texts and extra graphs from HetRec 2011 Last.FM (MKGCN).

    Built by :mod:`data_prep.modalities` for the run's split and cached; see there.
    """

    # Text modalities of each item: "name" (artist name), "tags" (its most frequent tags,
    # counted without the eval/test (user, artist) pairs). []: none.
    text: list[Literal["name", "tags"]] = field(default_factory=list)
    # "tfidf": TF-IDF + truncated SVD to tfidf_dim (scikit-learn); "minilm": the
    # all-MiniLM-L6-v2 sentence encoder (384-d; needs the [text] extra).
    encoder: Literal["minilm", "tfidf"] = "tfidf"
    tfidf_dim: int = 64
    # Tags per item in its tag text and tag-graph edges.
    top_tags: int = 5
    # Item–tag edges as KG relation "tag.has_tag", tag entities after the KG's own.
    tag_graph: bool = False
    # user_friends.dat friendships (for a user aggregator that reads friends).
    social: bool = False
    # Directory of the HetRec files; empty: $DGLREC_RAW_DIR/hetrec2011-lastfm-2k or a download.
    raw_dir: str = ""

    def wanted(self) -> bool:
        return bool(self.text) or self.tag_graph or self.social


@dataclass
class SamplerConfig:
    """``[sampler]``: how each item's KG neighbourhood is drawn."""

    # "uniform": KGCN's fixed-size sample of n_neighbors per node (with replacement
    # only where the degree is below n_neighbors); "full": all neighbours
    # (sampling.blocks.FullNeighborSampler, a MultiLayerFullNeighborSampler numbering
    # blocks the same way on any number of threads); "importance_topk": per user,
    # the n_neighbors neighbours of highest sigmoid(e_u . e_r) (KAISG).
    kind: Literal["uniform", "full", "importance_topk"] = "uniform"
    n_neighbors: int = 8
    # "per_batch": each batch draws its neighbourhoods afresh; "fixed": every entity's
    # n_neighbors are drawn once per run (KGCN's reference code; uniform sampler only).
    resample: Literal["per_batch", "fixed"] = "per_batch"


@dataclass
class TrainConfig:
    """``[train]``: the optimisation loop."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 5e-4
    # Weight of the L2 penalty ½Σw² on embedding tables and weight matrices.
    l2: float = 1e-4
    # "tables": every row of every table at every step (the KGCN reference code;
    # with Adam this pulls all unused rows towards 0 by ~lr per step, which erases
    # pretrained tables); "batch": only the rows the batch looked up.
    l2_scope: Literal["tables", "batch"] = "tables"
    # Stop after this many epochs without a better eval metric; 0 never stops early.
    patience: int = 0
    device: str = "cpu"
    # Multi-task models (MKR family) alternate objectives: after every kge_interval-th
    # recommendation step (counted over the whole run), one KGE step on a batch of
    # batch_size KG triples, with its own Adam optimizer at lr_kge. Other models ignore these.
    kge_interval: int = 1
    lr_kge: float = 2e-4
    # Learning-rate decay per epoch (torch ExponentialLR gamma); 1.0 keeps lr constant.
    lr_decay: float = 1.0


@dataclass
class EvalConfig:
    """``[eval]``: metrics and epoch selection."""

    batch_size: int = 4096
    threshold: float = 0.5
    # The eval-split metric that selects the best epoch (never a test metric).
    # CTR: auc, acc or f1; edge regression: mse or mae.
    select_metric: Literal["auc", "acc", "f1", "mse", "mae"] = "auc"
    # CTR models: full-ranking top-K metrics on the test split (dglrec.evaluation.ranking) for
    # these K, scored in chunks of ranking_users users x all items; [] turns it off.
    ranking_ks: list[int] = field(default_factory=lambda: [5, 10, 20, 50])
    ranking_users: int = 64
    # The split whose metric selects the epoch. "eval" (clean); "test": LEAKY, what reading
    # the reference codes' per-epoch test AUC amounts to (allows an eval fraction of 0).
    # The per-epoch eval_* metrics are then the test split's.
    select_on: Literal["eval", "test"] = "eval"
    # "whole": AUC over every pair of the split; "batch_mean": the mean of the AUCs of
    # consecutive batches of eval.batch_size pairs (MKGCN's public code; nonstandard).
    auc: Literal["whole", "batch_mean"] = "whole"


@dataclass
class TaskConfig:
    """``[task]``: what is predicted."""

    # "ctr": (user, item) click-through on a KG dataset (Last.FM-KG);
    # "edge_regression": the liking score of user–artist edges (HetRec Last.FM).
    kind: Literal["ctr", "edge_regression"] = "ctr"
    # Edge regression only. LEAKY, for measurement only: held-out edges stay in the
    # message graph with their scores, and directed edges are split independently,
    # as the public code of the GCN paper (Ou, NUS) does.
    paper_protocol: bool = False


TASK_METRICS = {"ctr": ("auc", "acc", "f1"), "edge_regression": ("mse", "mae")}


@dataclass
class PretrainConfig:
    """``[pretrain]``: TransE pretraining for ``[model] init = "transe"`` (cached)."""

    epochs: int = 100
    batch_size: int = 1024
    lr: float = 0.01
    margin: float = 1.0
    p_norm: Literal[1, 2] = 1
    # Scale the pretrained tables to the RMS of the model's own initialisation
    # (TransE vectors have unit norm, ~40x Glorot's); directions are kept.
    rescale: bool = True


@dataclass
class TrackingConfig:
    """``[tracking]``: MLflow. The store comes from MLFLOW_TRACKING_URI, else ./mlruns."""

    # MLflow experiment; empty: the dataset name.
    experiment: str = ""
    run_name: str = ""
    log_model: bool = True
    # What runs are grouped by in `dglrec compare` (tag "recipe"); empty: the recipe
    # file's name (kgcn.toml -> "kgcn"), or the model's name for a recipe built from --set.
    recipe: str = ""


@dataclass
class ClusterConfig:
    """``[cluster]``: where ``dglrec submit`` / ``dglrec sweep --cluster`` send jobs (Slurm).

    Command-line options (``--partition``, ``--time``...) override these.
    """

    partition: str = ""
    # Wall-clock limit per job, Slurm's format: "MM", "HH:MM:SS" or "D-HH:MM:SS".
    time: str = "01:00:00"
    cpus: int = 2
    # Memory per job, Slurm's format ("8G", "16000M").
    mem: str = "8G"
    gpus: int = 0
    account: str = ""
    # At most this many array tasks (seeds, trials) run at once; 0: no limit.
    max_parallel: int = 0
    # Seconds before the time limit at which a job checkpoints and requeues itself.
    requeue_grace: int = 120
    # Extra sbatch arguments, e.g. ["--qos=long", "--constraint=skylake"].
    sbatch_args: list[str] = field(default_factory=list)
    # Where batches (sweeps, seeds, submissions) keep their frozen recipe, job scripts and
    # logs; on a cluster it must be on a filesystem the nodes share.
    jobs_dir: str = "jobs"


@dataclass
class RecipeConfig:
    seed: int = 42
    task: TaskConfig = field(default_factory=TaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    modalities: ModalitiesConfig = field(default_factory=ModalitiesConfig)
    model: dict[str, Any] = field(default_factory=lambda: {"name": "kgcn"})
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    # [sweep]: "section.key" = [values...] (or {min, max, log} for random search);
    # method = "grid" | "random", n_trials = N (random). See dglrec.runs.sweep.
    sweep: dict[str, Any] = field(default_factory=dict)

    @property
    def model_name(self) -> str:
        return self.model["name"]

    @property
    def model_kwargs(self) -> dict[str, Any]:
        """The model constructor's hyper-parameters (``name`` and ``init`` are the builder's)."""
        return {k: v for k, v in self.model.items() if k not in COMMON_MODEL_KEYS}

    def protocol_departures(self) -> list[str]:
        """The switches by which this recipe departs from the clean CTR protocol.

        ``[]`` for the clean protocol (CTR or edge regression); each entry
        (``"select_on=test (LEAKY)"``...) is shown in the run's name, tags and
        ``dglrec compare``.
        """
        data, ev = self.data, self.eval
        out = []
        if data.train_negatives == "fixed":
            out.append("train_negatives=fixed")
        if data.negative_pool != "items":
            out.append(f"negative_pool={data.negative_pool}")
        if ev.select_on == "test":
            out.append("select_on=test (LEAKY)")
        if ev.auc == "batch_mean":
            out.append("auc=batch_mean")
        if self.sampler.resample == "fixed":
            out.append("adjacency=fixed")
        if self.task.paper_protocol:
            out.append("paper_protocol (LEAKY)")
        return out

    @property
    def data_seed(self) -> int:
        return self.seed if self.data.split_seed is None else self.data.split_seed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def flat(self) -> dict[str, Any]:
        """``{"train.lr": 5e-4, ...}``: the form logged as MLflow params."""
        out: dict[str, Any] = {}
        for key, value in self.to_dict().items():
            if isinstance(value, dict):
                out.update({f"{key}.{k}": v for k, v in value.items()})
            else:
                out[key] = value
        return out

    def to_toml(self) -> str:
        """The resolved recipe as TOML (None values are left out)."""
        lines = [f"seed = {toml_value(self.seed)}"]
        for key, value in self.to_dict().items():
            if isinstance(value, dict) and value:
                lines.append(f"\n[{key}]")
                lines += [
                    f"{_toml_key(k)} = {toml_value(v)}" for k, v in value.items() if v is not None
                ]
        return "\n".join(lines) + "\n"


SECTIONS = {f.name: f for f in dataclasses.fields(RecipeConfig)}

# [model] keys every model has, read by the builder rather than the model:
# name -> the registered class; init -> where the entity/relation tables start
# ("random": the model's own initialisation; "transe": pretrained, see dglrec.training.kge).
COMMON_MODEL_KEYS: dict[str, tuple[Any, Any]] = {
    "name": (str, "kgcn"),
    "init": (Literal["random", "transe"], "random"),
}


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").isalnum() else toml_value(key)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\t", "\\t") + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        (inner,) = typing.get_args(tp)
        return f"a list of {_type_name(inner)}"
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
    elif origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return coerce(value, option, key)
            except ConfigError:
                continue
    elif origin is list:
        (inner,) = typing.get_args(tp)
        if isinstance(value, list | tuple):
            try:
                return [coerce(v, inner, key) for v in value]
            except ConfigError:
                pass
    elif tp is type(None):
        if value is None:
            return None
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, tp):
        return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")


def _unknown(key: str, allowed: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"unknown key {key!r}{hint}; allowed: {', '.join(sorted(allowed))}")


def build_section(cls: type, values: dict[str, Any], section: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise _unknown(f"{section}.{key}", names)
        kwargs[key] = coerce(value, hints[key], f"{section}.{key}")
    return cls(**kwargs)


def parse_override(item: str) -> tuple[str, Any]:
    """``"train.lr=1e-3"`` -> ``("train.lr", 0.001)``; values are TOML, bare words are strings."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected section.key=value")
    key, raw = (part.strip() for part in item.split("=", 1))
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        key, value = parse_override(item)
        parts = key.split(".")
        if parts[0] == "sweep" and len(parts) == 3:  # sweep.section.key=[values]
            parts = ["sweep", ".".join(parts[1:])]
        if len(parts) == 1:
            raw[key] = value
        elif len(parts) == 2:
            raw.setdefault(parts[0], {})
            if not isinstance(raw[parts[0]], dict):
                raise ConfigError(f"--set {key}: {parts[0]!r} is not a section")
            raw[parts[0]][parts[1]] = value
        else:
            raise ConfigError(f"--set {key}: expected section.key=value")
    return raw


# model.name -> {hyper-parameter: (type, default)}; raises ConfigError for an unknown name.
ModelSchema = Callable[[Any], dict[str, tuple[Any, Any]]]


def resolve(
    raw: dict[str, Any],
    model_hparams: ModelSchema,
    model_objective: Callable[[str], str] | None = None,
) -> RecipeConfig:
    """Turn a parsed recipe dict into a validated :class:`RecipeConfig`.

    ``model_objective`` (``model.name`` -> ``"bce"``, ``"bpr"``...) settles the
    switches that depend on how the model is trained (``data.train_negatives``).
    """
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in SECTIONS:
            raise _unknown(key, list(SECTIONS))
        if key == "seed":
            kwargs["seed"] = coerce(value, int, "seed")
        elif not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a [{key}] table, got {value!r}")
        elif key == "model":
            continue
        elif key == "sweep":
            kwargs["sweep"] = validate_sweep(dict(value))
        else:
            section_type = typing.get_type_hints(RecipeConfig)[key]
            kwargs[key] = build_section(section_type, value, key)

    model = {"name": RecipeConfig().model_name, **raw.get("model", {})}
    name = model.get("name")
    hparams = {**COMMON_MODEL_KEYS, **model_hparams(name)}  # raises ConfigError naming model.name
    resolved = {"name": name}
    for key, value in model.items():
        if key == "name":
            continue
        if key not in hparams:
            raise _unknown(f"model.{key}", list(hparams))
        resolved[key] = coerce(value, hparams[key][0], f"model.{key}")
    for key, (_, default) in hparams.items():
        resolved.setdefault(key, default)
    kwargs["model"] = resolved
    cfg = RecipeConfig(**kwargs)
    validate_ranges(cfg, {k: d for k, (_, d) in hparams.items()})
    metrics = TASK_METRICS[cfg.task.kind]
    if cfg.eval.select_metric not in metrics:
        raise ConfigError(
            f"eval.select_metric: {cfg.eval.select_metric!r} is not a {cfg.task.kind} metric; "
            f"allowed: {', '.join(metrics)}"
        )
    _check_protocol_switches(cfg)
    if model_objective is not None and cfg.task.kind == "ctr":
        _settle_train_negatives(cfg, model_objective(cfg.model_name))
    return cfg


def _settle_train_negatives(cfg: RecipeConfig, objective: str) -> None:
    """``data.train_negatives`` for this model: an error for BPR, unset -> its default."""
    data = cfg.data
    if objective == "bpr":
        if data.train_negatives is not None:
            raise ConfigError(
                f"data.train_negatives: {cfg.model_name} is trained by BPR, which draws fresh "
                "negatives at every step; the key is for BCE-trained models"
            )
    elif data.train_negatives is None:
        data.train_negatives = "fixed" if data.negative_pool == "inverse_popularity" else "resample"


def _check_protocol_switches(cfg: RecipeConfig) -> None:
    """Protocol switches that make no sense for the task or the other settings."""
    data, ev = cfg.data, cfg.eval
    if cfg.task.kind != "ctr":
        for key, value, default in (
            ("data.train_negatives", data.train_negatives, None),
            ("data.negative_pool", data.negative_pool, "items"),
            ("eval.auc", ev.auc, "whole"),
            ("eval.select_on", ev.select_on, "eval"),
        ):
            if value != default:
                raise ConfigError(
                    f"{key}: {value!r} is a CTR protocol switch; task.kind is {cfg.task.kind!r}"
                )
    if data.negative_pool == "inverse_popularity" and data.train_negatives == "resample":
        raise ConfigError(
            "data.train_negatives: 'resample' draws uniformly over the user's non-positives; "
            "with data.negative_pool = 'inverse_popularity' use 'fixed'"
        )
    if cfg.task.kind != "ctr" and cfg.modalities.wanted():
        raise ConfigError(
            "modalities: item modalities are built for CTR datasets; task.kind is "
            f"{cfg.task.kind!r}"
        )
    if cfg.sampler.resample == "fixed" and cfg.sampler.kind != "uniform":
        raise ConfigError(
            f"sampler.resample: 'fixed' draws each entity's n_neighbors once, which only the "
            f"'uniform' sampler samples; sampler.kind is {cfg.sampler.kind!r}"
        )
    if ev.select_on == "eval" and len(data.split) == 3 and data.split[1] == 0:
        raise ConfigError(
            "data.split: the eval fraction is 0, but eval.select_on = 'eval' selects the "
            "epoch on the eval split (set eval.select_on = 'test' for the LEAKY protocol)"
        )


# ---------------------------------------------------------------- value ranges
# Types are checked by coerce(); these are the values each key may take. A value
# outside them would otherwise reach torch or numpy (a traceback, a division by
# zero, or a run opened and left FAILED), sometimes only after training. One
# table, checked by resolve() before any data is built or run opened.
Rule = tuple[Callable[[Any], bool], str]


def _finite(v: Any) -> bool:
    return v is None or not isinstance(v, float) or math.isfinite(v)


def _at_least(low: float) -> Rule:
    return (lambda v: v >= low), f"a number >= {low:g}"


def _int_at_least(low: int) -> Rule:
    return (lambda v: v >= low), f"an integer >= {low}"


POSITIVE: Rule = (lambda v: v > 0), "a number > 0"
SEED: Rule = (lambda v: v is None or 0 <= v < 2**32), "an integer in [0, 2**32)"
SLURM_TIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")
SLURM_MEM = re.compile(r"^\d+[KMGT]?$")


def _split_ok(split: list[float]) -> bool:
    return len(split) == 3 and all(f >= 0 for f in split) and abs(sum(split) - 1) <= 1e-6


VALUE_RULES: dict[str, Rule] = {
    "seed": SEED,
    "data.split": (_split_ok, "three non-negative fractions (train, eval, test) summing to 1"),
    "data.split_seed": SEED,
    "data.negatives_per_positive": _int_at_least(1),
    "data.ratings_sep": (lambda v: v != "", "a non-empty separator"),
    "data.name": (lambda v: v.strip() != "" and "/" not in v, "a non-empty name without '/'"),
    "modalities.text": (
        lambda v: len(set(v)) == len(v),
        'distinct text modalities ("name", "tags")',
    ),
    "modalities.tfidf_dim": _int_at_least(2),
    "modalities.top_tags": _int_at_least(1),
    "sampler.n_neighbors": _int_at_least(1),
    "train.epochs": _int_at_least(1),
    "train.batch_size": _int_at_least(1),
    # 0 is allowed: nothing changes (tests of early stopping use it).
    "train.lr": _at_least(0),
    "train.l2": _at_least(0),
    "train.patience": _int_at_least(0),
    "train.kge_interval": _int_at_least(1),
    "train.lr_kge": _at_least(0),
    "train.lr_decay": ((lambda v: 0 < v <= 1), "a number in (0, 1]"),
    "eval.batch_size": _int_at_least(1),
    "eval.threshold": ((lambda v: 0 < v < 1), "a number in (0, 1)"),
    "eval.ranking_ks": ((lambda v: all(k >= 1 for k in v)), "a list of integers >= 1"),
    "eval.ranking_users": _int_at_least(1),
    "pretrain.epochs": _int_at_least(1),
    "pretrain.batch_size": _int_at_least(1),
    "pretrain.lr": POSITIVE,
    "pretrain.margin": POSITIVE,
    "cluster.time": (
        lambda v: bool(SLURM_TIME.match(v)),
        'Slurm\'s "MM", "HH:MM:SS" or "D-HH:MM:SS"',
    ),
    "cluster.cpus": _int_at_least(1),
    "cluster.mem": (lambda v: bool(SLURM_MEM.match(v)), 'Slurm\'s memory, e.g. "8G" or "16000M"'),
    "cluster.gpus": _int_at_least(0),
    "cluster.max_parallel": _int_at_least(0),
    "cluster.requeue_grace": _int_at_least(0),
}


def _model_rule(value: Any, default: Any) -> Rule | None:
    """Model hyper-parameters: ints are sizes and counts, floats weights and scales.

    An int must be >= 1 where its default is (``dim``, ``n_layers``...), else >= 0
    (``biased_mf``'s ``dim = 0``: no factors); a float must be finite and >= 0.
    """
    if isinstance(value, bool) or isinstance(default, bool):
        return None
    if isinstance(value, int) and isinstance(default, int):
        return _int_at_least(1 if default >= 1 else 0)
    if isinstance(value, float):
        return _at_least(0)
    return None


def _bad_value(key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{key}: expected {allowed}, got {toml_value(value)}")


def validate_ranges(cfg: RecipeConfig, model_defaults: dict[str, Any]) -> None:
    """Check every value of ``cfg`` against :data:`VALUE_RULES` and the model's ranges.

    Raises :class:`ConfigError` with the key, the value and what is allowed, e.g.
    ``train.lr: expected a number > 0, got -1.0``. NaN and infinities are refused everywhere.
    """
    flat = cfg.flat()
    for key, value in flat.items():
        values = value if isinstance(value, list) else [value]
        if not all(_finite(v) for v in values):
            raise _bad_value(key, value, "a finite number")
    for key, (ok, allowed) in VALUE_RULES.items():
        if not ok(flat[key]):
            raise _bad_value(key, flat[key], allowed)
    for key, value in cfg.model_kwargs.items():
        rule = _model_rule(value, model_defaults.get(key))
        if rule is not None and not rule[0](value):
            raise _bad_value(f"model.{key}", value, rule[1])


def load_recipe(
    path: str | Path | None,
    model_hparams: ModelSchema,
    overrides: list[str] | None = None,
    seed: int | None = None,
    model_objective: Callable[[str], str] | None = None,
) -> RecipeConfig:
    """Read a recipe file, apply ``--set`` overrides and ``--seed``, and validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such recipe") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    raw = apply_overrides(raw, list(overrides or []))
    if seed is not None:
        raw["seed"] = seed
    if path is not None and not raw.get("tracking", {}).get("recipe"):
        raw.setdefault("tracking", {})["recipe"] = path.stem
    try:
        return resolve(raw, model_hparams, model_objective)
    except ConfigError as exc:
        where = f"{path}: " if path is not None else ""
        raise ConfigError(f"{where}{exc}") from None


SWEEP_OPTIONS = ("method", "n_trials")
RANGE_KEYS = {"min", "max", "log", "int"}


def validate_sweep(table: dict) -> dict:
    """Check a ``[sweep]`` table; errors name the offending ``sweep.*`` key."""
    method = table.get("method", "grid")
    if method not in ("grid", "random"):
        raise ConfigError(f'sweep.method: expected "grid" or "random", got {method!r}')
    if method == "random":
        n_trials = table.get("n_trials")
        if not isinstance(n_trials, int) or isinstance(n_trials, bool) or n_trials < 1:
            raise ConfigError("sweep.n_trials: random search needs a positive number of trials")
    elif "n_trials" in table:
        raise ConfigError('sweep.n_trials: only for method = "random" (a grid fits every point)')
    for path, values in table.items():
        if path in SWEEP_OPTIONS:
            continue
        if len(path.split(".")) != 2:
            raise ConfigError(f"sweep: {path!r} is not a section.key")
        if isinstance(values, dict):
            if method != "random":
                raise ConfigError(f'sweep.{path}: a {{min, max}} range needs method = "random"')
            unknown = set(values) - RANGE_KEYS
            low, high = values.get("min"), values.get("max")
            if unknown or not all(isinstance(v, int | float) for v in (low, high)) or low >= high:
                raise ConfigError(f"sweep.{path}: expected {{min = a, max = b}} with a < b")
            if values.get("log") and low <= 0:
                raise ConfigError(f"sweep.{path}: a log range needs min > 0")
        elif not isinstance(values, list) or not values:
            raise ConfigError(f"sweep.{path}: expected a non-empty list of values")
    return table
