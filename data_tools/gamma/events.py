r"""Observations, event simulation and the nuisance marginalisation for the DM search.

For an observation, every component :math:`k` has expected counts over the true cube
(:mod:`data_tools.gamma.sources`) and a response :math:`R(r \mid t)` normalised over the
reconstructed region (:mod:`data_tools.gamma.instrument`), as in the original. The probability
that an event of component :math:`k` is measured in reconstructed bin :math:`r` is

.. math::

    m_{rk} = \frac{\sum_t R(r \mid t)\, \mu_k(t)}{\sum_t \mu_k(t)},

which is what the likelihood :math:`\sum_i n_i \log \sum_k f_k m_{ik}` needs, at the unique
measured bins :math:`i` only. Because the response factorises and every component is a sum of
separable terms, :math:`m_{ik}` costs two small matrix products per true energy, with no loop
over events; for dark matter it is tabulated on a fine log-mass grid
(:func:`marginal_tables`) that the model interpolates smoothly.

The residual cosmic rays are defined in reconstructed coordinates and enter directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import xarray as xr

from data_tools.checks import as_finite_array, as_int
from data_tools.gamma.instrument import Binning, Instrument, Response, response
from data_tools.gamma.sources import (
    SIGMA_V_NOMINAL,
    Einasto,
    Separable,
    cosmic_ray_counts,
    diffuse,
    dm_spectrum,
    j_factor_map,
    point_sources,
)

__all__ = [
    "BACKGROUNDS",
    "COMPONENTS",
    "MASS_RANGE",
    "Observation",
    "bin_counts",
    "marginal_tables",
    "simulate_events",
]

COMPONENTS = ("dm", "cosmic_rays", "local_sources", "diffuse")
"""Mixture components, in the order of the model's ``component`` dimension."""
BACKGROUNDS = COMPONENTS[1:]
MASS_RANGE = (0.12, 80.0)
"""TeV: the DM mass prior's range (the original's absolute bounds)."""


@dataclass(frozen=True, eq=False)
class Observation:
    """One pointing: geometry, live time and instrument, with its response and templates.

    The seed's configuration is the default: true bins 30 per decade and 0.1 deg, measured
    bins 20 per decade and 0.2 deg, 0.1-100 TeV, a 6 x 6 deg field, 5 h at the Galactic Centre.
    Heavy pieces (response, J-factor map, folded templates) are computed on first use and
    kept; the observation is immutable, so they cannot go stale (``dataclasses.replace`` makes
    a changed copy).
    """

    livetime_h: float = 5.0
    pointing: tuple[float, float] = (0.0, 0.0)
    true: Binning = field(default_factory=lambda: Binning.regular(per_decade=30, pixel=0.1))
    reco: Binning = field(default_factory=lambda: Binning.regular(per_decade=20, pixel=0.2))
    instrument: Instrument = field(default_factory=Instrument)
    profile: Einasto = field(default_factory=Einasto)
    name: str = "obs"

    def __post_init__(self) -> None:
        if not (np.isfinite(self.livetime_h) and self.livetime_h > 0):
            raise ValueError(
                f"livetime_h must be a positive number of hours, got {self.livetime_h}."
            )
        if len(self.pointing) != 2 or not np.all(np.isfinite(self.pointing)):
            raise ValueError(f"pointing must be (lon, lat) in deg, got {self.pointing}.")
        object.__setattr__(self, "pointing", (float(self.pointing[0]), float(self.pointing[1])))

    @property
    def livetime_s(self) -> float:
        """Live time in seconds."""
        return 3600.0 * self.livetime_h

    def _kw(self) -> dict[str, Any]:
        return {
            "livetime_s": self.livetime_s,
            "instrument": self.instrument,
            "pointing": self.pointing,
        }

    @cached_property
    def response(self) -> Response:
        """The factorised response, normalised over the reconstructed region."""
        return response(self.true, self.reco, self.instrument)

    @cached_property
    def dm_spatial(self) -> np.ndarray:
        """J-factor per pixel times off-axis acceptance, ``(n_true_lon, n_true_lat)``."""
        acc = self.instrument.off_axis(self.true.offset(self.pointing))
        return j_factor_map(self.true, self.profile) * acc

    @cached_property
    def backgrounds(self) -> dict[str, Separable]:
        """Expected counts of each background (cosmic rays in reconstructed bins)."""
        return {
            "cosmic_rays": cosmic_ray_counts(self.reco, **self._kw()),
            "local_sources": point_sources(self.true, **self._kw()),
            "diffuse": diffuse(self.true, **self._kw()),
        }

    @cached_property
    def _folded(self) -> dict[str, np.ndarray]:
        """Each true-space template smeared by the PSF: ``(n_term, n_true_e, n_lon_r, n_lat_r)``."""
        out = {"dm": self.response.fold_spatial(self.dm_spatial)[None]}
        for name in ("local_sources", "diffuse"):
            sep = self.backgrounds[name]
            out[name] = np.stack([self.response.fold_spatial(s) for s in sep.spatial])
        return out

    def dm_spectrum(self, mass: Any, sigma_v: float = SIGMA_V_NOMINAL) -> np.ndarray:
        """DM counts per true energy bin per unit J (see :func:`sources.dm_spectrum`)."""
        return dm_spectrum(
            self.true,
            mass,
            livetime_s=self.livetime_s,
            instrument=self.instrument,
            sigma_v=sigma_v,
        )

    def true_counts(self, component: str, *, mass: float = 1.0) -> np.ndarray:
        """Return expected counts over the true cube ``(n_e, n_lon, n_lat)`` (not cosmic rays)."""
        if component == "dm":
            return Separable(self.dm_spectrum(mass)[None], self.dm_spatial[None]).cube()
        if component in ("local_sources", "diffuse"):
            return self.backgrounds[component].cube()
        raise ValueError(
            f"component must be one of 'dm', 'local_sources', 'diffuse' (cosmic rays have no "
            f"true-space template), got {component!r}."
        )

    def reco_counts(self, component: str, *, mass: float = 1.0) -> np.ndarray:
        """Return expected counts over the reconstructed cube ``(n_e, n_lon, n_lat)``."""
        _check_component(component)
        if component == "cosmic_rays":
            return self.backgrounds["cosmic_rays"].cube()
        spectra = (
            self.dm_spectrum(mass)[None]
            if component == "dm"
            else self.backgrounds[component].spectra
        )
        return np.einsum("rt,kt,ktij->rij", self.response.energy, spectra, self._folded[component])

    def expected_totals(self, *, mass: float = 1.0, sigma_v: float = SIGMA_V_NOMINAL) -> dict:
        """Return expected counts of each component in the field (DM at ``mass``, ``sigma_v``)."""
        out = {"dm": float(self.dm_spectrum(mass, sigma_v).sum() * self.dm_spatial.sum())}
        out.update({k: v.total for k, v in self.backgrounds.items()})
        return out


