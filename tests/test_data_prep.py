"""Raw-data parsing, sources and checksums, and the KGCN CTR protocol (data_prep)."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import data_prep.kg_ctr as kg_ctr
from data_prep.kg_ctr import CTRProtocol, build, prepare, sample_negatives
from data_prep.kg_dataset import KGRecDataset
from data_prep.parsing import read_columns
from data_prep.sources import download, resolve_raw_dir, sha256_of, verify
from dglrec.errors import ChecksumError, DataFormatError, DataSourceError
from tests.conftest import write_tiny_kg

# The published SHA-256 of the three Last.FM-KG files (../shared/data/SOURCES.md).
PUBLISHED = {
    "user_artists.dat": "254272fa721c3935e8be286d28c051b206844307128698ab4eaa41d483379416",
    "item_index2entity_id.txt": "f9693bdde538f755d09b9931b0be662a98965e538658a00c2050912c0adf487b",
    "kg.txt": "f62bbc8f717c9f68e66dff6faeaa71025092acc11a0f1b4878b953eb05f946a9",
}
LASTFM_FILES = tuple(PUBLISHED)


def _copy_lastfm(src: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in LASTFM_FILES:
        shutil.copyfile(src / name, dest / name)  # copyfile: the copies are writable
    return dest


def _flip_byte(path: Path, offset: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _pairs(t: torch.Tensor) -> set[tuple[int, int]]:
    return {(int(u), int(i)) for u, i in t[:, :2].tolist()}


# --------------------------------------------------------------------------- parsing


CONTENT_LINES = ["user\titem\tweight", "7\t1000\t3.5", "", "9\t1003\t12", '11\t"1006"\t0.25']


def test_crlf_and_lf_parse_identically(tmp_path):
    lf, crlf = tmp_path / "lf.tsv", tmp_path / "crlf.tsv"
    lf.write_bytes(("\n".join(CONTENT_LINES) + "\n").encode())
    crlf.write_bytes(("\r\n".join(CONTENT_LINES) + "\r\n").encode())
    converters = (int, str, float)
    expected = [[7, 9, 11], ["1000", "1003", "1006"], [3.5, 12.0, 0.25]]
    assert read_columns(lf, converters, header=True) == expected
    assert read_columns(crlf, converters, header=True) == expected
    # String columns get no stray "\r" from CRLF endings.
    assert read_columns(crlf, (str, str, str), header=True)[2] == ["3.5", "12", "0.25"]


def test_real_kg_crlf_equals_lf_copy(lastfm_raw, tmp_path):
    raw = (lastfm_raw / "kg.txt").read_bytes()
    assert b"\r\n" in raw  # the release uses CRLF
    lf = tmp_path / "kg_lf.txt"
    lf.write_bytes(raw.replace(b"\r\n", b"\n"))
    crlf_cols = read_columns(lastfm_raw / "kg.txt", (str, str, str))
    assert crlf_cols == read_columns(lf, (str, str, str))
    assert len(crlf_cols[0]) == 15518
    assert len(set(crlf_cols[1])) == 60
    assert not any(t.endswith("\r") for t in crlf_cols[2])


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
@pytest.mark.parametrize(
    "bad_line, expected_line, what",
    [
        ("5\t1003", 3, "expected 3 fields"),  # too few fields
        ("5\t1003\t1\t2", 3, "expected 3 fields"),  # too many
        ("5x\t1003\t1", 3, "not a valid int"),  # non-integer user
        ("5\t1003\tmany", 3, "not a valid float"),  # non-numeric weight
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, newline, bad_line, expected_line, what):
    path = tmp_path / "ratings.dat"
    lines = ["userID\tartistID\tweight", "2\t51\t13883", bad_line, "2\t52\t11690"]
    path.write_bytes(newline.join(lines).encode())
    with pytest.raises(DataFormatError) as info:
        read_columns(path, (int, int, float), header=True)
    message = str(info.value)
    assert f"{path}:{expected_line}:" in message
    assert what in message


def test_line_numbers_count_blank_lines_and_header(tmp_path):
    path = tmp_path / "f.tsv"
    path.write_text("a\tb\n1\t2\n\n\n3\t4\nnope\t5\n6\t7\n")
    with pytest.raises(DataFormatError) as info:
        read_columns(path, (int, int), header=True)
    assert f"{path}:6:" in str(info.value)
    assert "'nope'" in str(info.value)


def test_header_skipping(tmp_path):
    path = tmp_path / "f.tsv"
    path.write_text("userID\tartistID\n1\t2\n3\t4\n")
    assert read_columns(path, (int, int), header=True) == [[1, 3], [2, 4]]
    # Without header=True the header line is data, and it is not an int.
    with pytest.raises(DataFormatError) as info:
        read_columns(path, (int, int))
    assert f"{path}:1:" in str(info.value)
    # With string converters it is kept as a row.
    assert read_columns(path, (str, str)) == [["userID", "1", "3"], ["artistID", "2", "4"]]


def test_custom_separator_and_missing_file(tmp_path):
    path = tmp_path / "r.dat"
    path.write_text("1::1193::5::978300760\n1::661::3::978302109\n")
    assert read_columns(path, (int, int, int, str), sep="::") == [
        [1, 1],
        [1193, 661],
        [5, 3],
        ["978300760", "978302109"],
    ]
    with pytest.raises(DataFormatError, match="no such file"):
        read_columns(tmp_path / "absent.dat", (int,))


@pytest.mark.parametrize("char", ["\x85", "\u2028", "\x0c"])
def test_only_lf_and_crlf_end_lines(tmp_path, char):
    # In ISO-8859-1 text (e.g. HetRec's tags.dat) byte 0x85 decodes to U+0085 (NEL).
    path = tmp_path / "names.tsv"
    path.write_text(f"1\tfoo{char}bar\r\n2\tbaz\r\n", encoding="utf-8")
    assert read_columns(path, (int, str)) == [[1, 2], [f"foo{char}bar", "baz"]]


# --------------------------------------------------------------------------- sources


def test_verify_real_files(lastfm_raw):
    assert verify("lastfm-kg", lastfm_raw) == PUBLISHED


def test_verify_rejects_altered_kg(lastfm_raw, tmp_path):
    raw = _copy_lastfm(lastfm_raw, tmp_path / "lastfm-kg")
    assert verify("lastfm-kg", raw) == PUBLISHED
    _flip_byte(raw / "kg.txt")
    with pytest.raises(ChecksumError) as info:
        verify("lastfm-kg", raw)
    assert "kg.txt" in str(info.value)
    assert PUBLISHED["kg.txt"] in str(info.value)


def test_verify_missing_file(lastfm_raw, tmp_path):
    raw = _copy_lastfm(lastfm_raw, tmp_path / "lastfm-kg")
    (raw / "item_index2entity_id.txt").unlink()
    with pytest.raises(DataSourceError, match="item_index2entity_id.txt"):
        verify("lastfm-kg", raw)


@pytest.fixture(scope="module")
def real_mirror(lastfm_raw) -> str:
    """A file:// URL whose <dataset>/<file> layout is the shared data folder."""
    return "file://" + str(lastfm_raw.parent.resolve())


