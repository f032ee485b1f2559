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
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pymc as pm

from data_tools.halos import (
    DEFAULT_SAMPLES,
    HYPER_SEED,
    SIGMA_OBS,
    GaussianMixtureProposal,
    adaptive_quadrature_nodes,
    importance_samples,
    quadrature_nodes,
    simulate_lightcone,
)
from models.calibration import CASES, FitResult, run_sbc, verdicts, write_outputs
from models.inference import convergence, sample_compiled, sample_posterior
from models.runs._common import pymc_logs_quiet

__all__ = [
    "GAMMA_EVENTS",
    "ML_HALOS",
    "NU_EVENTS",
    "gamma_dm_replicate",
    "mass_luminosity_replicate",
    "neutrino_replicate",
    "photoz_replicate",
    "run",
]

ML_HALOS = {"small": 300, "medium": 2_000, "full": 115_919}
"""Halos per simulated catalogue, by size."""
NU_EVENTS = {"small": 20_000, "medium": 100_000}
"""Simulated (Monte Carlo) events of the HESE toy, by size."""
GAMMA_EVENTS = {"small": 200, "medium": 500}
"""Measured events of the gamma-ray DM search (the seed's geometry, 5 h at the GC), by size."""
GAMMA_PARAMETERS = ("signal_fraction", "log10_mass", "cosmic_rays", "local_sources", "diffuse")
PHOTOZ_GALAXIES = {"small": 1_500, "medium": 6_000}
"""Galaxies per simulated deep field (about a sixth have a spectrum and are fitted), by size."""
PHOTOZ_BASIS = {"small": 10, "medium": 30}
PHOTOZ_PARAMETERS = {
    # name in the SBC summary: (variable, coordinate)
    "intercept": ("coef", "intercept"),
    "slope_F814W-F125W": ("coef", "F814W-F125W"),
    "slope_F160W": ("coef", "F160W"),
    "basis_weight_0": ("coef", "basis0"),
    "log_noise": ("noise_coef", "intercept"),
    "noise_slope_F160W": ("noise_coef", "F160W"),
    "noise_slope_F606W-F814W": ("noise_coef", "F606W-F814W"),
}
"""The photo-z coefficients SBC ranks (of 15 + 5 at the small size), by summary name."""


def _prior_draws(factories: dict[str, Any], names, rng: np.random.Generator) -> dict[str, float]:
    """One draw of each named prior, from the same PyMC distributions the model uses."""
    return {
        p: float(pm.draw(factories[p](), random_seed=int(rng.integers(2**31 - 1)))) for p in names
    }


def _fit(model, names, rng, draws: int, tune: int) -> tuple[dict[str, np.ndarray], dict]:
    with pymc_logs_quiet(True):  # no "NUTS[nutpie]: ..." per replicate
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
    truth: str = "prior",
    fit_sigma_obs: float = SIGMA_OBS,
    n_nodes: int | None = None,
    draws: int = 500,
    tune: int = 500,
) -> FitResult:
    """One SBC (or parameter-recovery) replicate of the marginal mass–luminosity model.

    Parameters are drawn from ``priors`` (the model's prior set), a lightcone of
    :data:`ML_HALOS` ``[size]`` halos is simulated with ``sigma_obs = 0.05``, and the model is
    fitted with ``method``: ``"quadrature"`` (an ``n_nodes`` Simpson grid shared by all halos,
    which needs no proposal and so stays accurate for any prior draw: 201 nodes are 0.047 apart
    in ln M, against a mass integrand at least ~0.1 wide for all but the rarest prior draws)
    or ``"importance"`` (32 stratified samples per halo from the Gaussian-mixture proposal,
    which is fitted over the original hyper-prior: use it with ``priors="original"``) or
    ``"adaptive"`` (a 25-node Simpson grid per halo placed by the same proposal: the method
    for ``size="full"``, near the original hyper-prior). ``n_nodes`` defaults to 201
    (quadrature) or 25 (adaptive). ``fit_sigma_obs`` other than 0.05 fits a deliberately
    mis-specified model.

    ``truth="hyper-seed"`` turns the replicate into a parameter-recovery run: the truths are
    the original catalogue's (:data:`~data_tools.halos.HYPER_SEED`) for every replicate and
    only the simulated catalogue changes with the seed; the summary's z-scores then say how
    far each posterior mean lies from them. At ``size="full"`` (115,919 halos) use
    ``method="adaptive"``: a global 201-node grid would take about 30 min per fit.
    """
    from models.mass_luminosity import PARAMETERS, PRIOR_SETS, build_model

    if method not in ("quadrature", "importance", "adaptive"):
        raise ValueError(
            f"method must be 'quadrature', 'importance' or 'adaptive', got {method!r}."
        )
    if priors not in PRIOR_SETS:
        raise ValueError(f"priors must be one of {sorted(PRIOR_SETS)}, got {priors!r}.")
    if truth not in ("prior", "hyper-seed"):
        raise ValueError(f"truth must be 'prior' or 'hyper-seed', got {truth!r}.")
    if size == "full" and method == "quadrature":
        raise ValueError(
            "a global quadrature grid at 115,919 halos takes about 30 min per fit; pass "
            "--option method=adaptive (or method=importance) with --size full."
        )
    rng = np.random.default_rng(seed)
    if truth == "prior":
        truth_values = _prior_draws(PRIOR_SETS[priors], PARAMETERS, rng)
    else:
        truth_values = dict(HYPER_SEED)
    cat = simulate_lightcone(ML_HALOS[size], truths=truth_values, sigma_obs=SIGMA_OBS, rng=rng)
    z, lum = cat["z"].values, cat["lum_obs"].values
    if method == "quadrature":
        x, lw = quadrature_nodes(z, n_nodes=n_nodes or 201)
    elif method == "adaptive":
        x, lw = adaptive_quadrature_nodes(z, lum, n_nodes=n_nodes or 25, proposal=_proposal())
    else:
        x, lw = importance_samples(z, lum, n_samples=DEFAULT_SAMPLES, proposal=_proposal(), rng=rng)
    model = build_model(z, lum, x, lw, priors=priors, sigma_obs=fit_sigma_obs)
    draws_, diag = _fit(model, PARAMETERS, rng, draws, tune)
    return FitResult(truth_values, draws_, diag)


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