def _check_component(component: str) -> None:
    if component not in COMPONENTS:
        raise ValueError(f"component must be one of {COMPONENTS}, got {component!r}.")


def _check_fractions(fractions: Any) -> dict[str, float]:
    if not isinstance(fractions, dict):
        raise TypeError(f"fractions must be a dict of component to fraction, got {fractions!r}.")
    unknown = sorted(set(fractions) - set(COMPONENTS))
    if unknown:
        raise ValueError(f"fractions has unknown component(s) {unknown}; use {COMPONENTS}.")
    f = {k: float(fractions.get(k, 0.0)) for k in COMPONENTS}
    if any(not np.isfinite(v) or v < 0 for v in f.values()) or not np.isclose(sum(f.values()), 1):
        raise ValueError(f"fractions must be >= 0 and sum to 1, got {f}.")
    return f


def _split(n: int, fractions: dict[str, float]) -> dict[str, int]:
    """Largest-remainder rounding of ``n * fractions`` (the seed's fixed counts)."""
    raw = np.array([n * fractions[k] for k in COMPONENTS])
    out = np.floor(raw).astype(int)
    out[np.argsort(out - raw)[: n - out.sum()]] += 1
    return dict(zip(COMPONENTS, out.tolist(), strict=True))


def _draw_bins(p_cols: np.ndarray, cols: np.ndarray, rng) -> np.ndarray:
    """For each event, one row of the column-stochastic matrix ``p_cols[:, col]``."""
    cdf = np.cumsum(p_cols[:, cols], axis=0)
    u = rng.uniform(size=cols.size) * cdf[-1]
    return np.minimum((u[None, :] > cdf).sum(axis=0), p_cols.shape[0] - 1)


def _flat_choice(weights: np.ndarray, n: int, rng) -> tuple[np.ndarray, ...]:
    p = weights.ravel() / weights.sum()
    return np.unravel_index(rng.choice(p.size, size=n, p=p), weights.shape)


