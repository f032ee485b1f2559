"""HESE-style neutrino events: JSON I/O, a toy simulation, data draws and the analysis binning.

The file schema is the one of the diffuse-fit exercise this use case comes from::

    {"mapping": {"astroWeight": 0, "atmoWeight": 1, ...}, "events": [[...], [...], ...]}

Simulation files carry ``astroWeight, atmoWeight, energy, primaryEnergy, primaryZenith,
topology, zenith``; data files carry ``energy, topology, zenith``. Energies are in GeV, angles in
radians, ``topology`` is 0 (cascade) or 1 (track). Columns are always found through the mapping.

Weights follow the exercise's convention. Primary energies are injected on ``E^-2.5``;
``astroWeight`` is the per-event rate (events over the live time) for the reference astrophysical
flux ``1e-18 (E / 100 TeV)^-2.5 GeV^-1 cm^-2 s^-1 sr^-1`` (all flavours), and ``atmoWeight`` the
rate for the nominal conventional atmospheric flux. A fit reweights them as::

    w_i = atmo_norm * atmoWeight_i
          + astro_norm * astroWeight_i * (E_primary,i / 100 TeV)^-(gamma - 2.5)
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from data_tools._io import atomic_write_text
from data_tools.checks import as_finite_array, as_index, as_int, same_length

__all__ = [
    "DATA_COLUMNS",
    "E_PIVOT",
    "INJECTION_INDEX",
    "SIM_COLUMNS",
    "HESEBinning",
    "event_weights",
    "model_inputs",
    "read_hese_json",
    "simulate_hese_data",
    "simulate_hese_toy",
    "with_exposure",
    "write_hese_json",
]

SIM_COLUMNS = (
    "astroWeight",
    "atmoWeight",
    "energy",
    "primaryEnergy",
    "primaryZenith",
    "topology",
    "zenith",
)
DATA_COLUMNS = ("energy", "topology", "zenith")

E_PIVOT = 1.0e5
"""Pivot energy of the astrophysical spectrum, GeV (100 TeV)."""
INJECTION_INDEX = 2.5
"""Spectral index the primary energies are injected with; astro weights are relative to it."""

_NONNEGATIVE = ("astroWeight", "atmoWeight")
_POSITIVE = ("energy", "primaryEnergy")
_ANGLES = ("zenith", "primaryZenith")

Events = dict[str, np.ndarray]


# --------------------------------------------------------------------------------------------
# JSON I/O
# --------------------------------------------------------------------------------------------
def _validate_events(events: Mapping[str, Any], required: Sequence[str], where: str) -> Events:
    """Check column presence, numeric finite values and physical ranges; return float arrays."""
    missing = [c for c in required if c not in events]
    if missing:
        raise ValueError(
            f"{where}: missing column(s) {missing}; expected {list(required)} "
            f"(got {sorted(events)})."
        )
    out: Events = {}
    n = None
    for col in required:
        arr = np.asarray(events[col])
        if arr.ndim != 1:
            raise ValueError(f"{where}: column {col!r} must be 1-D, got shape {arr.shape}.")
        if n is None:
            n = arr.size
        elif arr.size != n:
            raise ValueError(
                f"{where}: column {col!r} has {arr.size} rows but {required[0]!r} has {n}; "
                f"every column needs one value per event."
            )
        if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
            bad = [i for i, v in enumerate(arr.tolist()) if not _is_number(v)]
            row = bad[0] if bad else 0
            raise ValueError(
                f"{where}: column {col!r} has a non-numeric value {arr.tolist()[row]!r} at "
                f"row {row}."
            )
        arr = arr.astype(np.float64)
        nonfinite = ~np.isfinite(arr)
        if nonfinite.any():
            row = int(np.flatnonzero(nonfinite)[0])
            raise ValueError(
                f"{where}: column {col!r} has {arr[row]} at row {row}; values must be finite."
            )
        if col in _NONNEGATIVE and (arr < 0).any():
            row = int(np.flatnonzero(arr < 0)[0])
            raise ValueError(
                f"{where}: column {col!r} has a negative weight {arr[row]} at row {row}; "
                f"weights must be >= 0."
            )
        if col in _POSITIVE and (arr <= 0).any():
            row = int(np.flatnonzero(arr <= 0)[0])
            raise ValueError(
                f"{where}: column {col!r} has a non-positive energy {arr[row]} at row {row}; "
                f"energies are in GeV and must be > 0."
            )
        if col in _ANGLES and ((arr < 0) | (arr > np.pi)).any():
            row = int(np.flatnonzero((arr < 0) | (arr > np.pi))[0])
            raise ValueError(
                f"{where}: column {col!r} has {arr[row]} at row {row}; zenith angles are in "
                f"radians, within [0, pi]."
            )
        if col == "topology" and not np.isin(arr, (0.0, 1.0)).all():
            row = int(np.flatnonzero(~np.isin(arr, (0.0, 1.0)))[0])
            raise ValueError(
                f"{where}: column 'topology' has {arr[row]} at row {row}; expected 0 (cascade) "
                f"or 1 (track)."
            )
        out[col] = arr
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def read_hese_json(
    path: str | os.PathLike[str],
    *,
    kind: Literal["auto", "simulation", "data"] = "auto",
) -> Events:
    """Read a HESE-style JSON file of simulated or observed events.

    Parameters
    ----------
    path
        The JSON file: ``{"mapping": {column: index}, "events": [[...], ...]}``.
    kind
        ``"simulation"`` requires :data:`SIM_COLUMNS`, ``"data"`` requires :data:`DATA_COLUMNS`,
        ``"auto"`` takes simulation when the mapping has ``astroWeight``, data otherwise.

    Returns
    -------
    dict of str to ndarray
        One float64 array of shape ``(n_event,)`` per required column (extra columns dropped).

    Raises
    ------
    ValueError
        The file is not valid JSON of that schema, a column is missing, or a value is
        non-numeric, NaN/inf, a negative weight or a non-positive energy; the message names the
        column and the first bad row.
    """
    path = Path(path)
    if kind not in ("auto", "simulation", "data"):
        raise ValueError(f"kind must be 'auto', 'simulation' or 'data', got {kind!r}.")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}).") from None
    if not isinstance(content, dict) or "mapping" not in content or "events" not in content:
        raise ValueError(
            f"{path}: expected a JSON object with keys 'mapping' and 'events', got "
            f"{sorted(content) if isinstance(content, dict) else type(content).__name__}."
        )
    mapping, rows = content["mapping"], content["events"]
    if not isinstance(mapping, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in mapping.values()
    ):
        raise ValueError(f"{path}: 'mapping' must map column names to column numbers >= 0.")
    if not isinstance(rows, list):
        raise ValueError(f"{path}: 'events' must be a list of rows.")
    if kind == "auto":
        kind = "simulation" if "astroWeight" in mapping else "data"
    required = SIM_COLUMNS if kind == "simulation" else DATA_COLUMNS
    missing = [c for c in required if c not in mapping]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {missing} in 'mapping'; a {kind} file needs "
            f"{list(required)}."
        )
    width = max(mapping.values()) + 1
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) < width:
            raise ValueError(
                f"{path}: row {i} has {len(row) if isinstance(row, list) else 'no'} values; the "
                f"mapping needs at least {width}."
            )
    columns: dict[str, Any] = {}
    for col in required:
        j = mapping[col]
        values = [row[j] for row in rows]
        try:
            columns[col] = np.array(values, dtype=np.float64)
        except (TypeError, ValueError):
            columns[col] = np.array(values, dtype=object)
        if any(v is None or isinstance(v, bool) for v in values):
            columns[col] = np.array(values, dtype=object)
    return _validate_events(columns, required, str(path))


def write_hese_json(path: str | os.PathLike[str], events: Mapping[str, Any]) -> None:
    """Write events in the HESE JSON schema, atomically.

    Parameters
    ----------
    path
        Destination file; its folder is created if needed.
    events
        Column name to 1-D array. A simulation must have every column of :data:`SIM_COLUMNS`,
        data every column of :data:`DATA_COLUMNS`; the mapping lists them in sorted order.
    """
    required = SIM_COLUMNS if "astroWeight" in events else DATA_COLUMNS
    clean = _validate_events(events, required, "events")
    names = sorted(clean)
    table = np.column_stack([clean[c] for c in names]) if names else np.empty((0, 0))
    payload = {
        "mapping": {c: i for i, c in enumerate(names)},
        "events": table.tolist(),
    }
    atomic_write_text(path, json.dumps(payload))


# --------------------------------------------------------------------------------------------
# Binning
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HESEBinning:
    """Analysis binning in reconstructed energy, zenith and topology.

    The default is the exercise's: 20 log-energy bins from 60 TeV to 10 PeV, 10 zenith bins
    uniform in cos(zenith), 2 topologies, 400 bins. Bins are half-open ``[lo, hi)`` and the flat
    index is ``(topology * n_zenith + zenith) * n_energy + energy``, the exercise's ordering.

    Parameters
    ----------
    energy_edges
        Increasing reconstructed-energy edges, GeV.
    zenith_edges
        Increasing zenith edges, radians, within ``[0, pi]``.
    topology_edges
        Increasing topology edges (default ``(0, 1, 2)``: cascades, tracks).
    """

    energy_edges: np.ndarray = field(
        default_factory=lambda: np.logspace(np.log10(60.0e3), np.log10(1.0e7), 21)
    )
    zenith_edges: np.ndarray = field(
        default_factory=lambda: np.arccos(np.linspace(-1.0, 1.0, 11))[::-1].copy()
    )
    topology_edges: np.ndarray = field(default_factory=lambda: np.array([0.0, 1.0, 2.0]))

    def __post_init__(self) -> None:
        for name in ("energy_edges", "zenith_edges", "topology_edges"):
            edges = np.asarray(getattr(self, name), dtype=np.float64)
            if edges.ndim != 1 or edges.size < 2:
                raise ValueError(f"{name} needs at least two edges, got shape {edges.shape}.")
            if not np.isfinite(edges).all() or not (np.diff(edges) > 0).all():
                raise ValueError(f"{name} must be finite and strictly increasing, got {edges}.")
            object.__setattr__(self, name, edges)
        if self.energy_edges[0] <= 0:
            raise ValueError("energy_edges must be positive energies in GeV.")
        if self.zenith_edges[0] < 0 or self.zenith_edges[-1] > np.pi + 1e-12:
            raise ValueError("zenith_edges must lie within [0, pi] radians.")

    @classmethod
    def from_cos_zenith(
        cls, energy_edges: Any, cos_zenith_edges: Any, topology_edges: Any = (0.0, 1.0, 2.0)
    ) -> HESEBinning:
        """Build a binning from cos(zenith) edges (any order); zenith edges are their arccos."""
        cz = np.sort(np.asarray(cos_zenith_edges, dtype=np.float64))
        if cz[0] < -1 or cz[-1] > 1:
            raise ValueError(f"cos_zenith_edges must lie within [-1, 1], got {cz}.")
        return cls(
            np.asarray(energy_edges, dtype=np.float64),
            np.arccos(cz)[::-1].copy(),
            np.asarray(topology_edges, dtype=np.float64),
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(n_topology, n_zenith, n_energy)``."""
        return (
            self.topology_edges.size - 1,
            self.zenith_edges.size - 1,
            self.energy_edges.size - 1,
        )

    @property
    def n_bins(self) -> int:
        """Total number of analysis bins."""
        t, z, e = self.shape
        return t * z * e

    def bin_index(self, energy: Any, zenith: Any, topology: Any) -> np.ndarray:
        """Flat analysis-bin index per event, ``-1`` for events outside the binning.

        Parameters
        ----------
        energy, zenith, topology
            Arrays of shape ``(n_event,)``: reconstructed energy (GeV), zenith (rad), topology.

        Returns
        -------
        ndarray of int64, shape ``(n_event,)``
        """
        energy = as_finite_array("energy", energy)
        zenith = as_finite_array("zenith", zenith)
        topology = as_finite_array("topology", topology)
        same_length(energy=energy, zenith=zenith, topology=topology)
        n_t, n_z, n_e = self.shape
        ie = np.searchsorted(self.energy_edges, energy, side="right") - 1
        iz = np.searchsorted(self.zenith_edges, zenith, side="right") - 1
        it = np.searchsorted(self.topology_edges, topology, side="right") - 1
        inside = (ie >= 0) & (ie < n_e) & (iz >= 0) & (iz < n_z) & (it >= 0) & (it < n_t)
        return np.where(inside, (it * n_z + iz) * n_e + ie, -1).astype(np.int64)

    def events_bin_index(self, events: Mapping[str, np.ndarray]) -> np.ndarray:
        """:meth:`bin_index` of an events dict (reconstructed columns)."""
        return self.bin_index(events["energy"], events["zenith"], events["topology"])

    def counts(self, index: Any) -> np.ndarray:
        """Events per analysis bin from bin indices (``-1`` entries are ignored)."""
        index = as_index("index", index, n=self.n_bins)
        return np.bincount(index[index >= 0], minlength=self.n_bins)

    def sum_per_bin(self, index: Any, values: Any) -> np.ndarray:
        """Sum of ``values`` per analysis bin (``-1`` entries are ignored)."""
        index = as_index("index", index, n=self.n_bins)
        values = as_finite_array("values", values)
        same_length(index=index, values=values)
        keep = index >= 0
        return np.bincount(index[keep], weights=values[keep], minlength=self.n_bins)

    def coords(self) -> dict[str, np.ndarray]:
        """Per-bin physical coordinates, each of shape ``(n_bins,)`` in flat-index order.

        ``topology`` (0 cascade, 1 track), ``cos_zenith`` (bin centre), ``log10_energy``
        (bin centre of log10 E/GeV), ``energy_lo`` / ``energy_hi`` (GeV).
        """
        n_t, n_z, n_e = self.shape
        t, z, e = np.meshgrid(np.arange(n_t), np.arange(n_z), np.arange(n_e), indexing="ij")
        cz_edges = np.cos(self.zenith_edges)
        log_e = np.log10(self.energy_edges)
        return {
            "topology": self.topology_edges[:-1][t.ravel()].astype(np.int64),
            "cos_zenith": 0.5 * (cz_edges[:-1] + cz_edges[1:])[z.ravel()],
            "log10_energy": 0.5 * (log_e[:-1] + log_e[1:])[e.ravel()],
            "energy_lo": self.energy_edges[:-1][e.ravel()],
            "energy_hi": self.energy_edges[1:][e.ravel()],
        }

    def unflatten(self, values: Any) -> np.ndarray:
        """Reshape a per-bin vector to ``(n_topology, n_zenith, n_energy)``."""
        values = np.asarray(values)
        if values.shape[-1] != self.n_bins:
            raise ValueError(
                f"values must have {self.n_bins} entries on the last axis, got {values.shape}."
            )
        return values.reshape((*values.shape[:-1], *self.shape))


