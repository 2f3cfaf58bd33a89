"""Figures users look at: matplotlib (Agg, no display needed), written atomically as PNG."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd


def new_figure(*args, **kwargs):
    """(fig, axes) from plt.subplots on the Agg backend (workers and cluster nodes have no display)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt.subplots(*args, **kwargs)


def save_figure(fig, out_png: str | os.PathLike) -> None:
    import matplotlib.pyplot as plt

    from .atomic import atomic_path
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def rtre_boxplots(pairs: pd.DataFrame, methods: list[str], out_png: str | os.PathLike, title: str) -> None:
    """One panel per tissue (and `All` first), one box per method, of the per-pair median rTRE (log
    scale: the methods differ by orders of magnitude), each pair drawn as a dot over its box."""
    scored = pairs[pairs["scored"].astype(bool)]
    tissues = ["All"] + sorted(scored["tissue"].astype(str).unique())
    methods = [m for m in methods if m in set(scored["method"])]
    columns = min(4, len(tissues))
    rows = int(np.ceil(len(tissues) / columns))
    fig, axes = new_figure(rows, columns, figsize=(2.2 + 0.55 * len(methods) * columns, 3.2 * rows), dpi=110,
                           squeeze=False)
    for ax in axes.ravel()[len(tissues):]:
        ax.set_visible(False)
    for ax, tissue in zip(axes.ravel(), tissues):
        subset = scored if tissue == "All" else scored[scored["tissue"].astype(str) == tissue]
        data = [subset.loc[subset["method"] == m, "rtre_median"].dropna().to_numpy() for m in methods]
        keep = [i for i, d in enumerate(data) if len(d)]
        if keep:
            ax.boxplot([data[i] for i in keep], positions=keep, widths=0.6, showfliers=False)
            for i in keep:
                jitter = np.linspace(-0.12, 0.12, len(data[i])) if len(data[i]) > 1 else np.zeros(1)
                ax.plot(i + jitter, data[i], "o", ms=3, alpha=0.6, color="tab:blue")
            ax.set_yscale("log")
        ax.set_xticks(range(len(methods)))
        ax.set_xticklabels(methods, rotation=45, ha="right", fontsize=8)
        ax.set_title(f"{tissue} ({len(subset) // max(1, len(methods))} pairs)", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].set_ylabel("median rTRE per pair")
    fig.suptitle(title, fontsize=10)
    save_figure(fig, out_png)