def simulate_events(
    observation: Observation,
    *,
    n_events: int | None = 500,
    fractions: dict[str, float] | None = None,
    mass: float = 1.0,
    sigma_v: float | None = None,
    multinomial: bool = False,
    rng: Any = None,
) -> xr.Dataset:
    """Simulate measured events: true events per component, then the response.

    Either give ``n_events`` and ``fractions`` (the seed: 500 events, half dark matter, the
    background 70/20/10% cosmic rays/local/diffuse; counts rounded, not drawn), or
    ``n_events=None`` and ``sigma_v`` (cm^3 s^-1) for Poisson counts from the physical rates.
    ``multinomial=True`` draws the per-component counts from ``Multinomial(n_events,
    fractions)``, the sampling distribution the shape-only likelihood assumes (calibration
    studies need it).

    Returns
    -------
    xarray.Dataset
        Over ``event``: ``component``; true ``true_energy`` (TeV), ``true_lon``, ``true_lat``
        (deg; NaN for cosmic rays, which exist only as measured events); measured bin indices
        ``energy_idx``, ``lon_idx``, ``lat_idx`` and their bin centres ``energy``, ``lon``,
        ``lat``. Attributes hold the truths.
    """
    rng = np.random.default_rng(rng)
    if not (np.isfinite(mass) and MASS_RANGE[0] <= mass <= MASS_RANGE[1]):
        raise ValueError(f"mass must be in {MASS_RANGE} TeV, got {mass}.")
    if n_events is None:
        if sigma_v is None or not sigma_v >= 0:
            raise ValueError("with n_events=None give sigma_v >= 0 (cm^3/s) for physical rates.")
        rates = observation.expected_totals(mass=mass, sigma_v=sigma_v)
        counts = {k: int(rng.poisson(rates[k])) for k in COMPONENTS}
        fractions = {k: rates[k] / sum(rates.values()) for k in COMPONENTS}
    else:
        n_events = as_int("n_events", n_events)
        if fractions is None:
            fractions = {"dm": 0.5, "cosmic_rays": 0.35, "local_sources": 0.1, "diffuse": 0.05}
        fractions = _check_fractions(fractions)
        if multinomial:
            drawn = rng.multinomial(n_events, [fractions[k] for k in COMPONENTS])
            counts = dict(zip(COMPONENTS, drawn.tolist(), strict=True))
        else:
            counts = _split(n_events, fractions)

    true, reco, resp = observation.true, observation.reco, observation.response
    parts = []
    for comp in COMPONENTS:
        n = counts[comp]
        if comp == "cosmic_rays":
            ei, li, bi = _flat_choice(observation.reco_counts(comp), n, rng)
            te = tl = tb = np.full(n, np.nan)
        else:
            et, lt, bt = _flat_choice(observation.true_counts(comp, mass=mass), n, rng)
            # the position is uniform in its true cell (the response averages over it)
            lo, hi = np.log(true.energy_edges[et]), np.log(true.energy_edges[et + 1])
            te = np.exp(rng.uniform(lo, hi))
            tl = rng.uniform(true.lon_edges[lt], true.lon_edges[lt + 1])
            tb = rng.uniform(true.lat_edges[bt], true.lat_edges[bt + 1])
            ei = _draw_bins(resp.energy, et, rng)
            li = np.empty(n, int)
            bi = np.empty(n, int)
            for e in np.unique(et):
                sel = et == e
                li[sel] = _draw_bins(resp.lon[e], lt[sel], rng)
                bi[sel] = _draw_bins(resp.lat[e], bt[sel], rng)
        parts.append((np.full(n, comp), te, tl, tb, ei, li, bi))
    cols = [np.concatenate(c) for c in zip(*parts, strict=True)]
    order = rng.permutation(cols[0].size)
    comp, te, tl, tb, ei, li, bi = (c[order] for c in cols)
    return xr.Dataset(
        {
            "component": ("event", comp.astype(str)),
            "true_energy": ("event", te),
            "true_lon": ("event", tl),
            "true_lat": ("event", tb),
            "energy_idx": ("event", ei),
            "lon_idx": ("event", li),
            "lat_idx": ("event", bi),
            "energy": ("event", reco.energy[ei]),
            "lon": ("event", reco.lon[li]),
            "lat": ("event", reco.lat[bi]),
        },
        coords={"event": np.arange(comp.size)},
        attrs={
            "mass": float(mass),
            **{f"fraction_{k}": float(v) for k, v in fractions.items()},
            **{f"n_{k}": int(v) for k, v in counts.items()},
            "livetime_h": observation.livetime_h,
            "pointing_lon": observation.pointing[0],
            "pointing_lat": observation.pointing[1],
        },
    )


