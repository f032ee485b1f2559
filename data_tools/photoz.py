r"""Photometric redshifts: a synthetic deep-field catalogue, mixture weights, metrics.

Catalogue (:func:`simulate_galaxy_catalog`)
-------------------------------------------
An H-band (F160W) selected deep field with four HST bands, built from documented pieces:

- **Galaxies per comoving volume.** Redshifts and rest-frame AB absolute magnitudes ``M`` (at
  5000 A) are drawn from ``dV/dz * phi(M, z)``, a Schechter function with ``alpha = -1.3``,
  ``M*(z) = -20.7 - 1.1 log10(1 + z)`` (brightening with redshift) and
  ``phi*(z) ∝ (1 + z)^-0.4`` up to ``z = 1``, falling as ``(1 + z)^-2.2`` beyond (the decline of
  the number density to ``z ~ 7``), in flat LCDM (H0 = 70, Omega_m = 0.3).
- **Spectral energy distributions.** Four templates (:data:`TEMPLATES`: elliptical, spiral,
  irregular, starburst) whose ``f_lambda`` is a power law of slope ``beta_uv`` below 4000 A and
  ``beta_opt`` above, joined by a 4000 A / Balmer break of amplitude ``D4000`` smoothed over
  ~150 A, zero below the 912 A Lyman limit. Dust follows the Charlot & Fall (2000) power law,
  ``A_lambda = A_V (lambda / 5500 A)^-0.7``. The mix of types changes with redshift (fewer old
  ellipticals, more starbursts at high z). Emission lines ([O II] 3727 A, [O III] + H-beta
  at 4980 A, H-alpha) are delta functions of the template's rest equivalent width, reddened with
  the continuum.
- **Intergalactic attenuation.** Madau (1995) Lyman-series forest, ``tau = sum_j A_j
  (lambda_obs / lambda_j)^3.46`` for ``lambda_j < lambda_obs < lambda_j (1 + z)`` with
  ``A_j = 3.6e-3, 1.7e-3, 1.2e-3, 9.3e-4`` for Ly-alpha to Ly-delta, and no flux below the Lyman
  limit: the Lyman break moves through F606W at z ~ 4-5 and F814W at z ~ 6-7.
- **Filters.** Smooth top hats (error-function edges, 80 A) over the HST passbands F606W
  4700-7200 A, F814W 6900-9600 A, F125W 10900-14100 A and F160W 13950-16800 A. Band fluxes are
  photon-weighted means of ``f_nu`` (the AB convention).
- **Noise.** Gaussian flux errors from the 5-sigma depths :data:`DEPTHS` (CANDELS-like) plus a
  2 % calibration floor. Fluxes are in microjansky (AB zero point 23.9).
- **Magnitudes.** Asinh magnitudes (luptitudes, Lupton, Gunn & Szalay 1999) with softening
  ``b = 1.042 sigma_f`` per band; they stay finite for faint and negative fluxes.
- **Detection.** Observed F160W signal-to-noise >= 5.
- **Spectroscopy.** A galaxy gets ``z_spec`` with probability
  ``0.85 s((24 - m_814) / 0.25) + 0.06 s((25.5 - m_160) / 0.25)`` times a redshift-success rate
  ``1 - 0.5 exp(-((z - 2) / 0.5)^2)`` (the 1.5 < z < 2.5 "redshift desert"), ``s`` the logistic
  function, ``m`` the observed luptitudes: an optical magnitude-limited survey plus a small
  near-infrared-selected one. The spectroscopic sample is therefore brighter and at lower
  redshift than the population, as in real fields.

Mixture weights and divide (:func:`fit_mixtures`, :func:`gmm_weights`, :func:`gmm_divide`)
-------------------------------------------------------------------------------------------
Features are robust-scaled with a scaler fitted on the population. One full-covariance Gaussian
mixture is fitted to the population and one to the training set. The weight of a training
galaxy is ``w = (p_pop(x) + eta) / (p_train(x) + eta)``, capped at ``max_weight`` and not
renormalised (Hatfield et al. 2020; the original tool's formula). A galaxy belongs to component
``k`` if the population mixture's responsibility is strictly above ``threshold``.

For a simulated catalogue the true weights are known: with ``P`` the spectroscopic selection
probability above (:func:`selection_probability`), which depends on the redshift as well as
the photometry, :func:`selection_weights` gives each training galaxy ``mean(P) / P_i`` (the
ratio to the whole catalogue) or ``(1 - P_i) / P_i`` normalised likewise (the ratio to the
galaxies without a spectrum). They are the reference against which the mixtures' estimate can
be judged, not a method for real data.

Metrics (:func:`point_metrics`, :func:`interval_metrics`)
----------------------------------------------------------
``dz = (z_phot - z_spec) / (1 + z_spec)``; ``sigma_NMAD = 1.4826 median(|dz - median(dz)|)``;
``bias = median(dz)``; outlier fraction = ``mean(|dz| > 0.15)``. The arguments are keyword-only
so that ``z_phot`` and ``z_spec`` cannot be swapped.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize
from scipy.integrate import cumulative_trapezoid
from scipy.special import erf, expit
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from sklearn.preprocessing import RobustScaler

from data_tools.checks import as_finite_array, as_index, as_int

__all__ = [
    "BANDS",
    "DEPTHS",
    "FILTERS",
    "SELECTION_TARGETS",
    "TEMPLATES",
    "Mixtures",
    "RBFBasis",
    "Weights",
    "band_fluxes",
    "coverage",
    "feature_covariance",
    "feature_divergence",
    "fit_mixtures",
    "gmm_divide",
    "gmm_features",
    "gmm_weights",
    "interval_metrics",
    "limits_leverage",
    "luptitudes",
    "metrics_table",
    "pit",
    "pit_coverage",
    "point_metrics",
    "rbf_basis",
    "read_catalog",
    "selection_probability",
    "selection_weights",
    "simulate_galaxy_catalog",
]

BANDS = ("F606W", "F814W", "F125W", "F160W")

FILTERS: dict[str, tuple[float, float]] = {
    "F606W": (4700.0, 7200.0),
    "F814W": (6900.0, 9600.0),
    "F125W": (10900.0, 14100.0),
    "F160W": (13950.0, 16800.0),
}
"""Passband edges in Angstrom of the smooth top-hat filter approximations."""

FILTER_EDGE = 80.0
"""Width (Angstrom) of the error-function edges of each filter."""

DEPTHS: dict[str, float] = {"F606W": 27.8, "F814W": 27.5, "F125W": 27.2, "F160W": 27.0}
"""5-sigma point-source depths, AB magnitudes (CANDELS-like)."""

CALIBRATION_FLOOR = 0.02
"""Fractional flux error added in quadrature (zero points, apertures)."""

AB_ZERO_POINT_UJY = 23.9
"""``m_AB = 23.9 - 2.5 log10(f / microjansky)``."""

TEMPLATES: dict[str, dict[str, float]] = {
    "elliptical": {
        "bump": 0.5,
        "beta_uv": 2.0,
        "beta_opt": -1.0,
        "d4000": 2.0,
        "mean_av": 0.05,
        "ew_oii": 0.0,
        "ew_oiii": 0.0,
        "ew_ha": 0.0,
    },
    "spiral": {
        "bump": 0.35,
        "beta_uv": 0.0,
        "beta_opt": -1.5,
        "d4000": 1.6,
        "mean_av": 0.2,
        "ew_oii": 10.0,
        "ew_oiii": 10.0,
        "ew_ha": 30.0,
    },
    "irregular": {
        "bump": 0.2,
        "beta_uv": -1.5,
        "beta_opt": -1.6,
        "d4000": 1.45,
        "mean_av": 0.15,
        "ew_oii": 30.0,
        "ew_oiii": 60.0,
        "ew_ha": 80.0,
    },
    "starburst": {
        "bump": 0.1,
        "beta_uv": -2.0,
        "beta_opt": -1.6,
        "d4000": 1.3,
        "mean_av": 0.1,
        "ew_oii": 60.0,
        "ew_oiii": 150.0,
        "ew_ha": 200.0,
    },
}
"""SED template parameters: ``f_lambda`` slopes below/above 4000 A, the break amplitude, the
mean of the exponential A_V distribution, the amplitude (in ln f) of the 1.6 micron bump and
rest-frame equivalent widths (A) of [OII] 3727,
H-beta + [OIII] (4980) and H-alpha + [NII] (6563)."""

_LINES = {"ew_oii": 3727.0, "ew_oiii": 4980.0, "ew_ha": 6563.0}

_LYMAN_SERIES = ((1215.67, 3.6e-3), (1025.72, 1.7e-3), (972.54, 1.2e-3), (949.74, 9.3e-4))
_LYMAN_LIMIT = 911.8
_REFERENCE_WAVELENGTH = 5000.0
_H0, _OMEGA_M, _C_KM_S = 70.0, 0.3, 299_792.458
_Z_MAX = 7.5


# --- catalogue -----------------------------------------------------------------------------


def _distance_modulus(z: np.ndarray) -> np.ndarray:
    """Flat LCDM distance modulus, tabulated on a fine grid and interpolated."""
    grid = np.linspace(0.0, _Z_MAX + 0.5, 4001)
    inv_e = 1.0 / np.sqrt(_OMEGA_M * (1 + grid) ** 3 + 1 - _OMEGA_M)
    d_c = _C_KM_S / _H0 * cumulative_trapezoid(inv_e, grid, initial=0.0)  # Mpc
    d_l = (1 + grid[1:]) * d_c[1:]
    mu = 5 * np.log10(d_l * 1e5)  # 10 pc = 1e-5 Mpc
    return np.interp(z, grid[1:], mu)


def _comoving_volume_density(z: np.ndarray) -> np.ndarray:
    """dV/dz per unit solid angle, up to a constant: d_C(z)^2 / E(z)."""
    grid = np.linspace(0.0, _Z_MAX + 0.5, 4001)
    inv_e = 1.0 / np.sqrt(_OMEGA_M * (1 + grid) ** 3 + 1 - _OMEGA_M)
    d_c = cumulative_trapezoid(inv_e, grid, initial=0.0)
    return np.interp(z, grid, d_c**2 * inv_e)


def _template_flambda(name: str, rest_wavelength: np.ndarray) -> np.ndarray:
    """Unreddened template ``f_lambda`` (arbitrary units), zero below the Lyman limit."""
    p = TEMPLATES[name]
    x = rest_wavelength / 4000.0
    log_x = np.log(np.maximum(x, 1e-12))
    # Below the break the slope is beta_uv; above, beta_opt, and the level jumps by d4000.
    step = expit((rest_wavelength - 4000.0) / 25.0)  # ~150 A from 5 % to 95 %
    log_f = np.where(log_x < 0, p["beta_uv"] * log_x, p["beta_opt"] * log_x)
    log_f = log_f + step * np.log(p["d4000"])
    # The stellar H- opacity minimum: a bump in the near-infrared continuum at 1.6 micron.
    log_f = log_f + p["bump"] * np.exp(-0.5 * (np.log(rest_wavelength / 16000.0) / 0.25) ** 2)
    return np.where(rest_wavelength > _LYMAN_LIMIT, np.exp(log_f), 0.0)


def _igm_transmission(observed_wavelength: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Madau (1995) Lyman-series transmission; broadcasts ``(n, 1)`` against ``(n_lambda,)``."""
    tau = np.zeros(np.broadcast_shapes(np.shape(observed_wavelength), np.shape(z)))
    for lam_j, a_j in _LYMAN_SERIES:
        inside = (observed_wavelength > lam_j) & (observed_wavelength < lam_j * (1 + z))
        tau = tau + np.where(inside, a_j * (observed_wavelength / lam_j) ** 3.46, 0.0)
    return np.exp(-tau)


