"""Photo-z data tools against closed forms, scipy quadrature and direct formulas."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, stats
from scipy.special import expit

from data_tools import photoz as pz


@pytest.fixture(scope="module")
def catalog():
    return pz.simulate_galaxy_catalog(4000, rng=11)


@pytest.fixture(scope="module")
def features(catalog):
    X = pz.gmm_features(catalog)
    train = np.isfinite(catalog["z_spec"].to_numpy())
    return X, X[train]


@pytest.fixture(scope="module")
def mixtures(features):
    X_pop, X_train = features
    return pz.fit_mixtures(X_pop, X_train, n_components=4, rng=3)


# --- photometry ----------------------------------------------------------------------------


def test_distance_modulus_against_quadrature():
    for z in (0.1, 1.0, 3.0, 6.5):
        d_c, _ = integrate.quad(lambda x: 1 / np.sqrt(0.3 * (1 + x) ** 3 + 0.7), 0, z)
        d_l = (1 + z) * 299_792.458 / 70.0 * d_c
        assert pz._distance_modulus(np.array([z]))[0] == pytest.approx(
            5 * np.log10(d_l * 1e5), abs=2e-4
        )


def test_band_flux_against_quadrature():
    """A line-free template's band flux is the photon-weighted mean of f_nu (scipy quad)."""
    z, a_v, m_abs = 0.8, 0.3, -21.0
    got = pz.band_fluxes([z], ["elliptical"], [a_v], [m_abs])
    ref = pz._template_flambda("elliptical", np.array([5000.0]))[0]

    def f_nu(lam):  # relative to f_nu(rest 5000 A), with dust and IGM
        rest = lam / (1 + z)
        dust = 10 ** (-0.4 * a_v * ((rest / 5500) ** -0.7 - (5000 / 5500) ** -0.7))
        igm = pz._igm_transmission(np.array([lam]), np.array([z]))[0]
        return (
            pz._template_flambda("elliptical", np.array([rest]))[0]
            / ref
            * dust
            * (rest / 5000) ** 2
            * igm
        )

    level = 10 ** (
        -0.4 * (m_abs + pz._distance_modulus(np.array([z]))[0] - 2.5 * np.log10(1 + z) - 23.9)
    )
    for band, (lo, hi) in pz.FILTERS.items():
        curve = lambda lam, b=band: pz._filter_curve(b, np.array([lam]))[0] / lam  # noqa: E731
        num = integrate.quad(
            lambda lam, c=curve: f_nu(lam) * c(lam), lo - 400, hi + 400, limit=200
        )[0]
        den = integrate.quad(curve, lo - 400, hi + 400, limit=200)[0]
        assert got[band][0] == pytest.approx(level * num / den, rel=2e-3), band


def test_lyman_break_drops_blue_bands_at_high_redshift():
    f = pz.band_fluxes([6.0, 1.0], ["starburst"] * 2, [0.0, 0.0], [-21.0, -21.0])
    assert f["F606W"][0] < 0.02 * f["F160W"][0]  # Lyman limit at 6,380 A, forest above
    assert f["F606W"][1] > 0.3 * f["F160W"][1]


def test_madau_transmission():
    """tau = 0.0036 (lambda / 1216)^3.46: Lyman alpha alone between 1026 (1+z) and 1216 (1+z)."""
    z, lam = 3.0, 4500.0  # above Ly-beta at 4,103 A, below Ly-alpha at 4,863 A
    t = pz._igm_transmission(np.array([lam]), np.array([z]))[0]
    assert t == pytest.approx(np.exp(-0.0036 * (lam / 1215.67) ** 3.46), rel=1e-12)


def test_luptitudes_limits():
    b = 0.01
    flux = np.array([100.0, 10.0])  # S/N >> 1
    mu, err = pz.luptitudes(flux, np.full(2, 0.01), softening=b)
    np.testing.assert_allclose(mu, 23.9 - 2.5 * np.log10(flux), atol=1e-4)
    np.testing.assert_allclose(err, 2.5 / np.log(10) * 0.01 / flux, rtol=1e-4)
    # At zero flux: -2.5/ln10 ln(b) + 23.9; finite for negative fluxes.
    mu0, _ = pz.luptitudes([0.0, -0.05], [0.01, 0.01], softening=b)
    assert mu0[0] == pytest.approx(23.9 - 2.5 / np.log(10) * np.log(b))
    assert np.isfinite(mu0[1]) and mu0[1] > mu0[0]


