"""HetRec 2011 Last.FM (``hetrec2011-lastfm-2k``) as an edge-regression dataset.

Inputs (one directory, the GroupLens release): ``user_artists.dat`` (user, artist,
play count), ``artists.dat`` (names), ``tags.dat`` + ``user_taggedartists.dat``
(tags users gave artists) and ``user_friends.dat``.

Graph: one homogeneous undirected graph, users ``0..U-1`` then artists
``U..U+A-1`` (raw ids in ascending order), one edge per listened pair stored in
both directions (edge ``i`` and its reverse ``i + n_pairs``).

Liking score (the GCN paper, Ou, NUS; MODELS.md): ``w_ua = log(count_ua) / max_a' log(count_ua')``,
the maximum over *all* of the user's edges (the paper's definition, kept so that
numbers stay comparable; it uses every split's counts for the scale only, never a
held-out edge's score). A user whose maximum count is 1 has ``0 / 0``: every one
of her artists is then her most-played, and gets ``w = 1`` (3 users, 23 pairs in
the release). Scores are in ``[0, 1]``; none is NaN.

Splits (``split``, default 8:1:1, ``seed``):

* clean protocol: the *undirected* pairs are split, so an edge and its reverse
  are always in the same split; training message passing sees training edges
  only (:mod:`dglrec.training.edge`);
* ``paper_protocol`` (leaky, only to measure the leak): each *directed* edge is
  assigned on its own, as the paper's public code does, so a held-out edge's
  reverse may be a training edge, and held-out edges stay in the message graph.

Every row is used or the build fails naming ``file:line``: play counts must be
integers >= 1, a (user, artist) pair may appear once, a friend must be a user of
``user_artists.dat`` and a tag assignment's tag must be in ``tags.dat``. Tag
assignments of artists nobody listened to are left out (the release has 1,538 of
artists missing from ``artists.dat`` itself) and counted, with byte-order marks
and CRLF endings, in ``meta["cleaned"]``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from data_prep import protocol as shared
from data_prep.cache import load_or_build
from data_prep.edge_dataset import EdgeRegressionDataset
from data_prep.errors import DataFormatError
from data_prep.parsing import read_columns, tally
from data_prep.sources import data_home, resolve_raw_dir

# 2: cleaned counts in the metadata; dangling friends and tags refused.
BUILDER_VERSION = 2
DATASET = "hetrec2011-lastfm-2k"
FILES = (
    "user_artists.dat",
    "artists.dat",
    "tags.dat",
    "user_taggedartists.dat",
    "user_friends.dat",
)


@dataclass(frozen=True)
class EdgeProtocol:
    """What, besides the raw files, determines the processed edge-regression dataset."""

    dataset: str = DATASET
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 42
    paper_protocol: bool = False

    def describe(self) -> str:
        train, eval_, test = self.split
        unit = (
            "directed edges (paper protocol: LEAKY)" if self.paper_protocol else "undirected pairs"
        )
        return (
            "edge_regression: w = log(count) / max log(count) over the user's edges "
            f"(w = 1 where that max count is 1); random split {train:g}/{eval_:g}/{test:g} "
            f"of {unit}; seed {self.seed}"
        )


def liking_scores(users: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``log(count) / max log(count)`` per user; ``1`` where the user's max count is 1."""
    if (counts < 1).any():
        raise DataFormatError("play counts must be >= 1")
    log_count = np.log(counts.astype(np.float64))
    _, user_index = np.unique(users, return_inverse=True)
    user_max = np.zeros(user_index.max() + 1)
    np.maximum.at(user_max, user_index, log_count)
    denominator = user_max[user_index]
    # 0/0 only where the user's max count is 1, so count is 1 too: each is her maximum.
    safe = np.where(denominator > 0, denominator, 1.0)
    return np.where(denominator > 0, log_count / safe, 1.0)


def split_codes(n_pairs: int, protocol: EdgeProtocol) -> np.ndarray:
    """Split code (0 train, 1 eval, 2 test) of each of the ``2 n_pairs`` directed edges."""
    shared.validate_split(protocol.split)
    rng = np.random.default_rng(protocol.seed)
    n_units = 2 * n_pairs if protocol.paper_protocol else n_pairs
    order = rng.permutation(n_units)
    n_train = int(round(protocol.split[0] * n_units))
    n_eval = int(round(protocol.split[1] * n_units))
    codes = np.empty(n_units, dtype=np.int64)
    codes[order[:n_train]] = 0
    codes[order[n_train : n_train + n_eval]] = 1
    codes[order[n_train + n_eval :]] = 2
    return codes if protocol.paper_protocol else np.concatenate([codes, codes])


