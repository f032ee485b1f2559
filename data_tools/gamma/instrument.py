r"""Binning geometry and an analytic instrument response modelled on CTA South (prod5).

Coordinates are Galactic longitude and latitude in degrees, in a small field where the flat-sky
approximation holds (|b| <= a few degrees: :math:`\cos b > 0.998`, so offsets and pixel areas
are exact to 0.2%). Energies are in TeV.

The response factorises, as the instrument response functions of IACTs are usually tabulated:

.. math::

    R(E_r, l_r, b_r \mid E, l, b) = D(E_r \mid E)\; P(l_r - l \mid E)\; P(b_r - b \mid E),

with a log-normal energy migration :math:`D` and a Gaussian point-spread function whose 2-D
profile is the product of two 1-D Gaussians. The exposure :math:`A(E, \theta)\,T` multiplies
the true flux; the off-axis dependence is a Gaussian factor in the offset :math:`\theta` from
the pointing.

Every response value is a pixel integral, not a value at a pixel centre: the probability of
landing in reconstructed bin :math:`r` is averaged over the true bin, exactly for the PSF
(closed form, :func:`box_gauss_box`) and with Gauss-Legendre nodes in :math:`\ln E` for the
energy migration.

Performance numbers (public CTA prod5 South, 20 deg zenith, 50 h, average azimuth; the CTAO
performance page, ``https://www.ctao.org/for-scientists/performance/``, read off its curves and
collected in ``shared/REFERENCE.md``):

=============  ========  =========  =========  ==========
E [TeV]           0.1        1         10         100
=============  ========  =========  =========  ==========
A_eff [m^2]     1.6e5     7.4e5      2.2e6      2.9e6
PSF r68 [deg]   0.15      0.056      0.034      0.021
dE/E (68%)      15%       7.5%       7.5%       11%
CR [/TeV/s/sr]  7.4e4     116        0.26       (power law continued)
=============  ========  =========  =========  ==========

Values between nodes are interpolated linearly in log-log (the energy resolution linearly in
log E) and held constant beyond the table (the background rate continues its last power law).
The off-axis effective area and background acceptance fall as a Gaussian in offset with half
maximum at 3.5 deg (:data:`OFFSET_HALF_DEG`), roughly the prod5 South field of view at 1 TeV;
this one number is our assumption, not read from the tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.special import ndtr

from data_tools.checks import as_finite_array, as_int

__all__ = [
    "OFFSET_HALF_DEG",
    "Binning",
    "Instrument",
    "Response",
    "box_gauss_box",
    "energy_dispersion",
    "gauss_legendre",
    "psf_matrix",
    "response",
]

OFFSET_HALF_DEG = 3.5
"""Offset (deg) at which the off-axis effective area and background acceptance halve."""

_R68_PER_SIGMA = float(np.sqrt(-2.0 * np.log(1.0 - 0.68)))  # 2-D Gaussian: r68 = 1.5096 sigma


def _edges(name: str, value: Any) -> np.ndarray:
    e = as_finite_array(name, value)
    if e.size < 2 or np.any(np.diff(e) <= 0):
        raise ValueError(f"{name} must be at least 2 strictly increasing bin edges, got {e}.")
    return e


@dataclass(frozen=True, eq=False)
class Binning:
    """A (energy, longitude, latitude) cube of bins.

    Attributes
    ----------
    energy_edges : ndarray, shape (n_energy + 1,)
        TeV, strictly increasing and positive.
    lon_edges, lat_edges : ndarray, shape (n_lon + 1,), (n_lat + 1,)
        Galactic longitude and latitude in degrees.
    """

    energy_edges: np.ndarray
    lon_edges: np.ndarray
    lat_edges: np.ndarray

    def __post_init__(self) -> None:
        e = _edges("energy_edges", self.energy_edges)
        if e[0] <= 0:
            raise ValueError(f"energy_edges must be positive (TeV), got first edge {e[0]}.")
        object.__setattr__(self, "energy_edges", e)
        object.__setattr__(self, "lon_edges", _edges("lon_edges", self.lon_edges))
        lat = _edges("lat_edges", self.lat_edges)
        if np.abs(lat).max() > 20:
            raise ValueError(
                f"lat_edges reach |b| = {np.abs(lat).max()} deg; the flat-sky geometry here is "
                f"for fields within a few degrees of the plane (keep |b| <= 20 deg)."
            )
        object.__setattr__(self, "lat_edges", lat)

    @classmethod
    def regular(
        cls,
        *,
        energy_range: tuple[float, float] = (0.1, 100.0),
        per_decade: int = 20,
        half_width: float = 3.0,
        pixel: float = 0.2,
        centre: tuple[float, float] = (0.0, 0.0),
    ) -> Binning:
        """Log-spaced energies and square pixels on ``centre +- half_width`` deg.

        The seed's true geometry is ``per_decade=30, pixel=0.1``; its reconstructed one
        ``per_decade=20, pixel=0.2``.
        """
        per_decade = as_int("per_decade", per_decade)
        lo, hi = (float(v) for v in energy_range)
        if not 0 < lo < hi:
            raise ValueError(
                f"energy_range must be (low, high) with 0 < low < high, got {energy_range}."
            )
        n_e = max(1, round(per_decade * np.log10(hi / lo)))
        if not (half_width > 0 and 0 < pixel <= 2 * half_width):
            raise ValueError(
                f"need half_width > 0 and 0 < pixel <= 2 half_width, got {half_width}, {pixel}."
            )
        n_pix = max(1, round(2 * half_width / pixel))
        return cls(
            np.geomspace(lo, hi, n_e + 1),
            np.linspace(centre[0] - half_width, centre[0] + half_width, n_pix + 1),
            np.linspace(centre[1] - half_width, centre[1] + half_width, n_pix + 1),
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(n_energy, n_lon, n_lat)``."""
        return (self.energy_edges.size - 1, self.lon_edges.size - 1, self.lat_edges.size - 1)

    @property
    def energy(self) -> np.ndarray:
        """Geometric bin centres, TeV."""
        return np.sqrt(self.energy_edges[1:] * self.energy_edges[:-1])

    @property
    def lon(self) -> np.ndarray:
        """Longitude bin centres, deg."""
        return 0.5 * (self.lon_edges[1:] + self.lon_edges[:-1])

    @property
    def lat(self) -> np.ndarray:
        """Latitude bin centres, deg."""
        return 0.5 * (self.lat_edges[1:] + self.lat_edges[:-1])

    @property
    def solid_angle(self) -> np.ndarray:
        """Pixel solid angles in sr, shape ``(n_lon, n_lat)``: exact on the sphere."""
        dl = np.deg2rad(np.diff(self.lon_edges))
        dsinb = np.diff(np.sin(np.deg2rad(self.lat_edges)))
        return np.outer(dl, dsinb)

    def offset(self, pointing: tuple[float, float]) -> np.ndarray:
        """Angular distance (deg) of each pixel centre from ``pointing``, ``(n_lon, n_lat)``."""
        dl = (self.lon - pointing[0])[:, None] * np.cos(np.deg2rad(self.lat))[None, :]
        db = (self.lat - pointing[1])[None, :]
        return np.hypot(dl, db)