def bin_counts(events: xr.Dataset, reco: Binning) -> xr.Dataset:
    """Bin the events: the measured cube and its unique non-empty bins with their counts.

    Returns
    -------
    xarray.Dataset
        ``cube`` over (``energy``, ``lon``, ``lat``) bin centres, and over ``bin`` (the unique
        non-empty bins, in flat-index order): ``counts``, ``energy_idx``, ``lon_idx``,
        ``lat_idx`` and the bin centres ``energy`` (TeV), ``lon``, ``lat`` (deg).
    """
    idx = [np.asarray(events[k].values) for k in ("energy_idx", "lon_idx", "lat_idx")]
    for k, i, n in zip(("energy_idx", "lon_idx", "lat_idx"), idx, reco.shape, strict=True):
        if i.size and (i.min() < 0 or i.max() >= n or not np.issubdtype(i.dtype, np.integer)):
            raise ValueError(f"events[{k!r}] must be integers in [0, {n}) for this geometry.")
    cube = np.zeros(reco.shape, dtype=np.int64)
    np.add.at(cube, tuple(idx), 1)
    flat = np.flatnonzero(cube)
    e, lo, la = np.unravel_index(flat, reco.shape)
    return xr.Dataset(
        {
            "cube": (("energy", "lon", "lat"), cube),
            "counts": ("bin", cube.ravel()[flat]),
            "energy_idx": ("bin", e),
            "lon_idx": ("bin", lo),
            "lat_idx": ("bin", la),
            "bin_energy": ("bin", reco.energy[e]),
            "bin_lon": ("bin", reco.lon[lo]),
            "bin_lat": ("bin", reco.lat[la]),
        },
        coords={
            "energy": reco.energy,
            "lon": reco.lon,
            "lat": reco.lat,
            "bin": np.arange(flat.size),
        },
    )


def marginal_tables(
    observation: Observation,
    binned: xr.Dataset,
    *,
    mass_per_decade: int = 100,
    mass_range: tuple[float, float] = MASS_RANGE,
) -> xr.Dataset:
    """Per measured bin, each component's probability ``m_ik``; DM on a log-mass grid.

    Returns
    -------
    xarray.Dataset
        ``counts`` (``bin``); ``log_m_background`` (``bin``, ``background``);
        ``log_m_dm`` (``log10_mass``, ``bin``) on a grid of ``mass_per_decade`` nodes per
        decade; ``expected_background`` (``background``), counts in the field at the templates'
        nominal normalisations; ``expected_dm`` (``log10_mass``), DM counts at
        ``<sigma v> = 3e-26 cm^3/s``. ``log m`` is floored at -700 where a component cannot
        reach a bin.
    """
    mass_per_decade = as_int("mass_per_decade", mass_per_decade)
    lo, hi = np.log10(as_finite_array("mass_range", mass_range, positive=True))
    n_mass = max(4, round((hi - lo) * mass_per_decade) + 1)
    if not lo < hi:
        raise ValueError(f"mass_range must be (low, high) with low < high, got {mass_range}.")
    if 10**lo <= observation.true.energy_edges[0]:
        raise ValueError(
            f"mass_range starts at {10**lo:.3g} TeV, at or below the lowest true energy "
            f"{observation.true.energy_edges[0]:.3g} TeV: lighter dark matter gives no photons in "
            f"the field. Raise the low end of mass_range or extend the true energy axis."
        )
    log10_mass = np.linspace(lo, hi, n_mass)
    if not isinstance(binned, xr.Dataset) or "counts" not in binned:
        raise TypeError("binned must be the xarray.Dataset from bin_counts(events, reco).")
    e, li, bi = (binned[k].values for k in ("energy_idx", "lon_idx", "lat_idx"))
    for name, idx, n in zip(
        ("energy", "lon", "lat"), (e, li, bi), observation.reco.shape, strict=True
    ):
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise ValueError(
                f"binned has {name} bin {idx.max()} but the observation's measured geometry has "
                f"{n}: bin the events with this observation's reco binning."
            )
    resp = observation.response

    def log_norm(values, total):
        with np.errstate(divide="ignore"):
            return np.maximum(np.log(values) - np.log(total), -700.0)

    log_bkg, totals = [], []
    for name in BACKGROUNDS:
        cube = observation.reco_counts(name)
        log_bkg.append(log_norm(cube[e, li, bi], cube.sum()))
        totals.append(cube.sum())
    # DM: (n_mass, n_true_e) @ (n_true_e, n_bin); totals need no folding (response normalised)
    spectra = observation.dm_spectrum(10**log10_mass)
    folded = observation._folded["dm"][0]  # (n_true_e, n_lon_r, n_lat_r)
    at_bins = resp.energy[e, :].T * folded[:, li, bi]
    dm_bins = spectra @ at_bins
    dm_total = spectra @ (resp.energy.sum(axis=0) * folded.sum(axis=(1, 2)))
    return xr.Dataset(
        {
            "counts": ("bin", binned["counts"].values),
            "log_m_background": (("bin", "background"), np.stack(log_bkg, axis=1)),
            "log_m_dm": (("log10_mass", "bin"), log_norm(dm_bins, dm_total[:, None])),
            "expected_background": ("background", np.array(totals)),
            "expected_dm": ("log10_mass", dm_total),
        },
        coords={
            "bin": binned["bin"].values,
            "background": list(BACKGROUNDS),
            "log10_mass": log10_mass,
        },
        attrs={"livetime_h": observation.livetime_h, "sigma_v_reference": SIGMA_V_NOMINAL},
    )
