import numpy as np
import pytest
import scipy.integrate
import scipy.stats
from scipy.special import logsumexp

from data_tools.halos import (
    HYPER_SEED,
    SIGMA_OBS,
    GaussianMixtureProposal,
    MassPrior,
    check_catalogue,
    default_mass_prior,
    importance_diagnostics,
    importance_samples,
    ln_mean_luminosity,
    original_proposal_samples,
    quadrature_nodes,
    read_catalogue_csv,
    simulate_lightcone,
)


@pytest.fixture(scope="module")
def prior():
    return default_mass_prior()


@pytest.fixture(scope="module")
def catalogue():
    return simulate_lightcone(3_000, rng=1)


@pytest.fixture(scope="module")
def proposal(prior):
    return GaussianMixtureProposal.fit(prior, rng=2)


def _integrand_quad(prior, z, lum, theta=HYPER_SEED):
    """log of int p(L_obs | M) p(ln M | z) dln M by adaptive scipy quadrature."""
    s = np.sqrt(theta["S"] ** 2 + SIGMA_OBS**2)
    centre = (
        np.log(2.35e14)
        + (np.log(lum) - theta["alpha1"] - theta["alpha4"] * np.log1p(z)) / (theta["alpha2"])
    )

    def f(x):
        mean = ln_mean_luminosity(x, z, theta["alpha1"], theta["alpha2"], theta["alpha4"])
        return np.exp(prior.logpdf([x], [z])[0, 0]) * scipy.stats.norm.pdf(np.log(lum), mean, s)

    lo, hi = prior.ln_m_range
    val, _ = scipy.integrate.quad(
        f, lo, hi, points=[min(max(centre, lo), hi)], limit=400, epsabs=0, epsrel=1e-7
    )
    return np.log(val)


# ---------------------------------------------------------------------------- mass prior
@pytest.mark.parametrize("z", [0.05, 1.2345, 3.4])
def test_mass_prior_is_normalised_at_any_redshift(prior, z):
    lo, hi = prior.ln_m_range
    total, _ = scipy.integrate.quad(
        lambda x: np.exp(prior.logpdf([x], [z])[0, 0]),
        lo,
        hi,
        limit=500,
        epsabs=1e-7,
        epsrel=1e-7,
    )
    assert total == pytest.approx(1.0, abs=2e-4)


def test_mass_prior_follows_the_colossus_mass_function(prior):
    from colossus.cosmology import cosmology
    from colossus.lss import mass_function

    cosmo = cosmology.setCosmology("millennium")
    z = float(prior.z_grid[20])
    lo, hi = prior.ln_m_range

    def dn(x):
        return mass_function.massFunction(
            np.exp(x) * cosmo.h, z, q_out="dndlnM", mdef="fof", model="watson13"
        )

    norm, _ = scipy.integrate.quad(dn, lo, hi, limit=200)
    x = np.linspace(lo + 0.1, hi - 0.1, 7)
    np.testing.assert_allclose(prior.logpdf(x, [z])[0], np.log(dn(x) / norm), atol=2e-3)
    # the mass function falls steeply and more so at high redshift
    assert prior.logpdf([hi - 0.01], [3.0])[0, 0] < prior.logpdf([hi - 0.01], [0.5])[0, 0] - 3


def test_mass_samples_follow_the_prior(prior):
    z = np.full(20_000, 1.7)
    draws = prior.sample_ln_mass(z, rng=5)
    grid = np.linspace(*prior.ln_m_range, 4001)
    dens = np.exp(prior.logpdf(grid, [1.7])[0])
    cdf = scipy.integrate.cumulative_trapezoid(dens, grid, initial=0.0)
    assert scipy.stats.kstest(draws, lambda x: np.interp(x, grid, cdf / cdf[-1])).pvalue > 0.01


def test_redshifts_outside_the_table_are_refused(prior):
    with pytest.raises(ValueError, match=r"z\[1\] = 3.7 is outside the mass prior's table"):
        prior.logpdf([30.0], [1.0, 3.7])
    with pytest.raises(ValueError, match="halo 0"):
        prior.sample_ln_mass([0.0])