def _loglog(x: np.ndarray, xp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    return np.exp(np.interp(np.log(x), np.log(xp), np.log(fp)))


@dataclass(frozen=True)
class Instrument:
    """Analytic response of CTA South (prod5); see the module docstring for the sources.

    Every table is ``(energy nodes in TeV, values)``; override a field to model another array.
    """

    aeff_m2: tuple[tuple[float, ...], tuple[float, ...]] = (
        (0.1, 1.0, 10.0, 100.0),
        (1.6e5, 7.4e5, 2.2e6, 2.9e6),
    )
    psf_r68_deg: tuple[tuple[float, ...], tuple[float, ...]] = (
        (0.1, 1.0, 10.0, 100.0),
        (0.15, 0.056, 0.034, 0.021),
    )
    energy_resolution: tuple[tuple[float, ...], tuple[float, ...]] = (
        (0.1, 1.0, 10.0, 100.0),
        (0.15, 0.075, 0.075, 0.11),
    )
    background_rate: tuple[tuple[float, ...], tuple[float, ...]] = (
        (0.1, 1.0, 10.0),
        (7.4e4, 116.0, 0.26),
    )
    offset_half_deg: float = OFFSET_HALF_DEG
    name: str = field(default="CTA South prod5 (analytic)")

    def off_axis(self, offset_deg: Any) -> np.ndarray:
        """Relative acceptance at ``offset_deg``: ``2^{-(offset / offset_half)^2}``."""
        return np.exp2(-((np.asarray(offset_deg) / self.offset_half_deg) ** 2))

    def effective_area(self, energy: Any, offset_deg: Any = 0.0) -> np.ndarray:
        """Effective area in cm^2 at true ``energy`` (TeV) and offset (deg), broadcasting."""
        e = np.clip(np.asarray(energy, float), self.aeff_m2[0][0], self.aeff_m2[0][-1])
        return 1e4 * _loglog(e, *map(np.asarray, self.aeff_m2)) * self.off_axis(offset_deg)

    def psf_sigma(self, energy: Any) -> np.ndarray:
        """Per-axis Gaussian width (deg) of the PSF at true ``energy``: ``r68 / 1.5096``."""
        e = np.clip(np.asarray(energy, float), self.psf_r68_deg[0][0], self.psf_r68_deg[0][-1])
        return _loglog(e, *map(np.asarray, self.psf_r68_deg)) / _R68_PER_SIGMA

    def edisp_sigma(self, energy: Any) -> np.ndarray:
        """Width of ``ln E_reco - ln E_true`` (a normal; no bias) at true ``energy``."""
        nodes, frac = map(np.asarray, self.energy_resolution)
        return np.log1p(np.interp(np.log(np.asarray(energy, float)), np.log(nodes), frac))

    def background(self, energy: Any, offset_deg: Any = 0.0) -> np.ndarray:
        """Residual cosmic-ray rate per TeV per s per sr at reconstructed ``energy``."""
        nodes, rate = map(np.asarray, self.background_rate)
        logx, logy = np.log(nodes), np.log(rate)
        slope = np.diff(logy) / np.diff(logx)
        x = np.log(np.asarray(energy, float))
        k = np.clip(np.searchsorted(logx, x) - 1, 0, slope.size - 1)
        return np.exp(logy[k] + slope[k] * (x - logx[k])) * self.off_axis(offset_deg)


def gauss_legendre(edges: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` Gauss-Legendre nodes in every bin of ``edges`` and their weights.

    Returns
    -------
    nodes, weights : ndarray, shape (n_bin, n)
        ``(f(nodes) * weights).sum(1)`` integrates ``f`` over each bin; the weights of a bin
        sum to its width.
    """
    x, w = np.polynomial.legendre.leggauss(as_int("n", n))
    lo, hi = np.asarray(edges[:-1], float)[:, None], np.asarray(edges[1:], float)[:, None]
    return 0.5 * (lo + hi) + 0.5 * (hi - lo) * x, 0.5 * (hi - lo) * w


def _antiderivative_ndtr(u: np.ndarray) -> np.ndarray:
    """``G(u) = u Phi(u) + phi(u)``, so that ``G' = Phi``."""
    return u * ndtr(u) + np.exp(-0.5 * u * u) / np.sqrt(2 * np.pi)


def box_gauss_box(true_edges: Any, reco_edges: Any, sigma: float) -> np.ndarray:
    """Probability of a reconstructed bin given a true bin, Gaussian smearing of width sigma.

    The true position is uniform over its bin; the result is exact:
    ``P[r, t] = (1/w_t) int_{t} [Phi((r_hi - x)/sigma) - Phi((r_lo - x)/sigma)] dx``.

    Returns
    -------
    ndarray, shape (n_reco, n_true)
        Not normalised: a column sums to the fraction that stays inside the reco range.
    """
    t = np.asarray(true_edges, float)
    r = np.asarray(reco_edges, float)
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}.")

    def g(rr, tt):
        return _antiderivative_ndtr((rr[:, None] - tt[None, :]) / sigma)

    lo, hi = r[:-1], r[1:]
    t_lo, t_hi = t[:-1], t[1:]
    num = g(hi, t_lo) - g(hi, t_hi) - g(lo, t_lo) + g(lo, t_hi)
    return np.clip(sigma * num / (t_hi - t_lo)[None, :], 0.0, 1.0)


def psf_matrix(instrument: Instrument, true: Binning, reco: Binning, axis: str) -> np.ndarray:
    """PSF probabilities along one axis, per true energy bin, normalised over the reco range.

    Returns
    -------
    ndarray, shape (n_true_energy, n_reco_axis, n_true_axis)
    """
    if axis not in ("lon", "lat"):
        raise ValueError(f"axis must be 'lon' or 'lat', got {axis!r}.")
    t_edges = getattr(true, f"{axis}_edges")
    r_edges = getattr(reco, f"{axis}_edges")
    sig = instrument.psf_sigma(true.energy)
    if axis == "lon":
        # flat sky: a longitude offset of dl deg spans dl cos(b) on the sky
        sig = sig / np.cos(np.deg2rad(np.mean(true.lat_edges)))
    out = np.stack([box_gauss_box(t_edges, r_edges, s) for s in sig])
    return _normalise_columns(out, "PSF", axis)


def _normalise_columns(p: np.ndarray, what: str, axis: str) -> np.ndarray:
    total = p.sum(axis=-2, keepdims=True)
    if np.any(total <= 1e-12):
        raise ValueError(
            f"the {what} moves some true {axis} bins entirely outside the reconstructed range; "
            f"make the reconstructed geometry cover the true one."
        )
    return p / total


def energy_dispersion(
    instrument: Instrument, true: Binning, reco: Binning, *, n_sub: int = 6
) -> np.ndarray:
    """Energy migration probabilities, normalised over the reco energy range.

    Each true bin is averaged over ``n_sub`` Gauss-Legendre nodes in ``ln E`` (uniform in
    ``ln E`` within the bin; at 20-30 bins per decade the spectral slope inside a bin changes
    these probabilities by well under 1%).

    Returns
    -------
    ndarray, shape (n_reco_energy, n_true_energy)
    """
    n_sub = as_int("n_sub", n_sub)
    ln_e, w = gauss_legendre(np.log(true.energy_edges), n_sub)  # (n_true, n_sub)
    sig = instrument.edisp_sigma(np.exp(ln_e))
    r = np.log(reco.energy_edges)
    cdf = ndtr((r[:, None, None] - ln_e[None]) / sig[None])  # (n_reco + 1, n_true, n_sub)
    p = (np.diff(cdf, axis=0) * (w / w.sum(axis=1, keepdims=True))).sum(axis=-1)
    return _normalise_columns(p, "energy dispersion", "energy")


@dataclass(frozen=True, eq=False)
class Response:
    """The factorised response of one observation, normalised over the reco region.

    Attributes
    ----------
    energy : ndarray, shape (n_reco_energy, n_true_energy)
    lon : ndarray, shape (n_true_energy, n_reco_lon, n_true_lon)
    lat : ndarray, shape (n_true_energy, n_reco_lat, n_true_lat)
    """

    energy: np.ndarray
    lon: np.ndarray
    lat: np.ndarray

    def fold_spatial(self, spatial: np.ndarray) -> np.ndarray:
        """Smear a true map ``(n_true_lon, n_true_lat)`` with the PSF of each true energy.

        Returns ``(n_true_energy, n_reco_lon, n_reco_lat)``.
        """
        return np.einsum("eia,ab,ejb->eij", self.lon, spatial, self.lat, optimize=True)


def response(
    true: Binning, reco: Binning, instrument: Instrument | None = None, *, n_sub: int = 6
) -> Response:
    """Build the factorised, pixel-integrated response from ``true`` to ``reco`` bins."""
    instrument = instrument or Instrument()
    return Response(
        energy_dispersion(instrument, true, reco, n_sub=n_sub),
        psf_matrix(instrument, true, reco, "lon"),
        psf_matrix(instrument, true, reco, "lat"),
    )
