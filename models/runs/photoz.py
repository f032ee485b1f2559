"""``astroweights run photoz``: the four training variants scored on one held-out test set.

Variants (the seed's guide): ``simple`` (the spectroscopic sample as it is), ``weighted``
(cost-sensitive learning with mixture density-ratio weights), ``divide`` (one model per
population mixture component, predictions mixed by membership probability) and
``divide-weighted`` (both). A scikit-learn ``HistGradientBoostingRegressor`` trained on the same
galaxies (unweighted and weighted) is the baseline.

On a simulated catalogue the test set is a random sample of the galaxies *without* a spectrum,
scored against the simulation's true redshift: the population the photo-z are for. On a user's
catalogue only spectroscopic galaxies have a redshift, so a random fifth of them is held out and
the report says the test set shares the training sample's bias.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any, NamedTuple

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import xarray as xr
from sklearn.ensemble import HistGradientBoostingRegressor

from data_tools._io import atomic_path, atomic_write_text
from data_tools.photoz import (
    BANDS,
    MIN_SUPPORT,
    feature_covariance,
    fit_mixtures,
    gmm_divide,
    gmm_features,
    gmm_weights,
    limits_leverage,
    metrics_table,
    pit,
    pit_coverage,
    rbf_basis,
    read_catalog,
    selection_weights,
    simulate_galaxy_catalog,
)
from models import plots
from models.inference import compare_models, convergence, format_convergence, loo_summary
from models.photoz import (
    LIKELIHOODS,
    build_model,
    coef_prior_sd,
    combine_divided,
    fit,
    loo_pit,
    model_basis,
    parameter_names,
    predict,
    prediction_summary,
)
from models.runs._common import (
    Progress,
    _jsonable,
    honours_quiet,
    write_idata,
    write_standard_outputs,
)

__all__ = ["MODES", "PhotozRunConfig", "run"]

MODES = ("simple", "weighted", "divide", "divide-weighted")
MAGNITUDE_EDGES = (-np.inf, 24.0, 25.5, 26.5, np.inf)
REDSHIFT_EDGES = (0.0, 0.5, 1.0, 1.5, 2.5, 4.0, np.inf)
WEIGHTINGS = ("mixture", "selection")
"""Where the weighted variants' weights come from: the mixtures' density ratio (the method), or
for a simulated catalogue the survey's true selection probability (the reference that tells the
mixtures' estimation error from what weighting itself does)."""
PHOTOMETRIC_ERRORS = ("propagate", "noise-inputs", "ignore")
"""How the luptitude errors enter the regression: propagated through the mean to the noise
(GPz's input-noise term), as extra inputs of the log-noise (GPz++), or not at all."""
NUTS_LIMIT = 5000
"""Training sets up to this size are fitted with NUTS by ``method="auto"``; larger with ADVI."""
REFIT_FACTOR = 4
"""A NUTS fit that fails the convergence check on mixing is fitted once more with this many
times the draws and tuning steps (``refit``), keeping every ``REFIT_FACTOR``-th draw. Twice
was not enough for the two default seeds whose runs had failed (12 and 18): seed 18's
component went from bulk ESS 194 to 364 of its kept draws (docs/photoz.md)."""


@dataclass(frozen=True)
class PhotozRunConfig:
    """Settings of one run; every field is a command-line option."""

    out: Path = Path("results/photoz")
    data: Path | None = None
    galaxies: int = 10_000
    test_size: int = 2_000
    components: int | str = 4
    modes: tuple[str, ...] = MODES
    threshold: float = 0.2
    max_weight: float = 100.0
    weights: str = "mixture"
    """``WEIGHTINGS``: ``"selection"`` (simulated catalogues only) replaces the mixtures'
    density ratios by the true ratio of the test set's density (galaxies without a spectrum) to
    the training set's, :func:`data_tools.photoz.selection_weights`; the divide variants'
    memberships still come from the population mixture."""
    basis: int = 100
    max_leverage: float | None = 0.5
    """Stretch every basis function until no training galaxy holds more than this share of its
    squared response (:func:`data_tools.photoz.rbf_basis`); ``None`` or ``1`` leaves them as the
    minimum support does. The default, 0.5, made seed 12's run, whose simple fit failed the
    check even when refitted, pass at the first attempt (docs/photoz.md)."""
    method: str = "auto"
    draws: int = 2000
    """Per chain. Each fit has 30-130 parameters and the run requires r-hat <= 1.01 for all of
    them: with 1,000 draws (bulk ESS >= 1,500) chance alone took the maximum to 1.012 at seed
    20260."""
    tune: int = 1000
    chains: int = 2
    seed: int = 20260
    bands: tuple[str, ...] = BANDS
    mag_prefix: str = "lupt_"
    err_prefix: str = "lupterr_"
    z_column: str = "z_spec"
    compare: bool = True
    refit: bool = True
    """Fit a model again with ``REFIT_FACTOR`` times the draws and tuning when its NUTS fit
    fails the convergence check (once; the report says which fits were refitted)."""
    photometric_errors: str = "propagate"
    likelihood: str = "student_t"
    quiet: bool = False
    _fields_checked: bool = field(default=True, repr=False)

    def __post_init__(self) -> None:
        for name in ("galaxies", "test_size", "basis", "draws", "chains"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.tune < 0:
            raise ValueError(f"tune must be >= 0, got {self.tune}.")
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes:
            raise ValueError(f"modes must be chosen from {MODES}, got {list(self.modes)}.")
        if not 0 < self.threshold < 1:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}.")
        if not (np.isfinite(self.max_weight) and self.max_weight > 0):
            raise ValueError(f"max_weight must be > 0, got {self.max_weight}.")
        if self.weights not in WEIGHTINGS:
            raise ValueError(f"weights must be one of {WEIGHTINGS}, got {self.weights!r}.")
        if self.weights == "selection" and self.data is not None:
            raise ValueError(
                "weights='selection' needs the simulated survey's selection probability, which "
                "a catalogue read from a file does not have; use weights='mixture' with data, or "
                "simulate the catalogue."
            )
        low = 1 / MIN_COMPONENT_MEMBERS
        if self.max_leverage is not None and not (
            np.isfinite(self.max_leverage) and low < self.max_leverage <= 1
        ):
            raise ValueError(
                f"max_leverage (--max-leverage) must be in ({low:g}, 1], got "
                f"{self.max_leverage}: above one over the fewest galaxies a model is fitted to "
                f"(a divide component's {MIN_COMPONENT_MEMBERS}); 0.5 lets no galaxy hold more "
                f"than half a basis function's response."
            )
        if self.method not in ("auto", "nuts", "advi"):
            raise ValueError(f"method must be 'auto', 'nuts' or 'advi', got {self.method!r}.")
        if not (
            self.components == "bic" or (isinstance(self.components, int) and self.components >= 1)
        ):
            raise ValueError(f"components must be an int >= 1 or 'bic', got {self.components!r}.")
        if self.photometric_errors not in PHOTOMETRIC_ERRORS:
            raise ValueError(
                f"photometric_errors must be one of {PHOTOMETRIC_ERRORS}, got "
                f"{self.photometric_errors!r}."
            )
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}.")
        if len(self.bands) < 2:
            raise ValueError(f"bands needs at least two bands, got {list(self.bands)}.")


