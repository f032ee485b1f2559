r"""Gamma-ray dark-matter search: a mixture of signal and backgrounds over measured bins.

With :math:`m_{ik}` the probability that an event of component :math:`k` lands in measured bin
:math:`i` (the true energy and direction marginalised through the instrument response, computed
once by :func:`data_tools.gamma.events.marginal_tables`) and :math:`n_i` the bin's count,

.. math::

    \ln L = \sum_i n_i \ln \sum_k f_k\, m_{ik}(\theta_k),

pointwise per measured bin (dims ``bin``), so LOO works. The fractions follow the original's
tree: the root splits into dark matter and background, ``signal_fraction ~ Beta(a, b)``
(a two-component Dirichlet); the background splits into cosmic rays, local sources and
diffuse emission, ``background_split ~ Dirichlet(c)``. The dark-matter mass is continuous and
log-uniform over the table's range (by default the original's [0.12, 80] TeV). The signal's
:math:`\ln m_{i,\mathrm{DM}}` is tabulated on a fine log-mass grid and interpolated linearly in
log-mass inside the model, so the likelihood is continuous in the mass and has a gradient (the
original snapped the mass to grid nodes).

``extended=True`` adds the Poisson term for the total count, ``n_events ~ Poisson(Lambda)``
with ``Lambda ~ LogNormal(ln Lambda_0, 3)`` around the templates' nominal total, so that the
signal rate ``signal_events = f_DM Lambda`` and the annihilation cross-section

.. math::

    \langle\sigma v\rangle = 3\times10^{-26}\,\mathrm{cm^3\,s^{-1}}
        \times \frac{f_\mathrm{DM}\,\Lambda}{N_\mathrm{DM}(m_\chi)}

are inferred (:math:`N_\mathrm{DM}` the expected DM counts at the reference cross-section).
``signal=False`` builds the background-only model, for Bayes factors and LOO comparisons.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pymc as pm
import pytensor.tensor as pt
import xarray as xr

from data_tools.checks import as_counts, as_finite_array, as_int
from data_tools.gamma.events import BACKGROUNDS, COMPONENTS

__all__ = ["PARAMETERS", "build_model", "interpolate_log_table"]

PARAMETERS = ["signal_fraction", "background_split", "mass"]
"""The physics parameters reported by default (``fraction`` holds the leaf fractions)."""


def interpolate_log_table(table: Any, grid: Any, x: Any):
    """Linear interpolation of ``table[j, :]`` (rows on the regular ``grid``) at scalar ``x``.

    Works on numpy and PyTensor inputs alike; ``x`` is clipped to the grid's range.
    """
    g0, dg, n = float(grid[0]), float(grid[1] - grid[0]), len(grid)
    u = pt.clip((x - g0) / dg, 0.0, n - 1.0)
    j = pt.clip(pt.floor(u), 0, n - 2).astype("int64")
    t = u - j
    table = pt.as_tensor(table)
    return (1.0 - t) * table[j] + t * table[j + 1]


def _check_tables(tables: Any) -> xr.Dataset:
    if not isinstance(tables, xr.Dataset):
        raise TypeError(
            f"tables must be the xarray.Dataset from data_tools.gamma.events.marginal_tables, "
            f"got {type(tables).__name__}."
        )
    need = {"counts", "log_m_background", "log_m_dm", "expected_background", "expected_dm"}
    missing = sorted(need - set(tables.data_vars))
    if missing:
        raise ValueError(f"tables is missing {missing}; build it with marginal_tables(...).")
    if list(tables["background"].values) != list(BACKGROUNDS):
        raise ValueError(f"tables['background'] must be {list(BACKGROUNDS)}.")
    for name in ("log_m_background", "log_m_dm"):
        v = tables[name].values
        if np.isnan(v).any() or np.isposinf(v).any() or (v > 1e-9).any():
            raise ValueError(f"tables[{name!r}] must be log-probabilities (<= 0, no NaN or +inf).")
    grid = as_finite_array("tables['log10_mass']", tables["log10_mass"].values)
    if grid.size < 2 or not np.allclose(np.diff(grid), grid[1] - grid[0], rtol=1e-6):
        raise ValueError("tables['log10_mass'] must be a regular grid of at least two nodes.")
    return tables


def build_model(
    tables: xr.Dataset,
    *,
    signal: bool = True,
    extended: bool = False,
    signal_concentration: tuple[float, float] = (1.0, 1.0),
    background_concentration: tuple[float, float, float] = (1.0, 1.0, 1.0),
    n_events: int | None = None,
) -> pm.Model:
    """Build the DM-plus-background mixture over measured bins.

    Parameters
    ----------
    tables
        From :func:`data_tools.gamma.events.marginal_tables`: counts per measured bin,
        background log-probabilities, the DM log-probability table over log10 mass, and the
        nominal expected counts.
    signal
        ``False`` builds the background-only model.
    extended
        Add ``n_events ~ Poisson(expected_events)`` to infer rates and ``sigma_v``.
    signal_concentration, background_concentration
        Dirichlet concentrations of the DM/background node and of the background split
        (all ones, the original's choice, by default).
    n_events
        Total number of events for the extended term (default: the sum of ``counts``).

    Returns
    -------
    pymc.Model
        Free ``signal_fraction``, ``log10_mass`` (deterministic ``mass``, TeV),
        ``background_split`` (dims ``background``); deterministic ``fraction`` (dims
        ``component``); observed ``counts`` (dims ``bin``). Extended: free
        ``expected_events``, deterministic ``signal_events`` and ``sigma_v`` (cm^3 s^-1), and
        observed ``n_events``.
    """
    tables = _check_tables(tables)
    counts = as_counts("tables['counts']", tables["counts"].values)
    log_bkg = tables["log_m_background"].values
    grid = tables["log10_mass"].values
    a = as_finite_array("signal_concentration", signal_concentration, positive=True)
    c = as_finite_array("background_concentration", background_concentration, positive=True)
    if a.shape != (2,) or c.shape != (3,):
        raise ValueError(
            "signal_concentration needs 2 values (DM, background) and background_concentration "
            f"3 ({', '.join(BACKGROUNDS)}); got {a.shape[0]} and {c.shape[0]}."
        )
    lo, hi = float(grid[0]), float(grid[-1])  # the mass prior: log-uniform over the table
    components = list(COMPONENTS) if signal else list(BACKGROUNDS)
    coords = {
        "bin": tables["bin"].values,
        "background": list(BACKGROUNDS),
        "component": components,
        "mass_node": grid,
    }
    with pm.Model(coords=coords) as model:
        # Data containers: a compiled model can be refitted to new tables of any number of
        # bins without recompiling (nutpie's ``with_data``), as calibration studies do.
        counts_data = pm.Data("bin_counts", counts, dims="bin")
        log_bkg = pm.Data("log_m_background", log_bkg, dims=("bin", "background"))
        split = pm.Dirichlet("background_split", c, dims="background")
        if signal:
            f_dm = pm.Beta("signal_fraction", a[0], a[1])
            log10_mass = pm.Uniform("log10_mass", lo, hi)
            pm.Deterministic("mass", 10.0**log10_mass)
            fractions = pt.concatenate([f_dm[None], (1.0 - f_dm) * split])
            table = pm.Data("log_m_dm", tables["log_m_dm"].values, dims=("mass_node", "bin"))
            log_m_dm = interpolate_log_table(table, grid, log10_mass)
            terms = pt.concatenate(
                [
                    (pt.log(f_dm) + log_m_dm)[:, None],
                    pt.log1p(-f_dm) + pt.log(split)[None, :] + log_bkg,
                ],
                axis=1,
            )
        else:
            fractions = split
            terms = pt.log(split)[None, :] + log_bkg
        pm.Deterministic("fraction", fractions, dims="component")
        log_mix = pt.logsumexp(terms, axis=1)
        pm.CustomDist(
            "counts",
            log_mix,
            logp=lambda value, log_p: value * log_p,
            signature="()->()",
            dtype="int64",
            observed=counts_data,
            dims="bin",
        )
        if extended:
            n_total = int(counts.sum()) if n_events is None else as_int("n_events", n_events)
            if n_total < counts.sum():
                raise ValueError(
                    f"n_events ({n_total}) is below the counts in the measured bins "
                    f"({int(counts.sum())})."
                )
            nominal = float(tables["expected_background"].sum())
            total = pm.LogNormal("expected_events", np.log(nominal), 3.0)
            pm.Poisson("n_events", total, observed=pm.Data("total_events", n_total))
            if signal:
                signal_events = pm.Deterministic("signal_events", f_dm * total)
                log_n_dm = interpolate_log_table(
                    pm.Data(
                        "log_expected_dm", np.log(tables["expected_dm"].values), dims="mass_node"
                    ),
                    grid,
                    log10_mass,
                )
                pm.Deterministic(
                    "sigma_v",
                    tables.attrs.get("sigma_v_reference", 3e-26) * signal_events / pt.exp(log_n_dm),
                )
    return model