def _filter_curve(band: str, wavelength: np.ndarray) -> np.ndarray:
    lo, hi = FILTERS[band]
    return 0.5 * (erf((wavelength - lo) / FILTER_EDGE) - erf((wavelength - hi) / FILTER_EDGE))


_OBS_GRID = np.geomspace(4200.0, 17500.0, 400)


def band_fluxes(
    z: Any, template: Sequence[str] | np.ndarray, a_v: Any, absolute_magnitude: Any
) -> dict[str, np.ndarray]:
    """Noiseless band fluxes (microjansky) of galaxies through the four filters.

    Parameters
    ----------
    z, a_v, absolute_magnitude
        Redshift (> 0), V-band attenuation (mag, >= 0) and rest-frame AB absolute magnitude at
        5000 A, shape ``(n,)``.
    template
        Template name per galaxy (keys of :data:`TEMPLATES`), shape ``(n,)``.

    Returns
    -------
    dict
        ``{band: flux}`` with flux shape ``(n,)``.
    """
    z = as_finite_array("z", z, positive=True)
    a_v = as_finite_array("a_v", a_v, nonnegative=True)
    m_abs = as_finite_array("absolute_magnitude", absolute_magnitude)
    template = np.asarray(template)
    unknown = set(np.unique(template)) - set(TEMPLATES)
    if unknown:
        raise ValueError(f"template has unknown names {sorted(unknown)}; use {list(TEMPLATES)}.")
    curves = {b: _filter_curve(b, _OBS_GRID) / _OBS_GRID for b in BANDS}  # photon weighting
    norms = {b: np.trapezoid(c, _OBS_GRID) for b, c in curves.items()}
    out = {b: np.empty(z.size) for b in BANDS}
    ref = {
        name: _template_flambda(name, np.array([_REFERENCE_WAVELENGTH]))[0] for name in TEMPLATES
    }
    for start in range(0, z.size, 4096):
        sl = slice(start, start + 4096)
        zz = z[sl, None]
        rest = _OBS_GRID[None, :] / (1 + zz)
        f_lambda = np.empty(rest.shape)
        for name in TEMPLATES:
            rows = template[sl] == name
            if rows.any():
                f_lambda[rows] = _template_flambda(name, rest[rows]) / ref[name]
        dust = 10 ** (
            -0.4
            * a_v[sl, None]
            * ((rest / 5500.0) ** -0.7 - (_REFERENCE_WAVELENGTH / 5500.0) ** -0.7)
        )
        # f_nu ∝ lambda^2 f_lambda, relative to f_nu at the rest reference wavelength.
        f_nu_rel = f_lambda * dust * (rest / _REFERENCE_WAVELENGTH) ** 2
        f_nu_rel = f_nu_rel * _igm_transmission(_OBS_GRID[None, :], zz)
        # m = M + DM(z) - 2.5 log10(1+z) - 2.5 log10(f_nu_rel)
        level = 10 ** (
            -0.4
            * (m_abs[sl] + _distance_modulus(z[sl]) - 2.5 * np.log10(1 + z[sl]) - AB_ZERO_POINT_UJY)
        )
        lines = _line_terms(template[sl], z[sl], a_v[sl])
        for b in BANDS:
            continuum = np.trapezoid(f_nu_rel * curves[b], _OBS_GRID, axis=1)
            in_band = sum(strength * _filter_curve(b, lam * (1 + z[sl])) for lam, strength in lines)
            out[b][sl] = level * (continuum + in_band) / norms[b]
    return out