def test_download_from_file_mirror(real_mirror, tmp_path):
    dest = tmp_path / "dl"
    assert download("lastfm-kg", dest, mirror=real_mirror) == dest
    assert verify("lastfm-kg", dest) == PUBLISHED
    assert sorted(p.name for p in dest.iterdir()) == sorted(LASTFM_FILES)  # no temp files left


def test_download_replaces_corrupt_and_keeps_verified_files(real_mirror, lastfm_raw, tmp_path):
    dest = _copy_lastfm(lastfm_raw, tmp_path / "dl")
    _flip_byte(dest / "kg.txt")
    (dest / "user_artists.dat").unlink()
    download("lastfm-kg", dest, mirror=real_mirror)
    assert verify("lastfm-kg", dest) == PUBLISHED
    # An already verified dest needs no mirror at all.
    download("lastfm-kg", dest, mirror="file:///nonexistent-mirror")


@pytest.mark.parametrize("corrupt", LASTFM_FILES)
def test_download_from_corrupted_mirror(lastfm_raw, tmp_path, corrupt):
    mirror = tmp_path / "mirror"
    _copy_lastfm(lastfm_raw, mirror / "lastfm-kg")
    _flip_byte(mirror / "lastfm-kg" / corrupt)
    dest = tmp_path / "dl"
    with pytest.raises(ChecksumError) as info:
        download("lastfm-kg", dest, mirror=f"file://{mirror}")
    assert corrupt in str(info.value)
    assert not (dest / corrupt).exists()
    # Whatever was written is complete and verified; no temporary files are left behind.
    for path in dest.iterdir():
        assert path.name in PUBLISHED and sha256_of(path) == PUBLISHED[path.name]


