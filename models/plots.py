"""Figures the command-line runs save as PNG: ArviZ plots plus the projections users draw by hand.

Every ``save_*`` function writes its PNG atomically and closes the figure.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import arviz as az
import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import xarray as xr

from data_tools._io import atomic_path

__all__ = [
    "binned_ppc_figure",
    "save_compare",
    "save_figure",
    "save_loo_pit",
    "save_pair",
    "save_sbc",
    "save_trace",
    "sbc_figure",
]

_MARKERS = ("*", "X", "P", "D")
_COLOURS = ("C3", "k", "C2", "C4")


def save_figure(fig: plt.Figure, path: str | os.PathLike[str], *, dpi: int = 110) -> None:
    """Save a matplotlib figure as PNG atomically and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    plt.close(fig)


def _figure_of(plot) -> plt.Figure:
    return plot.viz["figure"].item()


def save_trace(idata: xr.DataTree, var_names: Sequence[str], path: str | os.PathLike[str]) -> None:
    """Trace and marginal posterior per parameter (``az.plot_trace_dist``)."""
    pc = az.plot_trace_dist(idata, var_names=list(var_names), backend="matplotlib")
    save_figure(_figure_of(pc), path)


def save_pair(
    idata: xr.DataTree,
    var_names: Sequence[str],
    path: str | os.PathLike[str],
    *,
    markers: Mapping[str, Mapping[str, float]] | None = None,
) -> None:
    """Corner plot (``az.plot_pair``) with reference points such as truths or the MLE marked.

    Parameters
    ----------
    markers
        Label to ``{parameter: value}``; each is drawn as a point in the 2-D panels and a line
        on the diagonal, with a legend.
    """
    var_names = list(var_names)
    n = len(var_names)
    pm_ = az.plot_pair(
        idata,
        var_names=var_names,
        marginal=True,
        triangle="lower",
        backend="matplotlib",
        figure_kwargs={"figsize": (2.6 * n, 2.4 * n)},
    )
    axes = pm_.viz["plot"]
    ynames = list(axes["var_name_y"].values)
    xnames = list(axes["var_name_x"].values)
    handles = []
    for m, (label, values) in enumerate((markers or {}).items()):
        colour, marker = _COLOURS[m % len(_COLOURS)], _MARKERS[m % len(_MARKERS)]
        for i, yname in enumerate(ynames):
            for j, xname in enumerate(xnames):
                ax = axes.values[i, j]
                if ax is None or xname not in values:
                    continue
                if i == j:
                    ax.axvline(values[xname], color=colour, ls="--", lw=1.2)
                elif i > j and yname in values:
                    h = ax.scatter(
                        values[xname],
                        values[yname],
                        marker=marker,
                        s=120,
                        color=colour,
                        edgecolor="white",
                        zorder=5,
                        label=label,
                    )
                    if len(handles) == m:
                        handles.append(h)
    fig = _figure_of(pm_)
    if handles:
        fig.legend(handles=handles, loc="upper right", frameon=False)
    save_figure(fig, path)


def save_loo_pit(idata: xr.DataTree, path: str | os.PathLike[str]) -> None:
    """LOO-PIT ECDF with simultaneous bands (``az.plot_loo_pit``): calibration of the fit."""
    pc = az.plot_loo_pit(idata, backend="matplotlib")
    save_figure(_figure_of(pc), path)


