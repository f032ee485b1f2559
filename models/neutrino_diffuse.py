r"""Neutrino diffuse flux fit on a reweighted simulation.

For analysis bin :math:`b` the expected count is a sum over the simulated events in it,

.. math::

    \mu_b = \sum_{i \in b} w_i, \qquad
    w_i = a\, w^{atmo}_i + A\, w^{astro}_i\, \exp\!\big(-(\gamma - 2.5)\, x_i - \beta x_i^2\big),
    \qquad x_i = \ln(E_{primary,i} / 100\,\mathrm{TeV}),

with ``a = atmo_norm``, ``A = astro_norm``, ``gamma = astro_gamma`` and ``beta =
astro_curvature`` (``spectrum="log_parabola"``; ``beta = 0`` is the power law). The observed
counts are ``n_b ~ Poisson(mu_b)`` (``likelihood="poisson"``, the exercise's likelihood) or follow
the effective likelihood of Argüelles, Schneider and Yuan (2019) with ``sigma_b^2 = sum w_i^2``
(``likelihood="effective"``), which accounts for the finite size of the simulation.

Priors (documented defaults; override any with ``priors={name: pm.<Dist>.dist(...)}``):

- ``atmo_norm ~ LogNormal(0, 0.4)``: the conventional flux in units of its nominal model, with
  the ~40 % normalisation uncertainty IceCube's diffuse fits give this nuisance parameter. (A
  flat prior down to 0 lets the sampler wander into a funnel at ``atmo_norm -> 0`` where the
  ~100 events cannot tell atmospheric from astrophysical; the maximum-likelihood point still
  allows any ``atmo_norm >= 0``, as in the exercise.)
- ``astro_norm ~ HalfNormal(20)``: per-flavour-summed flux at 100 TeV in units of
  1e-18 GeV^-1 cm^-2 s^-1 sr^-1; measured values are 5-7.
- ``astro_gamma ~ Normal(2.5, 1)``: spectral index; measurements range over 2.2-3.
- ``astro_curvature ~ Normal(0, 0.5)``: log-parabola curvature per e-fold of energy squared.

Events outside the analysis bins (``mc_bin == -1``) contribute nothing and are dropped when the
model is built, which is exact and is most of the speed-up over per-bin masks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt
import scipy.optimize
import xarray as xr
from pymc.model.transform.conditioning import remove_value_transforms

from data_tools.checks import as_counts, as_finite_array, as_index, same_length
from data_tools.neutrino import E_PIVOT, INJECTION_INDEX
from models._likelihoods import (
    binned_sum,
    effective_logp,
    effective_random,
    poisson_logp,
    poisson_random,
)
from models._priors import register_priors

__all__ = ["DEFAULT_PRIORS", "MaxLikelihood", "build_model", "max_likelihood", "parameter_names"]

LIKELIHOODS = ("poisson", "effective")
SPECTRA = ("power_law", "log_parabola")

DEFAULT_PRIORS: dict[str, Any] = {
    "atmo_norm": lambda: pm.LogNormal.dist(mu=0.0, sigma=0.4),
    "astro_norm": lambda: pm.HalfNormal.dist(sigma=20.0),
    "astro_gamma": lambda: pm.Normal.dist(mu=2.5, sigma=1.0),
    "astro_curvature": lambda: pm.Normal.dist(mu=0.0, sigma=0.5),
}
"""Default prior factories, keyed by parameter name."""

_BOUNDS = {"atmo_norm": (0.0, None), "astro_norm": (0.0, None)}
_SEED_START = {"atmo_norm": 1.0, "astro_norm": 8.0, "astro_gamma": 2.5, "astro_curvature": 0.0}


def parameter_names(spectrum: str = "power_law") -> list[str]:
    """Names of the free parameters for a spectrum, in the model's order."""
    _check_choice("spectrum", spectrum, SPECTRA)
    names = ["atmo_norm", "astro_norm", "astro_gamma"]
    return [*names, "astro_curvature"] if spectrum == "log_parabola" else names


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}.")


