"""RippleNet: propagating user preferences over the knowledge graph.

Wang, Zhang, Wang, Zhao, Li, Xie, Guo. CIKM 2018. https://arxiv.org/abs/1803.03467

Each user ``u`` has ripple sets ``S^k_u = {(h_i, r_i, t_i)}``, ``k = 1..H``, of
``n_memory`` triples each (:mod:`dglrec.sampling.ripple_sets`; built from training positives
only). For a candidate item with entity vector ``v``, hop ``k`` reads

.. math::

    p_i = \\operatorname{softmax}_i(v^⊤ R_i h_i), \\qquad
    o^k = \\sum_i p_i t_i, \\qquad
    v ← W (v + o^k)

(``R_i`` a ``d×d`` relation matrix; the last line is the reference code's
``plus_transform`` item update). The score uses every hop's response:
``ŷ = σ(v^⊤ Σ_k o^k)``.

Loss: ``BCE + kge_weight · (-Σ_k mean_i σ(h_i^⊤ R_i t_i)) + λ ‖θ‖²`` — the KGE term
rewards the ripple triples' plausibility; the trainer adds it as the ``aux``
term ``loss_kge`` and logs it separately.

Args:
    n_users, n_items, n_entities, n_relations: table sizes.
    dim: ``d``.
    n_hop: ``H``.
    n_memory: triples kept per user and hop.
    kge_weight: weight of the KGE term.

Shapes:
    ``forward(users, items)``: ``[n]`` ids -> logits ``[n]``.
"""

from __future__ import annotations

import torch
from torch import nn

from dglrec.models.base import ScoreOutput, TrainingTensors, half_sq
from dglrec.models.registry import register_model
from dglrec.sampling.ripple_sets import build_ripple_sets

# Floats of one grid sub-chunk's [users, M, I] exponentials (2 MiB): small enough to stay
# in a core's cache between the softmax's passes, large enough that each product is one
# call for several users (Last.FM, M = 32: 4 users; the ranking took 2.8 s at 64, 1.4 s).
GRID_SUBCHUNK_FLOATS = 1 << 19


