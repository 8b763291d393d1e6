"""MKGCN: Multi-Modal Knowledge Graph Convolutional Network for music recommender systems.

Cui, Qu, Li, Yang, Li, Zhang. "Multi-Modal Knowledge Graph Convolutional Network
for Music Recommender Systems", *Electronics* 12(12), 2023.
https://doi.org/10.3390/electronics12122688

Three aggregators. The **multi-modal aggregator** fuses an entity's embedding
``e`` with the modality vectors ``m_1..m_k`` it actually has (``M(e)``; items
only: artist-name and tag texts here), each reduced to ``d`` by PCA or a learned
linear map:

.. math::

    e' = \\tanh\\Big(W\\big(e + \\tfrac{1}{1+|M(e)|}
         (e + \\textstyle\\sum_{m ∈ M(e)} m)\\big) + b\\Big)

(the residual form of the authors' public code; ``fusion`` also offers ``sum``
``tanh(W(e + Σ m) + b)``, ``concat`` ``tanh(W[e ‖ mean m] + b)`` and ``max``
``tanh(W max(e, m_1..) + b)``). Without any modality bound (structure only) ``e' = e``.

The **user aggregator** reads a fixed sample ``S(u)`` of at most ``history_size``
of the user's *training* positives (drawn once, seeded, when the data is bound;
the authors also draw it once, but from all labelled rows before the split, a
leak we do not copy), as multi-head self-attention then a mean:

.. math::

    H_u = [e'_{i}]_{i ∈ S(u)}, \\qquad
    u = \\operatorname{mean}_{i ∈ S(u)} \\operatorname{MHSA}(H_u)_i

and, with friendships bound (``[modalities] social``), ``u ← ½ (u + mean_{f ∈ F(u)}
mean_{i ∈ S(f)} e'_i)`` over a fixed sample ``F(u)`` of at most ``n_friends``
friends who have a history. ``user_aggregator = "table"`` replaces all this by a
user embedding table, as KGCN has.

The **item aggregator** is KGCN's (:mod:`dglrec.models.kg.kgcn`) over the DGL
blocks, starting from ``h^{(0)} = e'``: ``π^u_r = u^⊤ e_r``, softmax over each
state's sampled neighbours, ``e^u_{N(v)} = Σ π̃ h_e`` and
``h^{(l+1)}_v = σ(W_l(h^{(l)}_v + e^u_{N(v)}) + b_l)`` (sum aggregator; ``tanh``
in the last of ``H`` hops). Score :math:`\\hat y_{uv} = \\mathrm{sigmoid}(u^⊤ h^{(H)}_v)`,
trained with BCE.

Args:
    n_users, n_items, n_entities, n_relations: table sizes (tag entities included).
    dim: embedding size ``d``.
    n_layers: hops ``H``.
    aggregator: KGCN's ``"sum"``, ``"concat"`` or ``"neighbor"``.
    fusion: multi-modal aggregator, ``"residual"``, ``"sum"``, ``"concat"`` or ``"max"``.
    projection: ``"pca"`` (modality vectors reduced to ``d`` once, at bind time, as the
        authors do) or ``"linear"`` (a learned ``D -> d`` map per modality).
    user_aggregator: ``"history"`` (above) or ``"table"``.
    history_size: at most this many training positives per user in ``S(u)``.
    n_heads: attention heads (``d`` must be divisible by it).
    n_friends: at most this many friends per user, when friendships are bound.

Shapes:
    input: ``H`` conditioned blocks and ``pair_index`` ``[n_pairs]``;
    bound: features ``[n_items, D_k]``, histories ``[n_users, L]``, friends ``[n_users, F]``;
    output: :class:`~dglrec.models.base.ScoreOutput` with logits ``[n_pairs]``;
    grid: KGCN's :meth:`~dglrec.models.kg.kgcn.KGCN.score_grid`, through
    :meth:`user_vectors` and :meth:`entity_vectors`.
"""

from __future__ import annotations

from typing import Literal

import dgl
import torch
from torch import nn

from dglrec.models.base import ScoreOutput, TrainingTensors, half_sq
from dglrec.models.kg.kgcn import KGCN
from dglrec.models.registry import register_model
from dglrec.seeding import HISTORY_STREAM, derived_seed

