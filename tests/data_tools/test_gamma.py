"""Gamma-ray data tools against closed forms and brute-force scipy integration."""

import numpy as np
import pytest
import scipy.integrate as si
import scipy.stats

from data_tools.gamma.events import (
    COMPONENTS,
    Observation,
    bin_counts,
    marginal_tables,
    simulate_events,
)
from data_tools.gamma.instrument import Binning, Instrument, box_gauss_box, response
from data_tools.gamma.sources import (
    KPC_CM,
    Einasto,
    dm_photon_yield,
    j_factor,
    j_factor_map,
)


@pytest.fixture(scope="module")
def small():
    """A small geometry: 3 x 1.2 deg, 2 decades; every piece cheap enough to brute-force."""
    true = Binning(np.geomspace(0.5, 5, 9), np.linspace(-0.6, 0.6, 7), np.linspace(-0.3, 0.3, 4))
    reco = Binning(np.geomspace(0.5, 5, 5), np.linspace(-0.6, 0.6, 4), np.linspace(-0.3, 0.3, 3))
    return Observation(livetime_h=2.0, true=true, reco=reco)


# ---------------------------------------------------------------------------- instrument
def test_instrument_reproduces_the_prod5_table():
    inst = Instrument()
    np.testing.assert_allclose(
        inst.effective_area([0.1, 1, 10, 100]), 1e4 * np.array([1.6e5, 7.4e5, 2.2e6, 2.9e6])
    )
    np.testing.assert_allclose(inst.psf_sigma([0.1, 100]) * 1.5096, [0.15, 0.021], rtol=1e-4)
    np.testing.assert_allclose(inst.background([0.1, 1, 10]), [7.4e4, 116, 0.26])
    assert inst.off_axis(3.5) == pytest.approx(0.5)
    # a 2-D Gaussian of the tabulated width contains 68% within r68
    s = inst.psf_sigma(1.0)
    assert scipy.stats.rayleigh.cdf(0.056, scale=s) == pytest.approx(0.68, abs=1e-3)


def test_box_gauss_box_equals_numerical_integration():
    true_edges, reco_edges, sigma = np.array([-0.1, 0.05, 0.3]), np.linspace(-0.4, 0.4, 5), 0.07
    got = box_gauss_box(true_edges, reco_edges, sigma)
    for t in range(2):
        for r in range(4):

            def f(x, r=r):
                n = scipy.stats.norm(x, sigma)
                return n.cdf(reco_edges[r + 1]) - n.cdf(reco_edges[r])

            ref = si.quad(f, true_edges[t], true_edges[t + 1])[0] / np.diff(true_edges)[t]
            assert got[r, t] == pytest.approx(ref, abs=1e-12)


def test_response_is_normalised_and_matches_scipy(small):
    resp = small.response
    np.testing.assert_allclose(resp.energy.sum(axis=0), 1.0)
    np.testing.assert_allclose(resp.lon.sum(axis=1), 1.0)
    np.testing.assert_allclose(resp.lat.sum(axis=1), 1.0)
    # energy migration of true bin 3 into reco bin 1, by quadrature over ln E_true
    inst, t, r = Instrument(), small.true.energy_edges, small.reco.energy_edges

    def p(ln_e, lo, hi):
        s = inst.edisp_sigma(np.exp(ln_e))
        return scipy.stats.norm.cdf((np.log(hi) - ln_e) / s) - scipy.stats.norm.cdf(
            (np.log(lo) - ln_e) / s
        )

    col = [si.quad(p, np.log(t[3]), np.log(t[4]), args=(r[k], r[k + 1]))[0] for k in range(4)]
    np.testing.assert_allclose(resp.energy[:, 3], np.array(col) / sum(col), rtol=1e-6, atol=1e-9)


# ---------------------------------------------------------------------------- sources
@pytest.mark.parametrize("psi", [0.0, 1e-3, 0.05, 1.0, 2.9])
def test_j_factor_matches_scipy_line_of_sight(psi):
    prof = Einasto()
    a, b = 8.33 * np.cos(np.deg2rad(psi)), 8.33 * np.sin(np.deg2rad(psi))
    ref = si.quad(
        lambda s: prof.density(np.hypot(s - a, b)) ** 2, 0, 200, points=[a], limit=500, epsrel=1e-10
    )[0]
    assert j_factor(psi) == pytest.approx(ref * KPC_CM, rel=1e-4)
    assert prof.density(8.33) == pytest.approx(0.39)