# ---------------------------------------------------------------------------- catalogue
def test_lightcone_catalogue(catalogue, prior):
    cat = catalogue
    assert set(cat.data_vars) == {"z", "ln_mass", "lum", "lum_obs"} and cat.sizes["halo"] == 3000
    assert cat.attrs["alpha2"] == HYPER_SEED["alpha2"] and cat.attrs["sigma_obs"] == SIGMA_OBS
    assert (cat.z > 0).all() and (cat.z <= 3.5).all()
    lo, hi = prior.ln_m_range
    assert (cat.ln_mass >= lo).all() and (cat.ln_mass <= hi).all()
    mean = ln_mean_luminosity(
        cat.ln_mass.values,
        cat.z.values,
        HYPER_SEED["alpha1"],
        HYPER_SEED["alpha2"],
        HYPER_SEED["alpha4"],
    )
    resid = np.log(cat.lum_obs.values) - mean
    assert resid.std() == pytest.approx(np.hypot(HYPER_SEED["S"], SIGMA_OBS), rel=0.05)
    assert abs(resid.mean()) < 0.01
    again = simulate_lightcone(3_000, rng=1)
    np.testing.assert_array_equal(again.lum_obs.values, cat.lum_obs.values)


@pytest.mark.parametrize(
    ("z", "lum", "error", "match"),
    [
        ([0.5, 1.0], [1e10, -1.0], ValueError, "lum_obs of halo 1 is -1.0"),
        ([0.5, 1.0], [1e10, 0.0], ValueError, "lum_obs of halo 1 is 0.0"),
        ([0.5, np.nan], [1e10, 1e10], ValueError, "z of halo 1 is nan"),
        ([0.5, 4.0], [1e10, 1e10], ValueError, r"z of halo 1 is 4.0, outside"),
        ([0.5, 1.0], [1e10], ValueError, "lengths differ"),
        (["a", "b"], [1e10, 1e10], TypeError, "z must be numeric"),
    ],
)
def test_bad_catalogues_name_the_halo(z, lum, error, match):
    with pytest.raises(error, match=match):
        check_catalogue(z, lum)


def test_catalogue_csv(tmp_path):
    (tmp_path / "ok.csv").write_text("z,lum_obs\n0.5,1e10\n1.5,3e10\n")
    cat = read_catalogue_csv(tmp_path / "ok.csv")
    np.testing.assert_allclose(cat.lum_obs.values, [1e10, 3e10])
    (tmp_path / "bad.csv").write_text("z,lum\n0.5,1e10\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['lum_obs'\]"):
        read_catalogue_csv(tmp_path / "bad.csv")
    (tmp_path / "nan.csv").write_text("z,lum_obs\n0.5,1e10\n1.5,\n")
    with pytest.raises(ValueError, match="lum_obs of halo 1 is nan"):
        read_catalogue_csv(tmp_path / "nan.csv")


# ---------------------------------------------------------------------------- weights
def test_proposal_density_is_normalised(proposal, catalogue):
    z, lum = catalogue.z.values[:3], catalogue.lum_obs.values[:3]
    log_w, means, sds = proposal.conditional(np.log(lum), z)
    grid = np.linspace(15, 40, 20001)[None, :].repeat(3, 0)
    dens = np.exp(proposal.logpdf(grid, log_w, means, sds))
    np.testing.assert_allclose(np.trapezoid(dens, grid[0], axis=1), 1.0, rtol=1e-6)