FUSIONS = ("residual", "sum", "concat", "max")
PROJECTIONS = ("pca", "linear")
USER_AGGREGATORS = ("history", "table")


def pca(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``[n, dim]``: rows of ``x`` on their top ``dim`` principal axes (zero-padded if fewer).

    Deterministic (full SVD of the centred rows); each axis's sign is fixed so that its
    largest-magnitude loading is positive. Scaled to unit RMS, like the other inputs.
    """
    centred = x - x.mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(centred.double(), full_matrices=False)
    axes = vh[:dim]
    sign = torch.sign(axes.gather(1, axes.abs().argmax(1, keepdim=True)))
    axes = axes * torch.where(sign == 0, 1.0, sign)
    out = torch.zeros(len(x), dim, dtype=torch.float64)
    out[:, : len(axes)] = centred.double() @ axes.T
    rms = out.pow(2).mean().sqrt()
    return (out / rms if rms > 0 else out).float()


def fixed_sample(
    groups: list[list[int]], size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``([n, L], [n, L] mask)``: up to ``size`` members of each group, drawn without replacement.

    ``L`` is ``min(size, largest group)`` (at least 1); groups no larger than ``size``
    are kept whole, in their order.
    """
    width = max(1, min(size, max((len(g) for g in groups), default=0)))
    out = torch.zeros(len(groups), width, dtype=torch.int64)
    mask = torch.zeros(len(groups), width, dtype=torch.bool)
    for row, members in enumerate(groups):
        chosen = torch.tensor(members, dtype=torch.int64)
        if len(chosen) > size:
            chosen = chosen[torch.randperm(len(chosen), generator=generator)[:size]]
        out[row, : len(chosen)] = chosen
        mask[row, : len(chosen)] = True
    return out, mask


class ModalFusion(nn.Module):
    """The multi-modal aggregator: ``e`` and its modality vectors -> ``e'``."""

    def __init__(self, dim: int, kind: str):
        super().__init__()
        if kind not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {kind!r}")
        self.kind = kind
        self.linear = nn.Linear(2 * dim if kind == "concat" else dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, e: torch.Tensor, modal: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``e`` ``[n, d]``, ``modal`` ``[n, k, d]``, ``mask`` ``[n, k]`` -> ``[n, d]``."""
        present = mask.unsqueeze(-1).to(e.dtype)  # [n, k, 1]
        total = (modal * present).sum(1)  # [n, d]
        count = present.sum(1)  # [n, 1]
        if self.kind == "residual":
            x = e + (e + total) / (1 + count)
        elif self.kind == "sum":
            x = e + total
        elif self.kind == "concat":
            x = torch.cat([e, total / count.clamp(min=1)], -1)
        else:
            masked = modal.masked_fill(~mask.unsqueeze(-1), float("-inf"))
            x = torch.maximum(e, masked.max(1).values) if modal.shape[1] else e
        return torch.tanh(self.linear(x))


@register_model("mkgcn", binds="training_data", explains=True, modalities=True, scores_grid=True)
class MKGCN(KGCN):
    def __init__(
        self,
        n_users: int,
        n_items: int,
        n_entities: int,
        n_relations: int,
        dim: int = 16,
        n_layers: int = 2,
        aggregator: Literal["sum", "concat", "neighbor"] = "sum",
        fusion: Literal["residual", "sum", "concat", "max"] = "residual",
        projection: Literal["pca", "linear"] = "pca",
        user_aggregator: Literal["history", "table"] = "history",
        history_size: int = 32,
        n_heads: int = 2,
        n_friends: int = 8,
    ):
        if projection not in PROJECTIONS:
            raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
        if user_aggregator not in USER_AGGREGATORS:
            raise ValueError(
                f"user_aggregator must be one of {USER_AGGREGATORS}, got {user_aggregator!r}"
            )
        if dim % n_heads:
            raise ValueError(f"dim {dim} is not divisible by n_heads {n_heads}")
        super().__init__(n_users, n_entities, n_relations, dim, n_layers, aggregator)
        self.dim = dim
        self.projection = projection
        self.user_aggregator = user_aggregator
        self.history_size = history_size
        self.n_friends = n_friends
        self.fusion = ModalFusion(dim, fusion)
        self.self_attention = nn.MultiheadAttention(dim, n_heads, batch_first=True)
        # Filled by bind_training_data (before any checkpoint is loaded): which modalities,
        # their vectors per item, the row of each entity's item, histories and friends.
        self.modal_names: list[str] = []
        self.projections = nn.ModuleDict()
        self.register_buffer("item_entity", torch.arange(n_items))
        self.register_buffer("entity_item", torch.full((n_entities,), -1, dtype=torch.int64))
        self.register_buffer("modal_mask", torch.zeros(n_items, 0, dtype=torch.bool))
        self.register_buffer("history", torch.zeros(n_users, 1, dtype=torch.int64))
        self.register_buffer("history_mask", torch.zeros(n_users, 1, dtype=torch.bool))
        self.register_buffer("friends", torch.zeros(n_users, 0, dtype=torch.int64))
        self.register_buffer("friends_mask", torch.zeros(n_users, 0, dtype=torch.bool))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self.fusion.reset_parameters()
        self.self_attention._reset_parameters()
        for layer in self.projections.values():
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    # ------------------------------------------------------------------ binding

    def bind_training_data(self, data: TrainingTensors) -> None:
        """Modality vectors, users' training histories and friends; saved as buffers."""
        generator = torch.Generator().manual_seed(derived_seed(data.seed, HISTORY_STREAM))
        items = self.modal_mask.shape[0]
        self.item_entity.copy_(data.item_entity)
        self.entity_item[data.item_entity] = torch.arange(items)
        self.modal_names = sorted(data.item_features)
        masks = []
        for name in self.modal_names:
            features = data.item_features[name].float()
            mask = data.item_feature_mask[name].bool()
            if self.projection == "pca":
                reduced = torch.zeros(items, self.dim)
                reduced[mask] = pca(features[mask], self.dim)
                self.register_buffer(f"modal_{name}", reduced)
            else:
                self.register_buffer(f"modal_{name}", features)
                layer = nn.Linear(features.shape[1], self.dim)
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)
                self.projections[name] = layer
            masks.append(mask)
        self.modal_mask = (
            torch.stack(masks, 1) if masks else torch.zeros(items, 0, dtype=torch.bool)
        )

        train = data.train_pairs
        positives = train[train[:, 2] == 1]
        n_users = self.history.shape[0]
        histories: list[list[int]] = [[] for _ in range(n_users)]
        for user, item in positives[:, :2].tolist():
            histories[user].append(item)
        self.history, self.history_mask = fixed_sample(histories, self.history_size, generator)
        if data.user_friends is not None:
            has_history = self.history_mask.any(1)
            friends: list[list[int]] = [[] for _ in range(n_users)]
            for user, friend in data.user_friends.tolist():
                if user != friend and has_history[friend] and friend not in friends[user]:
                    friends[user].append(friend)
            self.friends, self.friends_mask = fixed_sample(friends, self.n_friends, generator)

    # ------------------------------------------------------------------ aggregators

    def modal_vectors(self, items: torch.Tensor) -> torch.Tensor:
        """``[n, k, d]`` the modality vectors of ``items`` (zeros where masked)."""
        out = []
        for name in self.modal_names:
            values = self.get_buffer(f"modal_{name}")[items]
            out.append(self.projections[name](values) if self.projection == "linear" else values)
        return torch.stack(out, 1) if out else self.modal_mask.new_zeros(len(items), 0, self.dim)

    def fused_entities(self, entities: torch.Tensor) -> torch.Tensor:
        """``[n, d]``: ``e'`` of ``entities`` (the multi-modal aggregator)."""
        e = self.entity_emb(entities)
        if not self.modal_names:
            return e
        item = self.entity_item[entities]
        row = item.clamp(min=0)
        mask = self.modal_mask[row] & (item >= 0).unsqueeze(1)
        return self.fusion(e, self.modal_vectors(row).to(e.dtype), mask)

    def entity_vectors(self, entities: torch.Tensor) -> torch.Tensor:
        """``h^{(0)}`` of the item aggregator (KGCN's hook): ``e'``."""
        return self.fused_entities(entities)

    def _history_vectors(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``([n, L, d], [n, L])``: ``e'`` of each user's history sample and its mask."""
        items = self.history[users]
        h = self.fused_entities(self.item_entity[items].reshape(-1))
        return h.view(*items.shape, -1), self.history_mask[users]

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        """``[n, d]``: ``u`` of ``users`` (the user aggregator)."""
        if self.user_aggregator == "table":
            return self.user_emb(users)
        h, mask = self._history_vectors(users)  # [n, L, d], [n, L]
        has = mask.any(1)
        # A user without training positives attends over padding, then is zeroed.
        attended, _ = self.self_attention(
            h, h, h, key_padding_mask=~(mask | ~has.unsqueeze(1)), need_weights=False
        )
        weight = mask.unsqueeze(-1).to(h.dtype)
        u = (attended * weight).sum(1) / weight.sum(1).clamp(min=1)  # [n, d]
        if self.friends.shape[1] == 0:
            return u
        friends, fmask = self.friends[users], self.friends_mask[users]  # [n, F]
        fh, fhm = self._history_vectors(friends.reshape(-1))  # [n F, L, d]
        fw = fhm.unsqueeze(-1).to(h.dtype)
        friend_mean = ((fh * fw).sum(1) / fw.sum(1).clamp(min=1)).view(*friends.shape, -1)
        fweight = fmask.unsqueeze(-1).to(h.dtype)
        social = (friend_mean * fweight).sum(1) / fweight.sum(1).clamp(min=1)
        has_friends = fmask.any(1, keepdim=True)
        return torch.where(has_friends, (u + social) / 2, u)

    def _block_users(self, blocks: list[dgl.DGLGraph]) -> list[torch.Tensor]:
        """``u`` of every block's destination states, each distinct user computed once."""
        users = [b.dstdata["user"] for b in blocks]
        unique, inverse = torch.unique(torch.cat(users), return_inverse=True)
        vectors = self.user_vectors(unique).index_select(0, inverse)
        return list(vectors.split([len(u) for u in users]))

    def item_representations(
        self, blocks: list[dgl.DGLGraph], user_vectors: list[torch.Tensor] | None = None
    ) -> torch.Tensor:
        if len(blocks) != len(self.aggregators):
            raise ValueError(
                f"MKGCN has {len(self.aggregators)} layers but got {len(blocks)} blocks"
            )
        user_vectors = user_vectors or self._block_users(blocks)
        h = self.fused_entities(blocks[0].srcdata["node"])
        for block, aggregator, user in zip(blocks, self.aggregators, user_vectors, strict=True):
            rel = self.relation_emb(block.edata["rel"])
            neighborhood = self.attention(block, h, user, rel)
            h = aggregator(h[: block.num_dst_nodes()], neighborhood)
        return h

    def forward(self, blocks: list[dgl.DGLGraph], pair_index: torch.Tensor) -> ScoreOutput:
        user_vectors = self._block_users(blocks)
        item_h = self.item_representations(blocks, user_vectors)
        logits = (user_vectors[-1] * item_h).sum(-1).index_select(0, pair_index)
        return ScoreOutput(
            logits=logits,
            l2=lambda: self._matrices_l2() + self._tables_l2(),
            l2_batch=lambda: self._matrices_l2() + self._rows_l2(blocks),
        )

    def _matrices_l2(self) -> torch.Tensor:
        linear = [m.weight for m in self.modules() if isinstance(m, nn.Linear)]
        attention = (
            [self.self_attention.in_proj_weight] if self.user_aggregator == "history" else []
        )
        return half_sq(*linear, *attention)

    def _tables_l2(self) -> torch.Tensor:
        tables = [self.entity_emb.weight, self.relation_emb.weight]
        if self.user_aggregator == "table":
            tables.append(self.user_emb.weight)
        return half_sq(*tables)

    def _rows_l2(self, blocks: list[dgl.DGLGraph]) -> torch.Tensor:
        used_entities = torch.unique(torch.cat([b.srcdata["node"] for b in blocks]))
        used_relations = torch.unique(torch.cat([b.edata["rel"] for b in blocks]))
        rows = [self.entity_emb(used_entities), self.relation_emb(used_relations)]
        if self.user_aggregator == "table":
            rows.append(self.user_emb(torch.unique(blocks[-1].dstdata["user"])))
        return half_sq(*rows)

    @torch.no_grad()
    def explain(self, block: dgl.DGLGraph) -> torch.Tensor:
        """``[E]`` first-hop attention ``π̃`` of each edge of a user block, with ``u`` aggregated."""
        (user,) = self._block_users([block])
        rel = self.relation_emb(block.edata["rel"])
        return self.attention.edge_weights(block, user, rel)[2]