def test_download_from_mirror_missing_a_file(lastfm_raw, tmp_path):
    mirror = tmp_path / "mirror"
    _copy_lastfm(lastfm_raw, mirror / "lastfm-kg")
    (mirror / "lastfm-kg" / "kg.txt").unlink()
    dest = tmp_path / "dl"
    with pytest.raises(DataSourceError, match="kg.txt"):
        download("lastfm-kg", dest, mirror=f"file://{mirror}/")
    assert not (dest / "kg.txt").exists()


def test_download_unknown_dataset(tmp_path):
    with pytest.raises(DataSourceError, match="no public source"):
        download("tiny-kg", tmp_path / "dl", mirror="file:///x")


def test_resolve_explicit_dir_wins(tiny_raw, lastfm_raw, isolated, monkeypatch):
    monkeypatch.setenv("DGLREC_RAW_DIR", str(lastfm_raw.parent))
    monkeypatch.setenv("DGLREC_MIRROR", "file:///nonexistent-mirror")
    assert resolve_raw_dir("lastfm-kg", tiny_raw) == tiny_raw
    assert resolve_raw_dir("lastfm-kg", str(tiny_raw)) == tiny_raw
    with pytest.raises(DataSourceError, match="does not exist"):
        resolve_raw_dir("lastfm-kg", isolated / "absent")
    assert not (isolated / "data").exists()


def test_resolve_env_raw_dir_before_download(lastfm_raw, isolated, monkeypatch):
    monkeypatch.setenv("DGLREC_RAW_DIR", str(lastfm_raw.parent))
    monkeypatch.setenv("DGLREC_MIRROR", "file:///nonexistent-mirror")
    assert resolve_raw_dir("lastfm-kg") == lastfm_raw.parent / "lastfm-kg"
    assert not (isolated / "data").exists()  # nothing downloaded


@pytest.mark.parametrize("raw_env", ["unset", "without-dataset"])
def test_resolve_downloads_from_env_mirror(real_mirror, isolated, monkeypatch, raw_env):
    if raw_env == "unset":
        monkeypatch.delenv("DGLREC_RAW_DIR", raising=False)
    else:
        (isolated / "empty_root").mkdir()
        monkeypatch.setenv("DGLREC_RAW_DIR", str(isolated / "empty_root"))
    monkeypatch.setenv("DGLREC_MIRROR", real_mirror)
    path = resolve_raw_dir("lastfm-kg")
    assert path == isolated / "data" / "raw" / "lastfm-kg"
    assert verify("lastfm-kg", path) == PUBLISHED
    # An explicit mirror argument beats $DGLREC_MIRROR.
    monkeypatch.setenv("DGLREC_MIRROR", "file:///nonexistent-mirror")
    shutil.rmtree(path)
    assert resolve_raw_dir("lastfm-kg", mirror=real_mirror) == path
    assert verify("lastfm-kg", path) == PUBLISHED


# --------------------------------------------------------------------------- protocol on real data


@pytest.fixture(scope="module")
def lastfm_built(lastfm_raw) -> KGRecDataset:
    return build(CTRProtocol(seed=7), lastfm_raw, {})


@pytest.fixture(scope="module")
def raw_listening(lastfm_raw):
    """Independent parse of the raw files: all (user, artist) pairs and the KG artists."""
    lines = (lastfm_raw / "user_artists.dat").read_text().splitlines()
    assert lines[0].split("\t") == ["userID", "artistID", "weight"]
    pairs = {tuple(line.split("\t")[:2]) for line in lines[1:] if line}
    kg_items = [
        line.split("\t")[0]
        for line in (lastfm_raw / "item_index2entity_id.txt").read_text().splitlines()
        if line
    ]
    return pairs, kg_items


