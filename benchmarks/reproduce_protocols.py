"""Which protocol reproduces which published Last.FM number? (docs/reproduction.md)

Fits Pop, BPR-MF, LightGCN, KGCN, KAISG and MGWA at their recipes' settings over
seeds 1–5 under the clean protocol, under each protocol switch alone, and under
the combinations of the public codes, then writes one table of test AUC (mean ±
std over seeds) per protocol and model next to the published figures, with a
verdict per figure: reproduced within noise (|published − mean| ≤ max(2 std, 0.005)
and ≤ 0.02), or not. Popularity's row under each protocol is the yardstick.

Every fit is an ordinary tracked run (MLflow experiment ``reproduction``, tag
``reproduction = <protocol>``), and its test AUC and wall time are kept in
``docs/results/reproduction/runs.csv``, committed with the page: the page is rebuilt
from that file with or without the MLflow store. A rerun skips fits that already
finished (in MLflow, or in that file with the same recipe text), so an interrupted
reproduction resumes. Full ranking is off (the published figures are CTR AUCs).

    DGLREC_RAW_DIR=../shared/data python benchmarks/reproduce_protocols.py --workers 2
    python benchmarks/reproduce_protocols.py --report-only   # the page from finished fits
    # options: --seeds 1,2,3 --models kgcn,pop --protocols clean,fixed_negatives --out FILE
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import io
import statistics
import sys
import time
from pathlib import Path

from equal_footing import recipe_sha256

from data_prep.cache import write_atomic

EXPERIMENT = "reproduction"
# Every fit's test AUC and wall seconds, committed: the page is rebuilt from it.
STORE = Path("docs/results/reproduction/runs.csv")
STORE_FIELDS = ("protocol", "model", "seed", "run_id", "recipe_sha256", "test_auc", "seconds")
MODELS = ("pop", "bprmf", "lightgcn", "kgcn", "kaisg", "mgwa")

# name -> (description, overrides). Switches a model does not take are left out for it.
PROTOCOLS = {
    "clean": ("clean: resampled negatives, eval selection, whole-split AUC", []),
    "fixed_negatives": (
        "training negatives fixed before the split",
        ['data.train_negatives="fixed"'],
    ),
    "all_entities": ("negatives from all KG entities", ['data.negative_pool="all_entities"']),
    "inverse_popularity": (
        "negatives ∝ 1/popularity, positives not excluded",
        ['data.negative_pool="inverse_popularity"'],
    ),
    "select_on_test": (
        "80/20 split, epoch selected on test (LEAKY)",
        ["data.split=[0.8, 0.0, 0.2]", 'eval.select_on="test"'],
    ),
    "batch_mean_auc": ("AUC averaged over batches", ['eval.auc="batch_mean"']),
    "fixed_adjacency": ("neighbours drawn once per run", ['sampler.resample="fixed"']),
    "kgcn_reference": (
        "KGCN's code: fixed negatives, fixed adjacency, test read every epoch (LEAKY)",
        [
            'data.train_negatives="fixed"',
            'sampler.resample="fixed"',
            'eval.select_on="test"',
        ],
    ),
    "kgcn_pytorch_port": (
        "KGCN-pytorch lineage: all-entity negatives, fixed, 80/20, test read (LEAKY)",
        [
            'data.negative_pool="all_entities"',
            'data.train_negatives="fixed"',
            "data.split=[0.8, 0.0, 0.2]",
            'eval.select_on="test"',
        ],
    ),
    "mkgcn_code": (
        "MKGCN's code: 1/popularity negatives, 80/20, test read, per-batch AUC (LEAKY)",
        [
            'data.negative_pool="inverse_popularity"',
            "data.split=[0.8, 0.0, 0.2]",
            'eval.select_on="test"',
            'eval.auc="batch_mean"',
        ],
    ),
}

# Published test AUCs on Last.FM (../shared/MODELS.md, "Reference numbers").
PUBLISHED = {
    "kgcn": [
        (0.796, "KGCN paper (Wang et al., WWW 2019)"),
        (0.802, "MMSS_MKR paper (Liu et al., Sci. Rep. 2024)"),
        (0.8558, "KAISG paper (Xiao, You, Sun)"),
        (0.856, "MGWA paper"),
    ],
    "kaisg": [(0.8598, "KAISG paper (Xiao, You, Sun)")],
    "mgwa": [(0.899, "MGWA paper")],
}


def applicable(model: str, overrides: list[str]) -> list[str]:
    """The protocol's overrides this model takes (BPR models draw their own negatives;
    only a model with KG blocks from the uniform sampler has an adjacency to fix)."""
    from dglrec.models.registry import get_model
    from dglrec.runs.recipes import load_recipe

    base = load_recipe(f"recipes/{model}.toml")
    capabilities = get_model(base.model_name).capabilities
    kept = []
    for item in overrides:
        if item.startswith("data.train_negatives") and capabilities.objective == "bpr":
            continue
        if item.startswith("sampler.resample") and (
            capabilities.inputs != "blocks" or base.sampler.kind != "uniform"
        ):
            continue
        kept.append(item)
    return kept


def load_store(path: Path = STORE) -> dict[tuple[str, str, int], dict]:
    """The stored fits by (model, protocol, seed): run id, recipe SHA-256, test AUC, seconds."""
    if not path.is_file():
        return {}
    stored = {}
    with path.open(newline="") as handle:
        for line, row in enumerate(csv.DictReader(handle), start=2):
            try:
                key = (row["model"], row["protocol"], int(row["seed"]))
                row["test_auc"], row["seconds"] = float(row["test_auc"]), float(row["seconds"])
            except (KeyError, TypeError, ValueError) as exc:
                sys.exit(f"{path}, line {line}: not a stored fit ({exc})")
            stored[key] = row
    return stored


def save_store(stored: dict[tuple[str, str, int], dict], path: Path = STORE) -> None:
    out = io.StringIO()
    writer = csv.DictWriter(out, STORE_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for key in sorted(stored, key=lambda k: (k[1], k[0], k[2])):
        row = stored[key]
        writer.writerow(
            {**row, "test_auc": repr(row["test_auc"]), "seconds": f"{row['seconds']:.1f}"}
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda partial: partial.write_text(out.getvalue()))


def fit_one(
    model: str, protocol: str, seed: int, report_only: bool = False
) -> tuple[str, str, int, float | None, float, str]:
    """Fit one cell (or find its finished run); the test AUC and the fit's seconds."""
    import torch

    from dglrec.runs import pipeline, tracking
    from dglrec.runs.recipes import load_recipe

    torch.set_num_threads(1)
    done = tracking.find_runs(
        f"tags.reproduction = '{protocol}' and tags.model = '{model}' and tags.seed = '{seed}' "
        "and attributes.status = 'FINISHED'"
    )
    if done:
        run = done[0].info
        return (
            model,
            protocol,
            seed,
            done[0].data.metrics["test_auc"],
            (run.end_time - run.start_time) / 1000,
            run.run_id,
        )
    if report_only:
        return model, protocol, seed, None, 0.0, ""
    overrides = applicable(model, PROTOCOLS[protocol][1])
    cfg = load_recipe(
        f"recipes/{model}.toml",
        [
            *overrides,
            "eval.ranking_ks=[]",
            "tracking.log_model=false",
            f'tracking.experiment="{EXPERIMENT}"',
        ],
        seed=seed,
    )
    began = time.perf_counter()
    run_id, result = pipeline.fit(cfg, log=lambda _: None, extra_tags={"reproduction": protocol})
    return model, protocol, seed, result.test["auc"], time.perf_counter() - began, run_id


