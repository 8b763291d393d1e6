"""Synthetic KG-recommendation datasets in Last.FM-KG's three-file layout, at any scale.

``write_synthetic_kg(directory, scale)`` writes ``user_artists.dat``,
``item_index2entity_id.txt`` and ``kg.txt`` (the layout ``data_prep`` reads for
``lastfm-kg``) with ``scale`` times Last.FM-KG's sizes: 1,892 users, 3,846 items (each
its own entity), 9,366 entities, 60 relations, 15,518 triples and 42,346
positives (every synthetic artist has an entity). Degrees
are long-tailed as in the real data:

* a user's number of artists is lognormal (mean ≈ 22, heavy right tail), capped at the
  catalogue;
* an artist is picked with probability ∝ ``rank^-1.0`` (Zipf popularity over a random
  permutation of the items);
* a triple's head is an item with probability ∝ ``rank^-0.8``; its tail is a non-item
  entity (∝ ``rank^-1.1``: a few hub entities, genres or countries, collect most edges)
  or, one time in ten, another item; its relation ∝ ``rank^-1.2`` over 60 relations.

Ids are written as in the release (artist ids from 2, entities numbered items first),
CRLF line ends in ``kg.txt`` and ``item_index2entity_id.txt``. ``numpy`` only;
deterministic for a ``seed``.

Usage::

    python benchmarks/synthetic_kg.py /tmp/synth10/lastfm-kg --scale 10
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

BASE = {"users": 1892, "items": 3846, "entities": 9366, "relations": 60, "triples": 15518}
# Positives per user: Last.FM-KG's 42,346 (user, artist) pairs whose artist has an entity
# (user_artists.dat lists 92,834, most of them artists without one).
EVENTS_PER_USER = 42346 / 1892


def zipf_probabilities(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """``rank^-exponent`` normalised, the ranks randomly assigned to ``n`` ids."""
    weights = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    return rng.permutation(weights / weights.sum())


def write_synthetic_kg(directory: Path, scale: float, seed: int = 0) -> dict[str, int]:
    """Write the three files for ``scale`` × Last.FM-KG into ``directory``; return the sizes."""
    rng = np.random.default_rng(seed)
    n_users = round(BASE["users"] * scale)
    n_items = round(BASE["items"] * scale)
    n_entities = round(BASE["entities"] * scale)
    n_triples = round(BASE["triples"] * scale)
    n_relations = BASE["relations"]
    directory.mkdir(parents=True, exist_ok=True)
    artist_ids = np.arange(n_items) + 2
    with open(directory / "item_index2entity_id.txt", "w", newline="") as f:
        f.write("".join(f"{a}\t{e}\r\n" for a, e in zip(artist_ids, range(n_items), strict=True)))
    # Interactions: lognormal activity, Zipf popularity, no repeated (user, artist).
    popularity = zipf_probabilities(n_items, 1.0, rng)
    mean_log = np.log(EVENTS_PER_USER) - 0.5 * 0.8**2
    counts = np.clip(rng.lognormal(mean_log, 0.8, n_users).round().astype(int), 1, n_items)
    with open(directory / "user_artists.dat", "w") as f:
        f.write("userID\tartistID\tweight\n")
        for start in range(0, n_users, 4096):
            rows = []
            for user in range(start, min(start + 4096, n_users)):
                draw = rng.choice(n_items, size=int(counts[user] * 1.3) + 5, p=popularity)
                items = np.unique(draw)[: counts[user]]
                weights = rng.integers(1, 5000, len(items))
                rows += [
                    f"{user + 2}\t{artist_ids[i]}\t{w}\n"
                    for i, w in zip(items, weights, strict=True)
                ]
            f.write("".join(rows))
    # KG: item heads (Zipf), hub-heavy non-item tails, Zipf relations.
    heads = rng.choice(n_items, n_triples, p=zipf_probabilities(n_items, 0.8, rng))
    others = n_items + rng.choice(
        n_entities - n_items, n_triples, p=zipf_probabilities(n_entities - n_items, 1.1, rng)
    )
    item_tails = rng.integers(0, n_items, n_triples)
    tails = np.where(rng.random(n_triples) < 0.1, item_tails, others)
    relations = rng.choice(n_relations, n_triples, p=zipf_probabilities(n_relations, 1.2, rng))
    with open(directory / "kg.txt", "w", newline="") as f:
        for start in range(0, n_triples, 1 << 16):
            end = min(start + (1 << 16), n_triples)
            f.write(
                "".join(
                    f"{h}\trel.{r}\t{t}\r\n"
                    for h, r, t in zip(
                        heads[start:end], relations[start:end], tails[start:end], strict=True
                    )
                )
            )
    return {
        "users": n_users,
        "items": n_items,
        "entities": n_entities,
        "triples": n_triples,
        "events": int(counts.sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(write_synthetic_kg(args.directory, args.scale, args.seed))


if __name__ == "__main__":
    main()