def test_j_factor_map_finite_at_the_galactic_centre_and_pixel_integrated():
    b = Binning.regular(per_decade=2, pixel=0.1, half_width=0.3)
    jmap = j_factor_map(b)
    assert np.isfinite(jmap).all() and (jmap > 0).all()
    psi_tab = np.concatenate([[0.0], np.geomspace(1e-8, 5.0, 2000)])
    log_j = np.log(j_factor(psi_tab))

    def f(lat, lon):
        psi = np.hypot(lon * np.cos(np.deg2rad(lat)), lat)
        return np.exp(np.interp(psi, psi_tab, log_j)) * np.cos(np.deg2rad(lat))

    for i, j in [(2, 2), (3, 3), (0, 5)]:  # (2, 2) and (3, 3) touch the centre
        le, be = b.lon_edges[i : i + 2], b.lat_edges[j : j + 2]
        ref = si.dblquad(f, *le, *be, epsrel=1e-6)[0] * np.deg2rad(1) ** 2
        assert jmap[i, j] == pytest.approx(ref, rel=3e-3)


def test_dm_yield_closed_form_and_kinematic_edge():
    f = lambda x: 0.73 * np.exp(-7.8 * x) / x**1.5  # noqa: E731
    for lo, hi in [(0.01, 0.02), (0.1, 1.0), (0.5, 3.0)]:
        ref = si.quad(f, lo, min(hi, 1.0))[0]
        assert dm_photon_yield(lo, hi) == pytest.approx(ref, rel=1e-9)
    assert dm_photon_yield(1.2, 2.0) == 0.0
    # smooth in the mass: the counts in one bin change continuously across the edge
    obs = Observation(livetime_h=1.0, true=Binning.regular(per_decade=10, pixel=1.0))
    m = np.geomspace(0.9, 1.1, 401)
    counts = obs.dm_spectrum(m)[:, 10]  # the bin [1, 1.26] TeV
    assert np.abs(np.diff(counts)).max() < 0.02 * counts.max()


# ---------------------------------------------------------------------------- marginals
def _dense_response(obs):
    """Brute force with scipy: R[r, t] for every reco and true cell by numerical integration.

    Independent of the package's closed forms: the energy migration is integrated over
    ln E_true by quad, and the PSF over the true pixel by quad of Gaussian CDF differences
    (width at the true bin's centre energy, as documented), each normalised over the reco
    range, then multiplied out into the full (reco cell, true cell) matrix.
    """
    inst, true, reco = obs.instrument, obs.true, obs.reco
    norm = scipy.stats.norm.cdf
    n_e, n_l, n_b = true.shape
    m_e, m_l, m_b = reco.shape
    r_e = np.log(reco.energy_edges)
    energy = np.zeros((m_e, n_e))
    for t in range(n_e):
        lo, hi = np.log(true.energy_edges[t : t + 2])
        for r in range(m_e):

            def f(x, r=r):
                s = inst.edisp_sigma(np.exp(x))
                return norm((r_e[r + 1] - x) / s) - norm((r_e[r] - x) / s)

            energy[r, t] = si.quad(f, lo, hi, epsabs=1e-13)[0] / (hi - lo)
    energy /= energy.sum(axis=0)

    def psf(t_edges, r_edges, sigma):
        out = np.zeros((len(r_edges) - 1, len(t_edges) - 1))
        for t in range(out.shape[1]):
            for r in range(out.shape[0]):

                def g(x, r=r):
                    return norm((r_edges[r + 1] - x) / sigma) - norm((r_edges[r] - x) / sigma)

                a, b = t_edges[t], t_edges[t + 1]
                out[r, t] = si.quad(g, a, b, epsabs=1e-13)[0] / (b - a)
        return out / out.sum(axis=0)

    dense = np.zeros((m_e, m_l, m_b, n_e, n_l, n_b))
    for t, sigma in enumerate(inst.psf_sigma(true.energy)):
        p_l = psf(true.lon_edges, reco.lon_edges, sigma)
        p_b = psf(true.lat_edges, reco.lat_edges, sigma)
        dense[:, :, :, t] = np.einsum("r,ai,bj->rabij", energy[:, t], p_l, p_b)
    return dense.reshape(m_e * m_l * m_b, n_e * n_l * n_b)