def test_feature_covariance_of_colours(catalog):
    """Colours sharing a band covary by minus its variance; a colour's variance sums its bands'."""
    cov = pz.feature_covariance(
        catalog, colours=[("F606W", "F814W"), ("F814W", "F125W")], magnitudes=("F160W",)
    )
    var = {b: catalog[f"lupterr_{b}"].to_numpy() ** 2 for b in pz.BANDS}
    np.testing.assert_allclose(cov[:, 0, 0], var["F606W"] + var["F814W"])
    np.testing.assert_allclose(cov[:, 0, 1], -var["F814W"])
    np.testing.assert_allclose(cov[:, 1, 0], -var["F814W"])
    np.testing.assert_allclose(cov[:, 2, 2], var["F160W"])
    np.testing.assert_array_equal(cov[:, :2, 2], 0.0)
    # the same by sampling: colours of perturbed luptitudes
    rng = np.random.default_rng(0)
    sd = np.array([np.sqrt(var[b][0]) for b in pz.BANDS])
    m = rng.normal(0, sd, size=(200_000, 4))
    f = np.column_stack([m[:, 0] - m[:, 1], m[:, 1] - m[:, 2], m[:, 3]])
    # sampling error of a covariance entry <= sqrt(2 / n) max variance: about 5 of them
    np.testing.assert_allclose(np.cov(f.T), cov[0], atol=0.015 * sd.max() ** 2)
    with pytest.raises(ValueError, match=r"no column\(s\) \['lupterr_F160W'\]"):
        pz.feature_covariance(catalog.drop(columns=["lupterr_F160W"]))
    broken = catalog.copy()
    broken.loc[3, "lupterr_F814W"] = np.nan
    with pytest.raises(ValueError, match="lupterr_F814W contains nan at index"):
        pz.feature_covariance(broken)


def test_luptitude_error_is_the_propagated_flux_error():
    f, b, sig = np.array([0.003, 0.02]), 0.01, np.array([0.004, 0.004])
    _, err = pz.luptitudes(f, sig, softening=b)
    h = 1e-7
    slope = pz.luptitudes(f + h, sig, softening=b)[0] - pz.luptitudes(f - h, sig, softening=b)[0]
    np.testing.assert_allclose(err, np.abs(slope / (2 * h)) * sig, rtol=1e-5)


# --- catalogue ------------------------------------------------------------------------------


def test_catalog_is_reproducible_and_complete(catalog):
    again = pz.simulate_galaxy_catalog(4000, rng=11)
    pd.testing.assert_frame_equal(catalog, again)
    assert len(catalog) == 4000
    features = [f"{p}_{b}" for p in ("flux", "fluxerr", "lupt", "lupterr") for b in pz.BANDS]
    assert np.isfinite(catalog[features].to_numpy()).all()
    assert (catalog["flux_F160W"] >= 5 * catalog["fluxerr_F160W"]).all()  # detection
    spec = np.isfinite(catalog["z_spec"])
    np.testing.assert_array_equal(catalog["z_spec"][spec], catalog["z_true"][spec])
    assert catalog["z_true"].max() > 4.5 and catalog["z_true"].min() < 0.2


def test_spectroscopic_subset_is_brighter_and_at_lower_redshift(catalog):
    spec = np.isfinite(catalog["z_spec"])
    assert 0.05 < spec.mean() < 0.4
    for col in ("lupt_F160W", "z_true"):
        low, high = catalog[col][spec], catalog[col][~spec]
        assert np.median(low) < np.median(high) - 0.3, col
        assert stats.mannwhitneyu(low, high).pvalue < 1e-10


def test_noise_matches_the_stated_depths(catalog):
    sigma = pz.flux_error("F814W")
    assert sigma == pytest.approx(10 ** (-0.4 * (27.5 - 23.9)) / 5)
    err = catalog["fluxerr_F814W"].to_numpy()
    expected = np.hypot(sigma, pz.CALIBRATION_FLOOR * np.abs(catalog["flux_F814W"]))
    assert np.median(err / expected) == pytest.approx(1.0, abs=0.02)


# --- mixtures -------------------------------------------------------------------------------