def _line_terms(template: np.ndarray, z: np.ndarray, a_v: np.ndarray):
    """Emission lines as delta functions: ``(rest wavelength, strength)`` per line.

    A line of rest equivalent width ``W`` on continuum ``f_lambda,c`` adds
    ``W f_lambda,c(l) dust(l) (l / 5000)^2 T(l (1 + z)) / l`` to the photon-weighted band
    integral of ``f_nu`` (the continuum's units in :func:`band_fluxes`).
    """
    out = []
    for key, lam in _LINES.items():
        ew = np.array([TEMPLATES[t][key] for t in TEMPLATES])
        names = list(TEMPLATES)
        idx = np.searchsorted(names, template, sorter=np.argsort(names))
        ew = ew[np.argsort(names)][idx]
        cont = np.array(
            [
                _template_flambda(t, np.array([lam]))[0]
                / _template_flambda(t, np.array([_REFERENCE_WAVELENGTH]))[0]
                for t in TEMPLATES
            ]
        )[np.argsort(names)][idx]
        dust = 10 ** (
            -0.4 * a_v * ((lam / 5500.0) ** -0.7 - (_REFERENCE_WAVELENGTH / 5500.0) ** -0.7)
        )
        out.append((lam, ew * cont * dust * (lam / _REFERENCE_WAVELENGTH) ** 2 / lam))
    return out


def flux_error(band: str) -> float:
    """1-sigma background flux error (microjansky) of a band from its 5-sigma depth."""
    return 10 ** (-0.4 * (DEPTHS[band] - AB_ZERO_POINT_UJY)) / 5.0


def luptitudes(flux: Any, flux_err: Any, *, softening: Any) -> tuple[np.ndarray, np.ndarray]:
    """Asinh magnitudes and their errors (Lupton, Gunn & Szalay 1999), AB, from microjansky.

    ``mu = -2.5/ln10 [asinh(f / 2b) + ln b] + 23.9`` and
    ``sigma_mu = 2.5/ln10 * sigma_f / sqrt(f^2 + 4 b^2)``.

    Parameters
    ----------
    flux, flux_err
        Fluxes (any sign) and their 1-sigma errors (> 0), microjansky, same shape.
    softening
        ``b`` (> 0), microjansky: scalar or broadcastable to ``flux``.
    """
    f = as_finite_array("flux", flux, ndim=None)
    err = as_finite_array("flux_err", flux_err, ndim=None, positive=True)
    b = as_finite_array("softening", softening, ndim=None, positive=True)
    k = 2.5 / np.log(10)
    mu = -k * (np.arcsinh(f / (2 * b)) + np.log(b)) + AB_ZERO_POINT_UJY
    return mu, k * err / np.sqrt(f**2 + 4 * b**2)


def _type_probabilities(z: np.ndarray) -> np.ndarray:
    p_ell = 0.30 * np.exp(-z / 1.2)
    p_sb = 0.05 + 0.35 * (1 - np.exp(-z / 2.0))
    rest = 1 - p_ell - p_sb
    return np.stack([p_ell, 0.6 * rest, 0.4 * rest, p_sb], axis=1)


