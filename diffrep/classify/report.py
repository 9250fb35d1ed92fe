"""The tables and pictures of `diffrep classify`: accuracy per head and source as mean ± spread over
seeds (text and a bar chart with error bars), the comparisons a reader asks for (each called better,
worse or a tie against the spreads), and label efficiency (text and a line plot with bands)."""

from __future__ import annotations

from pathlib import Path

from ..heads.classifier import HEADS
from ..heads.recipe import compare
from ..plotting import pyplot, save_figure


def _cell(row: dict, width: int) -> str:
    spread = f"±{100 * row['accuracy_sd']:.1f}" if len(row.get("seeds", [])) > 1 else ""
    return f"{100 * row['accuracy']:.2f}{spread}".rjust(width)


def format_row(desc: str, row: dict) -> str:
    """One head's progress line: test mean ± spread over seeds, val, the chosen recipe, size and time."""
    seeds = len(row["seeds"])
    spread = f" ± {100 * row['accuracy_sd']:.2f}" if seeds > 1 else ""
    val = "" if row["val_accuracy"] is None else f"val {100 * row['val_accuracy']:.2f}%, "
    r = row["recipe"]
    return (f"  {desc:<34} test {100 * row['accuracy']:.2f}%{spread} ({seeds} seed{'s' * (seeds > 1)}; {val}"
            f"lr {r['lr']:g} wd {r['weight_decay']:g}; {row['parameters']:,} parameters, {row['train_s']:.0f} s)")


def _name(row: dict) -> str:
    return row["head"] + (" (from scratch)" if row.get("from_scratch") else "")


def format_table(result: dict) -> str:
    rows = result["heads"]
    names = list(dict.fromkeys(r["head"] for r in rows))
    sources = list(dict.fromkeys(r["source"] for r in rows))
    by = {(r["source"], r["head"]): r for r in rows}
    seeds = result.get("seeds", [0])
    lines = [f"test accuracy (%) on {result['n_test']} images, {result['model']} on {result['data']}"
             + (f", mean ± sd over seeds {','.join(map(str, seeds))}" if len(seeds) > 1 else ""),
             f"{'head':<12}" + "".join(f"{s:>18}" for s in sources)]
    for h in names:
        lines.append(f"{h:<12}" + "".join(_cell(by[(s, h)], 18) if (s, h) in by else f"{'—':>18}" for s in sources))
    if any(r.get("from_scratch") for r in rows):
        lines.append("(cnn on pixels: five convolutions trained from scratch on the whole image)")
    return "\n".join(lines)


def _best_linear(rows: list[dict], source: str) -> dict | None:
    """The source's linear probe, its pool chosen on validation (the first on ties)."""
    linear = [r for r in rows if r["source"] == source and r["kind"] == "linear"]
    return max(linear, key=lambda r: r["val_accuracy"] or 0) if linear else None


def _best_on_val(rows: list[dict], source: str, kinds: tuple) -> dict | None:
    """The source's head of one of `kinds` with the highest val accuracy (the first on ties)."""
    found = [r for r in rows if r["source"] == source and r["kind"] in kinds and r["val_accuracy"] is not None]
    return max(found, key=lambda r: r["val_accuracy"]) if found else None


def _find(rows: list[dict], source: str, kind: str) -> dict | None:
    return next((r for r in rows if r["source"] == source and r["kind"] == kind), None)