def test_marginal_probabilities_against_a_dense_response(small):
    events = simulate_events(small, n_events=300, rng=4)
    binned = bin_counts(events, small.reco)
    tables = marginal_tables(small, binned, mass_per_decade=20, mass_range=(0.6, 80.0))
    dense = _dense_response(small)
    np.testing.assert_allclose(dense.sum(axis=0), 1.0)  # normalised over the reco region
    flat = np.ravel_multi_index(
        (binned.energy_idx.values, binned.lon_idx.values, binned.lat_idx.values), small.reco.shape
    )
    for k, name in enumerate(("local_sources", "diffuse")):
        mu = small.true_counts(name).ravel()
        ref = (dense @ mu)[flat] / mu.sum()
        got = np.exp(tables["log_m_background"].values[:, k + 1])
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-7)
    for j in (0, 17, 42):
        mass = 10 ** tables["log10_mass"].values[j]
        mu = small.true_counts("dm", mass=mass).ravel()
        ref = (dense @ mu)[flat] / mu.sum()
        np.testing.assert_allclose(np.exp(tables["log_m_dm"].values[j]), ref, rtol=1e-4, atol=1e-7)
        assert tables["expected_dm"].values[j] == pytest.approx(mu.sum(), rel=1e-10)
    # cosmic rays: the rate integrated over each reco energy bin by quad, times acceptance and
    # the pixel's solid angle on the sphere, normalised over the field
    inst, reco = small.instrument, small.reco
    per_e = np.array(
        [si.quad(inst.background, *reco.energy_edges[i : i + 2])[0] for i in range(reco.shape[0])]
    )
    lon, lat = np.meshgrid(reco.lon, reco.lat, indexing="ij")
    offset = np.hypot(lon * np.cos(np.deg2rad(lat)), lat)
    omega = np.deg2rad(np.diff(reco.lon_edges))[:, None] * np.diff(
        np.sin(np.deg2rad(reco.lat_edges))
    )
    cube = per_e[:, None, None] * (inst.off_axis(offset) * omega)[None]
    ref = cube.ravel()[flat] / cube.sum()
    np.testing.assert_allclose(np.exp(tables["log_m_background"].values[:, 0]), ref, rtol=1e-5)
    for name in ("log_m_background", "log_m_dm"):
        assert np.isfinite(tables[name].values).all()


def test_simulated_events_follow_the_marginal_probabilities(small):
    """Many events of each component: the measured histogram matches m_k (chi-square)."""
    for comp in COMPONENTS:
        f = {c: float(c == comp) for c in COMPONENTS}
        ev = simulate_events(small, n_events=40_000, fractions=f, rng=9)
        assert (ev["component"].values == comp).all()
        cube = bin_counts(ev, small.reco)["cube"].values.ravel()
        expected = small.reco_counts(comp).ravel()
        expected = expected / expected.sum() * cube.sum()
        keep = expected > 5
        chi2 = ((cube[keep] - expected[keep]) ** 2 / expected[keep]).sum()
        assert scipy.stats.chi2.sf(chi2, keep.sum() - 1) > 1e-3, (comp, chi2, keep.sum())


def test_seed_configuration_counts_and_bins():
    obs = Observation()
    assert obs.true.shape == (90, 60, 60) and obs.reco.shape == (60, 30, 30)
    ev = simulate_events(obs, rng=0)
    assert ev.sizes["event"] == 500
    assert {k: ev.attrs[f"n_{k}"] for k in COMPONENTS} == {
        "dm": 250,
        "cosmic_rays": 175,
        "local_sources": 50,
        "diffuse": 25,
    }
    binned = bin_counts(ev, obs.reco)
    assert binned["counts"].sum() == 500 and binned["cube"].sum() == 500
    assert (binned["counts"] > 0).all()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"fractions": {"dm": 0.5, "cosmic_rays": 0.4}}, ValueError, "sum to 1"),
        (
            {"fractions": {"dm": 0.5, "muons": 0.5}},
            ValueError,
            r"unknown component\(s\) \['muons'\]",
        ),
        ({"fractions": [0.5, 0.5]}, TypeError, "fractions must be a dict"),
        ({"mass": 200.0}, ValueError, "mass must be in"),
        ({"n_events": None}, ValueError, "give sigma_v"),
        ({"n_events": 0}, ValueError, "n_events must be >= 1"),
    ],
)
def test_simulate_events_bad_input(small, kwargs, error, match):
    with pytest.raises(error, match=match):
        simulate_events(small, **kwargs)


def test_marginal_tables_refuse_bins_of_another_geometry(small):
    events = simulate_events(Observation(), n_events=50, rng=1)
    binned = bin_counts(events, Observation().reco)
    with pytest.raises(ValueError, match="bin the events with this observation's reco binning"):
        marginal_tables(small, binned, mass_range=(0.6, 80.0))
    with pytest.raises(TypeError, match=r"binned must be the xarray\.Dataset"):
        marginal_tables(small, events["energy_idx"].values, mass_range=(0.6, 80.0))


def test_geometry_bad_input():
    with pytest.raises(ValueError, match="strictly increasing"):
        Binning([1, 0.5], [0, 1], [0, 1])
    with pytest.raises(ValueError, match="energy_edges must be positive"):
        Binning([0, 1], [0, 1], [0, 1])
    with pytest.raises(ValueError, match="flat-sky"):
        Binning([1, 2], [0, 1], [0, 40])
    with pytest.raises(ValueError, match="livetime_h must be a positive"):
        Observation(livetime_h=0)
    with pytest.raises(ValueError, match="reconstructed geometry cover"):
        far = Binning([0.5, 5], [10, 11], [0, 1])
        response(Binning([0.5, 5], [0, 1], [0, 1]), far)