def _draw_galaxies(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Candidate galaxies from dV/dz phi(M, z) before detection."""
    grid = np.linspace(0.02, 7.0, 3000)
    evol = np.where(grid < 1, (1 + grid) ** -0.4, 2**-0.4 * ((1 + grid) / 2) ** -2.2)
    # Integral of the Schechter function from M* + 6 to -infinity scales phi* only, but the
    # faint limit in apparent magnitude is what matters: sample M up to M_faint = -15.
    pdf = _comoving_volume_density(grid) * evol
    cdf = np.cumsum(pdf)
    z = np.interp(rng.uniform(0, cdf[-1], n), cdf, grid)
    m_star = -20.7 - 1.1 * np.log10(1 + z)
    # Schechter in luminosity: L/L* ~ Gamma(alpha + 1) truncated at L_min; alpha + 1 = -0.3 < 0,
    # so draw by inverse CDF on a grid of x = L / L* above the faint limit.
    x_grid = np.geomspace(1e-3, 30, 2000)
    dens = x_grid ** (-1.3) * np.exp(-x_grid) * x_grid  # per d ln x
    c = np.cumsum(dens)
    x_min = 10 ** (-0.4 * (-15.0 - m_star))  # L_min / L*
    u_lo = np.interp(np.log(np.clip(x_min, x_grid[0], x_grid[-1])), np.log(x_grid), c)
    u = rng.uniform(u_lo, c[-1])
    x = np.exp(np.interp(u, c, np.log(x_grid)))
    m_abs = m_star - 2.5 * np.log10(x)
    probs = _type_probabilities(z)
    names = np.array(list(TEMPLATES))
    idx = (rng.uniform(size=(n, 1)) > np.cumsum(probs, axis=1)).sum(axis=1)
    template = names[np.minimum(idx, len(names) - 1)]
    mean_av = np.array([TEMPLATES[t]["mean_av"] for t in names])[np.minimum(idx, 3)]
    a_v = rng.exponential(mean_av)
    return {"z_true": z, "template": template, "a_v": a_v, "abs_mag": m_abs}


def _spec_probability(lupt: Mapping[str, np.ndarray], z: np.ndarray) -> np.ndarray:
    optical = 0.85 * expit((24.0 - lupt["F814W"]) / 0.25)
    infrared = 0.06 * expit((25.5 - lupt["F160W"]) / 0.25)
    success = 1 - 0.5 * np.exp(-(((z - 2.0) / 0.5) ** 2))
    return np.clip(optical + infrared, 0, 1) * success


def selection_probability(catalog: pd.DataFrame) -> np.ndarray:
    """Return each galaxy's probability of a spectrum in the simulated survey.

    The module docstring's formula (Spectroscopy), from the observed F814W and F160W
    luptitudes and the true redshift: known only for a simulated catalogue.

    Parameters
    ----------
    catalog
        From :func:`simulate_galaxy_catalog`: columns ``lupt_F814W``, ``lupt_F160W`` and
        ``z_true``.

    Returns
    -------
    numpy.ndarray
        ``(n_galaxy,)``, in (0, 1).

    Raises
    ------
    ValueError
        The catalogue lacks ``lupt_F814W``, ``lupt_F160W`` or ``z_true`` (a real catalogue has
        no known selection: weight it with :func:`gmm_weights`), or they are not finite, or a
        ``z_true`` is negative.
    """
    needed = ["lupt_F814W", "lupt_F160W", "z_true"]
    missing = [c for c in needed if c not in catalog.columns]
    if missing:
        raise ValueError(
            f"catalog lacks column(s) {missing}: the selection probability is known only for a "
            f"catalogue from simulate_galaxy_catalog; estimate weights with gmm_weights instead."
        )
    lupt = {
        b: as_finite_array(f"catalog['lupt_{b}']", catalog[f"lupt_{b}"], ndim=1)
        for b in ("F814W", "F160W")
    }
    z = as_finite_array("catalog['z_true']", catalog["z_true"], ndim=1, nonnegative=True)
    return _spec_probability(lupt, z)


def simulate_galaxy_catalog(n_galaxies: int, *, rng: Any = None) -> pd.DataFrame:
    """Simulate an F160W-selected deep-field catalogue with a biased spectroscopic subset.

    See the module docstring for every ingredient and its source.

    Parameters
    ----------
    n_galaxies
        Number of detected galaxies (the population).
    rng
        Seed or ``numpy.random.Generator``; the same seed gives the same catalogue.

    Returns
    -------
    pandas.DataFrame
        One row per galaxy, columns ``id``; ``flux_<band>``, ``fluxerr_<band>`` (microjansky);
        ``lupt_<band>``, ``lupterr_<band>`` (AB luptitudes) for the bands in :data:`BANDS`;
        ``z_spec`` (NaN for galaxies without a spectrum); and the simulation's truth:
        ``z_true``, ``template``, ``a_v``, ``abs_mag``.
    """
    n_galaxies = as_int("n_galaxies", n_galaxies)
    rng = np.random.default_rng(rng)
    sigma = {b: flux_error(b) for b in BANDS}
    kept: list[pd.DataFrame] = []
    n_kept = 0
    while n_kept < n_galaxies:
        batch = max(4 * (n_galaxies - n_kept), 2000)
        cand = _draw_galaxies(batch, rng)
        true = band_fluxes(cand["z_true"], cand["template"], cand["a_v"], cand["abs_mag"])
        cols: dict[str, np.ndarray] = {}
        for b in BANDS:
            err = np.hypot(sigma[b], CALIBRATION_FLOOR * true[b])
            cols[f"flux_{b}"] = true[b] + err * rng.standard_normal(batch)
            cols[f"fluxerr_{b}"] = err
        detected = cols["flux_F160W"] >= 5 * cols["fluxerr_F160W"]
        frame = pd.DataFrame({**cols, **cand})[detected]
        kept.append(frame)
        n_kept += len(frame)
    cat = pd.concat(kept, ignore_index=True).iloc[:n_galaxies].copy()
    lupt = {}
    for b in BANDS:
        mu, mu_err = luptitudes(cat[f"flux_{b}"], cat[f"fluxerr_{b}"], softening=1.042 * sigma[b])
        cat[f"lupt_{b}"], cat[f"lupterr_{b}"] = mu, mu_err
        lupt[b] = mu
    spec = rng.uniform(size=len(cat)) < _spec_probability(lupt, cat["z_true"].to_numpy())
    cat["z_spec"] = np.where(spec, cat["z_true"], np.nan)
    cat.insert(0, "id", np.arange(len(cat)))
    order = ["id"] + [f"{p}_{b}" for p in ("flux", "fluxerr", "lupt", "lupterr") for b in BANDS]
    return cat[[*order, "z_spec", "z_true", "template", "a_v", "abs_mag"]].reset_index(drop=True)


def read_catalog(
    path: Any,
    *,
    bands: Sequence[str] = BANDS,
    mag_prefix: str = "lupt_",
    err_prefix: str = "lupterr_",
    z_column: str = "z_spec",
) -> pd.DataFrame:
    """Read a photometric catalogue from CSV and check it.

    The file needs one magnitude column ``<mag_prefix><band>`` and one error column
    ``<err_prefix><band>`` per band, and ``z_column`` with the spectroscopic redshift (empty or
    NaN where unknown). Columns are renamed to this module's convention (``lupt_<band>``,
    ``lupterr_<band>``, ``z_spec``); an ``id`` column is kept or created.

    Raises
    ------
    ValueError
        A missing column (named, with the columns found), a non-finite magnitude or error (row
        and column named), a non-positive error, or a negative redshift.
    """
    frame = pd.read_csv(path)
    wanted = {f"{mag_prefix}{b}": f"lupt_{b}" for b in bands}
    wanted |= {f"{err_prefix}{b}": f"lupterr_{b}" for b in bands}
    wanted[z_column] = "z_spec"
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {missing}; found {list(frame.columns)}. Name the "
            f"columns with --mag-prefix/--err-prefix/--z-column, or pass --bands."
        )
    out = frame[list(wanted)].rename(columns=wanted).astype(float)
    for col in out.columns:
        if col == "z_spec":
            continue
        values = out[col].to_numpy()
        bad = ~np.isfinite(values)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{path}: column {col!r} is {values[row]} in data row {row}; magnitudes and "
                f"errors must be finite (drop the row or use asinh magnitudes)."
            )
        if col.startswith("lupterr_") and (values <= 0).any():
            row = int(np.flatnonzero(values <= 0)[0])
            raise ValueError(f"{path}: column {col!r} must be > 0, got {values[row]} in row {row}.")
    z = out["z_spec"].to_numpy()
    if (np.isinf(z) | (z < 0)).any():
        row = int(np.flatnonzero(np.isinf(z) | (z < 0))[0])
        raise ValueError(f"{path}: {z_column!r} is {z[row]} in row {row}; use NaN for unknown.")
    if np.isfinite(z).sum() == 0:
        raise ValueError(f"{path}: no galaxy has a spectroscopic redshift in {z_column!r}.")
    out.insert(0, "id", frame["id"].to_numpy() if "id" in frame.columns else np.arange(len(out)))
    return out


def gmm_features(
    catalog: pd.DataFrame,
    *,
    colours: Sequence[tuple[str, str]] = (("F606W", "F814W"), ("F814W", "F125W")),
    magnitudes: Sequence[str] = ("F160W",),
) -> np.ndarray:
    """Colours and magnitudes from a catalogue's luptitudes, shape ``(n, n_feature)``.

    The default is the seed's choice: F606W - F814W, F814W - F125W and F160W.
    """
    cols = [catalog[f"lupt_{a}"] - catalog[f"lupt_{b}"] for a, b in colours]
    cols += [catalog[f"lupt_{m}"] for m in magnitudes]
    return np.column_stack([np.asarray(c, dtype=float) for c in cols])


def feature_covariance(
    catalog: pd.DataFrame,
    *,
    colours: Sequence[tuple[str, str]] = (("F606W", "F814W"), ("F814W", "F125W")),
    magnitudes: Sequence[str] = ("F160W",),
) -> np.ndarray:
    """Per-galaxy covariance of the :func:`gmm_features` from the luptitude errors.

    The features are linear in the band luptitudes, ``f = A m``, and the bands' errors are
    independent, so ``cov(f) = A diag(sigma_m^2) A^T``: a colour's variance is the sum of its
    bands', and two colours sharing a band are correlated through it. Shape
    ``(n, n_feature, n_feature)``, for ``build_model(feature_errors=...)``.
    """
    bands = list(dict.fromkeys([b for pair in colours for b in pair] + list(magnitudes)))
    A = np.zeros((len(colours) + len(magnitudes), len(bands)))
    for k, (a, b) in enumerate(colours):
        A[k, bands.index(a)], A[k, bands.index(b)] = 1.0, -1.0
    for k, m in enumerate(magnitudes, start=len(colours)):
        A[k, bands.index(m)] = 1.0
    missing = [f"lupterr_{b}" for b in bands if f"lupterr_{b}" not in catalog]
    if missing:
        raise ValueError(
            f"catalog has no column(s) {missing}; the features' errors need one luptitude "
            f"error column per band (read_catalog names them lupterr_<band>)."
        )
    err = np.column_stack(
        [as_finite_array(f"lupterr_{b}", catalog[f"lupterr_{b}"], nonnegative=True) for b in bands]
    )
    return np.einsum("kb,nb,lb->nkl", A, err**2, A)


# --- Gaussian mixtures ---------------------------------------------------------------------


@dataclass(frozen=True)
class Mixtures:
    """The population and training mixtures on robust-scaled features."""

    scaler: RobustScaler
    population: GaussianMixture
    training: GaussianMixture
    bic: dict[int, float] | None = None

    @property
    def n_components(self) -> int:
        """Number of mixture components."""
        return int(self.population.n_components)

    @property
    def n_features(self) -> int:
        """Number of features the mixtures were fitted on."""
        return int(self.scaler.center_.size)

    def scale(self, X: Any, name: str = "X") -> np.ndarray:
        """Robust-scale features with the population's scaler, after checking them."""
        X = as_finite_array(name, X, ndim=2)
        if X.shape[1] != self.n_features:
            raise ValueError(
                f"{name} has {X.shape[1]} feature columns but the mixtures were fitted on "
                f"{self.n_features}; use the same features, in the same order."
            )
        return self.scaler.transform(X)

    def densities(self, X: Any, name: str = "X") -> tuple[np.ndarray, np.ndarray]:
        """``(p_pop, p_train)`` at ``X`` in the scaled feature space."""
        Xs = self.scale(X, name)
        return np.exp(self.population.score_samples(Xs)), np.exp(self.training.score_samples(Xs))

    def responsibilities(self, X: Any, name: str = "X") -> np.ndarray:
        """Population-mixture membership probabilities, shape ``(n, n_components)``."""
        return self.population.predict_proba(self.scale(X, name))