def _raw_pairs(ds: KGRecDataset, pairs: torch.Tensor) -> set[tuple[str, str]]:
    users, items = ds.meta["user_raw_ids"], ds.meta["item_raw_ids"]
    return {(users[u], items[i]) for u, i in pairs[:, :2].tolist()}


def _all_pairs(ds: KGRecDataset) -> torch.Tensor:
    return torch.cat([ds.splits[name] for name in ("train", "eval", "test")])


def test_lastfm_stats(lastfm_built):
    stats = lastfm_built.meta["stats"]
    assert {k: stats[k] for k in ("users", "items", "entities", "relations", "triples")} == {
        "users": 1872,
        "items": 3846,
        "entities": 9366,
        "relations": 60,
        "triples": 15518,
    }
    assert stats["positives"] == 21173
    assert stats["labelled_pairs"] == 42346
    ds = lastfm_built
    assert (ds.n_users, ds.n_items, ds.n_entities, ds.n_relations) == (1872, 3846, 9366, 60)
    assert len(ds.meta["relation_names"]) == 60 and len(ds.meta["user_raw_ids"]) == 1872


def test_lastfm_split_sizes(lastfm_built):
    sizes = {name: len(t) for name, t in lastfm_built.splits.items()}
    assert sum(sizes.values()) == 42346
    assert sizes == {k: lastfm_built.meta["stats"][k] for k in sizes}
    for name, fraction in (("train", 0.6), ("eval", 0.2), ("test", 0.2)):
        assert abs(sizes[name] - fraction * 42346) <= 2, (name, sizes)
    for t in lastfm_built.splits.values():
        assert t.dtype == torch.int64 and t.shape[1] == 3
        assert set(t[:, 2].tolist()) == {0, 1}
        assert int(t[:, 0].min()) >= 0 and int(t[:, 0].max()) < 1872
        assert int(t[:, 1].min()) >= 0 and int(t[:, 1].max()) < 3846


def test_lastfm_one_negative_per_positive_per_user(lastfm_built):
    pairs = _all_pairs(lastfm_built)
    pos = torch.bincount(pairs[pairs[:, 2] == 1, 0], minlength=1872)
    neg = torch.bincount(pairs[pairs[:, 2] == 0, 0], minlength=1872)
    assert torch.equal(pos, neg)
    assert int(pos.min()) >= 1  # every kept user has a positive
    # Each split is roughly balanced too (random split of a balanced set).
    for t in lastfm_built.splits.values():
        assert abs(float(t[:, 2].float().mean()) - 0.5) < 0.02


def test_lastfm_no_pair_twice(lastfm_built):
    pairs = _all_pairs(lastfm_built)
    assert len(_pairs(pairs)) == len(pairs) == 42346
    train = _pairs(lastfm_built.splits["train"])
    assert not train & _pairs(lastfm_built.splits["test"])
    assert not train & _pairs(lastfm_built.splits["eval"])
    assert not _pairs(lastfm_built.splits["eval"]) & _pairs(lastfm_built.splits["test"])


def test_lastfm_positives_are_raw_listening_pairs_with_kg_artist(lastfm_built, raw_listening):
    raw_pairs, kg_items = raw_listening
    kg_set = set(kg_items)
    expected = {(u, a) for u, a in raw_pairs if a in kg_set}
    pairs = _all_pairs(lastfm_built)
    positives = _raw_pairs(lastfm_built, pairs[pairs[:, 2] == 1])
    assert positives == expected
    assert len(expected) == 21173
    assert lastfm_built.meta["item_raw_ids"] == kg_items
    assert set(lastfm_built.meta["user_raw_ids"]) == {u for u, _ in expected}


def test_lastfm_negatives_never_listened(lastfm_built, raw_listening):
    raw_pairs, kg_items = raw_listening
    pairs = _all_pairs(lastfm_built)
    negatives = _raw_pairs(lastfm_built, pairs[pairs[:, 2] == 0])
    assert len(negatives) == 21173
    assert not negatives & raw_pairs
    assert {a for _, a in negatives} <= set(kg_items)


