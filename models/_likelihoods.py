"""Likelihood pieces shared by the models, written once.

All functions build PyTensor graphs. Counts ``k`` are observed data (constants); expectations
``mu`` and variances ``sigma2`` are graphs of the parameters.
"""

from __future__ import annotations

import numpy as np
import pytensor.tensor as pt

__all__ = [
    "binned_sum",
    "effective_logp",
    "effective_random",
    "poisson_logp",
    "poisson_random",
]


def binned_sum(values: pt.TensorLike, bin_idx: np.ndarray, n_bins: int) -> pt.TensorVariable:
    """Sum ``values`` per bin: ``out[b] = sum(values[i] for i with bin_idx[i] == b)``.

    ``bin_idx`` must be a constant integer array with entries in ``[0, n_bins)``. The gradient is
    a gather, so this is cheap for NUTS even with millions of entries.
    """
    return pt.zeros(n_bins, dtype=values.dtype)[bin_idx].inc(values)


def poisson_logp(k: pt.TensorLike, mu: pt.TensorLike) -> pt.TensorVariable:
    """Poisson log-probability with the convention ``logp(k=0 | mu=0) = 0``.

    ``k * log(mu)`` is evaluated as ``k * log(where(k > 0, mu, 1))`` so that empty bins with zero
    expectation give 0 and no NaN gradient; ``k > 0`` with ``mu = 0`` gives ``-inf``.
    """
    k = pt.as_tensor_variable(k)
    safe_mu = pt.switch(pt.gt(k, 0), mu, 1.0)
    return k * pt.log(safe_mu) - mu - pt.gammaln(k + 1.0)


def effective_logp(k: pt.TensorLike, mu: pt.TensorLike, sigma2: pt.TensorLike) -> pt.TensorVariable:
    """Effective likelihood of Argüelles, Schneider and Yuan (JHEP 06 (2019) 030, eq. 3.15).

    Per bin, with ``mu = sum w`` and ``sigma2 = sum w^2`` of the simulated events in it,
    ``alpha = mu^2 / sigma2 + 1`` and ``beta = mu / sigma2``::

        ln L = alpha ln beta + lnG(k + alpha) - lnG(k + 1) - (k + alpha) ln(1 + beta) - lnG(alpha)

    This is a negative binomial with ``n = alpha`` and ``p = beta / (1 + beta)``: the Poisson
    rate marginalised over a gamma distribution that describes the finite simulation. It tends
    to the Poisson likelihood as ``sigma2 -> 0``. The first and fourth terms are written as
    ``-alpha log1p(1/beta) - k log1p(beta)`` to keep that limit accurate. Bins with no
    simulated weight (``sigma2 = 0``) fall back to :func:`poisson_logp`.
    """
    k = pt.as_tensor_variable(k)
    has_mc = pt.gt(sigma2, 0.0)
    mu_s = pt.switch(has_mc, mu, 1.0)
    s2_s = pt.switch(has_mc, sigma2, 1.0)
    beta = mu_s / s2_s
    alpha = mu_s * beta + 1.0
    say = (
        -alpha * pt.log1p(1.0 / beta)
        - k * pt.log1p(beta)
        + pt.gammaln(k + alpha)
        - pt.gammaln(alpha)
        - pt.gammaln(k + 1.0)
    )
    return pt.switch(has_mc, say, poisson_logp(k, mu))


def poisson_random(mu, rng: np.random.Generator | None = None, size=None) -> np.ndarray:
    """Draw Poisson counts; the ``random`` of the Poisson ``CustomDist``."""
    return np.random.default_rng(rng).poisson(np.asarray(mu, float), size=size).astype(np.int64)


def effective_random(mu, sigma2, rng: np.random.Generator | None = None, size=None) -> np.ndarray:
    """Draw counts from the effective likelihood's negative binomial (Poisson where sigma2 = 0)."""
    rng = np.random.default_rng(rng)
    mu, sigma2 = np.broadcast_arrays(np.asarray(mu, float), np.asarray(sigma2, float))
    if size is not None:
        mu, sigma2 = np.broadcast_to(mu, size), np.broadcast_to(sigma2, size)
    has_mc = sigma2 > 0
    s2 = np.where(has_mc, sigma2, 1.0)
    beta = np.where(has_mc, mu, 1.0) / s2
    alpha = np.where(has_mc, mu, 1.0) * beta + 1.0
    nb = rng.negative_binomial(alpha, beta / (1.0 + beta))
    return np.where(has_mc, nb, rng.poisson(mu)).astype(np.int64)