@register_model("ripplenet", inputs="ids", binds="training_data", scores_grid=True)
class RippleNet(nn.Module):
    def __init__(
        self,
        n_users: int,
        n_items: int,
        n_entities: int,
        n_relations: int,
        dim: int = 16,
        n_hop: int = 2,
        n_memory: int = 32,
        kge_weight: float = 0.01,
    ):
        super().__init__()
        if n_hop < 1 or n_memory < 1:
            raise ValueError("n_hop and n_memory must be >= 1")
        self.n_users, self.n_entities = n_users, n_entities
        self.dim, self.n_hop, self.n_memory = dim, n_hop, n_memory
        self.kge_weight = kge_weight
        self.entity_emb = nn.Embedding(n_entities, dim)
        self.relation_emb = nn.Embedding(n_relations, dim * dim)
        self.transform = nn.Linear(dim, dim, bias=False)
        shape = (n_users, n_hop, n_memory)
        self.register_buffer("item_entity", torch.arange(n_items))
        self.register_buffer("memory_heads", torch.zeros(shape, dtype=torch.long))
        self.register_buffer("memory_relations", torch.zeros(shape, dtype=torch.long))
        self.register_buffer("memory_tails", torch.zeros(shape, dtype=torch.long))
        self.register_buffer("has_memory", torch.zeros(n_users, dtype=torch.bool))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.entity_emb.weight)
        nn.init.xavier_uniform_(self.relation_emb.weight)
        nn.init.xavier_uniform_(self.transform.weight)

    def bind_training_data(self, data: TrainingTensors) -> None:
        """Build the ripple sets from the training positives (never eval or test pairs)."""
        train = data.train_pairs
        positives = train[train[:, 2] == 1]
        seeds = torch.stack([positives[:, 0], data.item_entity[positives[:, 1]]], 1)
        ripple = build_ripple_sets(
            seeds, data.triples, self.n_users, data.n_entities, self.n_hop, self.n_memory, data.seed
        )
        self.item_entity.copy_(data.item_entity)
        self.memory_heads.copy_(ripple.heads)
        self.memory_relations.copy_(ripple.relations)
        self.memory_tails.copy_(ripple.tails)
        self.has_memory.copy_(ripple.mask)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> ScoreOutput:
        v = self.entity_emb(self.item_entity[items])  # [n, d]
        present = self.has_memory[users].to(v.dtype)[:, None]  # users without memory: o = 0
        response = torch.zeros_like(v)
        kge = v.new_zeros(())
        rows, relation_uses = [], []
        # Scoring: R_i h_i and t_i depend on the user only, so they are computed once per
        # distinct user of the batch and gathered per pair.
        owner, users = (None, users) if self.training else (users, None)
        if owner is not None:
            users, owner = torch.unique(owner, return_inverse=True)
        for hop in range(self.n_hop):
            h, relations, t, rh = self._memories(users, hop)
            if owner is not None:
                rh, t = rh[owner], t[owner]
            p = torch.softmax((rh * v[:, None]).sum(-1), dim=1)  # [n, M]
            o = (p.unsqueeze(-1) * t).sum(1) * present
            v = self.transform(v + o)
            response = response + o
            if self.training:  # the KGE term is a training loss only
                # h_i^T R_i t_i = (h_i^T R_i) · t_i.
                h_r = relation_products(h.flatten(0, 1), relations.flatten(), self._matrices())
                plausibility = torch.sigmoid((h_r.view_as(t) * t).sum(-1))
                kge = kge - plausibility.mean()
            rows += [h, t]
            relation_uses.append(relations.flatten())
        logits = (v * response).sum(-1)
        aux = {"loss_kge": self.kge_weight * kge} if self.training else {}
        transform = half_sq(self.transform.weight)
        return ScoreOutput(
            logits=logits,
            l2=lambda: half_sq(self.entity_emb.weight, self.relation_emb.weight) + transform,
            # The reference penalises the ripple triples' vectors looked up by the batch:
            # each use of R_r adds ½‖R_r‖², so ½‖R_r‖² weighted by its count of uses.
            l2_batch=lambda: half_sq(*rows) + self._uses_l2(torch.cat(relation_uses)) + transform,
            aux=aux,
        )

    @torch.no_grad()
    def score_grid(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``[U, I]`` logits of every user against every item: :meth:`forward`'s scores.

        A user's memories share their ``(h_i, r_i)`` often (Last.FM, 32 memories: about
        12 distinct per user and hop), and memories of one ``(h, r)`` share their weight
        ``v^⊤ R h``. So each hop scores every distinct key ``k`` of a user once:

        .. math::

            o = \\frac{\\sum_k T_k e^{x_k}}{\\sum_k c_k e^{x_k}}, \\qquad
            x_k = v^⊤ R_k h_k,

        with ``T_k`` the sum of the key's tails and ``c_k`` its count (:meth:`_grid_keys`);
        numerator and denominator are one batched product of ``[T; c]`` with the
        exponentials. States are laid out items-last, ``[users, keys or d, I]``, so the
        softmax and the updates run over long contiguous rows. Users go sorted by their
        number of keys, :data:`GRID_SUBCHUNK_FLOATS` ``[users, keys, I]`` floats at a time
        (the exponentials, the largest part of the work, stay in cache), each sub-chunk
        padded to its largest user's keys with weightless copies of a real key.
        Memory: about ``M + 4d`` floats per (user, item) of a sub-chunk, plus the
        ``[U, I]`` logits.
        """
        vectors = self.entity_emb(self.item_entity[items]).T.contiguous()  # [d, I]
        n_items = vectors.shape[1]
        if len(users) == 0:
            return vectors.new_empty(0, n_items)
        keys = [self._grid_keys(users, hop) for hop in range(self.n_hop)]
        counts = torch.stack([count for _, _, count in keys]).amax(0)
        order = torch.argsort(counts, stable=True)  # similar key counts share a sub-chunk
        logits = vectors.new_empty(len(users), n_items)
        start = 0
        while start < len(users):
            # Sorted by count: a sub-chunk's widest user is its last.
            step = max(1, GRID_SUBCHUNK_FLOATS // (int(counts[order[start]]) * max(1, n_items)))
            last = order[min(start + step, len(users)) - 1]
            step = max(1, GRID_SUBCHUNK_FLOATS // (int(counts[last]) * max(1, n_items)))
            chunk = order[start : start + step]
            present = self.has_memory[users[chunk]].to(vectors.dtype)[:, None, None]
            v = vectors  # [d, I]: the same for every user until the first hop's update
            response = None
            for rh, weights, count in keys:
                width = int(count[chunk].max())  # this hop's widest user of the sub-chunk
                rh, weights = rh[chunk, :width], weights[chunk, :, :width]
                if v.dim() == 2:
                    x = (rh.flatten(0, 1) @ v).view(len(chunk), width, n_items)
                else:
                    x = torch.bmm(rh, v)  # [n, keys, I]
                x = x.sub_(x.amax(1, keepdim=True)).exp_()  # softmax numerators over keys
                sums = torch.bmm(weights, x)  # [n, d + 1, I]: Σ_k T_k e^x_k; Σ_k c_k e^x_k
                o = sums[:, :-1].div_(sums[:, -1:]).mul_(present)
                # bmm, not matmul: matmul would fold [n, d, I] into one product and copy it back.
                v = torch.bmm(self.transform.weight.expand(len(chunk), -1, -1), v + o)
                response = o if response is None else response.add_(o)
            logits[chunk] = (v * response).sum(1)
            start += len(chunk)
        return logits

    def _grid_keys(self, users: torch.Tensor, hop: int):
        """Hop ``hop``'s distinct ``(h, r)`` keys of each user, for :meth:`score_grid`.

        Returns ``rh`` ``[U, W, d]`` (``R_k h_k`` as rows), ``weights`` ``[U, d + 1, W]``
        (each key's tail sum ``T_k``, then its count ``c_k``) and ``count`` ``[U]`` (keys
        per user); ``W`` is the largest count. A user's slots past her count repeat her
        first key with zero weight: the softmax's maximum stays one of her real scores.
        """
        heads = self.memory_heads[users, hop]  # [U, M]
        relations = self.memory_relations[users, hop]
        key, sort = torch.sort(heads * self.relation_emb.num_embeddings + relations, dim=1)
        is_new = torch.ones_like(key, dtype=torch.bool)
        is_new[:, 1:] = key[:, 1:] != key[:, :-1]
        slot = torch.cumsum(is_new, 1) - 1  # [U, M]: each sorted memory's key slot
        count = slot[:, -1] + 1
        width = int(count.max())
        # The sorted position of each slot's first memory; padding slots: position 0.
        first = torch.zeros(len(users), width, dtype=torch.long, device=key.device)
        rows, cols = torch.nonzero(is_new, as_tuple=True)
        first[rows, slot[rows, cols]] = cols
        memory = sort.gather(1, first)  # [U, W]: a memory of each slot's key
        h = self.entity_emb(heads.gather(1, memory))
        rh = relation_products(
            h.flatten(0, 1),
            relations.gather(1, memory).flatten(),
            self._matrices().transpose(1, 2),
        ).view_as(h)
        tails = self.entity_emb(self.memory_tails[users, hop].gather(1, sort))  # sorted
        weighted = torch.cat([tails, torch.ones_like(tails[..., :1])], 2)  # [U, M, d + 1]
        weights = weighted.new_zeros(len(users), width, self.dim + 1)
        weights.scatter_add_(1, slot[..., None].expand_as(weighted), weighted)
        return rh, weights.transpose(1, 2).contiguous(), count

    @property
    def grid_width(self) -> int:
        """Floats per (user, item) cell that :meth:`score_grid` holds at once."""
        return self.n_memory + 4 * self.dim

    def _matrices(self) -> torch.Tensor:
        """``[n_relations, d, d]``: the relation matrices ``R_r``."""
        return self.relation_emb.weight.view(-1, self.dim, self.dim)

    def _memories(self, users: torch.Tensor, hop: int):
        """Hop ``hop``'s heads, relations, tails and ``R_i h_i`` of ``users``' ripple sets."""
        heads = self.memory_heads[users, hop]  # [n, M]
        relations = self.memory_relations[users, hop]
        h = self.entity_emb(heads)  # [n, M, d]
        t = self.entity_emb(self.memory_tails[users, hop])
        # R_i h_i as a row: h_i^T R_i^T.
        rh = relation_products(
            h.flatten(0, 1), relations.flatten(), self._matrices().transpose(1, 2)
        ).view_as(h)
        return h, relations, t, rh

    def _uses_l2(self, relations: torch.Tensor) -> torch.Tensor:
        uses = torch.bincount(relations, minlength=self.relation_emb.num_embeddings)
        return (
            uses.to(self.relation_emb.weight.dtype) * self.relation_emb.weight.pow(2).sum(1)
        ).sum() / 2


def relation_products(
    x: torch.Tensor, relations: torch.Tensor, matrices: torch.Tensor
) -> torch.Tensor:
    """``[n, e]``: ``x[i] @ matrices[relations[i]]``; ``x`` ``[n, d]``, ``matrices`` ``[R, d, e]``.

    Rows sorted by relation, one matrix product per relation present: gathering
    ``matrices[relations]`` instead would hold ``[n, d, e]`` floats (half a gigabyte
    for a batch of 1,024 users with 32 memories at ``d = 64``) and run 10-30x slower.
    """
    order = torch.argsort(relations)
    counts = torch.bincount(relations, minlength=len(matrices)).tolist()
    parts = x.index_select(0, order).split(counts)
    products = torch.cat([part @ matrices[r] for r, part in enumerate(parts) if len(part)])
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order), device=order.device)
    return products.index_select(0, inverse)