@functools.cache
def _gamma_setup():
    """Return the observation and the compiled model, built once per worker."""
    import nutpie

    from data_tools.gamma.events import Observation, bin_counts, marginal_tables, simulate_events
    from models.gamma_dm import build_model

    obs = Observation()
    template = marginal_tables(obs, bin_counts(simulate_events(obs, rng=0), obs.reco))
    return obs, nutpie.compile_pymc_model(build_model(template))


def gamma_dm_replicate(
    seed: np.random.SeedSequence,
    *,
    size: str = "small",
    fit_psf_scale: float = 1.0,
    draws: int = 500,
    tune: int = 500,
) -> FitResult:
    """One SBC replicate of the gamma-ray DM mixture (the seed's geometry, 5 h at the GC).

    The DM/background node, the background split and the log10 mass are drawn from the
    model's priors (Beta(1, 1), Dirichlet(1, 1, 1), log-uniform on [0.12, 80] TeV);
    :data:`GAMMA_EVENTS` ``[size]`` events are split among the components multinomially, as
    the shape-only likelihood assumes, simulated through the response and fitted with one
    compiled model per worker. ``fit_psf_scale`` other than 1 fits tables computed with a
    PSF that many times wider: a deliberately mis-specified instrument.
    """
    from dataclasses import replace

    from data_tools.gamma.events import BACKGROUNDS, bin_counts, marginal_tables, simulate_events
    from data_tools.gamma.instrument import Instrument

    if not (np.isfinite(fit_psf_scale) and fit_psf_scale > 0):
        raise ValueError(f"fit_psf_scale must be a positive number, got {fit_psf_scale}.")
    rng = np.random.default_rng(seed)
    obs, compiled = _gamma_setup()
    f_dm = float(rng.beta(1.0, 1.0))
    split = rng.dirichlet(np.ones(3))
    log10_mass = float(rng.uniform(np.log10(0.12), np.log10(80.0)))
    truth = {"signal_fraction": f_dm, "log10_mass": log10_mass}
    truth.update({k: float(v) for k, v in zip(BACKGROUNDS, split, strict=True)})
    fractions = {"dm": f_dm, **{k: (1 - f_dm) * v for k, v in zip(BACKGROUNDS, split, strict=True)}}
    events = simulate_events(
        obs,
        n_events=GAMMA_EVENTS[size],
        fractions=fractions,
        mass=10**log10_mass,
        multinomial=True,
        rng=rng,
    )
    fit_obs = obs
    if fit_psf_scale != 1.0:
        r68 = Instrument().psf_r68_deg
        wide = Instrument(psf_r68_deg=(r68[0], tuple(fit_psf_scale * v for v in r68[1])))
        fit_obs = replace(obs, instrument=wide)
    binned = bin_counts(events, obs.reco)
    tables = marginal_tables(fit_obs, binned)
    idata = sample_compiled(
        compiled,
        data={
            "bin_counts": tables["counts"].values,
            "log_m_background": tables["log_m_background"].values,
            "log_m_dm": tables["log_m_dm"].values,
        },
        draws=draws,
        tune=tune,
        rng=rng,
    )
    post = idata["posterior"]
    draws_ = {
        "signal_fraction": post["signal_fraction"].values,
        "log10_mass": post["log10_mass"].values,
    }
    for k in BACKGROUNDS:
        draws_[k] = post["background_split"].sel(background=k).values
    names = ["signal_fraction", "log10_mass", "background_split"]
    return FitResult(truth, draws_, convergence(idata, names))