def build_model(
    counts: Any,
    mc_bin: Any,
    w_atmo: Any,
    w_astro: Any,
    e_primary: Any,
    *,
    likelihood: Literal["poisson", "effective"] = "poisson",
    spectrum: Literal["power_law", "log_parabola"] = "power_law",
    priors: Mapping[str, Any] | None = None,
) -> pm.Model:
    """Build the diffuse-flux model from binned data and a weighted simulation.

    Parameters
    ----------
    counts
        Observed events per analysis bin, shape ``(n_bin,)``, non-negative integers. An
        ``xarray.DataArray`` with dimension ``analysis_bin`` lends its coordinate labels.
    mc_bin
        Analysis bin of each simulated event, shape ``(n_mc,)``, integers in ``[0, n_bin)``, or
        ``-1`` for events outside the binning.
    w_atmo, w_astro
        The simulation's ``atmoWeight`` and ``astroWeight`` (expected events per simulated
        event for the nominal fluxes), shape ``(n_mc,)``, ``>= 0``.
    e_primary
        Primary neutrino energy of each simulated event, GeV, shape ``(n_mc,)``, ``> 0``.
    likelihood
        ``"poisson"`` or ``"effective"`` (see the module docstring).
    spectrum
        ``"power_law"`` or ``"log_parabola"`` (adds ``astro_curvature``).
    priors
        Optional replacements for :data:`DEFAULT_PRIORS`, e.g.
        ``{"astro_gamma": pm.Normal.dist(2.5, 0.3)}``.

    Returns
    -------
    pymc.Model
        Free parameters as in :func:`parameter_names`; deterministic ``mu`` (expected counts,
        dims ``analysis_bin``); observed ``counts`` (dims ``analysis_bin``), whose pointwise
        log-likelihood feeds ``az.loo``. The ``analysis_bin`` coordinate holds the flat bin
        indices of the bins with simulated weight; bins the simulation never reaches (and
        which therefore must have no events) are left out, which changes no likelihood.

    Raises
    ------
    ValueError
        Counts that are negative, fractional or non-finite; weights or energies that are
        negative, NaN or inf; arrays of different lengths; bin indices out of range; or a bin
        with observed events but no simulated event (no parameter value can explain it).
    """
    _check_choice("likelihood", likelihood, LIKELIHOODS)
    _check_choice("spectrum", spectrum, SPECTRA)
    labels = None
    if isinstance(counts, xr.DataArray):
        if counts.dims != ("analysis_bin",):
            raise ValueError(
                f"counts as a DataArray must have the single dimension 'analysis_bin', "
                f"got {counts.dims}."
            )
        labels = counts["analysis_bin"].values if "analysis_bin" in counts.coords else None
        counts = counts.values
    k = as_counts("counts", counts)
    n_bin = k.size
    idx = as_index("mc_bin", mc_bin, n=n_bin)
    w_atmo = as_finite_array("w_atmo", w_atmo, nonnegative=True)
    w_astro = as_finite_array("w_astro", w_astro, nonnegative=True)
    e_primary = as_finite_array("e_primary", e_primary, positive=True)
    same_length(mc_bin=idx, w_atmo=w_atmo, w_astro=w_astro, e_primary=e_primary)

    inside = idx >= 0
    order = np.argsort(idx[inside], kind="stable")  # contiguous bins: cache-friendly scatter
    idx, w_atmo, w_astro = idx[inside][order], w_atmo[inside][order], w_astro[inside][order]
    x = np.log(e_primary[inside][order] / E_PIVOT)

    mc_total = np.bincount(idx, weights=w_atmo + w_astro, minlength=n_bin)
    impossible = (k > 0) & (mc_total == 0)
    if impossible.any():
        b = int(np.flatnonzero(impossible)[0])
        raise ValueError(
            f"counts[{b}] = {k[b]} but no simulated event with non-zero weight falls in analysis "
            f"bin {b} ({int(impossible.sum())} such bins): no parameter value can produce those "
            f"events. Use a larger simulation or coarser bins."
        )

    # Bins without simulated weight have mu = 0 at every parameter value and, with no events,
    # log-likelihood exactly 0: they carry no information (and a constant pointwise
    # log-likelihood breaks PSIS-LOO), so the model keeps only bins the simulation reaches.
    keep = mc_total > 0
    relabel = np.cumsum(keep) - 1
    idx = relabel[idx]
    k = k[keep]
    n_model = int(keep.sum())
    all_labels = labels if labels is not None else np.arange(n_bin)
    coords = {"analysis_bin": np.asarray(all_labels)[keep]}
    with pm.Model(coords=coords) as model:
        params = register_priors(model, parameter_names(spectrum), DEFAULT_PRIORS, priors)
        atmo_norm, astro_norm, gamma = (
            params["atmo_norm"],
            params["astro_norm"],
            params["astro_gamma"],
        )
        log_shape = -(gamma - INJECTION_INDEX) * x
        if spectrum == "log_parabola":
            log_shape = log_shape - params["astro_curvature"] * x**2
        astro = astro_norm * w_astro * pt.exp(log_shape)

        if likelihood == "poisson":
            # The atmospheric part does not depend on the spectrum: sum it per bin once.
            atmo_per_bin = np.bincount(idx, weights=w_atmo, minlength=n_model)
            mu = atmo_norm * atmo_per_bin + binned_sum(astro, idx, n_model)
            pm.Deterministic("mu", mu, dims="analysis_bin")
            pm.CustomDist(
                "counts",
                mu,
                logp=lambda value, mu: poisson_logp(value, mu),
                random=poisson_random,
                signature="()->()",
                dtype="int64",
                observed=k,
                dims="analysis_bin",
            )
        else:
            w = atmo_norm * w_atmo + astro
            mu = binned_sum(w, idx, n_model)
            sigma2 = binned_sum(w**2, idx, n_model)
            pm.Deterministic("mu", mu, dims="analysis_bin")
            pm.CustomDist(
                "counts",
                mu,
                sigma2,
                logp=lambda value, mu, sigma2: effective_logp(value, mu, sigma2),
                random=effective_random,
                signature="(),()->()",
                dtype="int64",
                observed=k,
                dims="analysis_bin",
            )
    return model