# --------------------------------------------------------------------------------------------
# Toy simulation
# --------------------------------------------------------------------------------------------
# Everything below is a documented toy, chosen to be physically sensible, not a detector model.
_E_INJ = (3.0e4, 3.0e7)  # GeV, injection range of primary energies (E^-2.5)
_TRACK_FRACTION = 0.3  # fraction of events with track topology
_DEPOSIT_BETA = {0: (20.0, 1.5), 1: (1.5, 2.0)}  # deposited / primary energy ~ Beta(a, b)
_ENERGY_RES = {0: 0.10, 1: 0.20}  # log-normal resolution of reconstructed deposited energy
_ANGULAR_RES = {0: np.deg2rad(10.0), 1: np.deg2rad(1.0)}  # Rayleigh width of direction error
_AEFF_SLOPE = 0.4  # effective area ~ (E / 100 TeV)^0.4
# Earth absorption: sigma_tot(E) = 7.84e-36 cm^2 (E/GeV)^0.363 (Gandhi et al. 1998, CC+NC) times
# the nucleon column of a uniform-density Earth, 2 R_E rho N_A = 2 * 6.371e8 * 5.5 * 6.022e23
# per cm^2 along the diameter, scaled by -cos(zenith) for up-going directions.
_SIGMA0, _SIGMA_SLOPE = 7.84e-36, 0.363
_EARTH_COLUMN = 2.0 * 6.371e8 * 5.5 * 6.022e23
_ATMO_INDEX = 3.7  # conventional atmospheric spectrum ~ E^-3.7 at these energies
_ATMO_ZENITH_SOFTENING = 0.15  # horizontal enhancement ~ 1 / (|cos zenith| + 0.15)
# Normalisations, fixed once so that (atmo_norm, astro_norm, gamma) = (1, 6.7, 3.0), the
# exercise's best fit, expects about 100 events in the 60 TeV - 10 PeV analysis range, about a
# quarter of them atmospheric (see tests/data_tools/test_neutrino.py for the check).
_ASTRO_RATE = 64.0  # expected events over all injected energies for astro_norm = 1, gamma = 2.5
_ATMO_RATE = 135.0  # expected events over all injected energies for atmo_norm = 1