def _check_pair(X_pop: Any, X_train: Any) -> tuple[np.ndarray, np.ndarray]:
    X_pop = as_finite_array("X_pop", X_pop, ndim=2)
    X_train = as_finite_array("X_train", X_train, ndim=2)
    if X_pop.shape[1] != X_train.shape[1]:
        raise ValueError(
            f"X_pop has {X_pop.shape[1]} feature columns and X_train {X_train.shape[1]}; "
            f"build both from the same features, in the same order."
        )
    return X_pop, X_train


def fit_mixtures(
    X_pop: Any,
    X_train: Any,
    *,
    n_components: int | str = 4,
    max_components: int = 10,
    rng: Any = None,
) -> Mixtures:
    """Fit full-covariance Gaussian mixtures to the population and the training features.

    Parameters
    ----------
    X_pop, X_train
        Features, shapes ``(n_pop, d)`` and ``(n_train, d)``; finite.
    n_components
        Components of both mixtures, or ``"bic"`` to choose it for the population by the
        Bayesian information criterion over ``1..max_components``.
    rng
        Seed or generator for the mixtures' initialisation.
    """
    X_pop, X_train = _check_pair(X_pop, X_train)
    rng = np.random.default_rng(rng)
    seed = int(rng.integers(0, 2**31 - 1))
    scaler = RobustScaler().fit(X_pop)
    pop_s, train_s = scaler.transform(X_pop), scaler.transform(X_train)
    bic = None
    if isinstance(n_components, str):
        if n_components != "bic":
            raise ValueError(f"n_components must be an int or 'bic', got {n_components!r}.")
        max_components = as_int("max_components", max_components)
        bic = {}
        for k in range(1, min(max_components, X_train.shape[0]) + 1):
            gm = GaussianMixture(k, covariance_type="full", random_state=seed, n_init=2)
            bic[k] = float(gm.fit(pop_s).bic(pop_s))
        n_components = min(bic, key=bic.__getitem__)
    n_components = as_int("n_components", n_components)
    if X_train.shape[0] < n_components:
        raise ValueError(
            f"the training set has {X_train.shape[0]} galaxies, fewer than n_components="
            f"{n_components}; use fewer components or more training galaxies."
        )

    def fit(data):
        return GaussianMixture(
            n_components, covariance_type="full", random_state=seed, n_init=2, reg_covar=1e-5
        ).fit(data)

    return Mixtures(scaler=scaler, population=fit(pop_s), training=fit(train_s), bic=bic)


@dataclass(frozen=True)
class Weights:
    """Density-ratio weights of the training galaxies and how well they work.

    ``divergence_unweighted`` / ``divergence_weighted``: per-feature Jensen-Shannon divergence
    (bits) between the population's and the (weighted) training set's histograms.
    """

    values: np.ndarray
    ess: float
    n_capped: int
    divergence_unweighted: np.ndarray
    divergence_weighted: np.ndarray


def _check_max_weight(max_weight: float) -> None:
    if not np.isfinite(max_weight) or max_weight <= 0:
        raise ValueError(f"max_weight must be a finite number > 0, got {max_weight}.")


def _capped_weights(
    raw: np.ndarray, max_weight: float, X_target: np.ndarray, X_train: np.ndarray
) -> Weights:
    """Cap density ratios at ``max_weight`` and diagnose them against the target's features."""
    w = np.minimum(raw, max_weight)
    return Weights(
        values=w,
        ess=float(w.sum() ** 2 / (w**2).sum()),
        n_capped=int((raw > max_weight).sum()),
        divergence_unweighted=feature_divergence(X_target, X_train),
        divergence_weighted=feature_divergence(X_target, X_train, weights=w),
    )


def gmm_weights(
    mixtures: Mixtures,
    X_pop: Any,
    X_train: Any,
    *,
    eta: float = 1e-3,
    max_weight: float = 100.0,
) -> Weights:
    """Weights ``(p_pop + eta) / (p_train + eta)`` at each training galaxy, capped.

    Parameters
    ----------
    mixtures
        From :func:`fit_mixtures` on the same features.
    X_pop, X_train
        Population and training features; the population is used only for the diagnostic.
    eta
        Floor added to both densities (scaled feature space), ``>= 0``.
    max_weight
        Cap on the weights, ``> 0``.
    """
    X_pop, X_train = _check_pair(X_pop, X_train)
    _check_max_weight(max_weight)
    if not np.isfinite(eta) or eta < 0:
        raise ValueError(f"eta must be a finite number >= 0, got {eta}.")
    p_pop, p_train = mixtures.densities(X_train, "X_train")
    return _capped_weights((p_pop + eta) / (p_train + eta), max_weight, X_pop, X_train)


