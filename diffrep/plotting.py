"""Pictures and tables shared by the methods: matplotlib without a display, and t × block grids
(the probe sweep's accuracy, the correspondence sweep's PCK) as a heatmap and as printed rows."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import torch

from .runs import atomic_path

matplotlib.use("Agg")   # files only: works without a display


def pyplot():
    """matplotlib.pyplot on the Agg backend, imported when a picture is drawn (it is slow to import)."""
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    """Save a figure atomically (its format from the file suffix) and close it."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png")
    pyplot().close(fig)
    return path


def grid_rows(grid: torch.Tensor, ts: list, blocks: list[str], min_width: int) -> list[str]:
    """A t × block grid as text: a header of block names, then one row per t (values to one decimal)."""
    width = max(min_width, *(len(b) for b in blocks))
    lines = ["t".rjust(6) + "".join(b.rjust(width + 1) for b in blocks)]
    for i, t in enumerate(ts):
        lines.append(str(t).rjust(6) + "".join(f"{v:.1f}".rjust(width + 1) for v in grid[i].tolist()))
    return lines


def plot_grid(grid: torch.Tensor, ts: list, blocks: list[str], star: tuple[int, int], title: str, label: str,
              path: Path, extra: list[tuple[str, float]] = ()) -> None:
    """A t × block heatmap with each value written in its cell and `star` (row, column) marked. `extra`:
    (name, value) rows drawn under the grid on the same colour scale, each one value across the whole
    width (the correspondence sweep's joins of several cells, which sit at no one t or block)."""
    plt = pyplot()
    values = grid.flatten().tolist() + [v for _, v in extra]
    scale = dict(cmap="viridis", aspect="auto", vmin=min(values), vmax=max(values))
    rows = [len(ts)] + ([len(extra)] if extra else [])
    names = 0.065 * max((len(name) for name, _ in extra), default=0)   # inches for the strip's row labels
    fig, axes = plt.subplots(len(rows), 1, figsize=(1.1 * len(blocks) + 2 + names, 0.6 * sum(rows) + 2), squeeze=False,
                             height_ratios=rows, layout="constrained" if extra else None)
    ax = axes[0, 0]
    im = ax.imshow(grid.numpy(), **scale)
    ax.set_xticks(range(len(blocks)), blocks, rotation=45, ha="right")
    ax.set_yticks(range(len(ts)), [str(t) for t in ts])
    ax.set_xlabel("block")
    ax.set_ylabel("t (noise level)")
    colour = lambda v: "black" if v > grid.mean() else "white"   # noqa: E731
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            ax.text(j, i, f"{grid[i, j]:.1f}{'*' if (i, j) == star else ''}", ha="center", va="center", fontsize=8,
                    color=colour(grid[i, j]))
    ax.set_title(title, fontsize=9)
    if extra:
        low = axes[1, 0]
        low.imshow(torch.tensor([[v] for _, v in extra]).numpy(), **scale)
        low.set_yticks(range(len(extra)), [name for name, _ in extra], fontsize=7)
        low.set_xticks([])
        low.set_xlabel("joins (each part L2-normalised, equal weight)", fontsize=8)
        for i, (_, v) in enumerate(extra):
            low.text(0, i, f"{v:.1f}", ha="center", va="center", fontsize=8, color=colour(v))
    fig.colorbar(im, ax=axes[:, 0].tolist() if extra else ax, label=label)   # one bar for grid and strip
    if not extra:   # constrained layout places the strip and the shared colour bar itself
        fig.tight_layout()
    save_figure(fig, path)
