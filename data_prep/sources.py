"""Where raw datasets come from, and how they are verified.

A raw directory is resolved in this order:

1. an explicit directory (``dglrec prep DATASET --raw DIR`` or ``[data] raw_dir``);
2. ``$DGLREC_RAW_DIR/<dataset>/``;
3. a download into ``$DGLREC_DATA_DIR/raw/<dataset>/``, from the mirror given by
   ``--mirror URL`` / ``$DGLREC_MIRROR`` (laid out as ``<mirror>/<dataset>/<file>``,
   e.g. ``file:///data/mirror``), else from the public locations below.

Files of a named public dataset are checked against their published SHA-256
wherever they come from; a mismatch names the file.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from data_prep.errors import ChecksumError, DataSourceError

KGCN_MUSIC = "https://raw.githubusercontent.com/hwwang55/KGCN/master/data/music"
HETREC_ZIP = "https://files.grouplens.org/datasets/hetrec2011/hetrec2011-lastfm-2k.zip"


@dataclass(frozen=True)
class RawFile:
    """One raw file: its name, SHA-256, and public URL.

    ``zip_member`` is set when the public copy sits inside a zip archive.
    """

    name: str
    sha256: str
    url: str
    zip_member: str | None = None


PUBLIC_DATASETS: dict[str, tuple[RawFile, ...]] = {
    "lastfm-kg": (
        RawFile(
            "user_artists.dat",
            "254272fa721c3935e8be286d28c051b206844307128698ab4eaa41d483379416",
            HETREC_ZIP,
            zip_member="user_artists.dat",
        ),
        RawFile(
            "item_index2entity_id.txt",
            "f9693bdde538f755d09b9931b0be662a98965e538658a00c2050912c0adf487b",
            f"{KGCN_MUSIC}/item_index2entity_id.txt",
        ),
        RawFile(
            "kg.txt",
            "f62bbc8f717c9f68e66dff6faeaa71025092acc11a0f1b4878b953eb05f946a9",
            f"{KGCN_MUSIC}/kg.txt",
        ),
    ),
    "hetrec2011-lastfm-2k": tuple(
        RawFile(name, sha, HETREC_ZIP, zip_member=name)
        for name, sha in (
            ("artists.dat", "c173881362c6b28551368fecb3c0be5a6a30a6cd859e1f5775413dfe46d48648"),
            ("readme.txt", "44c38757b3a24e68e844ac60c97ba7fd8e0f691cf1b00e9cf6bd8854df0dd64a"),
            ("tags.dat", "c815d7216101fd0ba9b9c59fa2a011998d2fd076e0064d281ec4153d95ae8095"),
            (
                "user_artists.dat",
                "254272fa721c3935e8be286d28c051b206844307128698ab4eaa41d483379416",
            ),
            (
                "user_friends.dat",
                "0360883a3557776e04fdebda851f2e5dd23e796cad7059b968acdebd528d13fa",
            ),
            (
                "user_taggedartists.dat",
                "c4a9ffae9ab47a9f9b2f0678ab1f7e5c1db4ca818837d8cddd1f5699c5bbf048",
            ),
        )
    ),
}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def data_home() -> Path:
    """Root of processed data and downloads: ``$DGLREC_DATA_DIR`` or ``./data``."""
    return Path(os.environ.get("DGLREC_DATA_DIR", "data"))


def verify(dataset: str, raw_dir: Path) -> dict[str, str]:
    """Check that every file of ``dataset`` is in ``raw_dir`` with its published checksum.

    Returns ``{file name: sha256}``.
    """
    checksums = {}
    for raw in PUBLIC_DATASETS[dataset]:
        path = raw_dir / raw.name
        if not path.is_file():
            raise DataSourceError(f"{path}: missing (dataset {dataset!r} needs {raw.name})")
        actual = sha256_of(path)
        if actual != raw.sha256:
            raise ChecksumError(
                f"{path}: SHA-256 mismatch for {dataset}/{raw.name}: "
                f"expected {raw.sha256}, got {actual}"
            )
        checksums[raw.name] = actual
    return checksums


def _fetch(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.read()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise DataSourceError(f"cannot fetch {url}: {exc}") from None


def download(dataset: str, dest: Path, mirror: str | None = None) -> Path:
    """Download and verify ``dataset`` into ``dest``; files already verified are kept.

    With ``mirror``, file ``F`` of ``dataset`` is read from ``<mirror>/<dataset>/F``
    (any URL scheme urllib knows, ``file://`` included); otherwise from its public
    location, unpacking zip members when the public copy is an archive.
    """
    if dataset not in PUBLIC_DATASETS:
        raise DataSourceError(
            f"no public source known for dataset {dataset!r}; "
            f"known: {', '.join(sorted(PUBLIC_DATASETS))}. Pass a local directory instead."
        )
    dest.mkdir(parents=True, exist_ok=True)
    archives: dict[str, bytes] = {}
    for raw in PUBLIC_DATASETS[dataset]:
        target = dest / raw.name
        if target.is_file() and sha256_of(target) == raw.sha256:
            continue
        if mirror:
            payload = _fetch(f"{mirror.rstrip('/')}/{dataset}/{raw.name}")
        elif raw.zip_member:
            if raw.url not in archives:
                archives[raw.url] = _fetch(raw.url)
            with zipfile.ZipFile(io.BytesIO(archives[raw.url])) as archive:
                member = next(
                    (n for n in archive.namelist() if n.rsplit("/", 1)[-1] == raw.zip_member),
                    None,
                )
                if member is None:
                    raise DataSourceError(f"{raw.url}: archive has no member {raw.zip_member}")
                payload = archive.read(member)
        else:
            payload = _fetch(raw.url)
        actual = hashlib.sha256(payload).hexdigest()
        if actual != raw.sha256:
            raise ChecksumError(
                f"{raw.name} from {mirror or raw.url}: SHA-256 mismatch for {dataset}/{raw.name}: "
                f"expected {raw.sha256}, got {actual}"
            )
        # Write to a temporary name first so an interrupted download never
        # leaves a truncated file that looks complete.
        with tempfile.NamedTemporaryFile(dir=dest, delete=False) as tmp:
            tmp.write(payload)
        shutil.move(tmp.name, target)
    return dest


def resolve_raw_dir(
    dataset: str, raw_dir: str | Path | None = None, mirror: str | None = None
) -> Path:
    """Find (or download) the raw directory of ``dataset``; see the module docstring."""
    if raw_dir:
        path = Path(raw_dir).expanduser()
        if not path.is_dir():
            raise DataSourceError(f"raw data directory {path} does not exist")
        return path
    env_root = os.environ.get("DGLREC_RAW_DIR")
    if env_root:
        path = Path(env_root).expanduser() / dataset
        if path.is_dir():
            return path
    mirror = mirror or os.environ.get("DGLREC_MIRROR") or None
    return download(dataset, data_home() / "raw" / dataset, mirror=mirror)