def _mixture_pdf(gm, X):
    return sum(
        w * stats.multivariate_normal(m, c).pdf(X)
        for w, m, c in zip(gm.weights_, gm.means_, gm.covariances_, strict=True)
    )


def test_weights_against_the_formula(features, mixtures):
    """w = min((p_pop + eta) / (p_train + eta), max_weight), densities on scaled features."""
    X_pop, X_train = features
    Xs = (X_train - mixtures.scaler.center_) / mixtures.scaler.scale_
    p, q = _mixture_pdf(mixtures.population, Xs), _mixture_pdf(mixtures.training, Xs)
    for cap in (100.0, 3.0):
        got = pz.gmm_weights(mixtures, X_pop, X_train, eta=1e-3, max_weight=cap)
        raw = (p + 1e-3) / (q + 1e-3)
        np.testing.assert_allclose(got.values, np.minimum(raw, cap), rtol=1e-8)
        assert got.n_capped == int((raw > cap).sum())
        assert got.ess == pytest.approx(got.values.sum() ** 2 / (got.values**2).sum())
    assert pz.gmm_weights(mixtures, X_pop, X_train, max_weight=3.0).n_capped > 0


def test_weighting_brings_training_features_closer_to_the_population(features, mixtures):
    X_pop, X_train = features
    w = pz.gmm_weights(mixtures, X_pop, X_train)
    assert w.divergence_weighted.sum() < 0.6 * w.divergence_unweighted.sum()
    # the faint end is up-weighted: weighted mean F160W moves toward the population's
    assert np.average(X_train[:, 2], weights=w.values) > X_train[:, 2].mean() + 0.3


def _selection_by_hand(catalog):
    """The module docstring's spectroscopic selection, written out from its formula."""
    m814, m160 = catalog["lupt_F814W"].to_numpy(), catalog["lupt_F160W"].to_numpy()
    z = catalog["z_true"].to_numpy()
    magnitude = 0.85 * expit((24 - m814) / 0.25) + 0.06 * expit((25.5 - m160) / 0.25)
    return np.clip(magnitude, 0, 1) * (1 - 0.5 * np.exp(-(((z - 2) / 0.5) ** 2)))


def test_selection_probability_is_the_simulators(catalog):
    p = pz.selection_probability(catalog)
    np.testing.assert_allclose(p, _selection_by_hand(catalog), rtol=1e-12)
    # the simulator drew its spectra with it: the share with z_spec in eight bins of p is the
    # bins' mean p, within four binomial standard deviations
    spec = np.isfinite(catalog["z_spec"].to_numpy())
    for rows in np.array_split(np.argsort(p), 8):
        sd = np.sqrt((p[rows] * (1 - p[rows])).sum()) / rows.size
        assert abs(spec[rows].mean() - p[rows].mean()) < 4 * sd + 1e-3
    # and its redshift desert: 19 spectra at 1.6 < z < 2.4 against 18.8 expected (sd 3.9);
    # without the desert's factor 31.3 would be expected, 3.1 sd away
    z = catalog["z_true"].to_numpy()
    desert = (z > 1.6) & (z < 2.4)
    sd = np.sqrt((p[desert] * (1 - p[desert])).sum())
    assert abs(spec[desert].sum() - p[desert].sum()) < 2 * sd


def test_selection_weights_against_the_formula(catalog, features):
    X_pop, _ = features
    train = np.flatnonzero(np.isfinite(catalog["z_spec"].to_numpy()))
    p = _selection_by_hand(catalog)
    p_bar = p.mean()
    expected = {
        "catalogue": p_bar / p[train],
        "without_spectrum": (1 - p[train]) / p[train] * p_bar / (1 - p_bar),
    }
    for target, raw in expected.items():
        for cap in (100.0, 3.0):
            got = pz.selection_weights(catalog, train, X_pop, target=target, max_weight=cap)
            np.testing.assert_allclose(got.values, np.minimum(raw, cap), rtol=1e-12)
            assert got.n_capped == int((raw > cap).sum())
            assert got.ess == pytest.approx(got.values.sum() ** 2 / (got.values**2).sum())
        assert pz.selection_weights(catalog, train, X_pop, target=target, max_weight=3.0).n_capped
    assert pz.SELECTION_TARGETS == tuple(expected)


