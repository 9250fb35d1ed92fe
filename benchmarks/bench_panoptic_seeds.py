"""Val PQ of `diffrep panoptic train` runs grouped by what they compare, over seeds: mean, spread and
each group's lead over the others (what one seed cannot tell apart).

    python benchmarks/bench_panoptic_seeds.py --group odise=runs/seeds/odise-s* \
        --group pixels=runs/seeds/pixels-s* --out benchmarks/results/odise-val-seeds.json \
        --recorded odise=benchmarks/results/odise-val.json#table.odise

`--recorded label=FILE#key.path` adds a run measured earlier whose folder is gone: the val summary
found at that key of a JSON this project wrote (a panoptic-eval.json, or this script's input).

Each run is scored on the whole val split by `diffrep panoptic eval --split val --no-baselines`
(into <run>/eval-val/, reused when there); the test split is never read here.
"""

from __future__ import annotations

import argparse
import glob
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffrep.runs import write_json  # noqa: E402
from diffrep.segment.odise.cli import evaluate_one  # noqa: E402

PARTS = ("all", "seen", "things", "stuff")


def pq_percent(summary: dict) -> dict:
    """PQ (%) of each part of a panoptic-eval summary."""
    return {p: round(100 * summary[p]["pq"], 2) for p in PARTS}


def val_scores(run: Path) -> dict:
    done = run / "eval-val" / "panoptic-eval.json"
    if not done.is_file():
        evaluate_one(str(run), "val", device="cpu", out=str(run / "eval-val"))
    summary = json.loads(done.read_text())["summary"]
    record = json.loads((run / "panoptic-train.json").read_text())
    return {"run": str(run), "seed": record["config"]["seed"], "best_epoch": record["best_epoch"],
            "train_s": record["timing_s"]["total"], **pq_percent(summary)}


def recorded_scores(spec: str) -> dict:
    file, _, key = spec.partition("#")
    node = json.loads(Path(file).read_text())
    for part in key.split(".") if key else []:
        node = node[part]
    return {"recorded": spec, **pq_percent(node)}


def spread(values: list) -> dict:
    return {"mean": round(statistics.mean(values), 2), "min": min(values), "max": max(values),
            "sd": round(statistics.stdev(values), 2) if len(values) > 1 else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group", action="append", required=True, help="label=glob of run folders")
    parser.add_argument("--recorded", action="append", default=[], help="label=FILE#key.path of a val summary")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    groups = {}
    for spec in args.recorded:   # earlier seeds first, in the order given
        label, source = spec.split("=", 1)
        groups.setdefault(label, []).append(recorded_scores(source))
    for spec in args.group:
        label, pattern = spec.split("=", 1)
        runs = sorted(Path(p) for p in glob.glob(pattern) if (Path(p) / "panoptic-train.json").is_file())
        if not runs and not any(r.startswith(label + "=") for r in args.recorded):
            raise SystemExit(f"--group {label}: no finished run matches {pattern}")
        groups[label] = groups.get(label, []) + [val_scores(r) for r in runs]
    summary = {label: {p: spread([r[p] for r in rows]) for p in PARTS} for label, rows in groups.items()}
    labels = list(groups)
    leads = {f"{a} - {b}": {p: round(summary[a][p]["mean"] - summary[b][p]["mean"], 2) for p in PARTS}
             for i, a in enumerate(labels) for b in labels[i + 1:]}
    write_json(args.out, {"benchmark": "python benchmarks/bench_panoptic_seeds.py " + " ".join(sys.argv[1:]),
                          "split": "val", "pq_percent": True, "runs": groups, "summary": summary, "leads": leads})
    for label in labels:
        s = summary[label]
        print(f"{label:>14}: " + ", ".join(f"{p} {s[p]['mean']:.1f} ({s[p]['min']:.1f}-{s[p]['max']:.1f})" for p in PARTS)
              + f"  [{len(groups[label])} seeds]")
    for name, lead in leads.items():
        print(f"{name}: " + ", ".join(f"{p} {v:+.1f}" for p, v in lead.items()))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
