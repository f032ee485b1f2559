"""Simulation-based calibration of each use case: simulate from the prior, fit, return draws.

Each ``*_replicate`` function is what :mod:`models.calibration` runs as one Dask task: it draws
the parameters from the model's own prior (the same PyMC distributions the model uses), simulates
a data set with :mod:`data_tools`, fits it with NUTS and returns a
:class:`~models.calibration.FitResult`. Options let a study fit a deliberately wrong model, to
show that the check can fail.

``run(...)`` is ``astroweights sbc``: run or resume, write the summary, print the verdicts.
"""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pymc as pm

from data_tools.halos import (
    DEFAULT_SAMPLES,
    SIGMA_OBS,
    GaussianMixtureProposal,
    importance_samples,
    quadrature_nodes,
    simulate_lightcone,
)
from models.calibration import CASES, FitResult, run_sbc, verdicts, write_outputs
from models.inference import convergence, sample_posterior

__all__ = ["ML_HALOS", "NU_EVENTS", "mass_luminosity_replicate", "neutrino_replicate", "run"]

ML_HALOS = {"small": 300, "medium": 2_000}
"""Halos per simulated catalogue, by size."""
NU_EVENTS = {"small": 20_000, "medium": 100_000}
"""Simulated (Monte Carlo) events of the HESE toy, by size."""


def _prior_draws(factories: dict[str, Any], names, rng: np.random.Generator) -> dict[str, float]:
    """One draw of each named prior, from the same PyMC distributions the model uses."""
    return {
        p: float(pm.draw(factories[p](), random_seed=int(rng.integers(2**31 - 1)))) for p in names
    }


def _fit(model, names, rng, draws: int, tune: int) -> tuple[dict[str, np.ndarray], dict]:
    logging.getLogger("pymc").setLevel(logging.WARNING)  # no "NUTS[nutpie]: ..." per replicate
    idata = sample_posterior(
        model,
        draws=draws,
        tune=tune,
        chains=2,
        cores=1,
        rng=rng,
        var_names=names,
        posterior_predictive=False,
        log_likelihood=False,
        adaptation="low_rank",
        progressbar=False,
    )
    post = idata["posterior"]
    return {p: np.asarray(post[p].values) for p in names}, convergence(idata, names)


@functools.cache
def _proposal() -> GaussianMixtureProposal:
    return GaussianMixtureProposal.fit(rng=20260)


def mass_luminosity_replicate(
    seed: np.random.SeedSequence,
    *,
    size: str = "small",
    priors: str = "weak",
    method: str = "quadrature",
    fit_sigma_obs: float = SIGMA_OBS,
    n_nodes: int = 201,
    draws: int = 500,
    tune: int = 500,
) -> FitResult:
    """One SBC replicate of the marginal mass–luminosity model.

    Parameters are drawn from ``priors`` (the model's prior set), a lightcone of
    :data:`ML_HALOS` ``[size]`` halos is simulated with ``sigma_obs = 0.05``, and the model is
    fitted with ``method``: ``"quadrature"`` (an ``n_nodes`` Simpson grid shared by all halos,
    which needs no proposal and so stays accurate for any prior draw: 201 nodes are 0.047 apart
    in ln M, against a mass integrand at least ~0.1 wide for all but the rarest prior draws)
    or ``"importance"`` (32 stratified samples per halo from the Gaussian-mixture proposal,
    which is fitted over the original hyper-prior: use it with ``priors="original"``).
    ``fit_sigma_obs`` other than 0.05 fits a deliberately mis-specified model.
    """
    from models.mass_luminosity import PARAMETERS, PRIOR_SETS, build_model

    if method not in ("quadrature", "importance"):
        raise ValueError(f"method must be 'quadrature' or 'importance', got {method!r}.")
    if priors not in PRIOR_SETS:
        raise ValueError(f"priors must be one of {sorted(PRIOR_SETS)}, got {priors!r}.")
    rng = np.random.default_rng(seed)
    truth = _prior_draws(PRIOR_SETS[priors], PARAMETERS, rng)
    cat = simulate_lightcone(ML_HALOS[size], truths=truth, sigma_obs=SIGMA_OBS, rng=rng)
    z, lum = cat["z"].values, cat["lum_obs"].values
    if method == "quadrature":
        x, lw = quadrature_nodes(z, n_nodes=n_nodes)
    else:
        x, lw = importance_samples(z, lum, n_samples=DEFAULT_SAMPLES, proposal=_proposal(), rng=rng)
    model = build_model(z, lum, x, lw, priors=priors, sigma_obs=fit_sigma_obs)
    draws_, diag = _fit(model, PARAMETERS, rng, draws, tune)
    return FitResult(truth, draws_, diag)


def neutrino_replicate(
    seed: np.random.SeedSequence,
    *,
    size: str = "small",
    likelihood: str = "poisson",
    draws: int = 500,
    tune: int = 500,
) -> FitResult:
    """One SBC replicate of the diffuse-flux fit (power law).

    Parameters are drawn from the model's default priors; a HESE-toy simulation of
    :data:`NU_EVENTS` ``[size]`` events is made, and the observed events are drawn from it
    reweighted to the drawn parameters, so the binned counts are exactly Poisson with the
    model's means: the Poisson likelihood is the true model here.
    """
    from data_tools.neutrino import model_inputs, simulate_hese_data, simulate_hese_toy
    from models.neutrino_diffuse import DEFAULT_PRIORS, build_model, parameter_names

    rng = np.random.default_rng(seed)
    names = parameter_names("power_law")
    truth = _prior_draws(DEFAULT_PRIORS, names, rng)
    sim = simulate_hese_toy(NU_EVENTS[size], rng=rng)
    data = simulate_hese_data(sim, **truth, rng=rng)
    model = build_model(**model_inputs(sim, data), likelihood=likelihood)
    draws_, diag = _fit(model, names, rng, draws, tune)
    return FitResult(truth, draws_, diag)


def run(
    case: str,
    *,
    replicates: int,
    out: Path,
    size: str = "small",
    seed: int = 0,
    scheduler: str | None = None,
    workers: int | None = None,
    options: dict[str, Any] | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Run or resume an SBC study, write its outputs and print one verdict per parameter."""
    summary = run_sbc(
        case,
        replicates,
        out=out,
        size=size,
        seed=seed,
        options=options,
        scheduler=scheduler,
        workers=workers,
        progress=not quiet,
    )
    files = write_outputs(summary, out)
    if not quiet:
        a = summary.attrs
        print(
            f"SBC {case} ({size}: {CASES[case].sizes[size]}): {a['n_ok']} replicates, "
            f"{a['n_failed']} failed, {a['n_not_converged']} with r-hat > 1.01 or divergences"
        )
        for line in verdicts(summary):
            print("  " + line)
        print(f"wrote {', '.join(files)} to {out}", file=sys.stdout, flush=True)
    return {"summary": summary, "files": files}