def test_quadrature_and_importance_weights_integrate_the_likelihood(prior, proposal, catalogue):
    z, lum = catalogue.z.values[:6], catalogue.lum_obs.values[:6]
    ref = np.array([_integrand_quad(prior, zi, li) for zi, li in zip(z, lum, strict=True)])
    theta = HYPER_SEED
    s = np.hypot(theta["S"], SIGMA_OBS)

    def estimate(x, lw):
        mean = ln_mean_luminosity(
            x.astype(float), z[:, None], theta["alpha1"], theta["alpha2"], theta["alpha4"]
        )
        return logsumexp(
            lw.astype(float) + scipy.stats.norm.logpdf(np.log(lum)[:, None], mean, s), axis=1
        )

    xq, lq = quadrature_nodes(z, n_nodes=401)
    assert xq.shape == (1, 401) and lq.shape == (6, 401)
    np.testing.assert_allclose(estimate(xq, lq), ref, atol=2e-4)
    x, lw = importance_samples(z, lum, n_samples=64, proposal=proposal, rng=3)
    assert x.shape == lw.shape == (6, 64) and x.dtype == np.float32
    np.testing.assert_allclose(estimate(x, lw), ref, atol=0.1)


def test_importance_estimates_are_unbiased_against_quadrature(proposal, catalogue):
    z, lum = catalogue.z.values[:400], catalogue.lum_obs.values[:400]
    theta = HYPER_SEED
    s = np.hypot(theta["S"], SIGMA_OBS)

    def estimate(x, lw):
        mean = ln_mean_luminosity(
            x.astype(float), z[:, None], theta["alpha1"], theta["alpha2"], theta["alpha4"]
        )
        terms = lw.astype(float) + scipy.stats.norm.logpdf(np.log(lum)[:, None], mean, s)
        return logsumexp(terms, axis=1)

    quad = estimate(*quadrature_nodes(z))
    diff = estimate(*importance_samples(z, lum, n_samples=64, proposal=proposal, rng=8)) - quad
    # the estimate of the integral (not of its log) is unbiased: E[exp(diff)] = 1
    assert np.mean(np.exp(diff)) == pytest.approx(1.0, abs=3 * np.std(np.exp(diff)) / 20)
    # stratified draws: ~0.002 at K = 64 (i.i.d. draws from the same proposal: ~0.03)
    assert np.std(diff) < 0.006


def test_draws_are_stratified_through_the_truncated_proposal(prior, proposal, catalogue):
    z, lum = catalogue.z.values[:5], catalogue.lum_obs.values[:5]
    lo, hi = prior.ln_m_range
    k = 40
    x, log_q = proposal.sample(np.log(lum), z, k, defensive=0.1, support=(lo, hi), rng=6)
    log_w, means, sds = proposal.mixture(np.log(lum), z, defensive=0.1)
    assert log_w.shape == (5, 9)  # eight components plus the broad defensive one

    def cdf(v):
        return np.sum(
            np.exp(log_w)[:, None, :] * scipy.stats.norm.cdf(v, means[:, None], sds[:, None]),
            axis=-1,
        )

    v = x[:, :, None]
    mass = (cdf(np.full((5, 1, 1), hi)) - cdf(np.full((5, 1, 1), lo)))[:, 0]
    levels = (cdf(v) - cdf(np.full((5, 1, 1), lo))) / mass[:, None]
    # one draw in each of the K equal-probability strata of the truncated proposal
    np.testing.assert_array_equal(np.floor(levels * k), np.broadcast_to(np.arange(k), (5, k)))
    dens = np.sum(
        np.exp(log_w)[:, None, :] * scipy.stats.norm.pdf(v, means[:, None], sds[:, None]), axis=-1
    )
    np.testing.assert_allclose(log_q, np.log(dens / mass[:, None]), rtol=1e-9)
    assert x.min() >= lo and x.max() <= hi


def test_gaussian_mixture_proposal_passes_the_khat_check(proposal, catalogue):
    z, lum = catalogue.z.values, catalogue.lum_obs.values
    x, lw = importance_samples(z, lum, n_samples=100, proposal=proposal, rng=4)
    diag = importance_diagnostics(x, lw, z, lum, HYPER_SEED)
    assert diag.attrs["frac_khat_above"] < 0.01
    assert 0 < diag["ess"].min() and diag["ess"].max() <= 100 + 1e-9
    assert diag.attrs["median_ess"] > 50
    # a proposal far too narrow is caught by the same check
    narrow = GaussianMixtureProposal(proposal.gmm, inflate=0.4)
    x, lw = importance_samples(z, lum, n_samples=100, proposal=narrow, defensive=0.0, rng=5)
    bad = importance_diagnostics(x, lw, z, lum, HYPER_SEED)
    assert bad.attrs["frac_khat_above"] > 0.2


