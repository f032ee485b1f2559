"""Sampling and the ArviZ analysis every use case shares: diagnostics, LOO, comparison.

These helpers sample a model built by a ``build_model`` factory; they never build one.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import arviz as az
import numpy as np
import pandas as pd
import pymc as pm
import xarray as xr

from data_tools.checks import as_int

__all__ = [
    "compare_models",
    "convergence",
    "log_evidence",
    "loo_summary",
    "posterior_digest",
    "sample_compiled",
    "sample_posterior",
    "summary_table",
    "thin_draws",
]


def sample_posterior(
    model: pm.Model,
    *,
    draws: int = 1000,
    tune: int = 1000,
    chains: int = 2,
    rng: Any = None,
    var_names: Sequence[str] | None = None,
    posterior_predictive: bool = True,
    progressbar: bool = True,
    adaptation: str | None = None,
    log_likelihood: bool = True,
    cores: int | None = None,
    target_accept: float | None = None,
    thin: int = 1,
) -> xr.DataTree:
    """Sample with NUTS and add the pointwise log-likelihood and posterior predictive.

    Parameters
    ----------
    model
        A model from a ``build_model`` factory.
    draws, tune, chains
        Kept draws per chain, tuning steps per chain and number of chains.
    rng
        Seed or ``numpy.random.Generator``; the same seed gives the same draws.
    var_names
        Variables to keep in the trace (default: all). Keep large latent vectors out.
    posterior_predictive
        Also draw the observed variables' posterior predictive.
    progressbar
        Show progress while sampling.
    adaptation
        nutpie's mass-matrix adaptation: ``None`` (diagonal) or ``"low_rank"``, which learns
        strong posterior correlations (such as an intercept defined far from the data's pivot)
        and can cut the gradient evaluations per draw several-fold.
    log_likelihood
        Add the pointwise log-likelihood (needed for LOO; at 10^5 observations x 2,000 draws
        it is a large array, which benchmarks and calibration runs can skip).
    cores
        Chains run in parallel on this many cores (default: one per chain, up to the CPU
        count); calibration workers use 1.
    target_accept
        Target acceptance rate of the step-size adaptation (default: the sampler's, 0.8);
        higher means smaller steps, for posteriors with narrow ridges.
    thin
        Sample ``thin * draws`` draws per chain and keep every ``thin``-th
        (:func:`thin_draws`), before the log-likelihood and the predictive are computed.

    Returns
    -------
    xarray.DataTree
        Groups ``posterior``, ``sample_stats``, ``observed_data`` and (optionally)
        ``log_likelihood`` and ``posterior_predictive``.
    """
    draws = as_int("draws", draws)
    chains = as_int("chains", chains)
    tune = as_int("tune", tune, minimum=0)
    thin = as_int("thin", thin)
    seeds = np.random.default_rng(rng).integers(0, 2**31 - 1, size=2)
    if cores is None:
        cores = max(1, min(chains, os.cpu_count() or 1))
    cores = as_int("cores", cores)
    if target_accept is not None and not 0 < target_accept < 1:
        raise ValueError(f"target_accept must be in (0, 1), got {target_accept}.")
    with warnings.catch_warnings():
        # numba declines to disk-cache graphs that embed large data arrays: a recompile, no more.
        warnings.filterwarnings("ignore", message="Cannot cache compiled function")
        idata = _sample(
            model,
            thin * draws,
            tune,
            chains,
            cores,
            seeds,
            var_names,
            progressbar,
            adaptation,
            target_accept,
        )
        if thin > 1:
            idata = thin_draws(idata, thin)
        if log_likelihood:
            pm.compute_log_likelihood(idata, model=model, progressbar=False)

    if posterior_predictive:
        with warnings.catch_warnings():
            # Custom likelihoods draw with numpy; PyTensor's numba backend says it will call
            # that Python code ("object mode"), which is what we want, so keep the log clean.
            warnings.filterwarnings("ignore", message="Numba will use object mode")
            warnings.filterwarnings("ignore", message="Cannot cache compiled function")
            pm.sample_posterior_predictive(
                idata,
                model=model,
                extend_inferencedata=True,
                random_seed=int(seeds[1]),
                progressbar=False,
            )
    return idata


def thin_draws(idata: xr.DataTree, step: int) -> xr.DataTree:
    """Every ``step``-th draw of each chain, renumbered from 0, in every group with draws.

    A kept draw is marked divergent if any of the ``step`` draws it stands for was, so a
    convergence check still sees every divergent stretch of the chains.
    """
    step = as_int("step", step)
    diverging = None
    if "sample_stats" in idata.children and "diverging" in idata["sample_stats"]:
        flags = idata["sample_stats"]["diverging"]
        diverging = flags.coarsen(draw=step, boundary="pad").max().values.astype(bool)
    thinned = idata.isel(draw=slice(None, None, step), missing_dims="ignore").map_over_datasets(
        lambda ds: ds.assign_coords(draw=np.arange(ds.sizes["draw"])) if "draw" in ds.dims else ds
    )
    if diverging is not None:
        stats = thinned["sample_stats"].to_dataset()
        stats["diverging"] = (("chain", "draw"), diverging)
        thinned["sample_stats"] = xr.DataTree(stats)
    return thinned


def sample_compiled(
    compiled: Any,
    *,
    data: Mapping[str, Any] | None = None,
    draws: int = 1000,
    tune: int = 1000,
    chains: int = 2,
    cores: int = 1,
    rng: Any = None,
    progressbar: bool = False,
) -> xr.DataTree:
    """Sample a nutpie-compiled model, optionally with its ``pm.Data`` containers replaced.

    Compiling is the slow step (10-30 s); a model whose data are ``pm.Data`` can be compiled
    once and refitted to many data sets of any size (calibration replicates) through nutpie's
    ``with_data``. ``compiled`` is the result of ``nutpie.compile_pymc_model(model)``.

    Returns
    -------
    xarray.DataTree
        ``posterior`` and ``sample_stats`` (no log-likelihood or predictive groups).
    """
    import nutpie

    draws, tune, chains, cores = (
        as_int("draws", draws),
        as_int("tune", tune, minimum=0),
        as_int("chains", chains),
        as_int("cores", cores),
    )
    if data:
        compiled = compiled.with_data(**{k: np.asarray(v) for k, v in data.items()})
    seed = int(np.random.default_rng(rng).integers(0, 2**31 - 1))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Cannot cache compiled function")
        return nutpie.sample(
            compiled,
            draws=draws,
            tune=tune,
            chains=chains,
            cores=cores,
            seed=seed,
            progress_bar=progressbar,
        )


def _sample(
    model, draws, tune, chains, cores, seeds, var_names, progressbar, adaptation, target_accept
):
    nuts = {"adaptation": adaptation} if adaptation else {}
    if target_accept is not None:
        nuts["target_accept"] = float(target_accept)
    return pm.sample(
        draws=draws,
        tune=int(tune),
        chains=chains,
        cores=cores,
        random_seed=int(seeds[0]),
        var_names=list(var_names) if var_names is not None else None,
        progressbar=progressbar,
        model=model,
        **({"nuts": nuts} if nuts else {}),
    )


def posterior_digest(idata: xr.DataTree, var_names: Sequence[str]) -> dict[str, dict[str, float]]:
    """Mean, sd, median and central 90 % interval per scalar parameter."""
    post = idata["posterior"]
    out = {}
    for name in var_names:
        draws = np.asarray(post[name]).ravel()
        q05, q50, q95 = np.quantile(draws, [0.05, 0.5, 0.95])
        out[name] = {
            "mean": float(draws.mean()),
            "sd": float(draws.std(ddof=1)),
            "median": float(q50),
            "q05": float(q05),
            "q95": float(q95),
        }
    return out


def summary_table(idata: xr.DataTree, var_names: Sequence[str]) -> pd.DataFrame:
    """ArviZ summary (mean, sd, 89 % interval, ESS, r-hat, MCSE), unrounded, one row a parameter."""
    table = az.summary(idata, var_names=list(var_names), round_to="none")
    return pd.DataFrame(table).astype(float)


def _worst(column: pd.Series, *, largest: bool) -> str | None:
    """Label of the largest (or smallest) entry; None when all are NaN (r-hat of one chain)."""
    if not column.notna().any():
        return None
    return str(column.idxmax() if largest else column.idxmin())


R_HAT_MAX = 1.01
"""Largest rank-normalised r-hat a converged fit may have (Vehtari et al. 2021)."""
ESS_MIN = 400
"""Smallest bulk and tail effective sample size a converged fit may have."""


def convergence(idata: xr.DataTree, var_names: Sequence[str]) -> dict[str, Any]:
    """Return the convergence numbers a report needs.

    Returns
    -------
    dict
        ``max_r_hat``, ``min_ess_bulk``, ``min_ess_tail``, ``divergences`` and ``ok`` (r-hat
        <= :data:`R_HAT_MAX` = 1.01, bulk and tail ESS >= :data:`ESS_MIN` = 400, no
        divergence), with ``failed`` listing the checks that did not pass (``"r_hat"``,
        ``"ess_bulk"``, ``"ess_tail"``, ``"divergences"``); ``worst_r_hat`` and
        ``worst_ess_bulk`` name the parameters (as in the summary, e.g. ``coef[basis70]``) with
        the largest r-hat and the smallest bulk ESS, so a failed check says where to look (None
        when every value is NaN, as r-hat is for a single chain).
    """
    table = summary_table(idata, var_names)
    stats = idata["sample_stats"]
    div = int(np.asarray(stats["diverging"]).sum()) if "diverging" in stats else 0
    out = {
        "max_r_hat": float(table["r_hat"].max()),
        "min_ess_bulk": float(table["ess_bulk"].min()),
        "min_ess_tail": float(table["ess_tail"].min()),
        "divergences": div,
        "worst_r_hat": _worst(table["r_hat"], largest=True),
        "worst_ess_bulk": _worst(table["ess_bulk"], largest=False),
    }
    checks = {
        "r_hat": out["max_r_hat"] <= R_HAT_MAX,
        "ess_bulk": out["min_ess_bulk"] >= ESS_MIN,
        "ess_tail": out["min_ess_tail"] >= ESS_MIN,
        "divergences": div == 0,
    }
    out["failed"] = [name for name, passed in checks.items() if not passed]
    out["ok"] = not out["failed"]
    return out


def format_convergence(diag: dict[str, Any]) -> str:
    """One line of a :func:`convergence` result, naming the worst parameters, for run reports."""

    def worst(key: str) -> str:
        return f" ({diag[key]})" if diag.get(key) is not None else ""

    return (
        f"max r-hat {diag['max_r_hat']:.3f}{worst('worst_r_hat')}, min bulk ESS "
        f"{diag['min_ess_bulk']:.0f}{worst('worst_ess_bulk')}, min tail ESS "
        f"{diag['min_ess_tail']:.0f}, divergences {diag['divergences']}"
    )


def loo_summary(idata: xr.DataTree) -> dict[str, Any]:
    """PSIS-LOO of a model with one observed variable: elpd, its SE, p_loo and Pareto k."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the k-hat count below reports it
        loo = az.loo(idata)
    k = np.asarray(loo.pareto_k)
    return {
        "elpd_loo": float(loo.elpd),
        "se": float(loo.se),
        "p_loo": float(loo.p),
        "max_pareto_k": float(np.nanmax(k)),
        "n_pareto_k_above_0.7": int(np.sum(k > 0.7)),
        "n_points": int(loo.n_data_points),
    }


def compare_models(idatas: Mapping[str, xr.DataTree]) -> pd.DataFrame:
    """``az.compare`` over named fits (LOO, stacking weights), as a plain DataFrame."""
    if len(idatas) < 2:
        raise ValueError(f"compare_models needs at least two fits, got {len(idatas)}.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        table = az.compare(dict(idatas), round_to="none")
    return pd.DataFrame(table)


def finite_or_none(value: Any) -> Any:
    """JSON-safe float: NaN/inf become ``None``."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return value
    return f if math.isfinite(f) else None


def log_evidence(
    model: pm.Model,
    *,
    draws: int = 2000,
    chains: int = 2,
    rng: Any = None,
    progressbar: bool = False,
) -> dict[str, Any]:
    """Log marginal likelihood of ``model`` by sequential Monte Carlo (``pm.sample_smc``).

    SMC also samples multimodal posteriors that NUTS chains would split between modes.
    Each chain is an independent SMC run, so the spread of the per-chain estimates is the
    estimate's uncertainty.

    Returns
    -------
    dict
        ``log_z`` (mean over chains), ``log_z_chains`` (one per chain), ``log_z_sd``
        (standard deviation across chains) and ``idata`` (the SMC posterior).
    """
    draws, chains = as_int("draws", draws), as_int("chains", chains)
    if chains < 2:
        raise ValueError("log_evidence needs chains >= 2 to report its own uncertainty.")
    seed = int(np.random.default_rng(rng).integers(0, 2**31 - 1))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="We recommend running at least")
        warnings.filterwarnings("ignore", message="Cannot cache compiled function")
        idata = pm.sample_smc(
            draws=draws,
            chains=chains,
            cores=1,
            model=model,
            random_seed=seed,
            progressbar=progressbar,
            compute_convergence_checks=False,
        )
    raw = idata["sample_stats"]["log_marginal_likelihood"].values
    per_chain = []
    for row in raw.reshape(chains, -1):
        # stored as objects, one entry per stage with NaN padding: the last finite one counts
        values = np.concatenate([np.atleast_1d(np.asarray(v, dtype=float)).ravel() for v in row])
        values = values[np.isfinite(values)]
        if values.size == 0:
            raise ValueError("SMC returned no finite log marginal likelihood; check the model.")
        per_chain.append(float(values[-1]))
    per_chain = np.array(per_chain)
    return {
        "log_z": float(per_chain.mean()),
        "log_z_chains": per_chain,
        "log_z_sd": float(per_chain.std(ddof=1)),
        "idata": idata,
    }
