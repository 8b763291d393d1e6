"""Recipes: typed sections, overrides, and errors that name the key."""

import tomllib

import pytest

from dglrec.config import parse_override
from dglrec.errors import ConfigError
from dglrec.runs.recipes import load_recipe, resolve

RECIPES = sorted((__import__("pathlib").Path(__file__).parents[1] / "recipes").glob("*.toml"))


def write(tmp_path, text):
    path = tmp_path / "r.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_shipped_recipes_resolve(recipe):
    cfg = load_recipe(recipe)
    assert cfg.model_name


def test_defaults_recipe_and_overrides_in_order(tmp_path):
    path = write(tmp_path, "[train]\nepochs = 4\nlr = 0.01\n[model]\nname = 'kgcn'\ndim = 32\n")
    cfg = load_recipe(path, ["train.epochs=2", "model.aggregator=concat"], seed=9)
    assert cfg.train.epochs == 2  # --set beats the recipe
    assert cfg.train.lr == 0.01  # recipe beats the default
    assert cfg.train.batch_size == 128  # default
    assert cfg.model == {
        "name": "kgcn",
        "init": "random",
        "dim": 32,
        "n_layers": 1,
        "aggregator": "concat",
    }
    assert cfg.seed == 9 and cfg.data_seed == 9


def test_unknown_key_names_key_and_suggests(tmp_path):
    path = write(tmp_path, "[train]\nepohcs = 3\n")
    with pytest.raises(ConfigError) as err:
        load_recipe(path)
    message = str(err.value)
    assert str(path) in message and "train.epohcs" in message and "'epochs'" in message


def test_unknown_section_and_model_key(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'trian'"):
        load_recipe(write(tmp_path, "[trian]\nepochs = 3\n"))
    with pytest.raises(ConfigError, match="model.n_neighbours"):
        load_recipe(None, ["model.n_neighbours=4"])
    with pytest.raises(ConfigError, match="unknown model 'kgcnn'"):
        load_recipe(None, ["model.name=kgcnn"])


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.epochs=2.5", "train.epochs: expected int, got 2.5"),
        ("train.lr=fast", "train.lr: expected float"),
        ("train.epochs=true", "train.epochs: expected int"),
        (
            "sampler.kind=random",
            "sampler.kind: expected one of 'uniform', 'full', 'importance_topk'",
        ),
        ("model.aggregator=max", "model.aggregator: expected one of 'sum', 'concat', 'neighbor'"),
        ("data.split=[0.6, 'x']", "data.split: expected a list of float"),
    ],
)
def test_wrong_types_are_named(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[").replace(".", r"\.")):
        load_recipe(None, [override])


def test_int_is_accepted_for_float_and_optional():
    cfg = load_recipe(None, ["train.lr=1", "data.split_seed=5"], seed=1)
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.data_seed == 5


def test_invalid_toml_names_file_and_line(tmp_path):
    with pytest.raises(ConfigError, match=r"r\.toml: invalid TOML.*line 2"):
        load_recipe(write(tmp_path, "[train]\nepochs = = 3\n"))


def test_parse_override_values():
    assert parse_override("train.lr=1e-3") == ("train.lr", 0.001)
    assert parse_override("model.aggregator=concat") == ("model.aggregator", "concat")
    assert parse_override("data.split=[0.8, 0.1, 0.1]") == ("data.split", [0.8, 0.1, 0.1])
    with pytest.raises(ConfigError):
        parse_override("train.lr")


def test_resolved_toml_round_trips():
    cfg = load_recipe(None, ["train.epochs=3", "model.dim=4", "data.ratings_sep=::"], seed=11)
    assert resolve(tomllib.loads(cfg.to_toml())) == cfg
    flat = cfg.flat()
    assert flat["train.epochs"] == 3 and flat["model.dim"] == 4 and flat["seed"] == 11