SELECTION_TARGETS = ("catalogue", "without_spectrum")
"""What :func:`selection_weights` reweights the training set to: every catalogue galaxy, or
the galaxies without a spectrum (the run's test set on a simulated catalogue)."""


def selection_weights(
    catalog: pd.DataFrame,
    train: Any,
    X: Any,
    *,
    target: str = "catalogue",
    max_weight: float = 100.0,
) -> Weights:
    """Weight a simulated catalogue's training set by its true density ratio to a target.

    A galaxy with photometry ``x`` and redshift ``z`` has a spectrum with probability
    ``P(x, z)`` (:func:`selection_probability`), so with ``Pbar = mean(P)`` over the catalogue
    the spectroscopic galaxies' density is the catalogue's times ``P / Pbar`` and the
    others' is the catalogue's times ``(1 - P) / (1 - Pbar)``. The weight of training galaxy
    ``i`` is the target's density over the training set's at that galaxy:

    - ``target="catalogue"``: ``Pbar / P_i`` (the population the mixtures describe);
    - ``target="without_spectrum"``: ``(1 - P_i) / P_i * Pbar / (1 - Pbar)``.

    Unlike :func:`gmm_weights` they undo the selection on redshift too (the redshift desert),
    which no function of the photometry can. Capped at ``max_weight`` as the mixtures' weights
    are.

    Parameters
    ----------
    catalog
        From :func:`simulate_galaxy_catalog`, with ``z_spec`` (NaN without a spectrum).
    train
        Integer row positions of the training galaxies in ``catalog``, ``(n_train,)``.
    X
        Features of every galaxy in ``catalog``, ``(n_galaxy, n_feature)`` (e.g.
        :func:`gmm_features`), for the divergence diagnostic only: the training set's
        histograms against the target's.
    target
        One of :data:`SELECTION_TARGETS`.
    max_weight
        Cap on the weights, ``> 0``.

    Returns
    -------
    Weights
        ``values`` ``(n_train,)``, their effective sample size, how many were capped, and the
        divergences from the target's feature histograms.

    Raises
    ------
    ValueError
        An unknown ``target``, ``"without_spectrum"`` without ``z_spec``, ``max_weight <= 0``,
        a ``train`` that is empty, not 1-d or has positions outside the catalogue, ``X``
        without one row per catalogue galaxy, or a catalogue :func:`selection_probability`
        refuses.
    TypeError
        ``train`` that does not hold integers.
    """
    if target not in SELECTION_TARGETS:
        raise ValueError(f"target must be one of {SELECTION_TARGETS}, got {target!r}.")
    if target == "without_spectrum" and "z_spec" not in catalog.columns:
        raise ValueError(
            "target='without_spectrum' needs the catalogue's z_spec column (NaN without a "
            "spectrum) to tell which galaxies have none; pass the catalogue as simulated."
        )
    _check_max_weight(max_weight)
    p = selection_probability(catalog)
    rows = as_index(
        "train",
        train,
        n=len(catalog),
        allow_outside=False,
        what="catalogue row",
        hint="pass row positions; for a boolean mask use np.flatnonzero(mask)",
    )
    if rows.size == 0:
        raise ValueError("train is empty: pass the row positions of the training galaxies.")
    X = as_finite_array("X", X, ndim=2)
    if X.shape[0] != len(catalog):
        raise ValueError(
            f"X has {X.shape[0]} rows, expected one per catalogue galaxy ({len(catalog)})."
        )
    p_bar = p.mean()
    if target == "catalogue":
        raw, reference = p_bar / p[rows], X
    else:
        raw = (1 - p[rows]) / p[rows] * p_bar / (1 - p_bar)
        reference = X[~np.isfinite(catalog["z_spec"].to_numpy(dtype=float))]
    return _capped_weights(raw, max_weight, reference, X[rows])


@dataclass(frozen=True)
class Division:
    """Membership of galaxies in the population mixture's components."""

    responsibility: np.ndarray
    member: np.ndarray
    threshold: float

    def counts(self) -> np.ndarray:
        return self.member.sum(axis=0)


def gmm_divide(mixtures: Mixtures, X: Any, *, threshold: float = 0.5) -> Division:
    """Assign galaxies to population components whose responsibility exceeds ``threshold``.

    With ``threshold >= 0.5`` a galaxy joins at most one component (some join none); below 0.5
    memberships can overlap, as the original tool allows (its guide uses 0.2).

    Parameters
    ----------
    threshold
        In (0, 1); membership needs responsibility strictly above it.
    """
    if not (isinstance(threshold, int | float | np.floating) and 0 < threshold < 1):
        raise ValueError(f"threshold must be in (0, 1), got {threshold!r}.")
    r = mixtures.responsibilities(X)
    return Division(responsibility=r, member=r > threshold, threshold=float(threshold))


def feature_divergence(
    X_pop: Any, X_train: Any, *, weights: Any = None, bins: int = 25
) -> np.ndarray:
    """Per-feature Jensen-Shannon divergence (bits, 0 to 1) of training vs population.

    Histograms use ``bins`` equal bins between the population's 0.1 and 99.9 percentiles (as the
    seed's plots do); values outside are clipped into the end bins.
    """
    X_pop, X_train = _check_pair(X_pop, X_train)
    if weights is None:
        w = np.ones(X_train.shape[0])
    else:
        w = as_finite_array("weights", weights, nonnegative=True)
        if w.size != X_train.shape[0]:
            raise ValueError(f"weights has {w.size} entries for {X_train.shape[0]} galaxies.")
    out = np.empty(X_pop.shape[1])
    for j in range(X_pop.shape[1]):
        lo, hi = np.percentile(X_pop[:, j], [0.1, 99.9])
        edges = np.linspace(lo, hi, bins + 1)
        p = np.histogram(np.clip(X_pop[:, j], lo, hi), edges)[0].astype(float)
        q = np.histogram(np.clip(X_train[:, j], lo, hi), edges, weights=w)[0]
        p, q = p / p.sum(), q / q.sum()
        m = 0.5 * (p + q)
        with np.errstate(divide="ignore", invalid="ignore"):
            kl_p = np.where(p > 0, p * np.log2(p / m), 0.0).sum()
            kl_q = np.where(q > 0, q * np.log2(q / m), 0.0).sum()
        out[j] = 0.5 * (kl_p + kl_q)
    return out


# --- radial basis functions ------------------------------------------------------------------


MIN_SUPPORT = 5.0
"""Default smallest support of a basis function, in training galaxies (:func:`rbf_basis`)."""