def verdict(published: float, values: list[float]) -> str:
    mean = statistics.mean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    close = abs(published - mean) <= max(2 * std, 0.005) and abs(published - mean) <= 0.02
    return "reproduced" if close else f"not reproduced ({published - mean:+.3f})"


def write_report(
    results: dict, seeds: list[int], models, protocols, path: Path, fit_seconds: float
):
    n_fits = sum(len(v) for v in results.values())
    lines = [
        "# Reproducing the published Last.FM numbers",
        "",
        "Generated by `python benchmarks/reproduce_protocols.py` "
        f"(seeds {','.join(map(str, seeds))}; {n_fits} fits, {fit_seconds / 3600:.2f} h of fit "
        "time, the sum of the runs' wall times). Test AUC, mean ± "
        "sample std over seeds, each model at its recipe's (paper) settings; only the "
        "protocol changes between rows. Protocols marked LEAKY select the epoch on test.",
        "",
        "| protocol | " + " | ".join(models) + " |",
        "|---|" + "---|" * len(models),
    ]
    for protocol in protocols:
        cells = []
        for model in models:
            values = results.get((protocol, model), [])
            if not values:
                cells.append("–")
                continue
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            partial = f" (n = {len(values)})" if len(values) < len(seeds) else ""
            cells.append(f"{statistics.mean(values):.4f} ± {std:.4f}{partial}")
        lines.append(f"| {PROTOCOLS[protocol][0]} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Published figures",
        "",
        "| model | published AUC | source | protocol that reproduces it within noise |",
        "|---|---|---|---|",
    ]
    for model, figures in PUBLISHED.items():
        if model not in models:
            continue
        for published, source in figures:
            found = [
                PROTOCOLS[p][0]
                for p in protocols
                if results.get((p, model))
                and verdict(published, results[(p, model)]) == "reproduced"
            ]
            lines.append(f"| {model} | {published} | {source} | {'; '.join(found) or 'none'} |")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,2,3,4,5")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--protocols", default=",".join(PROTOCOLS))
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", default="docs/reproduction.md")
    parser.add_argument(
        "--report-only", action="store_true", help="write the page from finished fits only"
    )
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    models = args.models.split(",")
    protocols = args.protocols.split(",")
    unknown = set(protocols) - set(PROTOCOLS) or set(models) - set(MODELS)
    if unknown:
        raise SystemExit(f"unknown protocol or model: {', '.join(sorted(unknown))}")
    # A switch a model does not take (BPR's negatives, an importance sampler's adjacency)
    # would only repeat its clean row: such cells stay empty.
    jobs = [
        (m, p, s)
        for p in protocols
        for m in models
        if p == "clean" or applicable(m, PROTOCOLS[p][1])
        for s in seeds
    ]
    stored = load_store()
    current = {m: recipe_sha256(m) for m in models}
    to_fit = [job for job in jobs if stored.get(job, {}).get("recipe_sha256") != current[job[0]]]
    if len(to_fit) < len(jobs):
        print(f"kept from {STORE}: {len(jobs) - len(to_fit)} fits of unchanged recipes")
    with concurrent.futures.ProcessPoolExecutor(args.workers) as pool:
        futures = [pool.submit(fit_one, *job, args.report_only) for job in to_fit]
        for n, future in enumerate(concurrent.futures.as_completed(futures), 1):
            model, protocol, seed, auc, seconds, run_id = future.result()
            if auc is None:
                print(f"[{n}/{len(to_fit)}] {protocol:20s} {model:6s} seed {seed}: not fitted yet")
                continue
            stored[(model, protocol, seed)] = {
                "protocol": protocol,
                "model": model,
                "seed": seed,
                "run_id": run_id,
                "recipe_sha256": current[model],
                "test_auc": auc,
                "seconds": seconds,
            }
            print(
                f"[{n}/{len(to_fit)}] {protocol:20s} {model:6s} seed {seed}: "
                f"test AUC {auc:.4f} ({seconds:.0f}s)",
                flush=True,
            )
    save_store(stored)
    results: dict[tuple[str, str], list[float]] = {}
    fit_seconds = 0.0
    for job in jobs:  # a fit of an older recipe text is not this recipe's result
        if stored.get(job, {}).get("recipe_sha256") == current[job[0]]:
            results.setdefault((job[1], job[0]), []).append(stored[job]["test_auc"])
            fit_seconds += stored[job]["seconds"]
    write_report(results, seeds, models, protocols, Path(args.out), fit_seconds)
    print(f"wrote {args.out} and {STORE}")


if __name__ == "__main__":
    main()