def test_lastfm_graph_interactions_are_train_positives(lastfm_built):
    ds = lastfm_built
    g = ds.graph
    assert set(g.ntypes) == {"user", "entity"}
    assert g.num_nodes("user") == 1872 and g.num_nodes("entity") == 9366
    # Items are the first entities, in file order.
    assert torch.equal(ds.item_entity, torch.arange(3846))
    train = ds.splits["train"]
    train_pos = train[train[:, 2] == 1]
    expected = sorted(
        zip(train_pos[:, 0].tolist(), ds.item_entity[train_pos[:, 1]].tolist(), strict=True)
    )
    src, dst = g.edges(etype=("user", "interacts", "entity"))
    assert sorted(zip(src.tolist(), dst.tolist(), strict=True)) == expected
    rsrc, rdst = g.edges(etype=("entity", "interacted_by", "user"))
    assert sorted(zip(rdst.tolist(), rsrc.tolist(), strict=True)) == expected
    # No eval/test pair leaks into message passing.
    held_out = _pairs(ds.splits["eval"]) | _pairs(ds.splits["test"])
    assert not set(zip(src.tolist(), dst.tolist(), strict=True)) & held_out


def test_lastfm_graph_kg_edges(lastfm_built, lastfm_raw):
    g = lastfm_built.graph
    n = 15518
    assert g.num_edges(("entity", "kg", "entity")) == 2 * n
    src, dst = g.edges(etype="kg")
    rel = g.edges["kg"].data["rel"]
    inverse = g.edges["kg"].data["inverse"]
    assert torch.equal(src[:n], dst[n:]) and torch.equal(dst[:n], src[n:])
    assert torch.equal(rel[:n], rel[n:])
    assert inverse[:n].eq(0).all() and inverse[n:].eq(1).all()
    assert int(rel.min()) == 0 and int(rel.max()) == 59
    # Relations per triple agree with the raw file, in order.
    names = lastfm_built.meta["relation_names"]
    _, raw_rel, _ = read_columns(lastfm_raw / "kg.txt", (str, str, str))
    assert [names[r] for r in rel[:n].tolist()] == raw_rel
    # As an undirected edge set, every (head, tail) has its reverse with the same relation.
    triples = Counter(zip(src.tolist(), dst.tolist(), rel.tolist(), strict=True))
    assert all(triples[(t, h, r)] == c for (h, t, r), c in triples.items())
    kg = lastfm_built.kg_graph()
    assert kg.num_nodes() == 9366 and kg.num_edges() == 2 * n
    assert torch.equal(kg.edata["rel"], rel)


def test_lastfm_seed_determinism(lastfm_built, lastfm_raw):
    again = build(CTRProtocol(seed=7), lastfm_raw, {})
    for name in ("train", "eval", "test"):
        assert torch.equal(again.splits[name], lastfm_built.splits[name])
    other = build(CTRProtocol(seed=8), lastfm_raw, {})
    assert other.meta["stats"] == lastfm_built.meta["stats"]
    assert not torch.equal(other.splits["train"], lastfm_built.splits["train"])
    # Both the negatives and the split change with the seed.
    neg = lambda ds: _pairs(_all_pairs(ds)[_all_pairs(ds)[:, 2] == 0])  # noqa: E731
    assert neg(other) != neg(lastfm_built)
    # The split itself depends on the seed: the same positives land elsewhere.
    test_pos = lambda ds: _pairs(ds.splits["test"][ds.splits["test"][:, 2] == 1])  # noqa: E731
    assert test_pos(other) != test_pos(lastfm_built)


# --------------------------------------------------------------------------- prepare and cache


def _graph_equal(a, b) -> bool:
    if a.ntypes != b.ntypes or a.canonical_etypes != b.canonical_etypes:
        return False
    for nt in a.ntypes:
        if a.num_nodes(nt) != b.num_nodes(nt):
            return False
    for et in a.canonical_etypes:
        (s1, d1), (s2, d2) = a.edges(etype=et), b.edges(etype=et)
        if not (torch.equal(s1, s2) and torch.equal(d1, d2)):
            return False
        if set(a.edges[et].data) != set(b.edges[et].data):
            return False
        for key in a.edges[et].data:
            x, y = a.edges[et].data[key], b.edges[et].data[key]
            if x.dtype != y.dtype or not torch.equal(x, y):
                return False
    return True


