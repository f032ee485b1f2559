r"""Gamma-ray source models over a true (energy, lon, lat) cube, as expected counts.

Each component's expected counts in a true cell are flux x exposure integrated over the cell:
:math:`\mu(E, l, b) = T \int_{E} \int_{\Omega} \Phi(E, \Omega) A(E, \theta(\Omega))\, dE\, d\Omega`.
Every component here is a sum of *separable* terms, a spectrum (counts per energy bin at unit
spatial weight) times a spatial map (integrated over each pixel), which is what lets the
response be applied per energy with two small matrices (:meth:`Response.fold_spatial`).

Components and their sources:

- **Dark-matter annihilation** (:func:`dm_spectrum`, :func:`j_factor`): channel b-bbar, with
  the analytic photon yield of Bergstroem, Ullio & Buckley (1998, Astropart. Phys. 9, 137),
  :math:`dN/dx = 0.73\, e^{-7.8x} / x^{1.5}` for :math:`x = E/m_\chi < 1`, integrated over
  each energy bin in closed form (so the counts are smooth in the mass, including the bin that
  holds the kinematic edge :math:`E = m_\chi`). Flux
  :math:`\langle\sigma v\rangle / (8\pi m_\chi^2)\, dN/dE\, J` (self-conjugate particle).
  Einasto profile :math:`\rho = \rho_s \exp[-(2/\alpha)((r/r_s)^\alpha - 1)]` with
  :math:`\alpha = 0.17`, :math:`r_s = 28.44` kpc, observer at 8.33 kpc and local density
  0.39 GeV cm^-3 (the original's constants; gammapy uses 0.3). The J-factor is integrated along
  the line of sight and *over each pixel*, so the Galactic Centre pixel is finite.
- **Galactic diffuse emission** (:func:`diffuse`): power law of index 2.41 and
  :math:`\Phi_0 = 1.36\times10^{-8}` TeV^-1 cm^-2 s^-1 sr^-1 at 1 TeV (Gaggero et al. 2017),
  times a Gaussian latitude profile of width 0.3 deg, the extent of the HESS Galactic Centre
  ridge (HESS 2006, Nature 439, 695); the original used the Fermi interstellar template.
- **Local sources** (:data:`GC_SOURCES`, :func:`point_sources`): five point sources near the
  Galactic Centre with (cut-off) power-law spectra, values rounded from the HESS publications
  named in the table; a synthetic stand-in, not a catalogue to cite.
- **Residual cosmic rays** (:func:`cosmic_ray_counts`): the instrument's background rate, which
  is defined in *reconstructed* coordinates and so is never folded through the response (the
  original smeared it twice).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import erf

from data_tools.checks import as_finite_array
from data_tools.gamma.instrument import Binning, Instrument, gauss_legendre

__all__ = [
    "GC_SOURCES",
    "KPC_CM",
    "SIGMA_V_NOMINAL",
    "Einasto",
    "Separable",
    "cosmic_ray_counts",
    "diffuse",
    "dm_photon_yield",
    "dm_spectrum",
    "j_factor",
    "j_factor_map",
    "point_sources",
]

KPC_CM = 3.0856775814913673e21
"""One kiloparsec in cm."""
SIGMA_V_NOMINAL = 3e-26
"""cm^3 s^-1: the thermal-relic annihilation cross-section, the reference for rates."""

_YIELD_A, _YIELD_C = 0.73, 7.8  # Bergstroem et al. 1998, b-bbar-like


@dataclass(frozen=True, eq=False)
class Separable:
    """Expected true counts ``sum_k outer(spectrum_k, spatial_k)``.

    Attributes
    ----------
    spectra : ndarray, shape (n_term, n_true_energy)
        Counts per energy bin per unit spatial weight (includes ``A(E) T``).
    spatial : ndarray, shape (n_term, n_true_lon, n_true_lat)
        Pixel-integrated spatial weight (includes the off-axis acceptance and solid angle).
    """

    spectra: np.ndarray
    spatial: np.ndarray

    def cube(self) -> np.ndarray:
        """Return the dense cube ``(n_true_energy, n_true_lon, n_true_lat)`` of expected counts."""
        return np.einsum("ke,kab->eab", self.spectra, self.spatial)

    @property
    def total(self) -> float:
        """Expected counts summed over the cube."""
        return float(np.einsum("ke,k->", self.spectra, self.spatial.sum(axis=(1, 2))))


# ---------------------------------------------------------------------------------- spectra
def _bin_integral(edges: np.ndarray, dnde) -> np.ndarray:
    """``int dnde dE`` over each energy bin: 8 Gauss-Legendre nodes in ``ln E``."""
    ln_e, w = gauss_legendre(np.log(edges), 8)
    e = np.exp(ln_e)
    return (dnde(e) * w * e).sum(axis=1)


def dm_photon_yield(x_lo: Any, x_hi: Any) -> np.ndarray:
    """Photons per annihilation with ``x = E / m`` in ``[x_lo, x_hi]`` (clipped to (0, 1]).

    Closed form of ``int 0.73 exp(-7.8 x) x^-1.5 dx``:
    ``2 [u^-1/2 e^{-cu}]_{hi}^{lo} - 2 sqrt(pi c) [erf(sqrt(c u))]_{lo}^{hi}``.
    """
    lo = np.clip(np.asarray(x_lo, float), 0.0, 1.0)
    hi = np.clip(np.asarray(x_hi, float), 0.0, 1.0)
    if np.any(lo[hi > lo] <= 0):
        raise ValueError("x_lo must be > 0: the yield diverges as x^-1/2 at zero energy.")
    c = _YIELD_C
    safe_lo, safe_hi = np.where(hi > lo, lo, 1.0), np.where(hi > lo, hi, 1.0)
    term = 2 * (safe_lo**-0.5 * np.exp(-c * safe_lo) - safe_hi**-0.5 * np.exp(-c * safe_hi))
    term -= 2 * np.sqrt(np.pi * c) * (erf(np.sqrt(c * safe_hi)) - erf(np.sqrt(c * safe_lo)))
    return np.where(hi > lo, _YIELD_A * term, 0.0)


def dm_spectrum(
    true: Binning,
    mass: Any,
    *,
    livetime_s: float,
    instrument: Instrument,
    sigma_v: float = SIGMA_V_NOMINAL,
) -> np.ndarray:
    """Return counts per true energy bin per unit J-factor (GeV^2 cm^-5 sr), DM of ``mass`` TeV.

    ``<sigma v> / (8 pi m^2) N_bin(m) A(E) T`` with ``m`` in GeV; shape ``mass.shape +
    (n_true_energy,)``. Smooth in ``mass``: the yield is integrated in closed form.
    """
    m = np.asarray(as_finite_array("mass", np.atleast_1d(mass), ndim=None, positive=True))
    edges = true.energy_edges
    n_bin = dm_photon_yield(edges[:-1] / m[..., None], edges[1:] / m[..., None])
    per_ann = sigma_v / (8 * np.pi * (1e3 * m[..., None]) ** 2)
    out = per_ann * n_bin * instrument.effective_area(true.energy) * livetime_s
    return out.reshape((*np.shape(mass), true.shape[0]))


# ---------------------------------------------------------------------------------- J-factor
@dataclass(frozen=True)
class Einasto:
    """Einasto profile; ``rho(r) = rho_s exp(-(2/alpha) ((r / r_s)^alpha - 1))``.

    ``rho_s`` follows from the local density at the observer's distance.
    """

    alpha: float = 0.17
    r_s_kpc: float = 28.44
    r_sun_kpc: float = 8.33
    rho_local: float = 0.39  # GeV cm^-3

    @property
    def rho_s(self) -> float:
        """Scale density in GeV cm^-3."""
        x = self.r_sun_kpc / self.r_s_kpc
        return self.rho_local / np.exp(-(2 / self.alpha) * (x**self.alpha - 1))

    def density(self, r_kpc: Any) -> np.ndarray:
        """GeV cm^-3 at Galactocentric radius ``r_kpc``; finite at ``r = 0``."""
        x = np.asarray(r_kpc, float) / self.r_s_kpc
        return self.rho_s * np.exp(-(2 / self.alpha) * (x**self.alpha - 1))


def j_factor(
    psi_deg: Any, profile: Einasto | None = None, *, s_max_kpc: float = 200.0
) -> np.ndarray:
    r"""Line-of-sight integral ``int rho^2 ds`` (GeV^2 cm^-5) at angle ``psi_deg`` from the GC.

    With :math:`u = s - R_\odot \cos\psi` and :math:`b = R_\odot \sin\psi`, the integrand
    :math:`\rho^2(\sqrt{u^2 + b^2})` peaks at :math:`u = 0`; a log-spaced grid in :math:`|u|`
    down to 1e-9 kpc resolves it for every angle, including :math:`\psi = 0`, where
    the Einasto density stays finite.
    """
    profile = profile or Einasto()
    psi = np.deg2rad(np.atleast_1d(np.asarray(psi_deg, float)))
    r0 = profile.r_sun_kpc
    b = r0 * np.sin(psi)[:, None]
    a = r0 * np.cos(psi)[:, None]
    t = np.concatenate([[0.0], np.geomspace(1e-9, s_max_kpc, 4000)])  # |u|

    def side(limit):
        u = np.minimum(t[None, :], limit)
        f = profile.density(np.hypot(u, b)) ** 2
        return np.trapezoid(f, u, axis=1)

    out = side(a) + side(s_max_kpc - a)  # towards the observer (s >= 0) and beyond
    return (out * KPC_CM).reshape(np.shape(psi_deg))


def j_factor_map(
    binning: Binning, profile: Einasto | None = None, *, n_gauss: int = 8
) -> np.ndarray:
    """J-factor integrated over each pixel, GeV^2 cm^-5 sr, shape ``(n_lon, n_lat)``.

    Pixels near the Galactic Centre are integrated in polar coordinates about it (the
    integrand peaks there); the rest with ``n_gauss`` x ``n_gauss`` Gauss-Legendre nodes.
    The J-factor is tabulated in ``log psi`` once per call.
    """
    profile = profile or Einasto()
    psi_tab = np.concatenate([[0.0], np.geomspace(1e-7, 30.0, 600)])
    log_j = np.log(j_factor(psi_tab, profile))

    def jf(psi):
        return np.exp(np.interp(psi, psi_tab, log_j))

    deg2 = np.deg2rad(1.0) ** 2
    le, be = binning.lon_edges, binning.lat_edges
    lo_l, hi_l, lo_b, hi_b = le[:-1], le[1:], be[:-1], be[1:]
    lon_n, wl = gauss_legendre(le, n_gauss)  # (n_lon, g)
    lat_n, wb = gauss_legendre(be, n_gauss)  # (n_lat, g)
    wb = wb * np.cos(np.deg2rad(lat_n))
    psi = np.hypot(
        lon_n[:, None, :, None] * np.cos(np.deg2rad(lat_n))[None, :, None, :],
        lat_n[None, :, None, :],
    )
    out = np.einsum("ag,bh,abgh->ab", wl, wb, jf(psi)) * deg2

    # near the centre: integrate J(psi) psi dpsi dphi over the pixel in polar coordinates
    width = max(np.diff(le).max(), np.diff(be).max())
    dl = np.maximum(np.maximum(lo_l, -hi_l), 0.0)  # distance of each pixel edge from l = 0
    db = np.maximum(np.maximum(lo_b, -hi_b), 0.0)
    near = np.argwhere(np.hypot(dl[:, None], db[None, :]) < 2.5 * width)
    phi = (np.arange(1024) + 0.5) * (2 * np.pi / 1024)
    for i, j in near:
        corners = np.hypot(le[[i, i + 1]][:, None], be[[j, j + 1]][None, :])
        r = np.concatenate([[0.0], np.geomspace(1e-7, corners.max(), 800)])
        xs, ys = r[:, None] * np.cos(phi), r[:, None] * np.sin(phi)
        inside = (xs >= le[i]) & (xs < le[i + 1]) & (ys >= be[j]) & (ys < be[j + 1])
        frac = inside.mean(axis=1)  # fraction of the circle of radius r inside the pixel
        dens = jf(r) * 2 * np.pi * r * frac * np.cos(np.deg2rad(binning.lat[j]))
        out[i, j] = np.trapezoid(dens, r) * deg2
    return out


# ---------------------------------------------------------------------------------- backgrounds
def _exposure_map(binning: Binning, instrument: Instrument, pointing) -> np.ndarray:
    """Off-axis acceptance times pixel solid angle (sr), ``(n_lon, n_lat)``."""
    return instrument.off_axis(binning.offset(pointing)) * binning.solid_angle


def diffuse(
    true: Binning,
    *,
    livetime_s: float,
    instrument: Instrument,
    pointing: tuple[float, float] = (0.0, 0.0),
    phi0: float = 1.36e-8,
    index: float = 2.41,
    lat_width_deg: float = 0.3,
) -> Separable:
    """Galactic diffuse emission: ``phi0 (E / 1 TeV)^-index exp(-b^2 / 2 w^2)`` per sr.

    The latitude profile is averaged over each pixel (8 Gauss-Legendre nodes).
    """
    spec = _bin_integral(true.energy_edges, lambda e: phi0 * e**-index)
    spec = spec * instrument.effective_area(true.energy) * livetime_s
    b, w = gauss_legendre(true.lat_edges, 8)
    profile = (np.exp(-0.5 * (b / lat_width_deg) ** 2) * w).sum(axis=1) / np.diff(true.lat_edges)
    spatial = _exposure_map(true, instrument, pointing) * profile[None, :]
    return Separable(spec[None, :], spatial[None])


@dataclass(frozen=True)
class PointSource:
    """A point source with ``dN/dE = norm (E / 1 TeV)^-index exp(-E / cutoff)``.

    ``norm`` in TeV^-1 cm^-2 s^-1; ``cutoff`` in TeV (``inf``: a pure power law).
    """

    name: str
    lon: float
    lat: float
    norm: float
    index: float
    cutoff: float = np.inf
    reference: str = ""


GC_SOURCES: tuple[PointSource, ...] = (
    PointSource("HESS J1745-290", -0.056, -0.044, 2.55e-12, 2.10, 15.7, "HESS 2009, A&A 503, 817"),
    PointSource("HESS J1747-281", 0.872, 0.076, 8.4e-13, 2.40, np.inf, "HESS 2005, A&A 432, L25"),
    PointSource("HESS J1745-303", -1.29, -0.64, 2.8e-12, 2.71, np.inf, "HESS 2008, A&A 483, 509"),
    PointSource("HESS J1741-302", -1.72, 0.05, 3.5e-13, 2.30, np.inf, "HESS 2018, A&A 612, A13"),
    PointSource("HESS J1746-308", -1.20, -1.06, 4.0e-13, 3.30, np.inf, "HESS 2018, A&A 612, A1"),
)
"""Point sources near the Galactic Centre (rounded literature values; a synthetic stand-in)."""


def point_sources(
    true: Binning,
    *,
    livetime_s: float,
    instrument: Instrument,
    pointing: tuple[float, float] = (0.0, 0.0),
    sources: tuple[PointSource, ...] = GC_SOURCES,
) -> Separable:
    """Return expected counts of point sources inside the field, each placed in its true pixel.

    The position inside the pixel is averaged over, like every other component's, so the
    true pixel size sets the positional resolution of this template. Sources outside the
    field are skipped.
    """
    spectra, spatial = [], []
    for src in sources:
        i = np.searchsorted(true.lon_edges, src.lon) - 1
        j = np.searchsorted(true.lat_edges, src.lat) - 1
        if not (0 <= i < true.shape[1] and 0 <= j < true.shape[2]):
            continue
        spec = _bin_integral(
            true.energy_edges, lambda e, s=src: s.norm * e**-s.index * np.exp(-e / s.cutoff)
        )
        spectra.append(spec * instrument.effective_area(true.energy) * livetime_s)
        m = np.zeros(true.shape[1:])
        m[i, j] = instrument.off_axis(np.hypot(src.lon - pointing[0], src.lat - pointing[1]))
        spatial.append(m)
    if not spectra:
        raise ValueError("no point source lies inside the true geometry; widen it or give sources.")
    return Separable(np.array(spectra), np.array(spatial))


def cosmic_ray_counts(
    reco: Binning,
    *,
    livetime_s: float,
    instrument: Instrument,
    pointing: tuple[float, float] = (0.0, 0.0),
) -> Separable:
    """Return expected residual cosmic-ray counts in *reconstructed* bins (never folded)."""
    spec = _bin_integral(reco.energy_edges, instrument.background) * livetime_s
    return Separable(spec[None, :], _exposure_map(reco, instrument, pointing)[None])