def save_compare(table: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """ELPD comparison of several fits (``az.plot_compare``)."""
    pc = az.plot_compare(table, backend="matplotlib")
    save_figure(_figure_of(pc), path)


def binned_ppc_figure(
    observed: np.ndarray,
    predictive: np.ndarray,
    groups: Mapping[str, np.ndarray],
    axis_values: Mapping[str, np.ndarray],
    *,
    panel_titles: Mapping[str, str],
    axis_labels: Mapping[str, str],
    log_x: Sequence[str] = (),
) -> plt.Figure:
    """Observed counts against posterior-predictive bands, projected onto 1-D axes.

    Parameters
    ----------
    observed
        Counts per bin, shape ``(n_bin,)``.
    predictive
        Posterior-predictive counts, shape ``(n_draw, n_bin)``.
    groups
        Panel row name to an integer array ``(n_bin,)`` assigning each bin to a panel row
        (e.g. topology); rows are plotted as given in ``panel_titles``.
    axis_values
        Column name to the projection coordinate of each bin, shape ``(n_bin,)``; bins with
        the same value are summed.
    panel_titles, axis_labels
        Titles of rows (keyed by ``str`` of the group value) and x labels of columns.
    log_x
        Columns whose x axis is logarithmic.
    """
    ((group_name, group_idx),) = groups.items()
    rows = list(panel_titles)
    cols = list(axis_values)
    fig, axes = plt.subplots(
        len(rows), len(cols), figsize=(5.2 * len(cols), 3.4 * len(rows)), squeeze=False
    )
    for r, row in enumerate(rows):
        in_row = group_idx == int(row)
        for c, col in enumerate(cols):
            ax = axes[r, c]
            x_all = axis_values[col]
            xs = np.unique(x_all[in_row])
            obs = np.array([observed[in_row & (x_all == x)].sum() for x in xs])
            pred = np.stack([predictive[:, in_row & (x_all == x)].sum(axis=1) for x in xs], 1)
            lo90, lo50, med, hi50, hi90 = np.percentile(pred, [5, 25, 50, 75, 95], axis=0)
            xplot = 10**xs if col in log_x else xs
            ax.fill_between(xplot, lo90, hi90, step="mid", color="C0", alpha=0.25, label="90 %")
            ax.fill_between(xplot, lo50, hi50, step="mid", color="C0", alpha=0.45, label="50 %")
            ax.step(xplot, med, where="mid", color="C0", label="predictive median")
            ax.errorbar(xplot, obs, yerr=np.sqrt(obs), fmt="o", color="k", ms=4, label="observed")
            if col in log_x:
                ax.set_xscale("log")
            ax.set_xlabel(axis_labels[col])
            ax.set_ylabel("events per bin")
            ax.set_title(panel_titles[row])
    axes[0, 0].legend(frameon=False, fontsize=8)
    fig.suptitle(f"posterior-predictive counts by {group_name}")
    fig.tight_layout()
    return fig


def sbc_figure(summary: xr.Dataset, *, band_prob: float = 0.95) -> plt.Figure:
    """Rank histograms and PIT-ECDF differences with simultaneous bands, one column a parameter.

    Top row: the rank histogram with the central ``band_prob`` range of each bin's count under
    uniformity (binomial). Bottom row: ECDF of the PIT values minus the uniform CDF, inside the
    simultaneous ``band_prob`` band of arviz-stats (Säilynoja et al. 2022); points outside are
    red. ``summary`` is :func:`models.calibration.summarise`'s output.
    """
    from arviz_stats.ecdf_utils import ecdf_pit
    from scipy.stats import binom

    params = [str(p) for p in summary["parameter"].values]
    n_ok = summary.attrs["n_ok"]
    n_rank = summary.attrs["n_rank_draws"]
    n_bins = min(20, max(5, n_ok // 10))
    fig, axes = plt.subplots(2, len(params), figsize=(3.2 * len(params), 5.4), squeeze=False)
    edges = np.linspace(0, n_rank + 1, n_bins + 1)
    p_bin = np.diff(edges) / (n_rank + 1)
    lo, hi = binom.ppf([(1 - band_prob) / 2, (1 + band_prob) / 2], n_ok, p_bin[:, None]).T
    for j, p in enumerate(params):
        s = summary.sel(parameter=p)
        ax = axes[0, j]
        ax.fill_between(
            edges, np.append(lo, lo[-1]), np.append(hi, hi[-1]), step="post", color="0.85"
        )
        ax.hist(s["rank"].values, bins=edges, histtype="step", color="C0", lw=1.5)
        ax.axhline(n_ok * p_bin.mean(), color="k", lw=0.6, ls="--")
        verdict = "pass" if bool(s["passed"]) else "FAIL"
        ax.set_title(f"{p}: {verdict} (p = {float(s['p_uniform']):.2g})", fontsize=9)
        ax.set_xlabel(f"rank among {n_rank} draws")
        x, ecdf, band_lo, band_hi = ecdf_pit(s["pit"].values, ci_prob=band_prob, n_simulations=1000)
        ax = axes[1, j]
        ax.fill_between(x, band_lo - x, band_hi - x, step="post", color="0.85")
        ax.step(x, ecdf - x, where="post", color="C0")
        outside = (ecdf < band_lo) | (ecdf > band_hi)
        ax.plot(x[outside], (ecdf - x)[outside], ".", color="C3", ms=3)
        ax.axhline(0.0, color="k", lw=0.6, ls="--")
        ax.set_xlabel("PIT")
    axes[0, 0].set_ylabel("replicates per bin")
    axes[1, 0].set_ylabel("ECDF - uniform")
    fig.suptitle(
        f"SBC: {n_ok} replicates ({summary.attrs['n_failed']} failed), "
        f"simultaneous {band_prob:.0%} bands",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def save_sbc(summary: xr.Dataset, path: str | os.PathLike[str]) -> None:
    """Save :func:`sbc_figure` as PNG."""
    save_figure(sbc_figure(summary), path)
