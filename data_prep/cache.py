"""The processed-dataset cache shared by the builders: load an entry, or build and save it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def load_or_build(
    directory: Path, dataset_cls, build: Callable[[], object], name: str, raw: Path, log
):
    """``(dataset, directory)``: the cached entry at ``directory``, or ``build()`` saved there.

    ``dataset_cls`` provides ``exists``, ``load`` and instances' ``save``; an entry
    is complete once its metadata is written (the builders write it last).
    """
    if dataset_cls.exists(directory):
        log(f"using cached {name} at {directory}")
        return dataset_cls.load(directory), directory
    log(f"building {name} from {raw}")
    dataset = build()
    dataset.meta["raw_dir"] = str(raw)
    dataset.save(directory)
    return dataset, directory
