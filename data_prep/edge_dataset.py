"""The processed edge-regression dataset: a user–artist graph with liking scores and splits.

Edges are stored directed, ``2 n_pairs`` of them: edge ``i < n_pairs`` goes user ->
artist and edge ``i + n_pairs`` is its reverse. Every edge carries its score
``weight`` and its ``split`` code (0 train, 1 eval, 2 test); in the clean protocol
an edge and its reverse share the code.

The *message graph* is what message passing may read: in the clean protocol the
training edges only, so no held-out score ever weights a message; under the
paper protocol (leaky, for measurement only) every edge.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import dgl
import torch

from data_prep.cache import read_meta, save_entry
from data_prep.errors import CacheError, DataSourceError

SPLIT_CODES = {"train": 0, "eval": 1, "test": 2}
TENSORS_FILE = "edges.pt"
META_FILE = "meta.json"


@dataclass
class EdgeRegressionDataset:
    src: torch.Tensor
    dst: torch.Tensor
    weight: torch.Tensor
    split: torch.Tensor
    friends: torch.Tensor
    artist_tags: torch.Tensor
    meta: dict

    @property
    def n_users(self) -> int:
        return int(self.meta["stats"]["users"])

    @property
    def n_items(self) -> int:
        return int(self.meta["stats"]["artists"])

    @property
    def n_nodes(self) -> int:
        return self.n_users + self.n_items

    @property
    def n_pairs(self) -> int:
        return len(self.src) // 2

    def graph_args(self) -> dict[str, int]:
        """The table sizes a model is built with."""
        return {"n_users": self.n_users, "n_items": self.n_items}

    @property
    def paper_protocol(self) -> bool:
        return bool(self.meta["protocol_fields"]["paper_protocol"])

    def reverse_eids(self) -> torch.Tensor:
        n = self.n_pairs
        return torch.cat([torch.arange(n, 2 * n), torch.arange(n)])

    def user_item(self, eids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(user, artist index)`` of edges ``eids``, whichever their direction."""
        src, dst = self.src[eids], self.dst[eids]
        return torch.minimum(src, dst), torch.maximum(src, dst) - self.n_users

    def edges_of(self, split: str) -> torch.Tensor:
        """Ids of the directed edges to predict in ``split``.

        Clean protocol: the user -> artist direction of each held pair (a pair is
        predicted once). Paper protocol: every directed edge of the split.
        """
        code = SPLIT_CODES[split]
        eids = torch.nonzero(self.split == code, as_tuple=True)[0]
        return eids if self.paper_protocol else eids[eids < self.n_pairs]

    def message_graph(self) -> dgl.DGLGraph:
        """The graph message passing reads, with edge data ``w`` (score) and ``eid``.

        Clean protocol: training edges, both directions, only. Paper protocol: all.
        """
        keep = torch.ones_like(self.split, dtype=torch.bool)
        if not self.paper_protocol:
            keep = self.split == SPLIT_CODES["train"]
        eids = torch.nonzero(keep, as_tuple=True)[0]
        graph = dgl.graph((self.src[eids], self.dst[eids]), num_nodes=self.n_nodes)
        graph.edata["w"] = self.weight[eids]
        graph.edata["eid"] = eids
        return graph

    def save(self, directory: Path) -> None:
        """Write the entry atomically, the metadata (with the files' SHA-256) last."""
        tensors = {
            name: getattr(self, name)
            for name in ("src", "dst", "weight", "split", "friends", "artist_tags")
        }
        save_entry(directory, {TENSORS_FILE: lambda path: torch.save(tensors, path)}, self.meta)

    @classmethod
    def load(cls, directory: Path) -> EdgeRegressionDataset:
        """The entry at ``directory``; :class:`CacheError` if it fails its checksums."""
        if not (directory / META_FILE).is_file():
            raise DataSourceError(f"{directory}: no processed dataset here (missing {META_FILE})")
        meta = read_meta(directory, [TENSORS_FILE])
        try:
            tensors = torch.load(directory / TENSORS_FILE)
        except Exception as exc:  # noqa: BLE001 (zip/pickle errors; checksums passed, so rare)
            raise CacheError(f"{TENSORS_FILE} unreadable ({type(exc).__name__})") from None
        return cls(**tensors, meta=meta)

    @staticmethod
    def exists(directory: Path) -> bool:
        return (directory / META_FILE).is_file() and (directory / TENSORS_FILE).is_file()