def test_prepare_caches(tiny_raw, isolated, monkeypatch):
    log: list[str] = []
    protocol = CTRProtocol(dataset="tiny-kg", seed=1)
    first, directory = prepare(protocol, raw_dir=tiny_raw, log=log.append)
    assert directory.parent == isolated / "data" / "processed" / "tiny-kg"
    assert KGRecDataset.exists(directory)
    assert any(m.startswith("building tiny-kg") for m in log)
    assert first.meta["raw_dir"] == str(tiny_raw)

    def no_build(*args, **kwargs):
        raise AssertionError("build() called on a cache hit")

    real_build = kg_ctr.build
    monkeypatch.setattr(kg_ctr, "build", no_build)
    log.clear()
    second, directory2 = prepare(protocol, raw_dir=tiny_raw, log=log.append)
    assert directory2 == directory
    assert log == [f"using cached tiny-kg at {directory}"]
    assert _graph_equal(first.graph, second.graph)
    for name in ("train", "eval", "test"):
        assert torch.equal(first.splits[name], second.splits[name])
    # A different seed is another cache entry (and must be built).
    with pytest.raises(AssertionError, match="cache hit"):
        prepare(CTRProtocol(dataset="tiny-kg", seed=2), raw_dir=tiny_raw, log=log.append)
    monkeypatch.setattr(kg_ctr, "build", real_build)
    third, directory3 = prepare(
        CTRProtocol(dataset="tiny-kg", seed=2), raw_dir=tiny_raw, log=log.append
    )
    assert directory3 != directory and directory3.parent == directory.parent
    assert not torch.equal(third.splits["train"], first.splits["train"])


def test_prepare_out_root_and_protocol_in_key(tiny_raw, isolated):
    root = isolated / "elsewhere"
    _, d1 = prepare(
        CTRProtocol(dataset="tiny-kg"), raw_dir=tiny_raw, out_root=root, log=lambda m: None
    )
    assert d1.parent == root / "tiny-kg"
    _, d2 = prepare(
        CTRProtocol(dataset="tiny-kg", split=(0.8, 0.1, 0.1)),
        raw_dir=tiny_raw,
        out_root=root,
        log=lambda m: None,
    )
    assert d2 != d1
    assert not (isolated / "data" / "processed").exists()


def test_load_round_trips(tiny_raw, isolated):
    built, directory = prepare(
        CTRProtocol(dataset="tiny-kg", seed=5), raw_dir=tiny_raw, log=lambda m: None
    )
    loaded = KGRecDataset.load(directory)
    assert _graph_equal(built.graph, loaded.graph)
    for name in ("train", "eval", "test"):
        assert loaded.splits[name].dtype == torch.int64
        assert torch.equal(built.splits[name], loaded.splits[name])
    assert torch.equal(built.item_entity, loaded.item_entity)
    # JSON turns tuples into lists; otherwise the metadata is identical.
    assert loaded.meta == json.loads(json.dumps(built.meta))
    assert loaded.meta["seed"] == 5 and loaded.meta["stats"] == built.meta["stats"]
    assert (loaded.n_users, loaded.n_items, loaded.n_entities, loaded.n_relations) == (
        built.n_users,
        built.n_items,
        built.n_entities,
        built.n_relations,
    )
    with pytest.raises(DataSourceError, match="meta.json"):
        KGRecDataset.load(isolated / "nothing-here")


def test_custom_dataset_not_checksum_enforced(tiny_raw, isolated):
    raw = isolated / "tiny-copy"
    shutil.copytree(tiny_raw, raw)
    _, d1 = prepare(CTRProtocol(dataset="tiny-kg"), raw_dir=raw, log=lambda m: None)
    # Editing a custom dataset is allowed, and its content is part of the cache key.
    lines = (raw / "user_artists.dat").read_text().splitlines()
    (raw / "user_artists.dat").write_text("\n".join(lines[:-3]) + "\n")
    ds, d2 = prepare(CTRProtocol(dataset="tiny-kg"), raw_dir=raw, log=lambda m: None)
    assert d2 != d1
    assert ds.meta["checksums"]["user_artists.dat"] == sha256_of(raw / "user_artists.dat")
    # The same files under the public name are checked against the published SHA-256.
    with pytest.raises(ChecksumError, match="user_artists.dat"):
        prepare(CTRProtocol(dataset="lastfm-kg"), raw_dir=tiny_raw, log=lambda m: None)


