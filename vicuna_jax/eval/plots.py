"""PNG charts for evaluation reports (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
import numpy as np  # noqa: E402


def grouped_bars(
    values: dict[str, dict[str, float]], path: str, *, title: str, ylabel: str, ymax: float | None = None
) -> str:
    """One group of bars per category, one bar per model; values[model][category]."""
    models = list(values)
    categories = sorted({c for per in values.values() for c in per})
    x = np.arange(len(categories))
    width = 0.8 / max(len(models), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(categories) * max(1, len(models)) ** 0.5), 4.2))
    for i, model in enumerate(models):
        heights = [values[model].get(c, math.nan) for c in categories]
        ax.bar(x + (i - (len(models) - 1) / 2) * width, heights, width, label=model)
    ax.set_xticks(x, categories, rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if ymax is not None:
        ax.set_ylim(0, ymax)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def radar(values: dict[str, dict[str, float]], path: str, *, title: str, rmax: float) -> str:
    """A radar chart with one axis per category (needs three or more), one polygon per model."""
    categories = sorted({c for per in values.values() for c in per})
    angles = np.linspace(0, 2 * np.pi, len(categories), endpoint=False).tolist()
    fig, ax = plt.subplots(figsize=(6, 6), subplot_kw={"polar": True})
    for model, per in values.items():
        radii = [per.get(c, 0.0) if not math.isnan(per.get(c, math.nan)) else 0.0 for c in categories]
        ax.plot(angles + angles[:1], radii + radii[:1], linewidth=1.5, label=model)
        ax.fill(angles + angles[:1], radii + radii[:1], alpha=0.12)
    ax.set_xticks(angles, categories)
    ax.set_ylim(0, rmax)
    ax.set_title(title, pad=30)
    ax.legend(loc="upper right", bbox_to_anchor=(1.3, 1.1), fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def win_tie_loss(rows: list[tuple[str, float, float, float]], path: str, *, title: str) -> str:
    """Horizontal stacked bars of win / tie / loss fractions; rows are (label, win, tie, loss)."""
    labels = [r[0] for r in rows]
    win, tie, loss = (np.array([r[i] for r in rows]) for i in (1, 2, 3))
    fig, ax = plt.subplots(figsize=(7, 0.6 * len(rows) + 1.5))
    y = np.arange(len(rows))
    for left, width, color, name in (
        (0, win, "#4c9f70", "win"),
        (win, tie, "#c9c9c9", "tie"),
        (win + tie, loss, "#d1605e", "loss"),
    ):
        ax.barh(y, width, left=left, color=color, label=name)
    ax.set_yticks(y, labels)
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction of judged comparisons")
    ax.invert_yaxis()  # first row on top
    ax.set_title(title, pad=26)
    ax.legend(ncols=3, loc="lower center", bbox_to_anchor=(0.5, 1.0), fontsize="small", frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def bars(values: dict[str, float], path: str, *, title: str, ylabel: str, ymax: float | None = None) -> str:
    """One bar per model, for reports without categories."""
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(values) + 2), 4))
    ax.bar(list(values), list(values.values()), color="#4c72b0")
    for i, v in enumerate(values.values()):
        ax.text(i, v, f"{v:.2f}", ha="center", va="bottom", fontsize="small")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if ymax is not None:
        ax.set_ylim(0, ymax)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def win_rate_matrix(models: list[str], matrix: np.ndarray, path: str, *, title: str) -> str:
    """A heatmap of the share of games the row model won against the column model (grey: never met)."""
    n = len(models)
    fig, ax = plt.subplots(figsize=(1.1 * n + 2.6, 0.9 * n + 1.8))
    shown = np.ma.masked_invalid(matrix)
    cmap = matplotlib.colormaps["RdYlGn"].with_extremes(bad="#e0e0e0")
    image = ax.imshow(shown, cmap=cmap, vmin=0.0, vmax=1.0)
    for i in range(n):
        for j in range(n):
            if not math.isnan(matrix[i, j]):
                ax.text(j, i, f"{100 * matrix[i, j]:.0f}%", ha="center", va="center", fontsize="small")
    ax.set_xticks(range(n), models, rotation=30, ha="right")
    ax.set_yticks(range(n), models)
    ax.set_xlabel("opponent")
    ax.set_ylabel("model")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of games won (ties half)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
