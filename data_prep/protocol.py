"""What every builder shares: split validation, input checksums, cache keys, random streams.

A processed dataset is a function of its raw inputs (named by their SHA-256) and
of its protocol (split fractions, seed, ...). :func:`cache_key` hashes both with
the builder's version, so a changed input, setting or builder is another cache
entry and an unchanged one is built once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from data_prep.errors import DataFormatError, ProtocolError
from data_prep.sources import PUBLIC_DATASETS, sha256_of, verify

# Streams of a CTR build, drawn from numpy generators seeded [protocol.seed, stream]
# (listed with dglrec's own streams in dglrec.seeding).
NEGATIVES_STREAM = 0
SPLIT_STREAM = 1


def validate_split(split: Iterable[float]) -> tuple[float, float, float]:
    """``(train, eval, test)`` fractions: three, non-negative, summing to 1 (``data.split``)."""
    split = tuple(split)
    if len(split) != 3 or any(f < 0 for f in split):
        raise ProtocolError(f"data.split must be three non-negative fractions, got {list(split)}")
    if abs(sum(split) - 1.0) > 1e-6:
        raise ProtocolError(f"data.split must sum to 1, got {list(split)}")
    return split


def input_checksums(
    dataset: str, raw_dir: Path, required: Iterable[str], optional: Iterable[str] = ()
) -> dict[str, str]:
    """SHA-256 of a build's input files.

    A public dataset's files must match their published checksums (all of them,
    :func:`data_prep.sources.verify`); a custom dataset must have the ``required``
    files, and the ``optional`` ones count where present.
    """
    if dataset in PUBLIC_DATASETS:
        return verify(dataset, raw_dir)
    checksums = {}
    for name in required:
        path = raw_dir / name
        if not path.is_file():
            raise DataFormatError(f"{path}: no such file ({dataset} needs it)")
        checksums[name] = sha256_of(path)
    for name in optional:
        if (raw_dir / name).is_file():
            checksums[name] = sha256_of(raw_dir / name)
    return checksums


def cache_key(builder_version: int, protocol: dict, checksums: dict[str, str]) -> str:
    """16 hex digits naming the processed entry of these inputs, protocol and builder."""
    payload = {"builder": builder_version, "protocol": protocol, "checksums": checksums}
    blob = json.dumps(payload, sort_keys=True, default=list).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
