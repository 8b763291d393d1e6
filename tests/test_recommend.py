"""`dglrec recommend`: top-K of a logged model for one user, names, KG reasons, errors."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from dglrec.analysis.recommend import recommend
from dglrec.cli import main
from dglrec.runs import pipeline


@pytest.fixture
def fitted(tiny_recipe, isolated):
    """A KGCN run on the tiny KG (model logged) and an artists.dat naming its items."""
    result = CliRunner().invoke(main, ["fit", str(tiny_recipe), "--set", "train.epochs=1"])
    assert result.exit_code == 0, result.output
    run_id = result.output.split("run ")[-1].split(":")[0]
    names = isolated / "artists.dat"
    names.write_text(
        "id\tname\turl\tpictureURL\n"
        + "".join(f"{1000 + 3 * i}\tBand {i}\tu\tp\n" for i in range(40))
    )
    return run_id, names


def _all_scores(run_id: str, user: int) -> tuple[torch.Tensor, torch.Tensor, object]:
    """Every item's probability for ``user`` from a freshly built trainer, and her positives."""
    from dglrec.runs import tracking

    cfg = pipeline.config_of_run(run_id)
    model = tracking.load_model(run_id)
    dataset = pipeline.load_dataset(cfg, lambda _: None)
    trainer = pipeline.trainer_for(
        pipeline.Setup(cfg, dataset, model, pipeline.sampler_for(cfg, model))
    )
    n = dataset.n_items
    pairs = torch.stack(
        [torch.full((n,), user), torch.arange(n), torch.zeros(n, dtype=torch.long)], 1
    )
    listened = torch.zeros(n, dtype=torch.bool)
    for split in dataset.splits.values():
        listened[split[(split[:, 0] == user) & (split[:, 2] == 1)][:, 1]] = True
    return torch.from_numpy(trainer.predict(pairs)), listened, (dataset, model)


def test_top_k_is_the_best_unlistened_items(fitted):
    run_id, names = fitted
    rec = recommend(run_id, "7", k=5, names_file=names, log=lambda _: None)
    user = 0  # raw user 7 is the first user of the tiny KG
    scores, listened, (dataset, _) = _all_scores(run_id, user)
    item_of = {raw: i for i, raw in enumerate(dataset.meta["item_raw_ids"])}
    chosen = [item_of[r.artist_id] for r in rec.items]
    assert len(chosen) == 5 and not listened[chosen].any()
    assert [r.score for r in rec.items] == pytest.approx(scores[chosen].tolist())
    rest = torch.ones_like(listened)
    rest[chosen] = False
    assert min(r.score for r in rec.items) >= float(scores[rest & ~listened].max())
    assert rec.n_listened == int(listened.sum())
    assert [r.name for r in rec.items] == [
        f"Band {(int(r.artist_id) - 1000) // 3}" for r in rec.items
    ]
    assert rec.history and all(h["artist_id"] in item_of for h in rec.history)
    plays = [h["plays"] for h in rec.history]
    assert plays == sorted(plays, reverse=True)


def test_reasons_are_the_users_attention_over_the_items_kg_neighbours(fitted):
    run_id, names = fitted
    rec = recommend(run_id, "7", k=3, n_reasons=100, names_file=names, log=lambda _: None)
    _, listened, (dataset, model) = _all_scores(run_id, 0)
    relation_names = dataset.meta["relation_names"]
    item_of = {raw: i for i, raw in enumerate(dataset.meta["item_raw_ids"])}
    for item in rec.items:
        entity = dataset.item_entity[item_of[item.artist_id]]
        src, _, eids = dataset.graph.in_edges(entity, etype="kg", form="all")
        rel = dataset.graph.edges["kg"].data["rel"][eids]
        with torch.no_grad():  # by hand: softmax over the neighbours of e_u · e_r
            expected = torch.softmax(model.relation_emb.weight[rel] @ model.user_emb.weight[0], 0)
        got = sorted((r.weight for r in item.reasons), reverse=True)
        assert got == pytest.approx(sorted(expected.tolist(), reverse=True), abs=1e-6)
        assert {r.relation for r in item.reasons} == {relation_names[int(r)] for r in rel}
        assert {r.entity for r in item.reasons} == set(src.tolist())
        for reason in item.reasons:  # "as for X": X is hers and linked to the same entity
            for name in reason.shared_with:
                i = item_of[str(1000 + 3 * int(name.split()[-1]))]
                assert listened[i]
                neighbours, _ = dataset.graph.in_edges(dataset.item_entity[i], etype="kg")
                assert reason.entity in neighbours.tolist()


def test_cli_text_json_and_one_line_errors(fitted):
    run_id, names = fitted
    runner = CliRunner()
    text = runner.invoke(main, ["recommend", run_id, "--user", "7", "--k", "3", "--names", names])
    assert text.exit_code == 0, text.output
    assert "top 3" in text.output and "Band" in text.output
    out = runner.invoke(
        main, ["recommend", run_id, "--user", "7", "--k", "2", "--format", "json", "--names", names]
    )
    payload = json.loads(out.output)
    assert payload["user"] == "7" and len(payload["items"]) == 2
    assert payload["items"][0]["reasons"] and payload["explained"] is True
    for args, message in (
        ([run_id, "--user", "424242"], "error: user '424242' is not in run"),
        (["0" * 32, "--user", "7"], "error: no MLflow run"),
        ([run_id, "--user", "7", "--names", "missing.dat"], "error: missing.dat: no such file"),
    ):
        result = runner.invoke(main, ["recommend", *args])
        assert result.exit_code == 2, result.output
        assert result.output.startswith(message) and "Traceback" not in result.output


def test_models_without_kg_attention_give_scores_without_reasons(tiny_raw, isolated):
    from tests.conftest import recipe_on

    cfg = recipe_on("bprmf.toml", "tiny-kg", tiny_raw, "tracking.log_model=true", "train.epochs=1")
    run_id, _ = pipeline.fit(cfg, log=lambda _: None)
    rec = recommend(run_id, "9", k=4, log=lambda _: None)
    assert len(rec.items) == 4 and not rec.explained
    assert all(not item.reasons for item in rec.items)
    assert rec.names_from is None  # the tiny KG has no artists.dat beside it