def comparisons(rows: list[dict]) -> list[dict]:
    """The comparisons the survey's claims rest on, each as the difference of the means with its
    verdict against the spreads (`heads.recipe.compare`): every head against its own source's linear
    probe; diffusion attention against the CNN from scratch and against the same head on random
    weights; DifFormer (fusion) against attention; DifFeed (feedback) against fusion and attention; and
    the three methods each at its best setting on validation: DifFormer and DifFeed against GDC's best
    single-map head on diffusion features (the one with the highest val accuracy), when that is not
    the attention head already compared."""
    rows = [r for r in rows if r.get("labels_per_class", "all") == "all"]
    pairs = []
    for source in dict.fromkeys(r["source"] for r in rows):
        linear = _best_linear(rows, source)
        pairs += [(r, linear) for r in rows if r["source"] == source and linear is not None and r["kind"] != "linear"]
    attention = _find(rows, "diffusion", "attention")
    scratch = next((r for r in rows if r.get("from_scratch")), None)
    pairs += [(attention, scratch), (attention, _find(rows, "random_weights", "attention")),
              (_find(rows, "diffusion", "fusion"), attention),
              (_find(rows, "diffusion", "feedback"), _find(rows, "diffusion", "fusion")),
              (_find(rows, "diffusion", "feedback"), attention)]
    best = _best_on_val(rows, "diffusion", ("linear", "mlp", "cnn", "attention"))
    if best is not None and best is not attention:
        pairs += [(_find(rows, "diffusion", "fusion"), best), (_find(rows, "diffusion", "feedback"), best)]
    out = []
    for a, b in pairs:
        if a is None or b is None:
            continue
        out.append({"a": f"{a['source']} {_name(a)}", "b": f"{b['source']} {_name(b)}",
                    **compare(a["accuracies"], b["accuracies"])})
    return out


def format_comparisons(result: dict) -> str:
    if not result.get("comparisons"):
        return "comparisons: none (one head per source)"
    lines = ["comparisons (difference of the means; a tie when within sd_a + sd_b):"]
    for c in result.get("comparisons", []):
        lines.append(f"  {c['a']:<36} vs {c['b']:<36} {100 * c['difference']:+6.2f} "
                     f"(±{100 * c['margin']:.2f})  {c['verdict']}")
    return "\n".join(lines)


def plot_table(result: dict, path: Path) -> None:
    plt = pyplot()
    rows = result["heads"]
    names = list(dict.fromkeys(r["head"] for r in rows))
    sources = list(dict.fromkeys(r["source"] for r in rows))
    by = {(r["source"], r["head"]): r for r in rows}
    fig, ax = plt.subplots(figsize=(max(7, 1.5 * len(names)), 4))
    width = 0.8 / len(sources)
    for i, s in enumerate(sources):
        present = [(j, by[(s, h)]) for j, h in enumerate(names) if (s, h) in by]
        ax.bar([j + i * width for j, _ in present], [100 * r["accuracy"] for _, r in present], width,
               yerr=[100 * r["accuracy_sd"] for _, r in present], capsize=2, label=s)
    scratch = {r["head"] for r in rows if r.get("from_scratch")}
    ticks = [h + ("\n(pixels: from scratch)" if h in scratch else "") for h in names]
    ax.set_xticks([j + width * (len(sources) - 1) / 2 for j in range(len(names))], ticks, fontsize=8)
    low = min(100 * r["accuracy"] for r in rows)
    ax.set_ylim(max(0, low - 5), 100)
    seeds = result.get("seeds", [0])
    ax.set_ylabel("test accuracy (%)" + (f", mean ± sd of {len(seeds)} seeds" if len(seeds) > 1 else ""))
    ax.set_title(f"heads on {result['model']} features, {result['data']}")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))   # beside the bars, not over them
    fig.tight_layout()
    save_figure(fig, path)


def _efficiency_series(result: dict) -> tuple[list, dict]:
    """(the label counts in order, 'all' last; {(source, head): {count: row}})."""
    rows = result["label_efficiency"]
    counts = sorted({r["labels_per_class"] for r in rows if r["labels_per_class"] != "all"}) + ["all"]
    series = {}
    for r in rows:
        series.setdefault((r["source"], r["head"]), {})[r["labels_per_class"]] = r
    return counts, series


def format_label_efficiency(result: dict) -> str:
    counts, series = _efficiency_series(result)
    lines = ["test accuracy (%) against labelled images per class (nothing chosen on validation below 'all')",
             f"{'source':<16}{'head':<12}" + "".join(f"{str(k):>12}" for k in counts)]
    for (source, head), acc in series.items():
        lines.append(f"{source:<16}{head:<12}" + "".join(_cell(acc[k], 12) if k in acc else f"{'—':>12}"
                                                         for k in counts))
    return "\n".join(lines)