@dataclass(frozen=True)
class MaxLikelihood:
    """The maximum-likelihood point of a model.

    Attributes
    ----------
    params
        Parameter name to value at the maximum.
    neg_log_likelihood
        ``-ln L`` there, including the ``ln k!`` terms (comparable with the exercise's 175.48).
    success, message, n_evaluations
        What the optimiser reported.
    """

    params: dict[str, float]
    neg_log_likelihood: float
    success: bool
    message: str
    n_evaluations: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            **self.params,
            "neg_log_likelihood": self.neg_log_likelihood,
            "success": self.success,
            "message": self.message,
            "n_evaluations": self.n_evaluations,
        }


def max_likelihood(model: pm.Model, *, start: Mapping[str, float] | None = None) -> MaxLikelihood:
    """Maximise the model's own likelihood (priors ignored) with bounded L-BFGS-B.

    As in the exercise, ``atmo_norm >= 0`` and ``astro_norm >= 0`` and the default start is
    ``(1, 8, 2.5)`` (and curvature 0). The likelihood and its exact gradient come from the model's
    graph, so the point and the posterior are computed from one definition.

    Parameters
    ----------
    model
        A model from :func:`build_model`.
    start
        Optional starting values by parameter name.
    """
    plain = remove_value_transforms(model)
    names = [rv.name for rv in plain.free_RVs]
    values = plain.value_vars
    start = {**_SEED_START, **(start or {})}
    unknown = set(start) - set(_SEED_START)
    if unknown:
        raise ValueError(f"start has unknown parameter(s) {sorted(unknown)}; use {names}.")
    loglike = plain.logp(vars=plain.observed_RVs, jacobian=False)
    grad = pt.grad(loglike, values)
    fn = pytensor.function(values, [-loglike, *(-g for g in grad)])
    point = plain.initial_point()

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        args = [
            np.asarray(t, dtype=point[v.name].dtype) for t, v in zip(theta, values, strict=True)
        ]
        out = fn(*args)
        return float(out[0]), np.array([float(g) for g in out[1:]])

    x0 = np.array([start[n] for n in names], dtype=np.float64)
    bounds = [_BOUNDS.get(n, (None, None)) for n in names]
    res = scipy.optimize.minimize(objective, x0, jac=True, method="L-BFGS-B", bounds=bounds)
    return MaxLikelihood(
        params={n: float(v) for n, v in zip(names, res.x, strict=True)},
        neg_log_likelihood=float(res.fun),
        success=bool(res.success),
        message=str(res.message),
        n_evaluations=int(res.nfev),
    )
