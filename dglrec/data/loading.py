"""Recipe -> protocol -> processed dataset (built by :mod:`data_prep` on first use, then cached)."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path

from data_prep import hetrec, kg_ctr, modalities
from data_prep.edge_dataset import EdgeRegressionDataset
from data_prep.kg_dataset import KGRecDataset
from data_prep.sources import PUBLIC_DATASETS, resolve_raw_dir
from dglrec.config import RecipeConfig
from dglrec.errors import ConfigError

Log = Callable[[str], None]


def ctr_protocol_of(cfg: RecipeConfig) -> kg_ctr.CTRProtocol:
    """The CTR protocol of a recipe's ``[data]`` section (the split seed included)."""
    data = cfg.data
    return kg_ctr.CTRProtocol(
        dataset=data.name,
        ratings_file=data.ratings_file,
        ratings_sep=data.ratings_sep,
        ratings_header=data.ratings_header,
        positive_threshold=data.positive_threshold,
        negatives_per_positive=data.negatives_per_positive,
        split=tuple(data.split),
        seed=cfg.data_seed,
        negative_pool=data.negative_pool,
    )


def edge_protocol_of(cfg: RecipeConfig) -> hetrec.EdgeProtocol:
    """The edge-regression protocol of a recipe (``task.paper_protocol`` is the leaky one)."""
    return hetrec.EdgeProtocol(
        dataset=cfg.data.name,
        split=tuple(cfg.data.split),
        seed=cfg.data_seed,
        paper_protocol=cfg.task.paper_protocol,
    )


def prepare_dataset(
    cfg: RecipeConfig,
    log: Log = print,
    raw_dir: str | Path | None = None,
    out_root: str | Path | None = None,
    mirror: str | None = None,
) -> tuple[KGRecDataset | EdgeRegressionDataset, Path]:
    """``(dataset, cache directory)`` of the recipe's task and ``[data]`` section.

    ``raw_dir`` (else ``data.raw_dir``), ``out_root`` and ``mirror`` are as for
    :func:`data_prep.kg_ctr.prepare`.
    """
    where = {"raw_dir": raw_dir or cfg.data.raw_dir or None, "out_root": out_root, "mirror": mirror}
    if cfg.task.kind == "edge_regression":
        return hetrec.prepare(edge_protocol_of(cfg), log=log, **where)
    if cfg.task.paper_protocol:
        raise ConfigError("task.paper_protocol: only edge_regression has a paper protocol")
    dataset, directory = kg_ctr.prepare(ctr_protocol_of(cfg), log=log, **where)
    if cfg.modalities.wanted():
        dataset = with_modalities(cfg, dataset, directory, log, mirror)
    return dataset, directory


def modality_request_of(cfg: RecipeConfig) -> modalities.ModalityRequest:
    """The ``[modalities]`` section as :mod:`data_prep.modalities` takes it."""
    m = cfg.modalities
    return modalities.ModalityRequest(
        text=tuple(m.text),
        encoder=m.encoder,
        top_tags=m.top_tags,
        tfidf_dim=m.tfidf_dim,
        tag_graph=m.tag_graph,
        social=m.social,
    )


def with_modalities(
    cfg: RecipeConfig, dataset: KGRecDataset, directory: Path, log: Log, mirror: str | None
) -> KGRecDataset:
    """The dataset with the recipe's modalities attached (and its tag graph in the KG).

    The HetRec files come from ``modalities.raw_dir``, else ``$DGLREC_RAW_DIR`` or a
    download; those of the public Last.FM-KG must match their published SHA-256.
    """
    request = modality_request_of(cfg)
    if request.text and request.encoder == "minilm":
        modalities.minilm_model_dir()  # a missing extra fails before any download
    raw = resolve_raw_dir(modalities.HETREC, cfg.modalities.raw_dir or None, mirror=mirror)
    public = cfg.data.name in PUBLIC_DATASETS
    features = modalities.prepare(request, dataset, directory, raw, public, log)
    if request.tag_graph:
        dataset = modalities.with_tag_graph(dataset, features)
    else:
        dataset = dataclasses.replace(dataset, meta=copy.deepcopy(dataset.meta))
        dataset.modalities = features
    # Logged with the run: the HetRec files' SHA-256 (data_sha256.* tags) and what was
    # built from them (data_modal_* metrics).
    meta = dataset.meta
    meta["checksums"].update(
        {f"{modalities.HETREC}/{name}": sha for name, sha in features.meta["checksums"].items()}
    )
    meta["stats"].update({f"modal_{k}": v for k, v in features.meta["stats"].items()})
    return dataset


def load_dataset(cfg: RecipeConfig, log: Log = print) -> KGRecDataset | EdgeRegressionDataset:
    """The processed dataset of the recipe, built on first use and cached after."""
    return prepare_dataset(cfg, log)[0]
