"""``dglrec recommend``: a logged model's top-K artists for one user, with names and reasons.

The run's own recipe and logged model are reloaded; the user's score for every
item is computed in one vectorised pass (KG models through their user-conditioned
blocks, with the run's evaluation sampling seed); artists the user has listened
to (positives of every split) are left out. Names come from HetRec's
``artists.dat`` (artist ids are shared with Last.FM-KG); the user's own most-played
artists are read from the raw listening file for context.

For models with user-specific KG attention (``model.explain``: KGCN, KAISG,
MGWA, KGNN-LS, MKGCN), each recommended item is explained by its highest-weighted KG
neighbours for this user: the first-hop weights ``softmax_e(π(u, r_{v,e}))`` over
the item's whole (unsampled) KG neighbourhood, with the relation's name and the
neighbour (named when it is an artist or, in MKGCN's tag graph, a tag). MKGCN's
modality fusion is a mean and has no per-modality weight to report.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import dgl
import numpy as np
import torch

from data_prep.parsing import read_columns
from data_prep.sources import data_home
from dglrec.errors import DataFormatError, RunError
from dglrec.evaluation.ranking import top_items
from dglrec.runs import pipeline, tracking

HETREC = "hetrec2011-lastfm-2k"


@dataclass
class Reason:
    relation: str
    entity: int
    name: str | None
    weight: float
    # The user's own artists linked to the same entity: why the link is personal.
    shared_with: list[str] = field(default_factory=list)


@dataclass
class Recommended:
    rank: int
    artist_id: str
    name: str | None
    score: float
    reasons: list[Reason] = field(default_factory=list)


@dataclass
class Recommendation:
    run_id: str
    run_name: str
    model: str
    dataset: str
    user: str
    n_listened: int
    history: list[dict]  # {"artist_id", "name", "plays"}, most played first
    items: list[Recommended]
    explained: bool
    names_from: str | None

    def to_dict(self) -> dict:
        return asdict(self)


def artist_names(dataset_meta: dict, given: str | Path | None = None) -> tuple[dict, str | None]:
    """``{artist id (str): name}`` and the ``artists.dat`` it came from (None: not found).

    ``given`` is used alone. Otherwise the file is looked for beside the raw data and,
    for Last.FM-KG (whose artist ids are HetRec's), in HetRec's raw directory.
    """
    if given:
        candidates = [Path(given)]
        if not candidates[0].is_file():
            raise DataFormatError(f"{given}: no such file")
    else:
        raw = Path(dataset_meta.get("raw_dir", "."))
        candidates = [raw / "artists.dat", raw.parent / HETREC / "artists.dat"]
        if dataset_meta.get("dataset") == "lastfm-kg":
            if os.environ.get("DGLREC_RAW_DIR"):
                candidates.append(Path(os.environ["DGLREC_RAW_DIR"]) / HETREC / "artists.dat")
            candidates.append(data_home() / "raw" / HETREC / "artists.dat")
    for path in candidates:
        if path.is_file():
            ids, names, _, _ = read_columns(path, (str, str, str, str), header=True)
            return dict(zip(ids, names, strict=True)), str(path)
    return {}, None


def listening_history(dataset, cfg, user_raw: str, user: int) -> list[tuple[str, float]]:
    """``[(artist id, plays)]`` of the user, most played first (raw file, else the splits)."""
    path = Path(dataset.meta.get("raw_dir", ".")) / cfg.data.ratings_file
    item_raw = set(dataset.meta["item_raw_ids"])
    if path.is_file():
        users, artists, plays = read_columns(
            path, (str, str, float), sep=cfg.data.ratings_sep, header=cfg.data.ratings_header
        )
        mine = [(a, p) for u, a, p in zip(users, artists, plays, strict=True) if u == user_raw]
        return sorted((m for m in mine if m[0] in item_raw), key=lambda m: -m[1])
    positives = torch.cat([s[(s[:, 0] == user) & (s[:, 2] == 1)] for s in dataset.splits.values()])
    return [(dataset.meta["item_raw_ids"][int(i)], float("nan")) for i in positives[:, 1]]


def explanation_block(dataset, user: int, items: torch.Tensor) -> dgl.DGLGraph:
    """A conditioned block: each item's entity (as user ``user``'s state) and its KG neighbours."""
    entities = dataset.item_entity[items]
    src, dst, eids = dataset.graph.in_edges(entities, etype="kg", form="all")
    position = {int(e): i for i, e in enumerate(entities)}
    dst_local = torch.tensor([position[int(d)] for d in dst], dtype=torch.long)
    src_local = torch.arange(len(items), len(items) + len(src))
    block = dgl.create_block(
        (src_local, dst_local), num_src_nodes=len(items) + len(src), num_dst_nodes=len(items)
    )
    block.srcdata["node"] = torch.cat([entities, src])
    block.srcdata["user"] = torch.full((block.num_src_nodes(),), user, dtype=torch.long)
    block.dstdata["node"] = entities
    block.dstdata["user"] = torch.full((len(items),), user, dtype=torch.long)
    block.edata["rel"] = dataset.graph.edges["kg"].data["rel"][eids]
    return block


def recommend(
    run_id: str,
    user_raw: str,
    k: int = 10,
    n_reasons: int = 3,
    names_file: str | Path | None = None,
    log=print,
) -> Recommendation:
    if k < 1:
        raise RunError(f"--k {k}: expected a positive number of artists")
    _, _, tags = tracking.get_run(run_id)
    cfg = pipeline.config_of_run(run_id)
    if cfg.task.kind != "ctr":
        raise RunError(
            f"run {run_id} is a {cfg.task.kind} run; recommend ranks artists with user–item "
            "CTR models (kgcn, kaisg, bprmf, ...)"
        )
    model = tracking.load_model(run_id)
    dataset = pipeline.load_dataset(cfg, log)
    user_ids = dataset.meta["user_raw_ids"]
    try:
        user = user_ids.index(str(user_raw))
    except ValueError:
        raise RunError(
            f"user {user_raw!r} is not in run {run_id}'s data "
            f"({len(user_ids)} users, HetRec userIDs such as {', '.join(user_ids[:3])})"
        ) from None
    cfg.train.device = "cpu"
    trainer = pipeline.trainer_for(
        pipeline.Setup(cfg, dataset, model, pipeline.sampler_for(cfg, model)), log=log
    )
    n_items = dataset.n_items
    items = torch.arange(n_items)
    pairs = torch.stack(
        [torch.full((n_items,), user), items, torch.zeros(n_items, dtype=torch.long)], 1
    )
    scores = torch.from_numpy(trainer.predict(pairs)).double()

    listened = torch.zeros(n_items, dtype=torch.bool)
    for split in dataset.splits.values():
        mine = split[(split[:, 0] == user) & (split[:, 2] == 1)]
        listened[mine[:, 1]] = True
    top = top_items(scores, listened, min(k, int((~listened).sum())))  # as the ranking metrics

    names, names_from = artist_names(dataset.meta, names_file)
    item_raw = dataset.meta["item_raw_ids"]
    recommended = [
        Recommended(rank + 1, item_raw[i], names.get(item_raw[i]), float(scores[i]))
        for rank, i in enumerate(top.tolist())
    ]
    explained = model.capabilities.explains
    if explained:
        model.eval()
        block = explanation_block(dataset, user, top)
        weights = model.explain(block)
        entity_item = {int(e): i for i, e in enumerate(dataset.item_entity.tolist())}
        relation_names = dataset.meta["relation_names"]
        tag_names = dataset.meta.get("tag_entity_names", {})
        # KG neighbour entity -> the user's listened artists linked to it.
        listened_items = torch.nonzero(listened, as_tuple=True)[0]
        near, mine, _ = dataset.graph.in_edges(
            dataset.item_entity[listened_items], etype="kg", form="all"
        )
        linked: dict[int, list[str]] = {}
        for neighbour, entity in zip(near.tolist(), mine.tolist(), strict=True):
            artist = item_raw[entity_item[entity]]
            linked.setdefault(neighbour, []).append(names.get(artist, f"artist {artist}"))
        src_of, dst_of = block.edges()
        for position, item in enumerate(recommended):
            edges = torch.nonzero(dst_of == position, as_tuple=True)[0]
            order = edges[torch.argsort(weights[edges], descending=True)][:n_reasons]
            for edge in order.tolist():
                entity = int(block.srcdata["node"][src_of[edge]])
                as_item = entity_item.get(entity)
                if as_item is None:  # a KG entity; tag entities (MKGCN's tag graph) are named
                    name = tag_names.get(str(entity))
                else:
                    name = names.get(item_raw[as_item], item_raw[as_item])
                item.reasons.append(
                    Reason(
                        relation_names[int(block.edata["rel"][edge])],
                        entity,
                        name,
                        float(weights[edge]),
                        sorted(set(linked.get(entity, []))),
                    )
                )
    history = [
        {"artist_id": a, "name": names.get(a), "plays": plays}
        for a, plays in listening_history(dataset, cfg, str(user_raw), user)
    ]
    return Recommendation(
        run_id=run_id,
        run_name=tags.get("mlflow.runName", ""),
        model=cfg.model_name,
        dataset=cfg.data.name,
        user=str(user_raw),
        n_listened=int(listened.sum()),
        history=history,
        items=recommended,
        explained=explained,
        names_from=names_from,
    )


def format_text(rec: Recommendation, n_history: int = 5) -> str:
    def label(artist_id: str, name: str | None) -> str:
        return name if name else f"artist {artist_id}"

    lines = [
        f"user {rec.user} · run {rec.run_id} ({rec.run_name}, {rec.model} on {rec.dataset})",
        f"most played by this user ({rec.n_listened} artists listened to, never recommended):",
    ]
    for entry in rec.history[:n_history]:
        plays = "" if np.isnan(entry["plays"]) else f"  {int(entry['plays']):,} plays"
        lines.append(f"    {label(entry['artist_id'], entry['name'])}{plays}")
    lines.append(f"top {len(rec.items)} (score = the model's probability of a listen):")
    width = max((len(label(i.artist_id, i.name)) for i in rec.items), default=10)
    for item in rec.items:
        lines.append(
            f"{item.rank:>4}. {label(item.artist_id, item.name):<{width}}  {item.score:.4f}"
        )
        if item.reasons:
            for reason in item.reasons:
                shared = ""
                if reason.shared_with:
                    more = len(reason.shared_with) - 3
                    shared = ", as for " + ", ".join(reason.shared_with[:3])
                    shared += f" and {more} more" if more > 0 else ""
                target = reason.name or f"entity {reason.entity}"
                lines.append(f"      {reason.weight:.2f}  {reason.relation} → {target}{shared}")
    if not rec.explained:
        lines.append(f"({rec.model} has no user-specific KG attention to explain its scores)")
    if rec.names_from is None:
        lines.append(f"(artist names: no {HETREC}/artists.dat found; pass --names FILE)")
    return "\n".join(lines) + "\n"
