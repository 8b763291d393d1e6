"""The processed CTR dataset: a user/entity heterograph plus labelled splits.

Graph schema (all edges stored explicitly in both directions):

* node types ``user`` and ``entity``; item ``i`` is entity ``item_entity[i]``;
* ``(user, interacts, entity)`` and its reverse ``(entity, interacted_by, user)``:
  training positives only, so eval and test pairs never leak into message passing;
* ``(entity, kg, entity)``: every KG triple as ``head -> tail`` and ``tail -> head``,
  with edge data ``rel`` (relation id, shared by both directions) and ``inverse``
  (1 for the added ``tail -> head`` copy). KGCN-style models treat the KG as
  undirected while keeping each edge's relation.

Splits are ``int64`` tensors of shape ``[n, 3]`` holding ``(user, item, label)``.
A recipe's ``[modalities]`` (:mod:`data_prep.modalities`) are attached as
:class:`ItemModalities`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import dgl
import numpy as np
import torch

from data_prep.cache import read_meta, save_entry
from data_prep.errors import CacheError, DataSourceError

SPLITS = ("train", "eval", "test")
GRAPH_FILE = "graph.bin"
META_FILE = "meta.json"
MODALITIES_FILE = "modalities.npz"


@dataclass
class ItemModalities:
    """Item texts, tag graph and friendships of one dataset and split.

    Built by :func:`data_prep.modalities.prepare` and cached (``modalities.npz`` and
    ``meta.json``, checksum-verified) under the dataset's entry.

    Attributes:
        features: modality name -> ``[n_items, D]`` float32 text vectors.
        masks: modality name -> ``[n_items]`` bool, False where the item has no such text.
        tag_edges: ``[n, 2]`` (item, tag index) edges of the tag graph (empty if not asked).
        tag_names: name of each tag index.
        friends: ``[n, 2]`` (user, friend) dataset user indices, both directions as released.
        meta: request, input checksums, statistics.
    """

    features: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]
    tag_edges: torch.Tensor
    tag_names: list[str]
    friends: torch.Tensor
    meta: dict = field(default_factory=dict)

    def save(self, directory: Path) -> None:
        arrays = {f"feature_{k}": v.numpy() for k, v in self.features.items()}
        arrays.update({f"mask_{k}": v.numpy() for k, v in self.masks.items()})
        arrays["tag_edges"] = self.tag_edges.numpy()
        arrays["friends"] = self.friends.numpy()

        def write(path: Path) -> None:
            with open(path, "wb") as handle:
                np.savez(handle, **arrays)

        meta = {**self.meta, "tag_names": self.tag_names}
        save_entry(directory, {MODALITIES_FILE: write}, meta)

    @classmethod
    def load(cls, directory: Path) -> ItemModalities:
        meta = read_meta(directory, [MODALITIES_FILE])
        try:
            with np.load(directory / MODALITIES_FILE, allow_pickle=False) as arrays:
                data = {k: torch.from_numpy(arrays[k].copy()) for k in arrays.files}
        except (OSError, ValueError) as exc:
            raise CacheError(f"{MODALITIES_FILE} unreadable ({type(exc).__name__})") from None
        features = {k[8:]: v for k, v in data.items() if k.startswith("feature_")}
        masks = {k[5:]: v for k, v in data.items() if k.startswith("mask_")}
        tag_names = meta.pop("tag_names")
        return cls(features, masks, data["tag_edges"], tag_names, data["friends"], meta)

    @staticmethod
    def exists(directory: Path) -> bool:
        return (directory / META_FILE).is_file()


@dataclass
class KGRecDataset:
    graph: dgl.DGLGraph
    splits: dict[str, torch.Tensor]
    item_entity: torch.Tensor
    meta: dict
    # Item texts, tag graph and friendships a recipe asked for (data_prep.modalities);
    # attached after loading, not part of the cached entry.
    modalities: ItemModalities | None = None

    @property
    def n_users(self) -> int:
        return self.graph.num_nodes("user")

    @property
    def n_items(self) -> int:
        return int(self.item_entity.numel())

    @property
    def n_entities(self) -> int:
        return self.graph.num_nodes("entity")

    @property
    def n_relations(self) -> int:
        return int(self.meta["stats"]["relations"])

    def graph_args(self) -> dict[str, int]:
        """The table sizes a model is built with."""
        return {
            "n_users": self.n_users,
            "n_items": self.n_items,
            "n_entities": self.n_entities,
            "n_relations": self.n_relations,
        }

    def kg_graph(self) -> dgl.DGLGraph:
        """The undirected KG as a homogeneous entity graph with edge data ``rel``."""
        src, dst = self.graph.edges(etype="kg")
        kg = dgl.graph((src, dst), num_nodes=self.n_entities)
        kg.edata["rel"] = self.graph.edges["kg"].data["rel"]
        return kg

    def kg_triples(self) -> torch.Tensor:
        """``[n_triples, 3]`` ``(head, relation, tail)`` as released (inverse copies dropped)."""
        kg = self.graph.edges["kg"].data
        forward = kg["inverse"] == 0
        heads, tails = self.graph.edges(etype="kg")
        return torch.stack([heads[forward], kg["rel"][forward], tails[forward]], 1)

    def interaction_graph(self) -> dgl.DGLGraph:
        """The training user–item graph, homogeneous: users ``0..U-1``, items ``U..U+I-1``.

        Both directions of every training positive, with edge data ``norm`` =
        ``1 / sqrt(deg(u) deg(i))`` (LightGCN's symmetric normalisation).
        """
        train = self.splits["train"]
        positives = train[train[:, 2] == 1]
        users, items = positives[:, 0], positives[:, 1] + self.n_users
        graph = dgl.graph(
            (torch.cat([users, items]), torch.cat([items, users])),
            num_nodes=self.n_users + self.n_items,
        )
        degree = graph.in_degrees().float().clamp(min=1)
        src, dst = graph.edges()
        graph.edata["norm"] = (degree[src] * degree[dst]).rsqrt()
        return graph

    def save(self, directory: Path) -> None:
        """Write the entry atomically, the metadata (with the files' SHA-256) last."""
        tensors = {f"split_{name}": self.splits[name] for name in SPLITS}
        tensors["item_entity"] = self.item_entity

        def write_graph(path: Path) -> None:
            dgl.save_graphs(str(path), [self.graph], tensors)

        save_entry(directory, {GRAPH_FILE: write_graph}, self.meta)

    @classmethod
    def load(cls, directory: Path) -> KGRecDataset:
        """The entry at ``directory``; :class:`CacheError` if it fails its checksums."""
        if not (directory / META_FILE).is_file():
            raise DataSourceError(f"{directory}: no processed dataset here (missing {META_FILE})")
        meta = read_meta(directory, [GRAPH_FILE])
        try:
            graphs, tensors = dgl.load_graphs(str(directory / GRAPH_FILE))
            splits = {name: tensors[f"split_{name}"] for name in SPLITS}
            item_entity = tensors["item_entity"]
        except Exception as exc:  # noqa: BLE001 (DGL's C++ errors; checksums passed, so rare)
            raise CacheError(f"{GRAPH_FILE} unreadable ({type(exc).__name__})") from None
        return cls(graphs[0], splits, item_entity, meta)

    @staticmethod
    def exists(directory: Path) -> bool:
        return (directory / META_FILE).is_file() and (directory / GRAPH_FILE).is_file()