@dataclass(frozen=True)
class RBFBasis:
    """Radial basis functions on robust-scaled features.

    ``phi_j(x) = exp(-0.5 sum_d ((s(x)_d - c_jd) / l_jd)^2)`` with ``s`` the scaling
    ``(x - center) / scale``.
    """

    feature_center: np.ndarray
    feature_scale: np.ndarray
    centers: np.ndarray
    length_scales: np.ndarray

    @property
    def n_basis(self) -> int:
        """Number of basis functions."""
        return int(self.centers.shape[0])

    def scale(self, X: Any, name: str = "X") -> np.ndarray:
        """Scale features by the training median and interquartile range, after checking."""
        X = as_finite_array(name, X, ndim=2)
        if X.shape[1] != self.centers.shape[1]:
            raise ValueError(
                f"{name} has {X.shape[1]} feature columns but the basis was built on "
                f"{self.centers.shape[1]}; use the same features, in the same order."
            )
        return (X - self.feature_center) / self.feature_scale

    def design(self, X: Any, name: str = "X") -> np.ndarray:
        """Basis matrix, shape ``(n, n_basis)`` (numpy; the model computes the same in PyTensor)."""
        Xs = self.scale(X, name)
        d = (Xs[:, None, :] - self.centers[None]) / self.length_scales[None]
        return np.exp(-0.5 * (d**2).sum(axis=-1))


def rbf_basis(
    X: Any,
    z: Any,
    n_basis: int,
    *,
    weights: Any = None,
    length_subsample: int = 500,
    min_support: float = MIN_SUPPORT,
    max_leverage: float | None = None,
    rng: Any = None,
) -> RBFBasis:
    """Basis functions with k-means centres and length scales fitted by type-II likelihood.

    Features are scaled by their (weighted) median and interquartile range. Centres are the
    (weighted) k-means centres. The length scales are those of an anisotropic (ARD) RBF
    Gaussian process fitted to ``ln(1 + z)`` by maximum marginal likelihood with
    scikit-learn, on a random subsample of ``length_subsample`` galaxies (drawn with
    probability proportional to ``weights`` when given): GPz fits its length scales the same
    way. Every function gets the same per-feature scales, except that a function whose
    *support* (how many training galaxies its weight can fit: ``sum_i phi_j(x_i)``, counted
    whatever their weights) is below ``min_support`` has its scales stretched by the one
    factor that brings its support to ``min_support``. k-means gives an isolated galaxy a
    centre of its own (support about 1); under Student-t noise the weight of such a function
    can fit that galaxy or leave it as an outlier, a bimodal posterior the chains rarely
    cross. Stretching the function, rather than dropping it, keeps the galaxy from pulling the
    linear terms. (Default run, simple fit: at a support of 2 such a weight still mixed
    slowly, bulk ESS 259 of 4,000 draws at seed 8; at 3, r-hat 1.015 at seed 2; at 5 its ESS
    was 1,782 and 1,575, with sigma_NMAD and coverage unchanged within 0.02.)
    A stretched function can still be dominated by its one galaxy (phi = 1 there and small
    everywhere else). ``max_leverage`` then stretches every function further, until no galaxy
    holds more than that share of its squared response, ``max_i phi_j(x_i)^2 / sum_i
    phi_j(x_i)^2``. (Seed 12, whose simple fit fails the check even at four times the draws,
    r-hat 1.011: with 0.5 it passes at the first attempt, r-hat 1.004 and bulk ESS 1,521.)
    :class:`RBFBasis` holds one row of scales per function.

    Parameters
    ----------
    X
        Training features, shape ``(n, d)``, finite.
    z
        Training redshifts, shape ``(n,)``, ``>= 0``.
    n_basis
        Number of functions, ``1 <= n_basis <= n``.
    weights
        Optional per-galaxy weights (weighted training) for the scaling, k-means and subsample.
    min_support
        Smallest support of a function, in galaxies: below ``n``, or ``0`` to stretch none.
    max_leverage
        Largest share of a function's squared response one galaxy may hold, in ``(1 / n, 1]``;
        ``None`` (default) or ``1`` to leave the functions as ``min_support`` leaves them.
    """
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

    X = as_finite_array("X", X, ndim=2)
    z = as_finite_array("z", z, nonnegative=True)
    if z.size != X.shape[0]:
        raise ValueError(f"X has {X.shape[0]} rows but z has {z.size} entries.")
    n_basis = as_int("n_basis", n_basis)
    if n_basis > X.shape[0]:
        raise ValueError(
            f"n_basis={n_basis} exceeds the {X.shape[0]} training galaxies; use fewer basis "
            f"functions."
        )
    w = (
        np.ones(X.shape[0])
        if weights is None
        else as_finite_array("weights", weights, positive=True)
    )
    if w.size != X.shape[0]:
        raise ValueError(f"weights has {w.size} entries for {X.shape[0]} galaxies.")
    min_support = float(as_finite_array("min_support", min_support, ndim=0, nonnegative=True))
    if 0 < min_support and min_support >= X.shape[0]:
        raise ValueError(
            f"min_support={min_support:g} is not below the {X.shape[0]} training galaxies; "
            f"add galaxies, lower min_support (default {MIN_SUPPORT:g}), or pass min_support=0 "
            f"to stretch no function."
        )
    if max_leverage is not None:
        max_leverage = float(as_finite_array("max_leverage", max_leverage, ndim=0))
        if not 1.0 / X.shape[0] < max_leverage <= 1.0:
            raise ValueError(
                f"max_leverage must be in (1 / n, 1] = ({1.0 / X.shape[0]:.3g}, 1] for "
                f"{X.shape[0]} training galaxies, got {max_leverage:g}; 0.5 lets no galaxy hold "
                f"more than half a function's response, None stretches nothing for leverage."
            )
    rng = np.random.default_rng(rng)
    d = X.shape[1]
    center = np.array([_weighted_quantile(X[:, j], w, 0.5) for j in range(d)])
    iqr = np.array(
        [
            _weighted_quantile(X[:, j], w, 0.75) - _weighted_quantile(X[:, j], w, 0.25)
            for j in range(d)
        ]
    )
    scale = np.where(iqr > 0, iqr, 1.0)
    Xs = (X - center) / scale
    km = KMeans(n_basis, n_init=3, random_state=int(rng.integers(0, 2**31 - 1)))
    centers = km.fit(Xs, sample_weight=w).cluster_centers_
    sub = rng.choice(X.shape[0], min(length_subsample, X.shape[0]), replace=False, p=w / w.sum())
    kernel = ConstantKernel(0.3) * RBF(np.ones(d), length_scale_bounds=(1e-2, 1e2)) + WhiteKernel(
        0.01, noise_level_bounds=(1e-6, 1e1)
    )
    gp = GaussianProcessRegressor(kernel, normalize_y=True, random_state=0)
    with warnings.catch_warnings():
        # A length scale at its bound (a feature the redshift barely depends on) is a valid
        # answer here, not a failure.
        warnings.simplefilter("ignore", ConvergenceWarning)
        gp.fit(Xs[sub], np.log1p(z[sub]))
    lengths = np.atleast_1d(gp.kernel_.k1.k2.length_scale).astype(float)
    lengths = np.tile(lengths, (n_basis, 1))
    # squared scaled distances of every galaxy to every centre, for both stretches
    r2 = (((Xs[:, None, :] - centers[None]) / lengths[None]) ** 2).sum(axis=-1)
    stretch = _support_stretch(r2, min_support)
    if limits_leverage(max_leverage):
        stretch = _leverage_stretch(r2, stretch, max_leverage)
    return RBFBasis(center, scale, centers, lengths * stretch[:, None])