@dataclass
class Split:
    """The catalogue divided into population, training and test galaxies."""

    catalog: pd.DataFrame
    train: np.ndarray
    test: np.ndarray
    z_test: np.ndarray
    test_is_population: bool


def _split(config: PhotozRunConfig, rng: np.random.Generator) -> Split:
    if config.data is None:
        cat = simulate_galaxy_catalog(config.galaxies, rng=rng)
        spec = np.isfinite(cat["z_spec"].to_numpy())
        pool = np.flatnonzero(~spec)
        test = np.sort(rng.choice(pool, min(config.test_size, pool.size), replace=False))
        return Split(cat, np.flatnonzero(spec), test, cat["z_true"].to_numpy()[test], True)
    cat = read_catalog(
        config.data,
        bands=config.bands,
        mag_prefix=config.mag_prefix,
        err_prefix=config.err_prefix,
        z_column=config.z_column,
    )
    spec = np.flatnonzero(np.isfinite(cat["z_spec"].to_numpy()))
    n_test = min(config.test_size, spec.size // 5)
    if n_test < 10:
        raise ValueError(
            f"{config.data}: only {spec.size} galaxies have a spectroscopic redshift; at least "
            f"50 are needed to hold out a test set."
        )
    test = np.sort(rng.choice(spec, n_test, replace=False))
    train = np.setdiff1d(spec, test)
    return Split(cat, train, test, cat["z_spec"].to_numpy()[test], False)


def _mixture_features(cat: pd.DataFrame, bands: tuple[str, ...]) -> np.ndarray:
    """Return the mixture features: the seed's for its bands (two colours and F160W).

    For other bands: the first two colours of neighbouring bands and the reddest magnitude.
    """
    if tuple(bands) == BANDS:
        return gmm_features(cat)
    colours = list(pairwise(bands))[:2]
    return gmm_features(cat, colours=colours, magnitudes=(bands[-1],))


def regression_features(cat: pd.DataFrame, bands: tuple[str, ...]) -> np.ndarray:
    """Colours of neighbouring bands and the reddest magnitude, shape ``(n, n_band)``.

    The same information as the magnitudes, in coordinates where the redshift varies along
    the axes (RBF length scales and tree splits are per feature).
    """
    return gmm_features(cat, colours=list(pairwise(bands)), magnitudes=(bands[-1],))


def feature_names(bands: tuple[str, ...]) -> list[str]:
    return [f"{a}-{b}" for a, b in pairwise(bands)] + [bands[-1]]


def _method(config: PhotozRunConfig, n_train: int) -> str:
    if config.method != "auto":
        return config.method
    return "nuts" if n_train <= NUTS_LIMIT else "advi"


@dataclass
class Variant:
    """One trained variant: its predictive draws on the test set and its fitted models."""

    samples: np.ndarray
    fits: list[tuple[Any, xr.DataTree]]
    members: list[int] = field(default_factory=list)
    seconds: float = 0.0


def _n_basis(config: PhotozRunConfig, weights: np.ndarray | None, n: int) -> int:
    """At most one basis function per ten effective galaxies (and at least five).

    A weighted training set of 1,200 galaxies with weights of ESS 88 carries the information of
    88: fitting 40 functions to it under-estimated the noise (68 % intervals covered 48 %).
    """
    n_eff = n if weights is None else weights.sum() ** 2 / (weights**2).sum()
    return int(min(config.basis, n, max(5, n_eff // 10)))


class Inputs(NamedTuple):
    """What the regression sees of a set of galaxies (see ``photometric_errors``)."""

    features: np.ndarray
    log_errors: np.ndarray | None
    """ln of the luptitude errors per band, as extra inputs of the log-noise, or None."""
    covariance: np.ndarray | None
    """The features' covariance from the luptitude errors, propagated (input noise), or None."""

    def rows(self, idx: np.ndarray) -> Inputs:
        return Inputs(*(None if a is None else a[idx] for a in self))


def _inputs(cat: pd.DataFrame, config: PhotozRunConfig) -> Inputs:
    errors = config.photometric_errors
    cov, log_err = None, None
    if errors == "propagate":
        colours = list(pairwise(config.bands))
        cov = feature_covariance(cat, colours=colours, magnitudes=config.bands[-1:])
    elif errors == "noise-inputs":
        log_err = np.log(cat[[f"lupterr_{b}" for b in config.bands]].to_numpy())
    return Inputs(regression_features(cat, config.bands), log_err, cov)


def _build(config, inputs, z, weights, rng):
    """Build the run's model for one training set: basis functions, likelihood, errors."""
    X = inputs.features
    n_basis = _n_basis(config, weights, z.size)
    basis = rbf_basis(X, z, n_basis, weights=weights, max_leverage=config.max_leverage, rng=rng)
    return build_model(
        X,
        z,
        basis=basis,
        weights=weights,
        likelihood=config.likelihood,
        noise_inputs=inputs.log_errors,
        feature_errors=inputs.covariance,
        feature_names=feature_names(config.bands),
        noise_input_names=None
        if inputs.log_errors is None
        else [f"ln err {b}" for b in config.bands],
    )


MIN_COMPONENT_MEMBERS = 20
"""A divide component with fewer training members gets no model (its galaxies are predicted by
the others); also the smallest training set ``max_leverage`` must suit."""


MIXING_CHECKS = frozenset({"r_hat", "ess_bulk", "ess_tail"})
"""The convergence checks that longer chains can pass; divergences need another model."""


def _train_one(config, inputs, z, weights, rng):
    """Build and fit one model, fitting it again once if NUTS fails on mixing.

    When a NUTS fit fails only checks that longer chains can pass (:data:`MIXING_CHECKS`,
    with r-hat defined, i.e. two chains or more), it is fitted again with ``REFIT_FACTOR``
    times the draws and tuning (``config.refit``) and every ``REFIT_FACTOR``-th draw is kept;
    its idata's ``attrs["refitted_after"]`` says how the first fit failed. The refit draws
    from a child of ``rng``, so the run's other fits get the same streams as without it.
    """
    model = _build(config, inputs, z, weights, rng)
    method = _method(config, z.size)

    def attempt(factor: int, stream) -> xr.DataTree:
        # factor x the draws, every factor-th kept: as many draws as the run's other fits (a
        # divide variant mixes its components' draws one for one), less correlated, which is
        # what a fit that failed on mixing needs; the log-likelihood is of the kept draws only
        return fit(
            model,
            method=method,
            draws=config.draws,
            tune=factor * config.tune,
            chains=config.chains,
            rng=stream,
            progressbar=not config.quiet,
            thin=factor,
        )

    idata = attempt(1, rng)
    if method != "nuts" or not config.refit:
        return model, idata
    first = convergence(idata, parameter_names(model))
    if first["ok"] or not (
        set(first["failed"]) <= MIXING_CHECKS and np.isfinite(first["max_r_hat"])
    ):
        return model, idata
    if not config.quiet:
        print(
            f"      the fit to {z.size} galaxies failed the convergence check "
            f"({format_convergence(first)}); fitting again with {REFIT_FACTOR} x the draws "
            f"and tuning",
            flush=True,
        )
    idata = attempt(REFIT_FACTOR, rng.spawn(1)[0])
    idata.attrs["refitted_after"] = format_convergence(first)
    return model, idata


def _predict(model, idata, galaxies: Inputs, rng) -> np.ndarray:
    """Predictive draws of z, ``(n_galaxy, n_draw)``, for galaxies the model did not train on."""
    return predict(
        model,
        idata,
        galaxies.features,
        noise_inputs=galaxies.log_errors,
        feature_errors=galaxies.covariance,
        rng=rng,
    ).values


def _variant(mode, config, train, z_train, test, weights, division, test_resp, rng) -> Variant:
    """Train one variant on ``train`` and predict ``test`` (both :class:`Inputs`)."""
    t0 = time.perf_counter()

    w = weights if mode in ("weighted", "divide-weighted") else None
    if mode in ("simple", "weighted"):
        model, idata = _train_one(config, train, z_train, w, rng)
        samples = _predict(model, idata, test, rng)
        return Variant(samples, [(model, idata)], seconds=time.perf_counter() - t0)
    fits, per_component, fitted = [], [], []
    for k in range(division.member.shape[1]):
        rows = np.flatnonzero(division.member[:, k])
        if rows.size < MIN_COMPONENT_MEMBERS:
            continue
        model, idata = _train_one(
            config, train.rows(rows), z_train[rows], None if w is None else w[rows], rng
        )
        fits.append((model, idata))
        per_component.append(_predict(model, idata, test, rng))
        fitted.append(k)
    if not fitted:
        raise ValueError(
            f"no mixture component has {MIN_COMPONENT_MEMBERS} or more training members at "
            f"threshold {config.threshold}; lower --threshold or use fewer --components."
        )
    samples = combine_divided(per_component, fitted_responsibility(test_resp, fitted), rng=rng)
    return Variant(samples, fits, members=fitted, seconds=time.perf_counter() - t0)


def fitted_responsibility(responsibility: np.ndarray, fitted: list[int]) -> np.ndarray:
    """Membership probabilities over the components that have a model (divide mode).

    A galaxy whose components all lack a model falls back to the fitted ones equally. Rows are
    not renormalised (:func:`models.photoz.combine_divided` does that).
    """
    r = responsibility[:, fitted]  # a copy: fancy indexing
    r[r.sum(axis=1) <= 1e-12] = 1.0
    return r


def _baseline(X, z, X_test, weights, seed) -> np.ndarray:
    model = HistGradientBoostingRegressor(random_state=seed)
    model.fit(X, np.log1p(z), sample_weight=weights)
    return np.expm1(model.predict(X_test))


@honours_quiet
def run(config: PhotozRunConfig) -> dict[str, Any]:
    """Load or simulate, weight and divide, train every variant, score, write and report."""
    t_start = time.perf_counter()
    out = Path(config.out)
    n_stages = 5 + len(config.modes) + int(config.compare)
    progress = Progress(n_stages, quiet=config.quiet)
    # The LOO-PIT draws' seed comes last, so that adding it changed no other stream.
    seeds = np.random.SeedSequence(config.seed).spawn(5 + len(MODES))
    rng_data = np.random.default_rng(seeds[0])

    source = "simulating" if config.data is None else f"reading {config.data}"
    with progress.stage(f"{source} the catalogue"):
        split = _split(config, rng_data)
    cat = split.catalog
    feats = _mixture_features(cat, config.bands)
    everything = _inputs(cat, config)
    train, test = everything.rows(split.train), everything.rows(split.test)
    X_train, X_test = train.features, test.features
    z_train = cat["z_spec"].to_numpy()[split.train]

    with progress.stage(
        f"mixtures on {feats.shape[1]} features ({len(cat)} galaxies, {split.train.size} with "
        f"z_spec): "
        + (
            "divide; true selection weights"
            if config.weights == "selection"
            else "weights and divide"
        )
    ):
        mixtures = fit_mixtures(
            feats, feats[split.train], n_components=config.components, rng=seeds[1]
        )
        if config.weights == "selection":
            # the test set: galaxies without a spectrum (selection is refused with --data)
            weights = selection_weights(
                cat, split.train, feats, target="without_spectrum", max_weight=config.max_weight
            )
        else:
            weights = gmm_weights(mixtures, feats, feats[split.train], max_weight=config.max_weight)
        division = gmm_divide(mixtures, feats[split.train], threshold=config.threshold)
        test_resp = mixtures.responsibilities(feats[split.test])

    variants: dict[str, Variant] = {}
    for mode in config.modes:
        method = _method(config, split.train.size).upper()
        with progress.stage(
            f"training '{mode}' ({method}) and predicting {split.test.size} galaxies"
        ):
            variants[mode] = _variant(
                mode,
                config,
                train,
                z_train,
                test,
                weights.values,
                division,
                test_resp,
                np.random.default_rng(seeds[4 + MODES.index(mode)]),
            )

    comparison = None
    if config.compare:
        with progress.stage("LOO: heteroscedastic vs constant noise (simple training set)"):
            comparison = _loo_noise_models(config, train, z_train, variants, seeds[2])

    with progress.stage("baseline: HistGradientBoostingRegressor on the same split"):
        seed = int(np.random.default_rng(seeds[3]).integers(2**31 - 1))
        baseline = {
            "hgb": _baseline(X_train, z_train, X_test, None, seed),
            "hgb-weighted": _baseline(X_train, z_train, X_test, weights.values, seed),
        }

    with progress.stage("leave-one-out PIT of the training galaxies, per fit"):
        loo_training = training_loo(
            variants,
            train,
            z_train,
            weights.values,
            division,
            np.random.default_rng(seeds[4 + len(MODES)]),
        )

    with progress.stage(f"scoring and writing results to {out}/"):
        groups = {
            f"lupt_{config.bands[-1]}": pd.cut(X_test[:, -1], MAGNITUDE_EDGES),
            "z_true" if split.test_is_population else "z_spec": pd.cut(
                split.z_test, REDSHIFT_EDGES
            ),
        }
        tables = []
        for mode, v in variants.items():
            summary = prediction_summary(v.samples)
            t = metrics_table(
                z_spec=split.z_test, z_phot=summary["z_phot"], samples=v.samples, groups=groups
            )
            tables.append(t.assign(variant=mode))
        for name, zp in baseline.items():
            t = metrics_table(z_spec=split.z_test, z_phot=zp, groups=groups)
            tables.append(t.assign(variant=name))
        table = pd.concat(tables, ignore_index=True)
        table = table[["variant", *[c for c in table.columns if c != "variant"]]]
        report = _report(
            config, split, mixtures, weights, division, variants, table, comparison, t_start
        )
        report["training_loo"] = {m: t.summary for m, t in loo_training.items()}
        files = _write(
            out, config, split, cat, feats, weights, variants, baseline, table, report, loo_training
        )
        report["files"] = files
        atomic_write_text(out / "report.json", json.dumps(_jsonable(report), indent=2) + "\n")
    if not config.quiet:
        print(format_report(report), flush=True)
    return report


@dataclass(frozen=True)
class TrainingLoo:
    """One variant's leave-one-out PITs of its training galaxies (:func:`training_loo`)."""

    pit: np.ndarray
    """Per training galaxy, ``(n_train,)``: uniform if the leave-one-out predictions are
    calibrated."""
    weight: np.ndarray
    """The galaxies' population-to-training density ratios, ``(n_train,)``, for
    population-weighted summaries."""
    summary: dict[str, float]
    """68 % / 95 % coverage as they are and weighted, and the share of high k-hat."""


def training_loo(
    variants: dict[str, Variant],
    train: Inputs,
    z_train: np.ndarray,
    weights: np.ndarray,
    division: Any,
    rng: np.random.Generator,
) -> dict[str, TrainingLoo]:
    """Leave-one-out PITs of the training galaxies under each variant, and their coverage.

    A variant predicts a training galaxy as it predicts a test galaxy: a divide variant by the
    mixture of its component fits by membership probability (``division.responsibility``), so
    the galaxy's PIT is ``sum_k r_k F_k(z)``, with ``F_k`` the leave-one-out predictive CDF of
    the components the galaxy trained (:func:`models.photoz.loo_pit`) and the ordinary
    predictive CDF of the others; a single fit is the case of one component that every galaxy
    trained. ``*_population`` weights each galaxy by its population-to-training density ratio:
    the calibration claimed for the population where the training set reaches it. It needs no
    redshifts beyond the training set's; galaxies unlike any in the training set are not in
    it. ``pareto_k_high`` is the share of leave-one-out PITs whose PSIS k-hat is above the
    reliable limit (``*_population``: by weight). These are the keys of each variant's
    :attr:`TrainingLoo.summary` (``report.json``'s ``training_loo``).
    """
    n = z_train.size
    out = {}
    for mode, v in variants.items():
        if v.members:
            trained = division.member[:, v.members].T
            r = fitted_responsibility(division.responsibility, v.members)
        else:
            trained, r = np.ones((1, n), dtype=bool), np.ones((n, 1))
        cdf = np.empty((n, len(v.fits)))
        k_high, w_k = [], []
        for j, ((model, idata), member) in enumerate(zip(v.fits, trained, strict=True)):
            pits = loo_pit(model, idata, rng=rng)
            cdf[member, j] = pits.values
            k_high.append(pits["pareto_k"].values > pits.attrs["good_k"])
            w_k.append(weights[member])
            others = np.flatnonzero(~member)
            if others.size:
                draws = _predict(model, idata, train.rows(others), rng)
                cdf[others, j] = pit(z_spec=z_train[others], samples=draws)
        p = (r / r.sum(axis=1, keepdims=True) * cdf).sum(axis=1)
        k_high, w_k = np.concatenate(k_high), np.concatenate(w_k)
        summary = {
            f"coverage_{round(100 * level)}{suffix}": pit_coverage(p, level=level, weights=ww)
            for level in (0.68, 0.95)
            for suffix, ww in (("", None), ("_population", weights))
        } | {
            "pareto_k_high": float(k_high.mean()),
            "pareto_k_high_population": float(np.average(k_high, weights=w_k)),
        }
        out[mode] = TrainingLoo(p, weights, summary)
    return out


def _loo_noise_models(config, train, z, variants, seed) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    X = train.features
    refitted_here = None
    if "simple" in variants:  # its diagnostics already say whether it was refitted
        model_h, idata_h = variants["simple"].fits[0]
    else:
        model_h, idata_h = _train_one(config, train, z, None, rng)
        refitted_here = idata_h.attrs.get("refitted_after")
    # The same basis functions, so that only the noise differs; both models get the propagated
    # photometric errors (data, each through its own plug-in fit).
    basis = model_basis(model_h)
    model_c = build_model(
        X,
        z,
        basis=basis,
        heteroscedastic=False,
        likelihood=config.likelihood,
        feature_errors=train.covariance,
        feature_names=feature_names(config.bands),
    )
    idata_c = fit(
        model_c,
        method=_method(config, z.size),
        draws=config.draws,
        tune=config.tune,
        chains=config.chains,
        rng=rng,
        progressbar=False,
    )
    table = compare_models({"heteroscedastic": idata_h, "constant noise": idata_c})
    out = {
        "table": table.reset_index().rename(columns={"index": "model"}).to_dict("records"),
        "loo": {"heteroscedastic": loo_summary(idata_h), "constant noise": loo_summary(idata_c)},
    }
    if refitted_here is not None:
        out["heteroscedastic_refitted_after"] = str(refitted_here)
    return out


_BASIS_WEIGHT = re.compile(r"^coef\[basis(\d+)\]$")


def _basis_support(model, idata, label: str | None) -> dict[str, Any] | None:
    """How many training galaxies inform the basis weight ``label`` names (None if it is not one).

    Read from the model's data containers, which hold its training galaxies (``predict`` puts
    them back). The support of function ``j`` is ``sum_i phi_j(x_i)`` over those galaxies;
    ``effective`` weights each galaxy as its likelihood does (weights summing to their
    effective sample size, so it equals ``galaxies`` for an unweighted fit); ``z_spec`` is the
    redshift of the galaxy nearest the centre; ``prior_sd`` is the weight's prior standard
    deviation (its clipped ARD relevance, :func:`models.photoz.relevance_sd`) and
    ``posterior_median`` its median over the fit's draws. A function informed by about one
    galaxy has a weight that, under Student-t noise, can fit that galaxy or leave it as an
    outlier: the bimodality behind seed 8's failed check before
    :func:`data_tools.photoz.rbf_basis` stretched such functions to ``MIN_SUPPORT`` galaxies. A
    stretched function can still be dominated by its nearest galaxy (seed 12: 5.0 galaxies,
    r-hat 1.015, a posterior median 5 prior sd from zero), and a weighted fit can lean on one
    heavily weighted galaxy (``effective`` below 2).
    """
    match = _BASIS_WEIGHT.match(label or "")
    if match is None:
        return None
    j = int(match.group(1))
    phi = model["design"].get_value()[:, j]
    nearest = int(np.argmax(phi))
    y = model["log1pz_observed"].get_value()[nearest]
    return {
        "basis": j,
        "galaxies": float(phi.sum()),
        "effective": float(model["weight"].get_value() @ phi),
        "z_spec": float(np.expm1(y)),
        "student_t": "nu" in model.named_vars,
        "prior_sd": float(coef_prior_sd(model).sel(term=f"basis{j}")),
        "posterior_median": float(
            idata["posterior"]["coef"].sel(term=f"basis{j}").median(("chain", "draw"))
        ),
    }


def _diagnostics(variant: Variant) -> dict[str, Any]:
    out = []
    for k, (model, idata) in enumerate(variant.fits):
        about = {"n_galaxy": int(model.dim_lengths["galaxy"].eval())}
        if variant.members:
            about["component"] = variant.members[k]
        if "sample_stats" not in idata.children:
            out.append({"method": "advi", "ok": True} | about)
            continue
        diag = convergence(idata, parameter_names(model)) | about
        if "refitted_after" in idata.attrs:
            diag["refitted_after"] = str(idata.attrs["refitted_after"])
        # the basis weight behind a failed r-hat or bulk-ESS check, if one is
        for check in ("r_hat", "ess_bulk"):
            label = diag[f"worst_{check}"] if check in diag["failed"] else None
            support = _basis_support(model, idata, label)
            if support is not None:
                diag["basis_support"] = support
                break
        out.append(diag)
    return {"fits": out, "ok": all(d["ok"] for d in out)}


def _report(config, split, mixtures, weights, division, variants, table, comparison, t_start):
    overall = table[table["group"] == "all"].set_index("variant")
    diagnostics = {m: _diagnostics(v) for m, v in variants.items()}
    return {
        "config": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in asdict(config).items()
            if not k.startswith("_")
        },
        "catalogue": {
            "galaxies": len(split.catalog),
            "training": int(split.train.size),
            "test": int(split.test.size),
            "test_set": "random galaxies without z_spec, scored against the simulation's truth"
            if split.test_is_population
            else "random fifth of the spectroscopic galaxies (shares the training sample's bias)",
        },
        "mixtures": {
            "components": mixtures.n_components,
            "bic": mixtures.bic,
            "weights": config.weights,
            "weights_ess": weights.ess,
            "weights_capped": weights.n_capped,
            "divergence_unweighted": weights.divergence_unweighted.tolist(),
            "divergence_weighted": weights.divergence_weighted.tolist(),
            "training_members_per_component": division.counts().tolist(),
            "threshold": division.threshold,
        },
        "overall": overall.drop(columns=["group", "bin"]).to_dict("index"),
        "seconds_per_variant": {m: v.seconds for m, v in variants.items()},
        "diagnostics": diagnostics | {"ok": all(d["ok"] for d in diagnostics.values())},
        "loo_noise_models": comparison,
        "loo_note": "LOO compares models fitted to the same galaxies with the same unweighted "
        "likelihood (here: heteroscedastic vs constant noise). Weighted variants multiply "
        "each log-likelihood term by a weight, so their 'pointwise log-likelihood' is not a "
        "predictive density, and divide variants are fitted to different subsets: compare "
        "those on the held-out test set instead (metrics.csv).",
        "seconds": time.perf_counter() - t_start,
    }


def _write(
    out, config, split, cat, feats, weights, variants, baseline, table, report, loo_training
):
    out.mkdir(parents=True, exist_ok=True)
    first = next(iter(variants))
    model, idata = variants[first].fits[0]
    files = write_standard_outputs(out, idata, parameter_names(model), report)
    for mode, v in variants.items():
        for k, (_, idata_k) in enumerate(v.fits):
            suffix = f"_{v.members[k]}" if v.members else ""
            name = f"idata_{mode}{suffix}.nc"
            write_idata(idata_k, out / name)
            files.append(name)
    preds = {
        "id": cat["id"].to_numpy()[split.test],
        "z_true" if split.test_is_population else "z_spec": split.z_test,
    }
    for mode, v in variants.items():
        for key, value in prediction_summary(v.samples).items():
            preds[f"{mode}:{key}"] = value
        preds[f"{mode}:pit"] = pit(z_spec=split.z_test, samples=v.samples)
    for name, zp in baseline.items():
        preds[f"{name}:z_phot"] = zp
    with atomic_path(out / "predictions.csv") as tmp:
        pd.DataFrame(preds).to_csv(tmp, index=False)
    with atomic_path(out / "metrics.csv") as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(out / "weights.csv") as tmp:
        pd.DataFrame({"id": cat["id"].to_numpy()[split.train], "weight": weights.values}).to_csv(
            tmp, index=False
        )
    files += ["predictions.csv", "metrics.csv", "weights.csv"]
    plots.save_figure(zphot_figure(split.z_test, variants, baseline), out / "zphot_zspec.png")
    plots.save_figure(
        weighting_figure(feats, feats[split.train], weights.values), out / "features_weighting.png"
    )
    plots.save_figure(pit_figure(split.z_test, variants, training=loo_training), out / "pit.png")
    plots.save_trace(idata, ["coef", "noise_coef"], out / "trace.png")
    files += ["zphot_zspec.png", "features_weighting.png", "pit.png", "trace.png"]
    return files


def _stretch(z):
    return np.log10(1 + np.asarray(z))


def zphot_figure(z_test, variants, baseline) -> plt.Figure:
    """z_phot against z_spec per variant on the seed's log(1 + z) axes, with 68 % error bars."""
    names = [*variants, "hgb"]
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.4), squeeze=False)
    ticks = np.array([0, 0.5, 1, 2, 3, 5, 7])
    for ax, name in zip(axes[0], names, strict=True):
        if name in variants:
            s = prediction_summary(variants[name].samples)
            zp = s["z_phot"]
            err = np.clip([zp - s["z_lo68"], s["z_hi68"] - zp], 0, None)
            ax.errorbar(
                _stretch(z_test),
                _stretch(zp),
                yerr=[_stretch(zp) - _stretch(zp - err[0]), _stretch(zp + err[1]) - _stretch(zp)],
                fmt="o",
                ms=2,
                alpha=0.25,
                color="C0",
                ecolor="C0",
                elinewidth=0.5,
            )
        else:
            zp = baseline[name]
            ax.plot(_stretch(z_test), _stretch(zp), "o", ms=2, alpha=0.25, color="k")
        dz = (zp - z_test) / (1 + z_test)
        nmad = 1.4826 * np.median(np.abs(dz - np.median(dz)))
        ax.plot(_stretch([0, 7]), _stretch([0, 7]), "--", color="0.5")
        ax.set(
            xticks=_stretch(ticks),
            yticks=_stretch(ticks),
            xticklabels=ticks,
            yticklabels=ticks,
            xlim=_stretch([0, 7]),
            ylim=_stretch([0, 7]),
            xlabel=r"$z_{\rm spec}$",
            title=name,
        )
        ax.text(
            0.05,
            0.9,
            f"$\\sigma_{{NMAD}}$ = {nmad:.3f}\nOLF = {np.mean(abs(dz) > 0.15):.3f}",
            transform=ax.transAxes,
            va="top",
            fontsize=8,
        )
    axes[0, 0].set_ylabel(r"$z_{\rm phot}$")
    fig.tight_layout()
    return fig


def weighting_figure(X_pop, X_train, weights, *, labels=None) -> plt.Figure:
    """Plot population, training and weighted-training feature histograms (the seed's check)."""
    d = X_pop.shape[1]
    labels = labels or ["F606W - F814W", "F814W - F125W", "F160W"][:d] + [
        f"x{j}" for j in range(3, d)
    ]
    fig, axes = plt.subplots(1, d, figsize=(3.2 * d, 3.0), squeeze=False)
    for j, ax in enumerate(axes[0]):
        lo, hi = np.percentile(X_pop[:, j], [0.1, 99.9])
        bins = np.linspace(lo, hi, 26)
        ax.hist(X_pop[:, j], bins, density=True, histtype="step", lw=2, label="population")
        ax.hist(
            X_train[:, j],
            bins,
            density=True,
            histtype="step",
            lw=2,
            color="firebrick",
            label="training",
        )
        ax.hist(
            X_train[:, j],
            bins,
            density=True,
            histtype="step",
            lw=2,
            color="firebrick",
            ls="--",
            weights=weights,
            label="weighted training",
        )
        ax.set(xlabel=labels[j], ylabel="density")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def pit_figure(
    z_test: np.ndarray,
    variants: dict[str, Variant],
    *,
    training: dict[str, TrainingLoo] | None = None,
) -> plt.Figure:
    """PIT histograms per variant (flat when the predictive distributions are calibrated).

    With ``training`` (:func:`training_loo`), each panel also outlines the training
    galaxies' leave-one-out PITs, as they are and weighted to the population: a hump in the
    middle of both the training and the test histogram is over-dispersion, a test histogram
    piled at the edges beside a flat training one is the shift to the population.
    """
    fig, axes = plt.subplots(1, len(variants), figsize=(3.0 * len(variants), 2.8), squeeze=False)
    for ax, (name, v) in zip(axes[0], variants.items(), strict=True):
        values = pit(z_spec=z_test, samples=v.samples)
        ax.hist(
            values, bins=20, range=(0, 1), density=True, color="C0", alpha=0.6, label="test set"
        )
        if training is not None and name in training:
            t = training[name]
            for w, colour, label in (
                (None, "C1", "training LOO"),
                (t.weight, "C2", "training LOO, weighted"),
            ):
                ax.hist(
                    t.pit,
                    bins=20,
                    range=(0, 1),
                    density=True,
                    weights=w,
                    histtype="step",
                    color=colour,
                    lw=1.5,
                    label=label,
                )
        ax.axhline(1.0, color="k", ls="--")
        ax.set(title=name, xlabel="PIT")
    axes[0, 0].set_ylabel("density")
    if training is not None:
        axes[0, 0].legend(fontsize="small", frameon=False)
    fig.tight_layout()
    return fig


def format_report(report: dict[str, Any]) -> str:
    """Format the overall metrics table and the diagnostics, as printed at the end of a run."""
    lines = [
        f"catalogue: {report['catalogue']['galaxies']} galaxies, "
        f"{report['catalogue']['training']} training, {report['catalogue']['test']} test "
        f"({report['catalogue']['test_set']})",
        f"mixtures: {report['mixtures']['components']} components; weights ESS "
        f"{report['mixtures']['weights_ess']:.0f}, {report['mixtures']['weights_capped']} capped"
        + (
            " (the simulated survey's true selection, not the mixtures')"
            if report["mixtures"].get("weights") == "selection"
            else ""
        ),
        "",
        f"{'variant':<16} {'sigma_NMAD':>10} {'bias':>8} {'outliers':>9} {'cov68':>6} {'cov95':>6}",
    ]
    for name, row in report["overall"].items():
        c68 = row.get("coverage_68")
        c95 = row.get("coverage_95")
        cov = (
            f"{c68:6.3f} {c95:6.3f}"
            if c68 is not None and np.isfinite(c68)
            else f"{'-':>6} {'-':>6}"
        )
        lines.append(
            f"{name:<16} {row['sigma_nmad']:10.3f} {row['bias']:8.3f} "
            f"{row['outlier_fraction']:9.3f} {cov}"
        )
    if report.get("training_loo"):
        lines += [
            "",
            "training galaxies' leave-one-out coverage, as they are and weighted to the population",
            f"{'variant':<16} {'cov68':>6} {'cov95':>6} {'pop68':>6} {'pop95':>6} "
            f"{'high k-hat':>10}",
        ]
        for name, row in report["training_loo"].items():
            lines.append(
                f"{name:<16} {row['coverage_68']:6.3f} {row['coverage_95']:6.3f} "
                f"{row['coverage_68_population']:6.3f} {row['coverage_95_population']:6.3f} "
                f"{row['pareto_k_high']:10.1%}"
            )
    ok = report["diagnostics"]["ok"]
    lines.append("")
    lines.append(
        f"convergence: {'ok' if ok else 'CHECK (see report.json)'}; "
        f"{report['seconds']:.0f} s in all"
    )
    for mode, diag in report["diagnostics"].items():
        if mode == "ok":
            continue
        for one in diag["fits"]:
            if one["ok"] and "refitted_after" not in one:
                continue
            which = f"{mode} fit" + (
                f" (component {one['component']})" if "component" in one else ""
            )
            if "refitted_after" in one:
                lines.append(
                    f"  {which}: fitted again with {REFIT_FACTOR} x the draws after "
                    f"{one['refitted_after']}"
                )
            if one["ok"]:
                continue
            lines.append(f"  {which}: {format_convergence(one)}")
            if "basis_support" in one:
                leverage = report.get("config", {}).get("max_leverage")
                hint = not limits_leverage(leverage)
                lines.append(_format_support(one["basis_support"], hint=hint))
    return "\n".join(lines)


def _format_support(support: dict[str, Any], *, hint: bool = True) -> str:
    """Say how many galaxies inform a failing basis weight's function (a report line).

    ``hint``: suggest ``--max-leverage`` for a function stretched to the minimum support (the
    run did not use it). Not for one heavily weighted galaxy: leverage ignores the weights.
    """
    weighted = not np.isclose(support["effective"], support["galaxies"])
    line = (
        f"    basis function {support['basis']} is informed by {support['galaxies']:.1f} "
        f"training galaxies"
        + (f" ({support['effective']:.1f} effective)" if weighted else "")
        + f", the nearest at z_spec {support['z_spec']:.2f};\n    its weight's posterior median "
        f"{support['posterior_median']:.2f} is "
        f"{abs(support['posterior_median']) / support['prior_sd']:.1f} prior sd "
        f"({support['prior_sd']:.2f}) from zero"
    )
    # as few galaxies as rbf_basis leaves a function (it stretches the rest to MIN_SUPPORT),
    # or about one galaxy's weight in a weighted fit
    few = support["galaxies"] < MIN_SUPPORT + 0.5 or support["effective"] < 2
    if few and support["student_t"]:
        line += (
            ":\n    under Student-t noise its weight can fit the nearest galaxy or leave it as an "
            "outlier,\n    two modes the chains cross rarely (the further out in its prior "
            "fitting the galaxy\n    puts the weight, the more the second weighs; "
            "docs/photoz.md). "
            "Another --seed\n    redraws the split and the k-means centres (and a simulated "
            "catalogue)"
        )
        if hint and support["galaxies"] < MIN_SUPPORT + 0.5:
            line += ";\n    --max-leverage 0.5 widens every function that one galaxy dominates"
        line += "."
    return line