def _sample_power_law(n: int, index: float, lo: float, hi: float, rng: np.random.Generator):
    u = rng.uniform(size=n)
    a = 1.0 - index
    return (lo**a + u * (hi**a - lo**a)) ** (1.0 / a)


def _smear_direction(zenith: np.ndarray, width: np.ndarray, rng: np.random.Generator):
    """Rotate each direction by a Rayleigh-distributed angle at a random azimuth."""
    delta = rng.rayleigh(width)
    phi = rng.uniform(0.0, 2.0 * np.pi, size=zenith.size)
    cos_new = np.cos(zenith) * np.cos(delta) + np.sin(zenith) * np.sin(delta) * np.cos(phi)
    return np.arccos(np.clip(cos_new, -1.0, 1.0))


def _earth_survival(energy: np.ndarray, zenith: np.ndarray) -> np.ndarray:
    column = _EARTH_COLUMN * np.clip(-np.cos(zenith), 0.0, None)
    return np.exp(-_SIGMA0 * energy**_SIGMA_SLOPE * column)


def simulate_hese_toy(n_events: int, *, rng: Any = None) -> Events:
    """Simulate a HESE-like event sample in the exercise's schema.

    Primary energies are drawn from ``E^-2.5`` on 30 TeV - 30 PeV and directions isotropically.
    A fraction 0.3 of events are tracks. The deposited energy is a Beta-distributed fraction of
    the primary energy (mean 0.93 for cascades, 0.43 for tracks) and is reconstructed with
    log-normal resolution (10 % cascades, 20 % tracks); directions are reconstructed with a
    Rayleigh angular error (10 deg cascades, 1 deg tracks).

    The effective area grows as ``(E / 100 TeV)^0.4`` and up-going neutrinos are absorbed in a
    uniform-density Earth (Gandhi et al. 1998 cross section). ``atmoWeight`` follows a
    conventional ``E^-3.7`` spectrum with a horizontal enhancement ``1 / (|cos zenith| + 0.15)``.
    Both weights are normalised so that the exercise's best fit (1, 6.7, 3.0) expects about 100
    events in the analysis range, whatever ``n_events``.

    Parameters
    ----------
    n_events
        Number of simulated events (> 0).
    rng
        Seed or ``numpy.random.Generator``.

    Returns
    -------
    dict of str to ndarray
        The :data:`SIM_COLUMNS`, each of shape ``(n_events,)``.
    """
    n = as_int("n_events", n_events)
    rng = np.random.default_rng(rng)
    e_prim = _sample_power_law(n, INJECTION_INDEX, *_E_INJ, rng)
    zen_prim = np.arccos(rng.uniform(-1.0, 1.0, size=n))
    topology = (rng.uniform(size=n) < _TRACK_FRACTION).astype(np.float64)
    track = topology == 1.0

    a = np.where(track, _DEPOSIT_BETA[1][0], _DEPOSIT_BETA[0][0])
    b = np.where(track, _DEPOSIT_BETA[1][1], _DEPOSIT_BETA[0][1])
    deposited = e_prim * rng.beta(a, b)
    res = np.where(track, _ENERGY_RES[1], _ENERGY_RES[0])
    energy = deposited * np.exp(res * rng.standard_normal(n))
    zenith = _smear_direction(zen_prim, np.where(track, _ANGULAR_RES[1], _ANGULAR_RES[0]), rng)

    x = e_prim / E_PIVOT
    acceptance = x**_AEFF_SLOPE * _earth_survival(e_prim, zen_prim)
    # Monte Carlo weights: each event stands for 1/n of the injected rate.
    astro_weight = _ASTRO_RATE * acceptance / n
    horizontal = 1.0 / (np.abs(np.cos(zen_prim)) + _ATMO_ZENITH_SOFTENING)
    horizontal /= np.log1p(1.0 / _ATMO_ZENITH_SOFTENING)  # isotropic mean of it is 1
    atmo_weight = _ATMO_RATE * acceptance * x ** (INJECTION_INDEX - _ATMO_INDEX) * horizontal / n
    return {
        "astroWeight": astro_weight,
        "atmoWeight": atmo_weight,
        "energy": energy,
        "primaryEnergy": e_prim,
        "primaryZenith": zen_prim,
        "topology": topology,
        "zenith": zenith,
    }