def test_tiny_build_drops_artists_without_entity(tiny_raw):
    ds = build(CTRProtocol(dataset="tiny-kg", seed=0), tiny_raw, {})
    assert ds.n_users == 30 and ds.n_items == 40
    assert "99999" not in ds.meta["item_raw_ids"]
    assert ds.meta["user_raw_ids"] == [str(7 + 2 * u) for u in range(30)]


# --------------------------------------------------------------------------- explicit ratings

# user::item::rating; items are the tiny KG's raw ids 1000 + 3k, k < 40.
TINY_ITEMS = [str(1000 + 3 * k) for k in range(40)]
RATINGS = [
    ("1", "1000", 5),
    ("1", "1003", 4),
    ("1", "1006", 3),
    ("1", "1009", 1),
    ("1", "77777", 5),
    ("2", "1003", 2),
    ("2", "1012", 4),
    ("3", "1000", 1),
    ("3", "1003", 3),  # no positive: user 3 is dropped
    ("4", "1015", 5),
    ("4", "1018", 4),
    ("4", "1021", 4),
]
# User 5: 3 positives and 36 items rated below the threshold: exactly one unrated item left.
RATINGS += [("5", TINY_ITEMS[k], 5) for k in range(3)]
RATINGS += [("5", TINY_ITEMS[k], 1 + k % 3) for k in range(3, 39)]


@pytest.fixture(scope="module")
def ratings_raw(tiny_raw, tmp_path_factory) -> Path:
    raw = tmp_path_factory.mktemp("ratings") / "tiny-ratings"
    shutil.copytree(tiny_raw, raw)
    (raw / "user_artists.dat").unlink()
    (raw / "ratings.dat").write_text("".join(f"{u}::{i}::{r}\n" for u, i, r in RATINGS))
    return raw


def _ratings_protocol(seed: int) -> CTRProtocol:
    return CTRProtocol(
        dataset="tiny-ratings",
        ratings_file="ratings.dat",
        ratings_sep="::",
        ratings_header=False,
        positive_threshold=4,
        seed=seed,
    )


@pytest.mark.parametrize("seed", range(5))
def test_explicit_ratings_threshold(ratings_raw, seed):
    ds = build(_ratings_protocol(seed), ratings_raw, {})
    item_set = set(TINY_ITEMS)
    pairs = _all_pairs(ds)
    positives = _raw_pairs(ds, pairs[pairs[:, 2] == 1])
    negatives = _raw_pairs(ds, pairs[pairs[:, 2] == 0])
    assert positives == {(u, i) for u, i, r in RATINGS if r >= 4 and i in item_set}
    assert ds.meta["user_raw_ids"] == ["1", "2", "4", "5"]
    rated = {(u, i) for u, i, _ in RATINGS}
    assert not negatives & rated  # KGCN: never an item the user rated at all
    per_user = Counter(u for u, _ in negatives)
    # One negative per positive, except user 5 who has a single unrated item.
    assert per_user == {"1": 2, "2": 1, "4": 3, "5": 1}
    assert {i for u, i in negatives if u == "5"} == {TINY_ITEMS[39]}
    assert ds.meta["stats"]["positives"] == 9 and ds.meta["stats"]["labelled_pairs"] == 16


def test_explicit_ratings_prepare_not_enforced(ratings_raw, isolated):
    ds, directory = prepare(_ratings_protocol(0), raw_dir=ratings_raw, log=lambda m: None)
    assert set(ds.meta["checksums"]) == {"ratings.dat", "item_index2entity_id.txt", "kg.txt"}
    assert directory.parent.name == "tiny-ratings"


# --------------------------------------------------------------------------- sample_negatives


