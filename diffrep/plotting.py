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
              path: Path) -> None:
    """A t × block heatmap with each value written in its cell and `star` (row, column) marked."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.1 * len(blocks) + 2, 0.6 * len(ts) + 2))
    im = ax.imshow(grid.numpy(), cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(blocks)), blocks, rotation=45, ha="right")
    ax.set_yticks(range(len(ts)), [str(t) for t in ts])
    ax.set_xlabel("block")
    ax.set_ylabel("t (noise level)")
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            ax.text(j, i, f"{grid[i, j]:.1f}{'*' if (i, j) == star else ''}", ha="center", va="center", fontsize=8,
                    color="black" if grid[i, j] > grid.mean() else "white")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label=label)
    fig.tight_layout()
    save_figure(fig, path)
