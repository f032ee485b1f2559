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

from collections.abc import Sequence
from typing import Any

import numpy as np
import pymc as pm
import pytensor.tensor as pt
import xarray as xr

from data_tools.checks import as_counts, as_finite_array
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
    for name in ("expected_background", "expected_dm"):
        as_finite_array(f"tables[{name!r}]", tables[name].values, positive=True)
    grid = as_finite_array("tables['log10_mass']", tables["log10_mass"].values)
    if grid.size < 2 or not np.allclose(np.diff(grid), grid[1] - grid[0], rtol=1e-6):
        raise ValueError("tables['log10_mass'] must be a regular grid of at least two nodes.")
    return tables


def _stack(tables: Any) -> tuple[list[xr.Dataset], np.ndarray]:
    """Check one or several observations' tables; return them and their shared mass grid."""
    many = not isinstance(tables, xr.Dataset)
    if many and (isinstance(tables, str | bytes) or not hasattr(tables, "__iter__")):
        raise TypeError(
            f"tables must be the xarray.Dataset from data_tools.gamma.events.marginal_tables "
            f"(or a list of them, one per observation), got {type(tables).__name__}."
        )
    out = [_check_tables(t) for t in tables] if many else [_check_tables(tables)]
    if not out:
        raise ValueError("tables is an empty list; give at least one observation's tables.")
    grid = out[0]["log10_mass"].values
    for j, t in enumerate(out[1:], start=1):
        if t.sizes["log10_mass"] != grid.size or not np.allclose(t["log10_mass"].values, grid):
            raise ValueError(
                f"observation {j}'s tables use another log10-mass grid than observation 0's; "
                f"build every observation's tables with the same mass_range and mass_per_decade."
            )
    return out, grid