RATED = np.array(
    [
        [1, 0, 0, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 1, 0, 0],  # two unrated
        [1, 1, 1, 1, 1, 1, 1, 1],  # none unrated
        [0, 0, 0, 0, 0, 0, 0, 0],
        [0, 1, 0, 1, 0, 1, 0, 1],
    ],
    dtype=bool,
)


def _by_user(users, items, n_users):
    return [items[users == u].tolist() for u in range(n_users)]


def _draw(rated, wanted, rng, **kwargs):
    """``sample_negatives`` of a dense rated matrix (the function takes its pairs)."""
    return sample_negatives(*np.nonzero(rated), rated.shape, wanted, rng, **kwargs)


def _full_sort_reference(rated, wanted, rng):
    """Every row's keys sorted whole: what ``sample_negatives`` must equal, draw for draw."""
    keys = rng.random(rated.shape)
    keys[rated] = np.inf
    order = np.argsort(keys, axis=1, kind="stable")
    wanted = np.minimum(wanted, rated.shape[1] - rated.sum(1))
    rows, cols = np.nonzero(np.arange(rated.shape[1])[None, :] < wanted[:, None])
    return rows, order[rows, cols]


@pytest.mark.parametrize("users_per_chunk", [None, 1, 7, 1000])
def test_sample_negatives_equal_a_full_sort_of_each_row(users_per_chunk):
    gen = np.random.default_rng(5)
    rated = gen.random((300, 40)) < gen.random((300, 1)) * 0.6
    rated[3] = True  # a user who rated everything
    wanted = gen.integers(0, 45, 300)
    got = _draw(rated, wanted, np.random.default_rng(9), users_per_chunk=users_per_chunk)
    expected = _full_sort_reference(rated, wanted, np.random.default_rng(9))
    assert np.array_equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])


@pytest.mark.parametrize("seed", range(6))
def test_sample_negatives_invariants(seed):
    wanted = np.array([3, 5, 2, 8, 0])
    users, items = _draw(RATED, wanted, np.random.default_rng(seed))
    got = _by_user(users, items, 5)
    unrated = [set(np.flatnonzero(~row).tolist()) for row in RATED]
    for u in range(5):
        assert set(got[u]) <= unrated[u], u  # never a rated item
        assert len(set(got[u])) == len(got[u]), u  # no duplicates
        assert len(got[u]) == min(wanted[u], len(unrated[u])), u  # clipped
    assert set(got[1]) == {6, 7} and got[2] == [] and set(got[3]) == set(range(8)) and got[4] == []


def test_sample_negatives_deterministic_and_chunk_independent():
    wanted = np.array([3, 5, 2, 8, 4])
    a = _draw(RATED, wanted, np.random.default_rng(11))
    b = _draw(RATED, wanted, np.random.default_rng(11))
    c = _draw(RATED, wanted, np.random.default_rng(11), users_per_chunk=2)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    # Chunking is an implementation detail: same draws, same user offsets.
    assert np.array_equal(a[0], c[0]) and np.array_equal(a[1], c[1])
    d = _draw(RATED, wanted, np.random.default_rng(12))
    assert any(
        sorted(x) != sorted(y) for x, y in zip(_by_user(*a, 5), _by_user(*d, 5), strict=True)
    )


def test_sample_negatives_uniform():
    rated = np.tile(RATED[0], (4000, 1))  # six unrated items: 1, 2, 4, 5, 6, 7
    users, items = _draw(rated, np.full(4000, 2), np.random.default_rng(0), users_per_chunk=999)
    assert len(users) == 8000 and np.array_equal(np.bincount(users), np.full(4000, 2))
    counts = np.bincount(items, minlength=8)
    assert counts[0] == counts[3] == 0
    # Each unrated item expected 8000/6 = 1333 times (sd ~ 33).
    assert np.all(np.abs(counts[[1, 2, 4, 5, 6, 7]] - 8000 / 6) < 200), counts


def test_write_tiny_kg_helper_is_seeded(tmp_path):
    a = write_tiny_kg(tmp_path / "a", seed=3)
    b = write_tiny_kg(tmp_path / "b", seed=3)
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in LASTFM_FILES)