def test_selection_weights_undo_the_selection(catalog, features):
    """Over repeated surveys of one catalogue, weighted training shares are the target's.

    Spectra are redrawn 300 times from the selection written out by hand (not the code's);
    pooled over the surveys, the weighted share of each redshift bin among the training
    galaxies estimates the share in the whole catalogue (target "catalogue") or the
    (1 - P)-weighted share expected among the galaxies without a spectrum, to within four
    standard errors.
    """
    X_pop, _ = features
    p = _selection_by_hand(catalog)
    z = catalog["z_true"].to_numpy()
    edges = [0, 1, 1.5, 2.5, 4, np.inf]
    bins = np.digitize(z, edges[1:-1])
    one_hot = np.eye(len(edges) - 1)[bins]
    truth = {
        "catalogue": one_hot.mean(axis=0),
        "without_spectrum": np.average(one_hot, axis=0, weights=1 - p),
    }
    rng = np.random.default_rng(5)
    for target, expected in truth.items():
        numerator, denominator, shares = 0.0, 0.0, []
        for _ in range(300):
            train = np.flatnonzero(rng.uniform(size=p.size) < p)
            w = pz.selection_weights(catalog, train, X_pop, target=target, max_weight=1e9).values
            numerator = numerator + w @ one_hot[train]
            denominator += w.sum()
            shares.append(w @ one_hot[train] / w.sum())
        se = np.std(shares, axis=0) / np.sqrt(len(shares))
        np.testing.assert_array_less(np.abs(numerator / denominator - expected), 4 * se + 1e-4)
        # the unweighted training set is far from the target (low redshifts over-represented)
        assert np.abs(one_hot[train].mean(axis=0) - expected).max() > 0.1


def test_selection_weights_bad_input(catalog, features):
    X_pop, _ = features
    train = np.flatnonzero(np.isfinite(catalog["z_spec"].to_numpy()))
    with pytest.raises(ValueError, match=r"z_true.*gmm_weights"):
        pz.selection_weights(catalog.drop(columns="z_true"), train, X_pop)
    with pytest.raises(ValueError, match=r"lupt_F814W.*gmm_weights"):
        pz.selection_probability(catalog.drop(columns="lupt_F814W"))
    for value, message in [(np.nan, "NaN and inf"), (-0.5, ">= 0")]:
        bad = catalog.copy()
        bad.loc[3, "z_true"] = value
        with pytest.raises(ValueError, match=f"z_true.*{message}"):
            pz.selection_probability(bad)
    with pytest.raises(ValueError, match="needs the catalogue's z_spec"):
        pz.selection_weights(
            catalog.drop(columns="z_spec"), train, X_pop, target="without_spectrum"
        )
    with pytest.raises(ValueError, match="target must be one of"):
        pz.selection_weights(catalog, train, X_pop, target="population")
    with pytest.raises(ValueError, match="max_weight"):
        pz.selection_weights(catalog, train, X_pop, max_weight=0.0)
    with pytest.raises(TypeError, match=r"integer catalogue row indices.*np\.flatnonzero"):
        pz.selection_weights(catalog, train.astype(float), X_pop)
    with pytest.raises(ValueError, match="train is empty"):
        pz.selection_weights(catalog, train[:0], X_pop)
    with pytest.raises(ValueError, match="1-dimensional"):
        pz.selection_weights(catalog, train[None, :], X_pop)
    for bad_train, first in ((np.array([0, len(catalog)]), 1), (np.array([-1, 2]), 0)):
        with pytest.raises(ValueError, match=rf"train\[{first}\] .* out of range.*catalogue rows"):
            pz.selection_weights(catalog, bad_train, X_pop)
    with pytest.raises(ValueError, match="X has"):
        pz.selection_weights(catalog, train, X_pop[:10])


def test_divergence_is_jensen_shannon():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5000, 1))
    assert pz.feature_divergence(a, a)[0] == 0.0
    p = np.histogram(a[:, 0], np.linspace(*np.percentile(a, [0.1, 99.9]), 26))[0]
    b = a + 1.0
    got = pz.feature_divergence(a, b)[0]
    edges = np.linspace(*np.percentile(a, [0.1, 99.9]), 26)
    q = np.histogram(np.clip(b[:, 0], edges[0], edges[-1]), edges)[0]
    p = np.histogram(np.clip(a[:, 0], edges[0], edges[-1]), edges)[0]
    from scipy.spatial.distance import jensenshannon

    assert got == pytest.approx(jensenshannon(p, q, base=2) ** 2, rel=1e-10)


