"""Independent numpy/scipy implementations the models are tested against.

These follow the original exercise literally (per-bin boolean masks, explicit loops), so they
share no code with astroweights.
"""

from __future__ import annotations

import numpy as np
import scipy.optimize
import scipy.special


def seed_bin_masks(energy, zenith, topology, energy_bins, zenith_bins, topology_bins):
    """The exercise's make_bin_masks: one boolean mask per bin, topology-zenith-energy order."""
    e_map = np.digitize(energy, bins=energy_bins) - 1
    z_map = np.digitize(zenith, bins=zenith_bins) - 1
    t_map = np.digitize(topology, bins=topology_bins) - 1
    masks = []
    for i in range(len(topology_bins) - 1):
        for j in range(len(zenith_bins) - 1):
            for k in range(len(energy_bins) - 1):
                masks.append((t_map == i) & (z_map == j) & (e_map == k))
    return masks


def seed_weights(w_atmo, w_astro, e_primary, atmo_norm, astro_norm, astro_gamma, curvature=0.0):
    x = np.log(e_primary / 1e5)
    return atmo_norm * w_atmo + astro_norm * w_astro * (e_primary / 1e5) ** (
        -(astro_gamma - 2.5)
    ) * np.exp(-curvature * x**2)


def seed_expectation(weights, masks):
    return np.array([weights[m].sum() for m in masks])


def seed_neg_llh(counts, expect):
    """-ln L of the exercise: Poisson with 0 for bins where k = 0 and mu = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = -(counts * np.log(expect) - expect - scipy.special.gammaln(counts + 1))
    terms[(counts == 0) & (expect == 0)] = 0.0
    return float(terms.sum())


def say_neg_llh(counts, mu, sigma2):
    """-ln L of the effective likelihood, literally eq. 3.15 of Argüelles, Schneider, Yuan."""
    total = 0.0
    for k, m, s2 in zip(counts, mu, sigma2, strict=True):
        if s2 == 0:
            total += 0.0 if k == 0 else np.inf
            continue
        alpha = m**2 / s2 + 1.0
        beta = m / s2
        total -= (
            alpha * np.log(beta)
            + scipy.special.gammaln(k + alpha)
            - scipy.special.gammaln(k + 1)
            - (k + alpha) * np.log1p(beta)
            - scipy.special.gammaln(alpha)
        )
    return float(total)


def seed_fit(counts, masks, w_atmo, w_astro, e_primary, start=(1.0, 8.0, 2.5)):
    """The exercise's fit: L-BFGS-B with bounds [0, inf), [0, inf), (-inf, inf)."""

    def objective(theta):
        w = seed_weights(w_atmo, w_astro, e_primary, *theta)
        return seed_neg_llh(counts, seed_expectation(w, masks))

    return scipy.optimize.minimize(
        objective,
        np.asarray(start, float),
        method="L-BFGS-B",
        bounds=[(0, None), (0, None), (None, None)],
        options={"ftol": 1e-12, "gtol": 1e-8},
    )


def importance_sampling_pit(log_lik, cdf):
    """Leave-one-out PIT by plain importance sampling (Gelfand et al. 1992), no smoothing.

    ``log_lik`` and ``cdf`` are ``(draws, n)``: each draw's pointwise log-likelihood and
    predictive CDF at the observed value. PIT_i = sum_s r_is F_is / sum_s r_is with
    r_is = 1 / p(y_i | theta_s) = exp(-log L_is).
    """
    log_lik, cdf = np.asarray(log_lik, dtype=float), np.asarray(cdf, dtype=float)
    r = np.exp(-(log_lik - log_lik.max(axis=0)))
    return (r * cdf).sum(axis=0) / r.sum(axis=0)