def test_khat_needs_enough_samples(proposal, catalogue):
    z, lum = catalogue.z.values[:50], catalogue.lum_obs.values[:50]
    x, lw = importance_samples(z, lum, n_samples=16, proposal=proposal, rng=4)
    diag = importance_diagnostics(x, lw, z, lum, HYPER_SEED)
    assert np.isnan(diag["khat"]).all() and np.isfinite(diag["ess"]).all()


def test_a_halo_with_no_support_is_named(catalogue):
    z, lum = catalogue.z.values[:5], catalogue.lum_obs.values[:5].copy()
    lum[0] = 1e30  # so bright that the inverted relation puts every sample above the mass range
    with pytest.raises(ValueError, match=r"halo 0: every log-weight is -inf"):
        original_proposal_samples(z, lum, n_samples=20, width=0.01, rng=1)


def test_weights_reject_bad_sizes(catalogue):
    z, lum = catalogue.z.values[:5], catalogue.lum_obs.values[:5]
    with pytest.raises(ValueError, match="n_samples must be >= 1"):
        importance_samples(z, lum, n_samples=0)
    with pytest.raises(ValueError, match="n_nodes must be >= 2"):
        quadrature_nodes(z, n_nodes=1)


def test_custom_mass_prior_tables(prior):
    p = MassPrior.from_colossus(n_z=11, n_m=64, model="angulo12")
    assert p.log_density.shape == (11, 64)
    np.testing.assert_allclose(np.trapezoid(np.exp(p.log_density), p.ln_m_grid, axis=1), 1.0)
    # another fitting function: a different, normalised prior on the same mass range
    diff = p.logpdf(p.ln_m_grid, [2.0]) - prior.logpdf(p.ln_m_grid, [2.0])
    assert np.abs(diff).max() > 0.01


def test_quantile_inverts_the_prior(prior):
    levels = np.array([0.01, 0.5, 0.99])
    q = prior.quantile(levels, [0.3, 2.7])
    for row, z in zip(q, [0.3, 2.7], strict=True):
        grid = np.linspace(*prior.ln_m_range, 20001)
        dens = np.exp(prior.logpdf(grid, [z])[0])
        cdf = scipy.integrate.cumulative_trapezoid(dens, grid, initial=0.0)
        np.testing.assert_allclose(np.interp(row, grid, cdf / cdf[-1]), levels, atol=2e-3)


def test_adaptive_quadrature_matches_a_fine_global_grid(prior, proposal, catalogue):
    from data_tools.halos import adaptive_quadrature_nodes

    z, lum = catalogue.z.values[:1000], catalogue.lum_obs.values[:1000]
    fine = quadrature_nodes(z, n_nodes=1601)
    x, lw = adaptive_quadrature_nodes(z, lum, proposal=proposal)
    assert x.shape == lw.shape == (1000, 25)
    for theta in (HYPER_SEED, {**HYPER_SEED, "alpha1": 10.95}, {**HYPER_SEED, "alpha2": 0.33}):
        s = np.hypot(theta["S"], SIGMA_OBS)

        def estimate(nodes, weights, theta=theta, s=s):
            mean = ln_mean_luminosity(
                np.asarray(nodes, float),
                z[:, None],
                theta["alpha1"],
                theta["alpha2"],
                theta["alpha4"],
            )
            terms = np.asarray(weights, float) + scipy.stats.norm.logpdf(
                np.log(lum)[:, None], mean, s
            )
            return logsumexp(terms, axis=1)

        err = estimate(x, lw) - estimate(*fine)
        assert np.abs(err).max() < 5e-3
        assert abs(err.sum()) < 0.05  # no systematic offset summed over 1,000 halos
    with pytest.raises(ValueError, match="must be odd"):
        adaptive_quadrature_nodes(z, lum, n_nodes=32, proposal=proposal)