def limits_leverage(max_leverage: float | None) -> bool:
    """Whether :func:`rbf_basis` stretches any function for this ``max_leverage``.

    ``None`` and 1 (no galaxy can hold more than all of a function) leave the basis as the
    minimum support makes it.
    """
    return max_leverage is not None and max_leverage < 1


def _support_stretch(r2: np.ndarray, min_support: float) -> np.ndarray:
    """Per-function factor >= 1 on the length scales that lifts each support to ``min_support``.

    Support ``s_j(f) = sum_i exp(-0.5 r_ij^2 / f^2)`` rises from ``s_j(1)`` towards
    ``n > min_support`` as ``f`` grows, so the root is bracketed by doubling. ``r2``: squared
    scaled distances, ``(n_galaxy, n_basis)``.
    """

    def gap(f: float, j: int) -> float:
        return float(np.exp(-0.5 * r2[:, j] / f**2).sum() - min_support)

    stretch = np.ones(r2.shape[1])
    for j in np.flatnonzero(np.exp(-0.5 * r2).sum(axis=0) < min_support):
        hi = 2.0
        while gap(hi, j) < 0:
            hi *= 2
        stretch[j] = optimize.brentq(gap, 1.0, hi, args=(j,), xtol=1e-6)
    return stretch


def _leverage_stretch(r2: np.ndarray, stretch: np.ndarray, max_leverage: float) -> np.ndarray:
    """Stretch further each function one galaxy dominates, to a leverage of ``max_leverage``.

    The leverage ``max_i phi_ij^2 / sum_i phi_ij^2`` tends to ``1 / n`` as the stretch grows;
    the first root above the current stretch is bracketed by doubling.
    """

    def excess(f: float, j: int) -> float:
        phi = np.exp(-0.5 * (r2[:, j] - r2[:, j].min()) / f**2)  # the same ratio, no underflow
        return float(phi.max() ** 2 / (phi**2).sum() - max_leverage)

    out = stretch.copy()
    for j in range(r2.shape[1]):
        if excess(out[j], j) <= 0:
            continue
        lo, hi = out[j], 2.0 * out[j]
        while excess(hi, j) > 0:
            lo, hi = hi, 2.0 * hi
        out[j] = optimize.brentq(excess, lo, hi, args=(j,), xtol=1e-6)
    return out


def _weighted_quantile(x: np.ndarray, w: np.ndarray, q: float) -> float:
    order = np.argsort(x)
    c = np.cumsum(w[order])
    return float(np.interp(q * c[-1], c, x[order]))


# --- metrics -------------------------------------------------------------------------------


def _pair(z_spec: Any, other: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    z = as_finite_array("z_spec", z_spec, nonnegative=True)
    o = as_finite_array(name, other, ndim=None)
    if o.shape[0] != z.size:
        raise ValueError(f"{name} has {o.shape[0]} galaxies and z_spec {z.size}.")
    return z, o


def point_metrics(*, z_spec: Any, z_phot: Any) -> dict[str, float]:
    """sigma_NMAD, bias (median dz) and outlier fraction (|dz| > 0.15) of point estimates.

    ``dz = (z_phot - z_spec) / (1 + z_spec)``. Keyword-only: the order cannot be swapped.
    """
    z, zp = _pair(z_spec, z_phot, "z_phot")
    dz = (zp - z) / (1 + z)
    med = np.median(dz)
    return {
        "n": int(z.size),
        "sigma_nmad": float(1.4826 * np.median(np.abs(dz - med))),
        "bias": float(med),
        "outlier_fraction": float(np.mean(np.abs(dz) > 0.15)),
    }


def pit(*, z_spec: Any, samples: Any) -> np.ndarray:
    """Probability integral transform: fraction of predictive draws below ``z_spec``.

    ``samples`` has shape ``(n_galaxy, n_draw)``. Calibrated predictions give uniform PITs.
    """
    z, s = _pair(z_spec, samples, "samples")
    return (s < z[:, None]).mean(axis=1)


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}.")


def pit_coverage(pit_values: Any, *, level: float, weights: Any = None) -> float:
    """Fraction of (weighted) galaxies whose PIT lies in the central ``level`` interval.

    For PITs that come without draws (e.g. :func:`models.photoz.loo_pit`). With the
    density-ratio weights of :func:`gmm_weights`, a training set's PITs estimate the
    population's coverage where the training set reaches it.
    """
    _check_level(level)
    p = as_finite_array("pit_values", pit_values)
    inside = np.abs(p - 0.5) <= level / 2
    if weights is None:
        return float(inside.mean())
    w = as_finite_array("weights", weights, nonnegative=True)
    if w.shape != p.shape:
        raise ValueError(f"weights has shape {w.shape} for {p.size} PIT values.")
    if w.sum() <= 0:
        raise ValueError("weights must not all be zero.")
    return float(np.average(inside, weights=w))


def coverage(*, z_spec: Any, samples: Any, level: float) -> float:
    """Fraction of galaxies whose ``z_spec`` lies in the central ``level`` predictive interval."""
    _check_level(level)
    z, s = _pair(z_spec, samples, "samples")
    lo, hi = np.quantile(s, [(1 - level) / 2, (1 + level) / 2], axis=1)
    return float(np.mean((z >= lo) & (z <= hi)))


def interval_metrics(*, z_spec: Any, samples: Any) -> dict[str, float]:
    """Coverage of the central 68 % and 95 % predictive intervals."""
    return {
        "coverage_68": coverage(z_spec=z_spec, samples=samples, level=0.68),
        "coverage_95": coverage(z_spec=z_spec, samples=samples, level=0.95),
    }


def metrics_table(
    *,
    z_spec: Any,
    z_phot: Any,
    samples: Any = None,
    groups: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Point (and interval) metrics overall and per group, one row per (group, bin).

    Parameters
    ----------
    groups
        ``{name: labels}`` with one label per galaxy, e.g. ``{"redshift": pd.cut(z, edges)}``;
        each distinct label gives a row.
    """
    z, zp = _pair(z_spec, z_phot, "z_phot")

    def row(mask):
        out = point_metrics(z_spec=z[mask], z_phot=zp[mask])
        if samples is not None:
            out |= interval_metrics(z_spec=z[mask], samples=np.asarray(samples)[mask])
        return out

    rows = [{"group": "all", "bin": "all", **row(np.ones(z.size, bool))}]
    for name, labels in (groups or {}).items():
        labels = pd.Series(np.asarray(labels))
        if len(labels) != z.size:
            raise ValueError(f"groups[{name!r}] has {len(labels)} labels for {z.size} galaxies.")
        for value in pd.unique(labels.dropna().sort_values()):
            mask = (labels == value).to_numpy()
            if mask.sum() > 0:
                rows.append({"group": name, "bin": str(value), **row(mask)})
    return pd.DataFrame(rows)