def build(
    protocol: EdgeProtocol, raw_dir: Path, checksums: dict[str, str]
) -> EdgeRegressionDataset:
    cleaned: dict[str, int] = {}
    lines: list[int] = []
    user_raw, artist_raw, count_ = (
        np.asarray(c, dtype=np.int64)
        for c in read_columns(
            raw_dir / "user_artists.dat",
            (int, int, int),
            header=True,
            cleaned=cleaned,
            min_rows=1,
            line_numbers=lines,
        )
    )
    pair_keys = user_raw * (max(int(artist_raw.max()), 0) + 1) + artist_raw
    _, first, inverse = np.unique(pair_keys, return_index=True, return_inverse=True)
    if len(first) != len(pair_keys):
        repeat = int(np.flatnonzero(first[inverse] != np.arange(len(pair_keys)))[0])
        raise DataFormatError(
            f"{raw_dir / 'user_artists.dat'}:{lines[repeat]}: user {user_raw[repeat]}, artist "
            f"{artist_raw[repeat]} already on line {lines[first[inverse[repeat]]]}"
        )
    if (count_ < 1).any():
        bad = int(np.argmax(count_ < 1))
        raise DataFormatError(
            f"{raw_dir / 'user_artists.dat'}:{lines[bad]}: play count {count_[bad]} for user "
            f"{user_raw[bad]}, artist {artist_raw[bad]} (counts must be >= 1)"
        )
    count = count_
    users, user_index = np.unique(user_raw, return_inverse=True)
    artists, artist_index = np.unique(artist_raw, return_inverse=True)
    n_users, n_pairs = len(users), len(user_raw)
    score = liking_scores(user_index, count)
    src = np.concatenate([user_index, n_users + artist_index])
    dst = np.concatenate([n_users + artist_index, user_index])

    names = {}
    artist_path = raw_dir / "artists.dat"
    if artist_path.is_file():
        ids, titles, _, _ = read_columns(
            artist_path, (int, str, str, str), header=True, cleaned=cleaned
        )
        names = dict(zip(ids, titles, strict=True))
    artist_position = {int(a): i for i, a in enumerate(artists)}
    user_position = {int(u): i for i, u in enumerate(users)}
    friends = np.zeros((0, 2), dtype=np.int64)
    friends_path = raw_dir / "user_friends.dat"
    if friends_path.is_file():
        friend_lines: list[int] = []
        a, b = read_columns(
            friends_path, (int, int), header=True, cleaned=cleaned, line_numbers=friend_lines
        )
        for x, y, line in zip(a, b, friend_lines, strict=True):
            if x not in user_position or y not in user_position:
                unknown = x if x not in user_position else y
                raise DataFormatError(
                    f"{friends_path}:{line}: user {unknown} is not in user_artists.dat"
                )
        friends = np.array(
            [(user_position[x], user_position[y]) for x, y in zip(a, b, strict=True)],
            dtype=np.int64,
        ).reshape(-1, 2)
    tag_names, artist_tags = {}, np.zeros((0, 2), dtype=np.int64)
    if (raw_dir / "tags.dat").is_file() and (raw_dir / "user_taggedartists.dat").is_file():
        tag_ids, values = read_columns(
            raw_dir / "tags.dat", (int, str), header=True, encoding="latin-1", cleaned=cleaned
        )
        tag_names = dict(zip(tag_ids, values, strict=True))
        tag_lines: list[int] = []
        _, tagged_artist, tag, *_ = read_columns(
            raw_dir / "user_taggedartists.dat",
            (int, int, int, int, int, int),
            header=True,
            cleaned=cleaned,
            line_numbers=tag_lines,
        )
        for t, line in zip(tag, tag_lines, strict=True):
            if t not in tag_names:
                raise DataFormatError(
                    f"{raw_dir / 'user_taggedartists.dat'}:{line}: tag {t} is not in tags.dat"
                )
        unheard = sum(a not in artist_position for a in tagged_artist)
        tally(cleaned, "tags_of_unheard_artists.user_taggedartists.dat", unheard)
        pairs = {
            (artist_position[a], t)
            for a, t in zip(tagged_artist, tag, strict=True)
            if a in artist_position
        }
        artist_tags = np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2)

    codes = split_codes(n_pairs, protocol)
    meta = {
        "dataset": protocol.dataset,
        "protocol": protocol.describe(),
        "protocol_fields": asdict(protocol),
        "checksums": checksums,
        "builder_version": BUILDER_VERSION,
        "stats": {
            "users": int(n_users),
            "artists": int(len(artists)),
            "pairs": int(n_pairs),
            "train_edges": int((codes == 0).sum()),
            "eval_edges": int((codes == 1).sum()),
            "test_edges": int((codes == 2).sum()),
            "users_max_count_1": int(
                len(np.unique(user_index)) - len(np.unique(user_index[count > 1]))
            ),
            "pairs_max_count_1": int(
                np.isin(user_index, np.unique(user_index[count > 1]), invert=True).sum()
            ),
        },
        "artist_raw_ids": artists.tolist(),
        "user_raw_ids": users.tolist(),
        "artist_names": [names.get(int(a), "") for a in artists],
        "tag_names": {str(k): v for k, v in tag_names.items()},
        "cleaned": cleaned,
    }
    return EdgeRegressionDataset(
        src=torch.from_numpy(src),
        dst=torch.from_numpy(dst),
        weight=torch.from_numpy(np.concatenate([score, score])).float(),
        split=torch.from_numpy(codes),
        friends=torch.from_numpy(friends),
        artist_tags=torch.from_numpy(artist_tags),
        meta=meta,
    )


def prepare(
    protocol: EdgeProtocol,
    raw_dir: str | Path | None = None,
    out_root: str | Path | None = None,
    mirror: str | None = None,
    log=print,
) -> tuple[EdgeRegressionDataset, Path]:
    """Build the dataset, or load it from the cache when inputs and protocol match."""
    raw = resolve_raw_dir(protocol.dataset, raw_dir, mirror=mirror)
    checksums = shared.input_checksums(protocol.dataset, raw, ["user_artists.dat"], FILES[1:])
    key = shared.cache_key(BUILDER_VERSION, asdict(protocol), checksums)
    root = Path(out_root) if out_root else data_home() / "processed"
    directory = root / protocol.dataset / key
    return load_or_build(
        directory,
        EdgeRegressionDataset,
        lambda: build(protocol, raw, checksums),
        protocol.dataset,
        raw,
        log,
    )
