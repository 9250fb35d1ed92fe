"""Join the rows of several `diffrep classify` runs into one table, JSON and picture.

    python benchmarks/join_classify.py RUN/classify.json RUN2/classify.partial.json ... --out DIR

A table too long for one process on a small machine (DifFormer's fusion and DifFeed's live training
take most of an hour each on 2 CPU cores) runs as several `diffrep classify` commands side by side,
each with the same model, data, `--seed` and `--seeds`. This joins their rows
(`classify.report.join_results`: the runs must share model, data, splits and seeds; a head trained by
several runs must have the same scores in each), makes the comparisons again over all of them and
writes DIR/classify.json, classify.png (and classify-labels.png with few-label rows).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from diffrep.classify.report import (format_comparisons, format_label_efficiency, format_table, join_results,
                                     plot_label_efficiency, plot_table)
from diffrep.runs import write_json


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="classify.json or classify.partial.json files")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    try:
        joined = join_results([json.loads(p.read_text()) for p in args.runs], [str(p) for p in args.runs])
    except (OSError, ValueError, KeyError) as e:
        print(f"join_classify: {e}", file=sys.stderr)
        return 2
    write_json(args.out / "classify.json", joined)
    plot_table(joined, args.out / "classify.png")
    print(format_table(joined))
    print(format_comparisons(joined))
    if joined.get("label_efficiency"):
        plot_label_efficiency(joined, args.out / "classify-labels.png")
        print(format_label_efficiency(joined))
    print(f"wrote {args.out / 'classify.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
