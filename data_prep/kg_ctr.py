"""Builder for KG-aware CTR datasets in the KGCN/MKR three-file layout.

Inputs (one directory):

* a ratings or listening file: ``user<sep>item<sep>rating`` (Last.FM's
  ``user_artists.dat``; the Book-Crossing or MovieLens files released with KGCN
  and MKR fit too, with their separator and a positive threshold);
* ``item_index2entity_id.txt``: ``item<TAB>entity``, one line per item that has a
  KG entity; only these items are kept, in this order;
* ``kg.txt``: ``head<TAB>relation<TAB>tail``.

Protocol (MODELS.md, "CTR on Last.FM-KG", the KGCN paper's preprocessing):
ratings ``>= positive_threshold`` are positives. For each user, draw
``negatives_per_positive`` negatives per positive, uniformly and without
replacement, from the items the user has no rating for at all. The labelled
pairs are split at random by ``split`` (train/eval/test fractions). Entities are
indexed items first (item ``i`` is entity ``i``), then the other KG entities in
order of first appearance. A seed fixes negatives and split.

Every row is used as documented or the build fails naming ``file:line``: ratings
must be finite numbers >= 0 (NaN or negative play counts are refused, not
dropped); a (user, item) rated twice with different values is refused, rated twice
alike is counted once; an empty or header-only ratings or item file, or ratings
with no positive of an item that has an entity, are refused. Ratings of items
without a KG entity are left out as documented above, and counted. What was
cleaned (byte-order marks, CRLF endings, repeated rows) and left out is counted in
``meta["cleaned"]``, printed when the dataset is built and logged with every run.
A KG file with no triples builds (non-KG models can use the ratings), but KG
models refuse it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import dgl
import numpy as np
import torch

from data_prep import protocol as shared
from data_prep.cache import load_or_build
from data_prep.errors import DataFormatError, ProtocolError
from data_prep.kg_dataset import KGRecDataset
from data_prep.parsing import rating, read_columns, tally
from data_prep.sources import data_home, resolve_raw_dir

# Bump when the processed output changes for the same inputs, to invalidate caches.
# 2: cleaned counts in the metadata; NaN/negative ratings and empty files refused.
BUILDER_VERSION = 2

ITEM_ENTITY_FILE = "item_index2entity_id.txt"
KG_FILE = "kg.txt"


@dataclass(frozen=True)
class CTRProtocol:
    """What, besides the raw files, determines the processed dataset."""

    dataset: str = "lastfm-kg"
    ratings_file: str = "user_artists.dat"
    ratings_sep: str = "\t"
    ratings_header: bool = True
    positive_threshold: float = 0.0
    negatives_per_positive: int = 1
    split: tuple[float, float, float] = (0.6, 0.2, 0.2)
    seed: int = 42
    # "items" | "all_entities" | "inverse_popularity" (see NEGATIVE_POOLS).
    negative_pool: str = "items"
    extra: dict = field(default_factory=dict)

    def describe(self) -> str:
        train, eval_, test = self.split
        pool = NEGATIVE_POOLS[self.negative_pool]
        return (
            f"ctr: ratings>={self.positive_threshold:g} positive; "
            f"{self.negatives_per_positive}:1 negatives {pool}; "
            f"random split {train:g}/{eval_:g}/{test:g}; seed {self.seed}"
        )


# How each pool draws a user's labelled negatives (as the protocol string says it).
NEGATIVE_POOLS = {
    "items": "uniform over the user's unrated items",
    "all_entities": "uniform over the user's unrated KG entities, attributes included "
    "(nonstandard: every entity is a rankable item)",
    "inverse_popularity": "items drawn with probability 1/(1 + positives), the user's "
    "positives not excluded (nonstandard)",
}


def _validate(protocol: CTRProtocol) -> None:
    shared.validate_split(protocol.split)
    if protocol.negative_pool not in NEGATIVE_POOLS:
        raise ProtocolError(
            f"data.negative_pool: {protocol.negative_pool!r}; allowed: {', '.join(NEGATIVE_POOLS)}"
        )
    if protocol.negatives_per_positive < 1:
        raise ProtocolError("data.negatives_per_positive must be >= 1")


def _protocol_fields(protocol: CTRProtocol) -> dict:
    fields = {k: v for k, v in protocol.__dict__.items() if k != "extra"}
    if fields["negative_pool"] == "items":  # the default keeps the cache keys it always had
        del fields["negative_pool"]
    return fields


def cache_key(protocol: CTRProtocol, checksums: dict[str, str]) -> str:
    return shared.cache_key(BUILDER_VERSION, _protocol_fields(protocol), checksums)


def input_checksums(protocol: CTRProtocol, raw_dir: Path) -> dict[str, str]:
    """SHA-256 of the three inputs; enforced against the published ones for public datasets."""
    required = (protocol.ratings_file, ITEM_ENTITY_FILE, KG_FILE)
    return shared.input_checksums(protocol.dataset, raw_dir, required)


def _index(
    values: list[str], start: dict[str, int] | None = None
) -> tuple[dict[str, int], np.ndarray]:
    """Map raw ids to consecutive indices in order of first appearance."""
    mapping = dict(start or {})
    out = np.empty(len(values), dtype=np.int64)
    for pos, value in enumerate(values):
        out[pos] = mapping.setdefault(value, len(mapping))
    return mapping, out


# Random keys held at once while drawing negatives (float64: 32 MiB), whatever the
# catalogue: the chunk of users shrinks as the catalogue grows.
NEGATIVE_KEYS_PER_CHUNK = 1 << 22


def sample_negatives(
    rated_users: np.ndarray,
    rated_items: np.ndarray,
    shape: tuple[int, int],
    n_negatives: np.ndarray,
    rng: np.random.Generator,
    users_per_chunk: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw negatives for every user, uniformly without replacement from unrated items.

    Vectorised over a chunk of users: every (user, item) gets a uniform random key,
    rated items get +inf, and each user keeps the items with its smallest keys (in
    increasing key order). The keys are drawn row after row from ``rng`` whatever
    the chunking, so the draws do not depend on ``users_per_chunk``; only the
    smallest keys of each row are sorted (``argpartition``), and the rated set is
    never a dense ``[n_users, n_items]`` matrix (72 GB at 100× Last.FM).

    Args:
        rated_users, rated_items: the rated (user, item) pairs (repeats allowed).
        shape: ``(n_users, n_items)``.
        n_negatives: ``[n_users]`` how many to draw; clipped to the unrated count.
        rng: the seeded generator.
        users_per_chunk: users per chunk; default: :data:`NEGATIVE_KEYS_PER_CHUNK` keys.

    Returns:
        ``(users, items)`` of the drawn negative pairs, by user, each user's in key order.
    """
    n_users, n_items = shape
    rated = np.unique(np.asarray(rated_users) * n_items + np.asarray(rated_items))
    n_rated = np.bincount(rated // n_items, minlength=n_users)
    indptr = np.concatenate([[0], np.cumsum(n_rated)])
    n_negatives = np.minimum(n_negatives, n_items - n_rated)
    if users_per_chunk is None:
        users_per_chunk = max(1, NEGATIVE_KEYS_PER_CHUNK // max(n_items, 1))
    users_out, items_out = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for start in range(0, n_users, users_per_chunk):
        stop = min(start + users_per_chunk, n_users)
        keys = rng.random((stop - start, n_items))
        mine = rated[indptr[start] : indptr[stop]]
        keys[mine // n_items - start, mine % n_items] = np.inf
        wanted = n_negatives[start:stop]
        most = int(wanted.max())
        if most == 0:
            continue
        if most < n_items:
            # Each row's `most` smallest keys (a wanted item is never +inf: the counts
            # are clipped to the unrated ones), by item, then stably by key: the
            # order a stable sort of the whole row gives them.
            smallest = np.sort(np.argpartition(keys, most - 1, axis=1)[:, :most], axis=1)
            by_key = np.argsort(np.take_along_axis(keys, smallest, 1), axis=1, kind="stable")
            order = np.take_along_axis(smallest, by_key, 1)
        else:
            order = np.argsort(keys, axis=1, kind="stable")
        rows, cols = np.nonzero(np.arange(order.shape[1])[None, :] < wanted[:, None])
        users_out.append(rows + start)
        items_out.append(order[rows, cols])
    return np.concatenate(users_out), np.concatenate(items_out)


def inverse_popularity_negatives(
    positive_items: np.ndarray,
    shape: tuple[int, int],
    n_negatives: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """MKGCN's public code's negatives: items drawn with probability ∝ 1 / (1 + positives).

    Drawn with replacement and *without* excluding the user's own positives (so a
    "negative" can be an item she listened to), as that code does.

    Args:
        positive_items: the item of every (distinct) positive pair.
        shape: ``(n_users, n_items)``.
        n_negatives: ``[n_users]`` how many to draw per user.
    """
    n_users, n_items = shape
    weight = 1.0 / (1.0 + np.bincount(positive_items, minlength=n_items))
    users = np.repeat(np.arange(n_users), n_negatives)
    items = rng.choice(n_items, size=len(users), p=weight / weight.sum())
    return users, items


def _drop_repeated_ratings(path: Path, users, items, ratings, lines, cleaned):
    """Keep the first of identical repeated (user, item) rows; refuse conflicting ones."""
    first: dict[tuple[str, str], int] = {}
    keep = []
    for row, key in enumerate(zip(users, items, strict=True)):
        seen = first.setdefault(key, row)
        if seen == row:
            keep.append(row)
        elif ratings[seen] != ratings[row]:
            raise DataFormatError(
                f"{path}:{lines[row]}: user {key[0]} rates item {key[1]} {ratings[row]:g}, "
                f"but {ratings[seen]:g} on line {lines[seen]}"
            )
    tally(cleaned, f"repeated_rows.{path.name}", len(users) - len(keep))
    if len(keep) == len(users):
        return users, items, ratings
    return [users[i] for i in keep], [items[i] for i in keep], [ratings[i] for i in keep]


def build(protocol: CTRProtocol, raw_dir: Path, checksums: dict[str, str]) -> KGRecDataset:
    """Parse the three files and apply the CTR protocol."""
    _validate(protocol)
    cleaned: dict[str, int] = {}
    item_raw, entity_of_item_raw = read_columns(
        raw_dir / ITEM_ENTITY_FILE, (str, str), cleaned=cleaned, min_rows=1
    )
    heads, relations, tails = read_columns(raw_dir / KG_FILE, (str, str, str), cleaned=cleaned)
    ratings_path = raw_dir / protocol.ratings_file
    lines: list[int] = []
    users_raw, items_of_rating, ratings = read_columns(
        ratings_path,
        (str, str, rating),
        sep=protocol.ratings_sep,
        header=protocol.ratings_header,
        cleaned=cleaned,
        min_rows=1,
        line_numbers=lines,
    )
    if len(set(item_raw)) != len(item_raw):
        raise DataFormatError(f"{raw_dir / ITEM_ENTITY_FILE}: an item id appears twice")
    users_raw, items_of_rating, ratings = _drop_repeated_ratings(
        ratings_path, users_raw, items_of_rating, ratings, lines, cleaned
    )

    # Entities: items first, in file order, so item i is entity i.
    entity_index, item_entity = _index(entity_of_item_raw)
    entity_index, head_idx = _index(heads, entity_index)
    entity_index, tail_idx = _index(tails, entity_index)
    relation_index, rel_idx = _index(relations)

    item_index = {raw: i for i, raw in enumerate(item_raw)}
    n_items = len(item_index)
    rating_item = np.array([item_index.get(i, -1) for i in items_of_rating], dtype=np.int64)
    rating_value = np.asarray(ratings, dtype=np.float64)
    keep = rating_item >= 0
    tally(cleaned, f"without_kg_item.{protocol.ratings_file}", int((~keep).sum()))
    is_positive = keep & (rating_value >= protocol.positive_threshold)

    # Users: those with at least one positive, in order of first appearance.
    users_arr = np.asarray(users_raw, dtype=object)
    user_index, _ = _index(list(users_arr[is_positive]))
    rating_user = np.array([user_index.get(u, -1) for u in users_raw], dtype=np.int64)
    keep &= rating_user >= 0
    is_positive &= keep
    n_users = len(user_index)
    if n_users == 0:
        raise DataFormatError(
            f"{ratings_path}: no rating >= {protocol.positive_threshold:g} of an item listed in "
            f"{ITEM_ENTITY_FILE}; there is nothing to learn from"
        )

    # Distinct positive pairs by user, then item (a dense matrix's row-major order).
    positive = np.unique(rating_user[is_positive] * n_items + rating_item[is_positive])
    pos_users, pos_items = positive // n_items, positive % n_items
    rated_pairs = rating_user[keep], rating_item[keep]

    rng_negatives = np.random.default_rng([protocol.seed, shared.NEGATIVES_STREAM])
    rng_split = np.random.default_rng([protocol.seed, shared.SPLIT_STREAM])
    n_entities = len(entity_index)
    n_neg = np.bincount(pos_users, minlength=n_users) * protocol.negatives_per_positive
    if protocol.negative_pool == "all_entities":
        # Every KG entity becomes a candidate item; non-item entities follow the items
        # (their ids), so item i is still entity i.
        if n_entities == n_items:
            raise ProtocolError(
                "data.negative_pool: 'all_entities' needs a KG with entities besides the "
                f"items; {raw_dir / KG_FILE} adds none"
            )
        neg_users, neg_items = sample_negatives(
            *rated_pairs, (n_users, n_entities), n_neg, rng_negatives
        )
        extra = np.setdiff1d(np.arange(n_entities), item_entity)
        item_entity = np.concatenate([item_entity, extra])
        entity_raw = sorted(entity_index, key=entity_index.get)
        item_raw = list(item_raw) + [f"entity:{entity_raw[e]}" for e in extra]
        n_items = len(item_entity)
    elif protocol.negative_pool == "inverse_popularity":
        neg_users, neg_items = inverse_popularity_negatives(
            pos_items, (n_users, n_items), n_neg, rng_negatives
        )
    else:
        neg_users, neg_items = sample_negatives(
            *rated_pairs, (n_users, n_items), n_neg, rng_negatives
        )

    pairs = np.concatenate(
        [
            np.stack([pos_users, pos_items, np.ones_like(pos_users)], 1),
            np.stack([neg_users, neg_items, np.zeros_like(neg_users)], 1),
        ]
    )
    order = rng_split.permutation(len(pairs))
    n_eval = int(len(pairs) * protocol.split[1])
    n_test = int(len(pairs) * protocol.split[2])
    splits = {
        "eval": pairs[order[:n_eval]],
        "test": pairs[order[n_eval : n_eval + n_test]],
        "train": pairs[order[n_eval + n_test :]],
    }
    splits = {name: torch.from_numpy(np.ascontiguousarray(p)) for name, p in splits.items()}

    train = splits["train"]
    train_pos = train[train[:, 2] == 1]
    item_entity_t = torch.from_numpy(item_entity)
    head_t, tail_t, rel_t = map(torch.from_numpy, (head_idx, tail_idx, rel_idx))
    graph = dgl.heterograph(
        {
            ("user", "interacts", "entity"): (train_pos[:, 0], item_entity_t[train_pos[:, 1]]),
            ("entity", "interacted_by", "user"): (item_entity_t[train_pos[:, 1]], train_pos[:, 0]),
            ("entity", "kg", "entity"): (torch.cat([head_t, tail_t]), torch.cat([tail_t, head_t])),
        },
        num_nodes_dict={"user": n_users, "entity": n_entities},
    )
    graph.edges["kg"].data["rel"] = torch.cat([rel_t, rel_t])
    graph.edges["kg"].data["inverse"] = torch.cat(
        [torch.zeros_like(rel_t, dtype=torch.uint8), torch.ones_like(rel_t, dtype=torch.uint8)]
    )

    stats = {
        "users": n_users,
        "items": n_items,
        "entities": n_entities,
        "relations": len(relation_index),
        "triples": len(heads),
        "positives": len(positive),
        "labelled_pairs": int(len(pairs)),
        "train": len(splits["train"]),
        "eval": len(splits["eval"]),
        "test": len(splits["test"]),
    }
    meta = {
        "dataset": protocol.dataset,
        "protocol": protocol.describe(),
        "protocol_params": _protocol_fields(protocol),
        "seed": protocol.seed,
        "checksums": checksums,
        "builder_version": BUILDER_VERSION,
        "stats": stats,
        "relation_names": sorted(relation_index, key=relation_index.get),
        "user_raw_ids": sorted(user_index, key=user_index.get),
        "item_raw_ids": list(item_raw),
        "cleaned": cleaned,
        "created_unix": int(time.time()),
    }
    return KGRecDataset(graph, splits, item_entity_t, meta)


def prepare(
    protocol: CTRProtocol,
    raw_dir: str | Path | None = None,
    out_root: str | Path | None = None,
    mirror: str | None = None,
    log=print,
) -> tuple[KGRecDataset, Path]:
    """Build the dataset, or load it from the cache when inputs and protocol match.

    Returns the dataset and the directory it is stored in.
    """
    raw = resolve_raw_dir(protocol.dataset, raw_dir, mirror=mirror)
    checksums = input_checksums(protocol, raw)
    root = Path(out_root) if out_root else data_home() / "processed"
    directory = root / protocol.dataset / cache_key(protocol, checksums)
    return load_or_build(
        directory, KGRecDataset, lambda: build(protocol, raw, checksums), protocol.dataset, raw, log
    )