def plot_label_efficiency(result: dict, path: Path) -> None:
    """Accuracy against labels per class (log axis; 'all' at the train split's mean per class), one
    colour per source, one line style per head, a band of ± sd over seeds."""
    plt = pyplot()
    counts, series = _efficiency_series(result)
    everything = result["n_train"] / len(result["classes"])
    xs = {k: (everything if k == "all" else k) for k in counts}
    sources = list(dict.fromkeys(s for s, _ in series))
    heads = list(dict.fromkeys(h for _, h in series))
    styles = ["-", "--", ":", "-.", (0, (5, 1)), (0, (1, 1)), (0, (3, 1, 1, 1)), (0, (5, 3))]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for (source, head), acc in series.items():
        ks = [k for k in counts if k in acc]
        x = [xs[k] for k in ks]
        mean = [100 * acc[k]["accuracy"] for k in ks]
        sd = [100 * acc[k]["accuracy_sd"] for k in ks]
        colour = f"C{sources.index(source)}"
        ax.plot(x, mean, marker="o", ms=3, color=colour, linestyle=styles[heads.index(head) % len(styles)],
                label=f"{source} {head}")
        ax.fill_between(x, [m - s for m, s in zip(mean, sd)], [m + s for m, s in zip(mean, sd)], color=colour,
                        alpha=0.12, linewidth=0)
    ax.set_xscale("log")
    ax.set_xticks([xs[k] for k in counts], [str(k) for k in counts])
    ax.set_xlabel("labelled images per class")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"label efficiency, {result['model']} on {result['data']}")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))   # beside the plot, not over the lines
    fig.tight_layout()
    save_figure(fig, path)


SAME_RUN = ("model", "data", "n_train", "n_val", "n_test", "classes", "seeds")


def join_results(results: list[dict], names: list[str]) -> dict:
    """One `classify` result from several runs of the same model, data, splits and seeds (each a
    classify.json or classify.partial.json, named by `names`): their rows in order, a head that
    several runs trained taken from the first (and refused when its scores differ: the runs would
    not be the same experiment; few-label rows alike), comparisons made again over all of them. For a table that is too
    long for one process on a small machine, run in parts side by side."""
    first = results[0]
    for result, name in zip(results[1:], names[1:]):
        for key in SAME_RUN:
            if result.get(key) != first.get(key):
                raise ValueError(f"{name} differs from {names[0]} in {key}: {result.get(key)} against {first.get(key)}")
    seen: dict = {}
    rows = [r for result, name in zip(results, names) for r in _new_rows(result["heads"], name, seen)]
    few = [r for result, name in zip(results, names)
           for r in _new_rows([r for r in result.get("label_efficiency", []) if r["labels_per_class"] != "all"],
                              name, seen)]
    sources = list(dict.fromkeys(r["source"] for r in rows))
    rows.sort(key=lambda r: (sources.index(r["source"]), HEADS.index(r["kind"]),
                             r.get("pool") or 0))   # as one run orders them: by source, then head, then pool
    joined = {**first, "heads": rows, "comparisons": comparisons(rows), "joined_from": names,
              "timing_s": {name: r.get("timing_s") for name, r in zip(names, results)}}
    joined.pop("sources_done", None)
    if few:
        joined["label_efficiency"] = label_efficiency(few, rows)
    return joined


def _new_rows(rows: list[dict], name: str, seen: dict) -> list[dict]:
    """The rows of run `name` not yet in `seen` ({(source, head, labels per class): row}, updated); a
    row seen before must have the same scores, or the runs are not one experiment."""
    new = []
    for row in rows:
        key = (row["source"], row["head"], row.get("labels_per_class", "all"))
        if key not in seen:
            seen[key] = row
            new.append(row)
        elif seen[key]["accuracies"] != row["accuracies"]:
            raise ValueError(f"{name} and an earlier run both trained {' '.join(map(str, key))} with "
                             f"different scores ({row['accuracies']} against {seen[key]['accuracies']})")
    return new


def label_efficiency(few: list[dict], rows: list[dict]) -> list[dict]:
    """The label-efficiency rows: the few-label ones and every all-label row but DifFeed's (which
    trains live and has no few-label rows)."""
    return few + [r for r in rows if r["kind"] != "feedback"]