def test_divide_against_responsibilities(features, mixtures):
    _, X_train = features
    Xs = (X_train - mixtures.scaler.center_) / mixtures.scaler.scale_
    gm = mixtures.population
    dens = np.column_stack(
        [
            w * stats.multivariate_normal(m, c).pdf(Xs)
            for w, m, c in zip(gm.weights_, gm.means_, gm.covariances_, strict=True)
        ]
    )
    resp = dens / dens.sum(axis=1, keepdims=True)
    for threshold in (0.5, 0.2):
        div = pz.gmm_divide(mixtures, X_train, threshold=threshold)
        np.testing.assert_allclose(div.responsibility, resp, atol=1e-8)
        np.testing.assert_array_equal(div.member, resp > threshold)
    assert pz.gmm_divide(mixtures, X_train, threshold=0.5).member.sum(axis=1).max() == 1
    assert pz.gmm_divide(mixtures, X_train, threshold=0.2).member.sum(axis=1).max() > 1


def test_bic_picks_the_true_number_of_components():
    rng = np.random.default_rng(1)
    means = np.array([[0, 0], [6, 0], [0, 6]])
    X = np.concatenate([rng.normal(m, 1.0, size=(700, 2)) for m in means])
    mix = pz.fit_mixtures(X, X[::3], n_components="bic", max_components=6, rng=2)
    assert mix.n_components == 3
    assert min(mix.bic, key=mix.bic.get) == 3 and len(mix.bic) == 6


# --- basis ---------------------------------------------------------------------------------


def test_rbf_design_against_direct_formula(features, catalog):
    _, X_train = features
    z = catalog["z_spec"].dropna().to_numpy()
    basis = pz.rbf_basis(X_train, z, 12, rng=0)
    assert basis.centers.shape == basis.length_scales.shape == (12, 3)
    assert (basis.length_scales > 0).all()
    Xs = (X_train[:5] - basis.feature_center) / basis.feature_scale
    direct = np.array(
        [
            [
                np.exp(-0.5 * np.sum(((x - c) / ell) ** 2))
                for c, ell in zip(basis.centers, basis.length_scales, strict=True)
            ]
            for x in Xs
        ]
    )
    np.testing.assert_allclose(basis.design(X_train[:5]), direct, rtol=1e-12)


def test_isolated_functions_are_stretched_to_the_minimum_support(features, catalog):
    _, X_train = features
    z = catalog["z_spec"].dropna().to_numpy()
    # one galaxy far from the rest: k-means gives it a centre of its own
    X = np.vstack([X_train, X_train.mean(axis=0) + 8 * X_train.std(axis=0)])
    z = np.append(z, 5.0)
    plain = pz.rbf_basis(X, z, 30, min_support=0, rng=3)
    basis = pz.rbf_basis(X, z, 30, min_support=3.0, rng=3)
    np.testing.assert_array_equal(basis.centers, plain.centers)

    def support(b):
        Xs = (X - b.feature_center) / b.feature_scale
        r2 = (((Xs[:, None, :] - b.centers[None]) / b.length_scales[None]) ** 2).sum(axis=-1)
        return np.exp(-0.5 * r2).sum(axis=0)

    before, after = support(plain), support(basis)
    low = before < 3.0
    assert 1 <= low.sum() < 30 and before.min() < 1.5  # the isolated galaxy's function
    np.testing.assert_allclose(after[low], 3.0, rtol=1e-5)
    np.testing.assert_array_equal(basis.length_scales[~low], plain.length_scales[~low])
    ratio = basis.length_scales[low] / plain.length_scales[low]
    assert (ratio > 1).all()
    np.testing.assert_allclose(ratio, ratio[:, :1] * np.ones_like(ratio))  # one factor per function
    for bad, message in ((-1.0, "min_support must be"), (np.nan, "min_support contains nan")):
        with pytest.raises(ValueError, match=message):
            pz.rbf_basis(X, z, 30, min_support=bad, rng=3)
    with pytest.raises(ValueError, match=f"is not below the {X.shape[0]} training galaxies"):
        pz.rbf_basis(X, z, 30, min_support=X.shape[0], rng=3)


