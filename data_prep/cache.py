"""The processed-dataset cache shared by the builders: load an entry, or build and save it.

An entry is a directory with data files and ``meta.json``. Every file is written
atomically (temporary file, fsync, rename) and ``meta.json`` last, with the SHA-256
of each data file and of the metadata itself: a kill while saving leaves no entry,
and a truncated or altered entry fails its check at load (:class:`CacheError`)
and is rebuilt with a one-line note, never loaded with changed contents.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from data_prep.errors import CacheError, DataSourceError
from data_prep.sources import sha256_of

FILES_KEY = "files_sha256"
META_KEY = "meta_sha256"


def _meta_digest(meta: dict) -> str:
    body = {k: v for k, v in meta.items() if k != META_KEY}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """``write(temporary path)``, fsync, then rename onto ``path`` (whole or not at all)."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        write(partial)
        with open(partial, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def save_entry(directory: Path, files: dict[str, Callable[[Path], None]], meta: dict) -> None:
    """Write each data file, then ``meta.json`` carrying their SHA-256 and its own."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "meta.json").unlink(missing_ok=True)  # the entry is incomplete until the end
    for name, write in files.items():
        write_atomic(directory / name, write)
    meta[FILES_KEY] = {name: sha256_of(directory / name) for name in files}
    meta[META_KEY] = _meta_digest(meta)
    text = json.dumps(meta, indent=2)
    write_atomic(directory / "meta.json", lambda p: p.write_text(text))


def read_meta(directory: Path, names: list[str]) -> dict:
    """The entry's checked metadata; :class:`CacheError` if it or a data file is not as saved."""
    try:
        text = (directory / "meta.json").read_text()
        meta = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CacheError(f"meta.json unreadable ({exc})") from None
    if not isinstance(meta, dict) or META_KEY not in meta or FILES_KEY not in meta:
        raise CacheError("no checksums (written by an older dglrec)")
    if meta[META_KEY] != _meta_digest(meta) or json.dumps(meta, indent=2) != text:
        raise CacheError("meta.json does not match its checksum")
    for name in names:
        path = directory / name
        if not path.is_file() or sha256_of(path) != meta[FILES_KEY].get(name):
            raise CacheError(f"{name} does not match its checksum (truncated or altered)")
    return meta


def load_or_build(
    directory: Path, dataset_cls, build: Callable[[], object], name: str, raw: Path, log
):
    """``(dataset, directory)``: the cached entry at ``directory``, or ``build()`` saved there.

    ``dataset_cls`` provides ``exists``, ``load`` and instances' ``save``. An entry that
    fails its checksums is rebuilt; what the build cleaned is printed in one line.
    """
    if dataset_cls.exists(directory):
        try:
            dataset = dataset_cls.load(directory)
        except CacheError as exc:
            log(f"cached {name} at {directory} is corrupted ({exc}); rebuilding it")
        else:
            log(f"using cached {name} at {directory}")
            return dataset, directory
    log(f"building {name} from {raw}")
    dataset = build()
    dataset.meta["raw_dir"] = str(raw)
    cleaned = dataset.meta.get("cleaned")
    if cleaned:
        log("cleaned or left out: " + ", ".join(f"{k} {v}" for k, v in sorted(cleaned.items())))
    try:
        dataset.save(directory)
    except OSError as exc:
        raise DataSourceError(
            f"{directory}: cannot write the processed dataset ({exc.strerror or exc}); "
            "point DGLREC_DATA_DIR (or --out) at a writable directory"
        ) from None
    return dataset, directory