def event_weights(
    sim: Mapping[str, np.ndarray],
    *,
    atmo_norm: float,
    astro_norm: float,
    astro_gamma: float,
    astro_curvature: float = 0.0,
) -> np.ndarray:
    """Per-event expected-count weights of a simulation for given flux parameters.

    ``w = atmo_norm * atmoWeight + astro_norm * astroWeight * exp(-(gamma - 2.5) x - beta x^2)``
    with ``x = ln(E_primary / 100 TeV)`` and ``beta = astro_curvature`` (0: a power law).
    """
    for name, value in (
        ("atmo_norm", atmo_norm),
        ("astro_norm", astro_norm),
        ("astro_gamma", astro_gamma),
        ("astro_curvature", astro_curvature),
    ):
        if not np.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value}.")
    if atmo_norm < 0 or astro_norm < 0:
        raise ValueError(
            f"atmo_norm and astro_norm must be >= 0, got {atmo_norm} and {astro_norm}."
        )
    x = np.log(np.asarray(sim["primaryEnergy"], dtype=np.float64) / E_PIVOT)
    spectral = np.exp(-(astro_gamma - INJECTION_INDEX) * x - astro_curvature * x**2)
    return (
        atmo_norm * np.asarray(sim["atmoWeight"])
        + astro_norm * np.asarray(sim["astroWeight"]) * spectral
    )


