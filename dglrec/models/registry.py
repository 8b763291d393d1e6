"""Explicit model registry: ``@register_model("kgcn", ...)`` declares a model and what it needs.

A model's recipe hyper-parameters are the keyword arguments of its constructor
that have defaults, minus the graph metadata the builder passes
(:data:`GRAPH_ARGS`). Names become classes only here, at the edge.

What a model needs and how it is trained is declared at registration as
:class:`~dglrec.models.base.Capabilities`; the builder and the trainers read the
declaration (``model.capabilities``) and never probe a model's attributes. A
declaration the class does not implement (a ``bind`` without its method, block
inputs without ``n_blocks``...) fails at registration, naming the class.
"""

from __future__ import annotations

import inspect
import typing
from typing import Any

from dglrec.errors import ConfigError
from dglrec.models.base import Capabilities

# Constructor arguments filled from the dataset, never from a recipe.
GRAPH_ARGS = ("n_users", "n_items", "n_entities", "n_relations")

_MODELS: dict[str, type] = {}


def register_model(name: str, **declared: Any):
    """Register a model class under ``name`` with its :class:`Capabilities` (keyword arguments)."""

    def decorate(cls: type) -> type:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered by {_MODELS[name].__name__}")
        capabilities = Capabilities(**declared)
        capabilities.check(cls)
        _MODELS[name] = cls
        cls.registry_name = name
        cls.capabilities = capabilities
        return cls

    return decorate


def model_names() -> list[str]:
    return sorted(_MODELS)


def get_model(name: str) -> type:
    if name not in _MODELS:
        raise ConfigError(
            f"model.name: unknown model {name!r}; available: {', '.join(model_names())}"
        )
    return _MODELS[name]


def capabilities_of(model: Any) -> Capabilities:
    """The declaration of a registered model (class or instance)."""
    return model.capabilities


def model_hparams(name: Any) -> dict[str, tuple[Any, Any]]:
    """``{hyper-parameter: (type, default)}`` read from the model's constructor."""
    if not isinstance(name, str):
        raise ConfigError(f"model.name: expected one of {', '.join(model_names())}, got {name!r}")
    cls = get_model(name)
    hints = typing.get_type_hints(cls.__init__)
    out = {}
    for param in inspect.signature(cls.__init__).parameters.values():
        if param.name == "self" or param.name in GRAPH_ARGS:
            continue
        if param.default is inspect.Parameter.empty:
            raise TypeError(f"{cls.__name__}.{param.name} needs a default to be a hyper-parameter")
        out[param.name] = (hints.get(param.name, Any), param.default)
    return out


def uses_kg(name: str) -> bool:
    """Whether the model reads the KG (it is built with ``n_relations``)."""
    return "n_relations" in inspect.signature(get_model(name).__init__).parameters


def build_model(name: str, graph_args: dict[str, int], hparams: dict[str, Any]):
    """Instantiate a registered model with the graph metadata it asks for."""
    cls = get_model(name)
    wanted = inspect.signature(cls.__init__).parameters
    kwargs = {k: v for k, v in graph_args.items() if k in wanted}
    return cls(**kwargs, **hparams)