def test_leverage_stretch_of_a_function_far_from_every_galaxy():
    """phi underflows to 0 at every galaxy for a centre far away; the leverage is still found."""
    Xs = np.array([[0.0, 0.0], [0.1, 0.0], [0.0, 0.2], [1.0, 1.0]])
    centers, lengths = np.array([[60.0, 60.0]]), np.ones((1, 2))
    r2 = (((Xs[:, None, :] - centers[None]) / lengths[None]) ** 2).sum(axis=-1)
    f = pz._leverage_stretch(r2, np.ones(1), 0.5)[0]
    phi = np.exp(-0.5 * (((Xs - centers) / (f * lengths)) ** 2).sum(axis=1))
    assert np.isfinite(f) and f > 1
    np.testing.assert_allclose(phi.max() ** 2 / (phi**2).sum(), 0.5, rtol=1e-6)


def test_max_leverage_widens_functions_one_galaxy_dominates(features, catalog):
    """After the minimum support, no galaxy holds more than max_leverage of a function's
    squared response (computed here from the basis evaluated directly); others are unchanged."""
    _, X_train = features
    z = catalog["z_spec"].dropna().to_numpy()
    X = np.vstack([X_train, X_train.mean(axis=0) + 8 * X_train.std(axis=0)])
    z = np.append(z, 5.0)
    supported = pz.rbf_basis(X, z, 30, min_support=3.0, rng=3)
    capped = pz.rbf_basis(X, z, 30, min_support=3.0, max_leverage=0.5, rng=3)
    one = pz.rbf_basis(X, z, 30, min_support=3.0, max_leverage=1.0, rng=3)
    np.testing.assert_array_equal(one.length_scales, supported.length_scales)
    np.testing.assert_array_equal(capped.centers, supported.centers)
    # the same rule as the run's report uses to say whether the limit was on
    assert [pz.limits_leverage(v) for v in (None, 1.0, 0.999, 0.5)] == [False, False, True, True]

    def leverage(b):
        phi = b.design(X, "X")
        return (phi**2).max(axis=0) / (phi**2).sum(axis=0)

    before, after = leverage(supported), leverage(capped)
    high = before > 0.5
    # the isolated galaxy's function: support 3 is reached with phi = 1 at that one galaxy
    assert 1 <= high.sum() < 30 and before.max() > 0.8
    np.testing.assert_allclose(after[high], 0.5, rtol=1e-4)
    assert (after <= 0.5 + 1e-6).all()
    np.testing.assert_array_equal(capped.length_scales[~high], supported.length_scales[~high])
    ratio = capped.length_scales[high] / supported.length_scales[high]
    assert (ratio > 1).all()
    np.testing.assert_allclose(ratio, ratio[:, :1] * np.ones_like(ratio))  # one factor per function
    n = X.shape[0]
    for bad, message in (
        (0.0, r"max_leverage must be in \(1 / n, 1\]"),
        (1.0 / n, r"max_leverage must be in \(1 / n, 1\]"),
        (1.5, r"max_leverage must be in \(1 / n, 1\]"),
        (np.inf, "max_leverage contains inf"),
        (np.nan, "max_leverage contains nan"),
    ):
        with pytest.raises(ValueError, match=message):
            pz.rbf_basis(X, z, 30, max_leverage=bad, rng=3)


# --- metrics -------------------------------------------------------------------------------


def test_point_metrics_by_hand():
    z = np.array([0.0, 1.0, 1.0, 3.0, 0.5])
    zp = np.array([0.1, 1.2, 0.9, 3.0, 1.5])
    dz = (zp - z) / (1 + z)  # 0.1, 0.1, -0.05, 0, 0.6667
    got = pz.point_metrics(z_spec=z, z_phot=zp)
    assert got["bias"] == pytest.approx(0.1)
    assert got["sigma_nmad"] == pytest.approx(1.4826 * np.median(np.abs(dz - 0.1)))
    assert got["outlier_fraction"] == pytest.approx(0.2)
    with pytest.raises(TypeError):
        pz.point_metrics(z, zp)  # keyword-only: the original swapped them