def with_exposure(sim: Mapping[str, np.ndarray], factor: float) -> Events:
    """Return the same simulation for ``factor`` times the live time (both weights scale)."""
    if not np.isfinite(factor) or factor <= 0:
        raise ValueError(f"factor must be a positive number, got {factor}.")
    return {
        **sim,
        "atmoWeight": np.asarray(sim["atmoWeight"]) * factor,
        "astroWeight": np.asarray(sim["astroWeight"]) * factor,
    }


def simulate_hese_data(
    sim: Mapping[str, np.ndarray],
    *,
    atmo_norm: float,
    astro_norm: float,
    astro_gamma: float,
    astro_curvature: float = 0.0,
    rng: Any = None,
) -> Events:
    """Draw an observed event sample from a reweighted simulation.

    The number of events is Poisson with mean ``sum(w)`` and each event is a simulated event
    picked with probability ``w_i / sum(w)`` (see :func:`event_weights`), so the sample is an
    exact draw from the model the simulation represents. For studies of finite simulation size,
    draw data from a simulation independent of the one used in the fit.

    Returns
    -------
    dict of str to ndarray
        The :data:`DATA_COLUMNS` of the drawn events.
    """
    rng = np.random.default_rng(rng)
    w = event_weights(
        sim,
        atmo_norm=atmo_norm,
        astro_norm=astro_norm,
        astro_gamma=astro_gamma,
        astro_curvature=astro_curvature,
    )
    total = float(w.sum())
    n_obs = int(rng.poisson(total))
    picked = rng.choice(w.size, size=n_obs, p=w / total) if n_obs else np.empty(0, np.int64)
    return {c: np.asarray(sim[c], dtype=np.float64)[picked] for c in DATA_COLUMNS}


def model_inputs(
    sim: Mapping[str, np.ndarray],
    data: Mapping[str, np.ndarray],
    binning: HESEBinning | None = None,
) -> dict[str, np.ndarray]:
    """Bin data and simulation into the keyword arguments of the diffuse-fit model.

    Returns
    -------
    dict
        ``counts`` (events per analysis bin), ``mc_bin`` (bin of each simulated event, -1
        outside), ``w_atmo``, ``w_astro`` and ``e_primary`` (per simulated event), ready for
        ``models.neutrino_diffuse.build_model(**model_inputs(sim, data))``.
    """
    binning = binning or HESEBinning()
    sim = _validate_events(sim, SIM_COLUMNS, "sim")
    data = _validate_events(data, DATA_COLUMNS, "data")
    return {
        "counts": binning.counts(binning.events_bin_index(data)),
        "mc_bin": binning.events_bin_index(sim),
        "w_atmo": sim["atmoWeight"],
        "w_astro": sim["astroWeight"],
        "e_primary": sim["primaryEnergy"],
    }