def build_model(
    tables: xr.Dataset | Sequence[xr.Dataset],
    *,
    signal: bool = True,
    extended: bool = False,
    signal_concentration: tuple[float, float] = (1.0, 1.0),
    background_concentration: tuple[float, float, float] = (1.0, 1.0, 1.0),
    n_events: int | Sequence[int] | None = None,
) -> pm.Model:
    """Build the DM-plus-background mixture over measured bins of one or more observations.

    Parameters
    ----------
    tables
        From :func:`data_tools.gamma.events.marginal_tables`: counts per measured bin,
        background log-probabilities, the DM log-probability table over log10 mass, and the
        nominal expected counts. A list combines several observations (pointings, live
        times) with shared physics: the fractions are those of the first observation, and
        in observation ``o`` component ``k``'s share is ``f_k r_ok / sum_j f_j r_oj`` with
        ``r_ok`` the ratio of its expected counts there to those in the first (for dark
        matter at the sampled mass), so the same fluxes explain every observation.
    signal
        ``False`` builds the background-only model.
    extended
        Add ``n_events ~ Poisson(expected_events r_o)`` per observation to infer rates and
        ``sigma_v``.
    signal_concentration, background_concentration
        Dirichlet concentrations of the DM/background node and of the background split
        (all ones, the original's choice, by default).
    n_events
        Total events per observation for the extended term (default: the sum of ``counts``).

    Returns
    -------
    pymc.Model
        Free ``signal_fraction``, ``log10_mass`` (deterministic ``mass``, TeV),
        ``background_split`` (dims ``background``); deterministic ``fraction`` (dims
        ``component``); observed ``counts`` (dims ``bin``, the measured bins of all
        observations in order). Several observations: deterministic
        ``fraction_by_observation`` (``observation``, ``component``). The posterior predictive
        of ``counts`` is Poisson(N_o m_i) in each *measured* bin: the events the model expects
        there, which sum to N_o times those bins' share of the probability, not to N_o (the
        rest falls in bins that happened to stay empty). For a check over the whole measured
        cube, compare with ``Observation.reco_counts`` (the run's ``counts.png``). Extended: free
        ``expected_events`` (in the first observation), deterministic ``signal_events`` and
        ``sigma_v`` (cm^3 s^-1), observed ``n_events`` (dims ``observation``).
    """
    tables_list, grid = _stack(tables)
    n_obs = len(tables_list)
    counts = np.concatenate(
        [as_counts(f"tables[{j}]['counts']", t["counts"].values) for j, t in enumerate(tables_list)]
    )
    obs_idx = np.concatenate([np.full(t.sizes["bin"], j) for j, t in enumerate(tables_list)])
    log_bkg = np.concatenate([t["log_m_background"].values for t in tables_list])
    log_m_dm = np.concatenate([t["log_m_dm"].values for t in tables_list], axis=1)
    log_e_bkg = np.log([t["expected_background"].values for t in tables_list])
    log_e_dm = np.log([t["expected_dm"].values for t in tables_list])
    a = as_finite_array("signal_concentration", signal_concentration, positive=True)
    c = as_finite_array("background_concentration", background_concentration, positive=True)
    if a.shape != (2,) or c.shape != (3,):
        raise ValueError(
            "signal_concentration needs 2 values (DM, background) and background_concentration "
            f"3 ({', '.join(BACKGROUNDS)}); got {a.shape[0]} and {c.shape[0]}."
        )
    lo, hi = float(grid[0]), float(grid[-1])  # the mass prior: log-uniform over the table
    components = list(COMPONENTS) if signal else list(BACKGROUNDS)
    names = [str(t.attrs.get("observation", f"obs{j}")) for j, t in enumerate(tables_list)]
    if len(set(names)) < n_obs:
        names = [f"obs{j}" for j in range(n_obs)]
    bin_labels = (
        tables_list[0]["bin"].values if n_obs == 1 else np.arange(counts.size)
    )  # several observations: bins numbered in order, observation o's from its offset
    coords = {
        "bin": bin_labels,
        "background": list(BACKGROUNDS),
        "component": components,
        "mass_node": grid,
        "observation": names,
    }
    with pm.Model(coords=coords) as model:
        # Data containers: a compiled model can be refitted to new tables of any number of
        # bins without recompiling (nutpie's ``with_data``), as calibration studies do.
        counts_data = pm.Data("bin_counts", counts, dims="bin")
        log_bkg_data = pm.Data("log_m_background", log_bkg, dims=("bin", "background"))
        split = pm.Dirichlet("background_split", c, dims="background")
        if signal:
            f_dm = pm.Beta("signal_fraction", a[0], a[1])
            log10_mass = pm.Uniform("log10_mass", lo, hi)
            pm.Deterministic("mass", 10.0**log10_mass)
            fractions = pt.concatenate([f_dm[None], (1.0 - f_dm) * split])
            log_f = pt.concatenate([pt.log(f_dm)[None], pt.log1p(-f_dm) + pt.log(split)])
            table = pm.Data("log_m_dm", log_m_dm, dims=("mass_node", "bin"))
            log_m = pt.concatenate(
                [interpolate_log_table(table, grid, log10_mass)[:, None], log_bkg_data], axis=1
            )
            # per observation, log of each component's expected counts relative to the first
            log_r = pt.concatenate(
                [
                    interpolate_log_table((log_e_dm - log_e_dm[:1]).T, grid, log10_mass)[:, None],
                    pt.as_tensor(log_e_bkg - log_e_bkg[:1]),
                ],
                axis=1,
            )
        else:
            fractions = split
            log_f = pt.log(split)
            log_m = log_bkg_data
            log_r = pt.as_tensor(log_e_bkg - log_e_bkg[:1])
        pm.Deterministic("fraction", fractions, dims="component")
        if n_obs == 1:
            terms = log_f[None, :] + log_m
        else:
            unnorm = log_f[None, :] + log_r  # (observation, component)
            log_norm = pt.logsumexp(unnorm, axis=1, keepdims=True)
            log_f_obs = unnorm - log_norm
            pm.Deterministic(
                "fraction_by_observation", pt.exp(log_f_obs), dims=("observation", "component")
            )
            terms = log_f_obs[obs_idx] + log_m
        # Posterior predictive: Poisson(N_o m_i) in each measured bin, N_o its observation's
        # total (the multinomial's Poisson limit). Only measured bins are in the model, so
        # these predictions cover only their share of the events.
        n_per_bin = np.bincount(obs_idx, weights=counts, minlength=n_obs)[obs_idx]

        def random(log_p, rng=None, size=None):
            return np.random.default_rng(rng).poisson(n_per_bin * np.exp(log_p), size=size)

        pm.CustomDist(
            "counts",
            pt.logsumexp(terms, axis=1),
            logp=lambda value, log_p: value * log_p,
            random=random,
            signature="()->()",
            dtype="int64",
            observed=counts_data,
            dims="bin",
        )
        if extended:
            per_obs = np.bincount(obs_idx, weights=counts, minlength=n_obs).astype(int)
            if n_events is None:
                n_total = per_obs
            else:
                n_total = np.atleast_1d(as_counts("n_events", np.atleast_1d(n_events)))
                if n_total.shape != (n_obs,) or (n_total < per_obs).any():
                    raise ValueError(
                        f"n_events must give one total per observation ({n_obs}), each at least "
                        f"the counts in its measured bins {per_obs.tolist()}; got "
                        f"{np.atleast_1d(n_events).tolist()}."
                    )
            nominal = float(tables_list[0]["expected_background"].sum())
            total = pm.LogNormal("expected_events", np.log(nominal), 3.0)
            log_scale = pt.logsumexp(log_f[None, :] + log_r, axis=1)  # 0 for the first
            pm.Poisson(
                "n_events",
                total * pt.exp(log_scale),
                observed=pm.Data("total_events", n_total, dims="observation"),
                dims="observation",
            )
            if signal:
                signal_events = pm.Deterministic("signal_events", f_dm * total)
                log_n_dm = interpolate_log_table(
                    pm.Data("log_expected_dm", log_e_dm[0], dims="mass_node"), grid, log10_mass
                )
                reference = tables_list[0].attrs.get("sigma_v_reference", 3e-26)
                pm.Deterministic("sigma_v", reference * signal_events / pt.exp(log_n_dm))
    return model