def test_pit_and_coverage_of_calibrated_predictions():
    rng = np.random.default_rng(4)
    mean = rng.uniform(0.2, 3.0, size=4000)
    z = rng.normal(mean, 0.1)
    samples = rng.normal(mean[:, None], 0.1, size=(4000, 400))
    values = pz.pit(z_spec=np.abs(z), samples=samples)
    assert stats.kstest(values[z > 0], "uniform").pvalue > 0.01
    got = pz.interval_metrics(z_spec=np.abs(z), samples=samples)
    assert got["coverage_68"] == pytest.approx(0.68, abs=0.025)
    assert got["coverage_95"] == pytest.approx(0.95, abs=0.015)
    too_narrow = pz.coverage(z_spec=np.abs(z), samples=samples * 0 + mean[:, None], level=0.68)
    assert too_narrow < 0.01


def test_pit_coverage_against_numpy_and_bad_input():
    values = np.array([0.1, 0.2, 0.5, 0.83, 0.9, 0.99])
    w = np.array([1.0, 2.0, 3.0, 4.0, 0.0, 5.0])
    inside = np.array([0, 1, 1, 1, 0, 0])  # |p - 0.5| <= 0.34
    assert pz.pit_coverage(values, level=0.68) == pytest.approx(inside.mean())
    assert pz.pit_coverage(values, level=0.68, weights=w) == pytest.approx(9 / 15)
    with pytest.raises(ValueError, match=r"level must be in \(0, 1\)"):
        pz.pit_coverage(values, level=68)
    with pytest.raises(ValueError, match="pit_values"):
        pz.pit_coverage([0.5, np.nan], level=0.68)
    with pytest.raises(ValueError, match="weights has shape"):
        pz.pit_coverage(values, level=0.68, weights=w[:3])
    with pytest.raises(ValueError, match="weights must not all be zero"):
        pz.pit_coverage(values, level=0.68, weights=np.zeros(6))


def test_metrics_table_groups():
    z = np.array([0.2, 0.4, 1.2, 1.4])
    table = pz.metrics_table(z_spec=z, z_phot=z + 0.01, groups={"z": pd.cut(z, [0, 1, 2])})
    assert list(table["n"]) == [4, 2, 2]
    assert list(table["bin"])[1:] == ["(0, 1]", "(1, 2]"]


# --- bad input -----------------------------------------------------------------------------


def test_bad_input(features, mixtures):
    X_pop, X_train = features
    bad = X_train.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"X_train contains nan at index \(3, 1\)"):
        pz.fit_mixtures(X_pop, bad)
    bad[3, 1] = np.inf
    with pytest.raises(ValueError, match="NaN and inf are not allowed"):
        pz.gmm_weights(mixtures, X_pop, bad)
    with pytest.raises(ValueError, match="fewer than n_components=4"):
        pz.fit_mixtures(X_pop, X_train[:3], n_components=4)
    with pytest.raises(ValueError, match="X_pop has 3 feature columns and X_train 2"):
        pz.fit_mixtures(X_pop, X_train[:, :2])
    with pytest.raises(ValueError, match="mixtures were fitted on 3"):
        pz.gmm_divide(mixtures, X_train[:, :2])
    for threshold in (0.0, 1.0, -0.2, 1.5):
        with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\)"):
            pz.gmm_divide(mixtures, X_train, threshold=threshold)
    for cap in (0.0, -1.0, np.nan):
        with pytest.raises(ValueError, match="max_weight must be a finite number > 0"):
            pz.gmm_weights(mixtures, X_pop, X_train, max_weight=cap)
    with pytest.raises(ValueError, match="n_components must be an int or 'bic'"):
        pz.fit_mixtures(X_pop, X_train, n_components="aic")


def test_read_catalog_checks_columns_and_values(tmp_path, catalog):
    path = tmp_path / "cat.csv"
    catalog.drop(columns=["z_true"]).to_csv(path, index=False)
    got = pz.read_catalog(path)
    np.testing.assert_allclose(got["lupt_F814W"], catalog["lupt_F814W"])
    assert got["z_spec"].isna().sum() == catalog["z_spec"].isna().sum()
    with pytest.raises(ValueError, match=r"missing column\(s\) \['mag_F606W'"):
        pz.read_catalog(path, mag_prefix="mag_")
    broken = catalog.copy()
    broken.loc[7, "lupt_F125W"] = np.inf
    broken.to_csv(path, index=False)
    with pytest.raises(ValueError, match="'lupt_F125W' is inf in data row 7"):
        pz.read_catalog(path)