def _photoz_spectra(cat) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the spectroscopic galaxies' regression features, their covariances and z.

    As ``run photoz`` sees them by default (``photometric_errors="propagate"``).
    """
    from models.runs.photoz import PhotozRunConfig, _inputs

    spec = np.flatnonzero(np.isfinite(cat["z_spec"].to_numpy()))
    inputs = _inputs(cat, PhotozRunConfig(photometric_errors="propagate")).rows(spec)
    return inputs.features, inputs.covariance, cat["z_spec"].to_numpy()[spec]


@functools.cache
def _photoz_setup(size: str, likelihood: str):
    """Return the template model (basis and priors fixed), built and compiled once per worker.

    The template is one simulated deep field with a fixed seed: its spectroscopic galaxies
    fix the basis functions (k-means centres, length scales) and the priors' scales, as a user's
    training set would. Every replicate then simulates a new deep field and draws new
    parameters from these fixed priors, so the prior that generates is the prior that fits.
    """
    import nutpie

    from data_tools.photoz import BANDS, rbf_basis, simulate_galaxy_catalog
    from models.photoz import build_model
    from models.runs.photoz import feature_names

    X, C, z = _photoz_spectra(simulate_galaxy_catalog(PHOTOZ_GALAXIES[size], rng=20261))
    basis = rbf_basis(X, z, PHOTOZ_BASIS[size], rng=20262)
    model = build_model(
        X,
        z,
        basis=basis,
        likelihood=likelihood,
        feature_errors=C,
        feature_names=feature_names(BANDS),
    )
    return model, nutpie.compile_pymc_model(model)


def photoz_replicate(
    seed: np.random.SeedSequence,
    *,
    size: str = "small",
    likelihood: str = "normal",
    draws: int = 500,
    tune: int = 500,
) -> FitResult:
    """One SBC replicate of the photo-z regression (heteroscedastic, unweighted).

    A new deep field of :data:`PHOTOZ_GALAXIES` ``[size]`` galaxies is simulated; its
    spectroscopic galaxies, on the template's basis functions (:func:`_photoz_setup`), are the
    design. The coefficients and then every galaxy's ``ln(1 + z)`` are drawn from the model
    itself (``pm.draw`` of its prior and likelihood), and the model is refitted to them through
    the compiled template (nutpie ``with_data``). The simulated targets are the model's, not the
    catalogue's redshifts: SBC checks the model and sampler, not the templates. (Weighted fits
    are not generative models, so they cannot be calibrated this way.) The magnitude errors
    enter as in ``run photoz``'s default: propagated through the template's plug-in mean, a
    known variance per galaxy.
    """
    import pymc as pm

    from data_tools.photoz import simulate_galaxy_catalog
    from models.photoz import galaxy_data, parameter_names

    rng = np.random.default_rng(seed)
    model, compiled = _photoz_setup(size, likelihood)
    X, C, _ = _photoz_spectra(simulate_galaxy_catalog(PHOTOZ_GALAXIES[size], rng=rng))
    data = galaxy_data(model, X, feature_errors=C)
    names = parameter_names(model)  # coef, noise_coef (and nu for the Student-t)
    n = data["weight"].size
    saved = {k: model[k].get_value() for k in [*data, "log1pz_observed"]}
    saved_ids = model.coords["galaxy"]
    try:
        pm.set_data(
            data | {"log1pz_observed": np.zeros(n)}, model=model, coords={"galaxy": np.arange(n)}
        )
        with warnings.catch_warnings():
            # the likelihood's random is numpy code, which numba runs in object mode: intended
            warnings.filterwarnings("ignore", message="Numba will use object mode")
            *params, y = pm.draw(
                [model[v] for v in names] + [model["log1pz"]],
                random_seed=int(rng.integers(2**31)),
            )
    finally:
        pm.set_data(saved, model=model, coords={"galaxy": saved_ids})
    value = dict(zip(names, params, strict=True))
    idata = sample_compiled(
        compiled, data=data | {"log1pz_observed": y}, draws=draws, tune=tune, rng=rng
    )
    post = idata["posterior"]
    dims = {v: model.named_vars_to_dims.get(v) for v in names}
    coords = {v: list(model.coords[d[0]]) for v, d in dims.items() if d}
    truth, draws_ = {}, {}
    for key, (var, label) in PHOTOZ_PARAMETERS.items():
        truth[key] = float(value[var][coords[var].index(label)])
        draws_[key] = post[var].values[..., coords[var].index(label)]
    for v in (v for v, d in dims.items() if not d):  # scalars (nu) are ranked by their name
        truth[v], draws_[v] = float(value[v]), post[v].values
    return FitResult(truth, draws_, convergence(idata, names))


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
