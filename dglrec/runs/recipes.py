"""Recipes checked against the model registry: what the commands load and resolve.

:mod:`dglrec.config` knows no model; here the ``[model]`` section is checked
against the hyper-parameters of the registered model it names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dglrec import config
from dglrec.config import RecipeConfig
from dglrec.models.registry import get_model, model_hparams


def model_objective(name: str) -> str:
    """How the registered model ``name`` is trained (``"bce"``, ``"bpr"``...)."""
    return get_model(name).capabilities.objective


def resolve(raw: dict[str, Any]) -> RecipeConfig:
    """A parsed recipe dict as a validated :class:`~dglrec.config.RecipeConfig`."""
    return config.resolve(raw, model_hparams, model_objective)


def load_recipe(
    path: str | Path | None, overrides: list[str] | None = None, seed: int | None = None
) -> RecipeConfig:
    """Read a recipe file, apply ``--set`` overrides and ``--seed``, and validate."""
    return config.load_recipe(path, model_hparams, overrides, seed, model_objective)
