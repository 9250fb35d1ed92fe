"""The tables and pictures of `diffrep classify`: accuracy per head and source (text and a bar chart),
and label efficiency (accuracy against labelled images per class, text and a line plot)."""

from __future__ import annotations

from pathlib import Path

from ..plotting import pyplot, save_figure


def format_table(result: dict) -> str:
    names = list(dict.fromkeys(r["head"] for r in result["heads"]))
    sources = list(dict.fromkeys(r["source"] for r in result["heads"]))
    score = {(r["source"], r["head"]): r["accuracy"] for r in result["heads"]}
    lines = [f"test accuracy (%) on {result['n_test']} images, {result['model']} on {result['data']}",
             f"{'head':<12}" + "".join(f"{s:>16}" for s in sources)]
    for h in names:
        lines.append(f"{h:<12}" + "".join(f"{100 * score[(s, h)]:>16.2f}" if (s, h) in score else f"{'—':>16}"
                                          for s in sources))
    return "\n".join(lines)


def plot_table(result: dict, path: Path) -> None:
    plt = pyplot()
    names = list(dict.fromkeys(r["head"] for r in result["heads"]))
    sources = list(dict.fromkeys(r["source"] for r in result["heads"]))
    score = {(r["source"], r["head"]): 100 * r["accuracy"] for r in result["heads"]}
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(names)), 4))
    width = 0.8 / len(sources)
    for i, s in enumerate(sources):
        xs = [j + i * width for j, h in enumerate(names) if (s, h) in score]
        ax.bar(xs, [score[(s, h)] for h in names if (s, h) in score], width, label=s)
    ax.set_xticks([j + width * (len(sources) - 1) / 2 for j in range(len(names))], names, rotation=20)
    low = min(score.values())
    ax.set_ylim(max(0, low - 5), 100)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"heads on {result['model']} features, {result['data']}")
    ax.legend()
    save_figure(fig, path)


def _efficiency_series(result: dict) -> tuple[list, dict]:
    """(the label counts in order, 'all' last; {(source, head): {count: accuracy}})."""
    rows = result["label_efficiency"]
    counts = sorted({r["labels_per_class"] for r in rows if r["labels_per_class"] != "all"}) + ["all"]
    series = {}
    for r in rows:
        series.setdefault((r["source"], r["head"]), {})[r["labels_per_class"]] = r["accuracy"]
    return counts, series


def format_label_efficiency(result: dict) -> str:
    counts, series = _efficiency_series(result)
    lines = ["test accuracy (%) against labelled images per class (nothing chosen on validation below 'all')",
             f"{'source':<16}{'head':<12}" + "".join(f"{str(k):>8}" for k in counts)]
    for (source, head), acc in series.items():
        lines.append(f"{source:<16}{head:<12}" + "".join(f"{100 * acc[k]:>8.2f}" if k in acc else f"{'—':>8}"
                                                         for k in counts))
    return "\n".join(lines)


def plot_label_efficiency(result: dict, path: Path) -> None:
    """Accuracy against labels per class (log axis; 'all' at the train split's mean per class), one
    colour per source, one line style per head."""
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
        ax.plot([xs[k] for k in ks], [100 * acc[k] for k in ks], marker="o", ms=3,
                color=f"C{sources.index(source)}", linestyle=styles[heads.index(head) % len(styles)],
                label=f"{source} {head}")
    ax.set_xscale("log")
    ax.set_xticks([xs[k] for k in counts], [str(k) for k in counts])
    ax.set_xlabel("labelled images per class")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"label efficiency, {result['model']} on {result['data']}")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))   # beside the plot, not over the lines
    fig.tight_layout()
    save_figure(fig, path)
