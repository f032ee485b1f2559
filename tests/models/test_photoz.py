"""The photo-z regression against numpy/scipy at fixed parameters (fast tier)."""

from __future__ import annotations

import arviz as az
import numpy as np
import pymc as pm
import pytest
import xarray as xr
from pymc.model.transform.conditioning import remove_value_transforms
from references import importance_sampling_pit
from scipy import stats

from data_tools.photoz import MIN_SUPPORT, pit_coverage, rbf_basis
from models import photoz
from models.inference import convergence, format_convergence, thin_draws


def _toy(n=120, d=2, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    z = np.exp(0.4 + 0.3 * X[:, 0] - 0.2 * np.sin(2 * X[:, 1]) + rng.normal(0, 0.05, n)) - 1
    return X, np.abs(z)


@pytest.fixture(scope="module")
def toy():
    X, z = _toy()
    basis = rbf_basis(X, z, 8, rng=1)
    weights = np.random.default_rng(2).uniform(0.2, 5.0, z.size)
    return X, z, basis, weights


def _posterior(model, coef, noise_coef, *, n_draws=1, **scalars):
    """A posterior of ``n_draws`` identical draws holding the given parameter values."""
    ones = np.ones((1, n_draws))
    post = xr.Dataset(
        {
            "coef": (("chain", "draw", "term"), ones[..., None] * coef),
            "noise_coef": (("chain", "draw", "noise_term"), ones[..., None] * noise_coef),
        }
        | {k: (("chain", "draw"), v * ones) for k, v in scalars.items()},
        coords={
            "chain": [0],
            "draw": np.arange(n_draws),
            "term": list(model.coords["term"]),
            "noise_term": list(model.coords["noise_term"]),
        },
    )
    return xr.DataTree.from_dict({"posterior": post})


def test_dims_and_finite_initial_logp(toy):
    X, z, basis, weights = toy
    model = photoz.build_model(X, z, basis=basis, weights=weights)
    for rv in [*model.free_RVs, *model.observed_RVs]:
        assert model.named_vars_to_dims.get(rv.name), rv.name
    assert model.named_vars_to_dims["log1pz"] == ("galaxy",)
    assert len(model.coords["term"]) == 1 + 2 + 8
    assert np.isfinite(model.compile_logp()(model.initial_point()))


def test_pointwise_loglik_against_scipy(toy):
    """log L_i = w_i log N(ln(1+z_i) | terms_i . coef, sigma_i), with w summing to its ESS."""
    X, z, basis, weights = toy
    model = photoz.build_model(X, z, basis=basis, weights=weights)
    rng = np.random.default_rng(5)
    coef, noise_coef = rng.normal(0, 0.3, 11), rng.normal(-1.5, 0.6, 3)
    noise_coef[1] = 3.0  # some galaxies near the cap s / (1 + s) -> 1
    idata = _posterior(model, coef, noise_coef)
    pm.compute_log_likelihood(idata, model=model, progressbar=False)
    got = idata["log_likelihood"]["log1pz"].values[0, 0]
    Xs = (X - basis.feature_center) / basis.feature_scale
    terms = np.column_stack([np.ones(z.size), Xs, basis.design(X)])
    w = weights * weights.sum() / (weights**2).sum()
    assert w.sum() == pytest.approx(weights.sum() ** 2 / (weights**2).sum())
    s = np.exp(terms[:, :3] @ noise_coef)
    s = s / (1 + s)
    assert (s > 0.9).any() and (s < 0.2).any()
    sigma = np.sqrt(photoz.NOISE_FLOOR**2 + s**2)
    ref = w * stats.norm.logpdf(np.log1p(z), terms @ coef, sigma)
    np.testing.assert_allclose(got, ref, rtol=1e-9)


def test_student_t_loglik_against_scipy_and_its_draws(toy):
    """log L_i = w_i log t_nu(ln(1+z_i) | mu_i, sigma_i); predictive draws have t quantiles."""
    X, z, basis, weights = toy
    model = photoz.build_model(X, z, basis=basis, weights=weights, likelihood="student_t")
    # nu's prior: ln nu ~ N(ln 7, 0.4)
    ln_nu = np.log(pm.draw(model["nu"], draws=8000, random_seed=5))
    want = stats.norm.ppf([0.05, 0.5, 0.95], np.log(7.0), 0.4)
    np.testing.assert_allclose(np.quantile(ln_nu, [0.05, 0.5, 0.95]), want, atol=0.03)
    rng = np.random.default_rng(11)
    coef, noise_coef = rng.normal(0, 0.3, 11), np.array([-1.5, 0.4, -0.3])
    idata = _posterior(model, coef, noise_coef, nu=3.5)
    pm.compute_log_likelihood(idata, model=model, progressbar=False)
    Xs = (X - basis.feature_center) / basis.feature_scale
    terms = np.column_stack([np.ones(z.size), Xs, basis.design(X)])
    s = np.exp(terms[:, :3] @ noise_coef)
    sigma = np.sqrt(photoz.NOISE_FLOOR**2 + (s / (1 + s)) ** 2)
    w = weights * weights.sum() / (weights**2).sum()
    ref = w * stats.t.logpdf(np.log1p(z), 3.5, terms @ coef, sigma)
    np.testing.assert_allclose(idata["log_likelihood"]["log1pz"].values[0, 0], ref, rtol=1e-9)
    # 4,000 predictive draws for one galaxy: quartiles of ln(1+z) match the t's
    many = _posterior(model, coef, noise_coef, n_draws=4000, nu=3.5)
    draws = photoz.predict(model, many, X[:1], rng=3).values[0]
    mu0, s0 = (terms @ coef)[0], sigma[0]
    got = np.quantile(np.log1p(draws), [0.05, 0.25, 0.75, 0.95])
    want = stats.t.ppf([0.05, 0.25, 0.75, 0.95], 3.5, mu0, s0)
    np.testing.assert_allclose(got, want, atol=0.12 * s0)
    # nu = 1 and the widest noise: the draws stay within |ln(1 + z)| <= ln(1 + Z_MAX), with the
    # truncated t's quantiles
    wide = _posterior(model, coef, np.array([8.0, 0.0, 0.0]), n_draws=4000, nu=1.0)
    draws = np.log1p(photoz.predict(model, wide, X[:1], rng=3).values[0])
    s_wide = np.sqrt(photoz.NOISE_FLOOR**2 + (np.exp(8) / (1 + np.exp(8))) ** 2)
    top = np.log1p(photoz.Z_MAX)
    assert np.isfinite(draws).all() and np.abs(draws).max() <= top
    low, high = stats.t.cdf([-top, top], 1.0, mu0, s_wide)
    assert high - low < 0.9  # the cut matters here
    q = np.array([0.1, 0.5, 0.9])
    want = stats.t.ppf(low + q * (high - low), 1.0, mu0, s_wide)
    np.testing.assert_allclose(np.quantile(draws, q), want, atol=0.1 * s_wide)


def test_student_t_draws_past_the_edge_follow_the_truncated_t(toy):
    """Means inside and beyond +-ln(1 + Z_MAX): rejection, then the CDF inverted, per galaxy."""
    X, z, basis, _ = toy
    model = photoz.build_model(X, z, basis=basis, likelihood="student_t")
    top = np.log1p(photoz.Z_MAX)
    Xs = (X[:40] - basis.feature_center) / basis.feature_scale
    # 40 galaxies whose means run from 1.2 inside the edge to 0.8 beyond it (sd 0.38)
    coef = np.zeros(len(model.coords["term"]))
    coef[1] = 2.0 / np.ptp(Xs[:, 0])
    coef[0] = top - 1.2 - coef[1] * Xs[:, 0].min()
    mu = coef[0] + coef[1] * Xs[:, 0]
    posterior = _posterior(model, coef, np.array([-0.5, 0.0, 0.0]), n_draws=500, nu=3.0)
    draws = np.log1p(photoz.predict(model, posterior, X[:40], rng=8).values)
    s = np.exp(-0.5)
    sigma = np.sqrt(photoz.NOISE_FLOOR**2 + (s / (1 + s)) ** 2)
    assert np.abs(draws).max() <= top
    low, high = (stats.t.cdf(edge, 3.0, mu[:, None], sigma) for edge in (-top, top))
    pit = (stats.t.cdf(draws, 3.0, mu[:, None], sigma) - low) / (high - low)
    assert stats.kstest(pit.ravel(), "uniform").pvalue > 0.01
    # mirrored, with a narrow t: a mean of -3.5 (z < -0.94) puts every draw near -edge, not +edge
    coef = np.zeros(len(model.coords["term"]))
    coef[0] = -3.5
    posterior = _posterior(model, coef, np.array([-5.0, 0.0, 0.0]), n_draws=4000, nu=13.0)
    draws = np.log1p(photoz.predict(model, posterior, X[:1], rng=9).values[0])
    s = np.exp(-5.0)
    sigma = np.sqrt(photoz.NOISE_FLOOR**2 + (s / (1 + s)) ** 2)
    assert draws.min() >= -top and draws.max() < 0

    def truncated_cdf(y):  # from the upper tail, where the t's survival function is accurate
        sf = stats.t.sf([-top, y, top], 13.0, -3.5, sigma)
        return (sf[0] - sf[1]) / (sf[0] - sf[2])

    assert stats.kstest(draws, np.vectorize(truncated_cdf)).pvalue > 0.01


def test_preconditioner_changes_no_posterior(toy):
    """Log-density differences between points equal those of the untransformed model."""
    X, z, basis, weights = toy
    model = photoz.build_model(X, z, basis=basis, weights=weights)
    plain = remove_value_transforms(model)
    rng = np.random.default_rng(6)
    points = [
        {"coef": rng.normal(0, 0.3, 11), "noise_coef": rng.normal(-1.5, 0.2, 3)} for _ in range(3)
    ]
    logp_plain = plain.compile_logp()
    logp = model.compile_logp(jacobian=False)
    t_coef, t_noise = (model.rvs_to_transforms[model[n]] for n in ("coef", "noise_coef"))
    vals = []
    for p in points:
        eps = {
            "coef_preconditioned__": t_coef.forward(p["coef"]).eval(),
            "noise_coef_preconditioned__": t_noise.forward(p["noise_coef"]).eval(),
        }
        np.testing.assert_allclose(t_coef.backward(eps["coef_preconditioned__"]).eval(), p["coef"])
        vals.append((logp(eps), logp_plain(p)))
    vals = np.array(vals)
    np.testing.assert_allclose(np.diff(vals[:, 0]), np.diff(vals[:, 1]), rtol=1e-9, atol=1e-8)


def test_predict_uses_new_features_and_restores_the_data(toy):
    X, z, basis, _ = toy
    model = photoz.build_model(X, z, basis=basis)
    coef = np.random.default_rng(7).normal(0, 0.3, 11)
    idata = _posterior(model, coef, np.array([-12.0, 0.0, 0.0]))  # sigma = the 0.02 floor
    X_new = np.random.default_rng(8).normal(size=(200, 2)) * 1.5
    draws = photoz.predict(model, idata, X_new, rng=1)
    assert draws.dims == ("galaxy", "sample") and draws.shape == (200, 1)
    Xs = (X_new - basis.feature_center) / basis.feature_scale
    terms = np.column_stack([np.ones(200), Xs, basis.design(X_new)])
    # linear terms clipped to the training range, the basis evaluated at the new features
    lo = ((X - basis.feature_center) / basis.feature_scale).min(axis=0)
    hi = ((X - basis.feature_center) / basis.feature_scale).max(axis=0)
    terms[:, 1:3] = np.clip(Xs, lo, hi)
    mean = terms @ coef
    resid = np.log1p(draws.values[:, 0]) - mean
    assert np.abs(resid).max() < 5 * photoz.NOISE_FLOOR
    assert abs(resid.std() - photoz.NOISE_FLOOR) < 0.3 * photoz.NOISE_FLOOR
    # the training data are back in place
    np.testing.assert_allclose(model["log1pz_observed"].get_value(), np.log1p(z))
    assert len(model.coords["galaxy"]) == z.size


def test_combine_divided_draws_by_responsibility():
    n, s = 4, 20_000
    samples = [np.full((n, s), 1.0), np.full((n, s), 2.0), np.full((n, s), 3.0)]
    r = np.array([[1, 0, 0], [0, 0, 1], [0.2, 0.5, 0.3], [2, 2, 0]], float)
    mixed = photoz.combine_divided(samples, r, rng=0)
    for k, value in enumerate((1.0, 2.0, 3.0)):
        frac = (mixed == value).mean(axis=1)
        np.testing.assert_allclose(frac, r[:, k] / r.sum(axis=1), atol=0.015)


def test_prediction_summary_matches_numpy():
    draws = np.random.default_rng(3).gamma(2.0, 0.5, size=(5, 4000))
    s = photoz.prediction_summary(draws)
    np.testing.assert_allclose(s["z_phot"], np.median(draws, axis=1))
    np.testing.assert_allclose(s["z_mean"], draws.mean(axis=1))
    np.testing.assert_allclose(s["z_hi68"], np.quantile(draws, 0.84, axis=1))


def test_bad_input(toy):
    X, z, basis, weights = toy
    bad = z.copy()
    bad[4] = np.nan
    with pytest.raises(ValueError, match="z_spec contains nan at index"):
        photoz.build_model(X, bad, basis=basis)
    with pytest.raises(ValueError, match="the basis was built on 2"):
        photoz.build_model(X[:, :1], z, basis=basis)
    with pytest.raises(ValueError, match="weights must be > 0"):
        photoz.build_model(X, z, basis=basis, weights=-weights)
    with pytest.raises(ValueError, match="weights has 3 entries for 120 galaxies"):
        photoz.build_model(X, z, basis=basis, weights=weights[:3])
    with pytest.raises(ValueError, match="features has 120 rows but z_spec has 119"):
        photoz.build_model(X, z[1:], basis=basis)
    with pytest.raises(ValueError, match="likelihood must be one of"):
        photoz.build_model(X, z, basis=basis, likelihood="cauchy")
    model = photoz.build_model(X, z, basis=basis)
    with pytest.raises(ValueError, match="method must be 'nuts' or 'advi'"):
        photoz.fit(model, method="mcmc")
    with pytest.raises(ValueError, match=r"target_accept must be in \(0, 1\), got 1.5"):
        photoz.fit(model, target_accept=1.5)
    with pytest.raises(ValueError, match=r"responsibility has shape \(2, 2\)"):
        photoz.combine_divided([np.ones((2, 3))] * 3, np.ones((2, 2)))


def test_galaxy_data_of_the_training_set_is_the_models_own(toy):
    """Rebuilt from the stored scalings, the training galaxies' containers are the model's."""
    X, z, basis, _ = toy
    E = np.random.default_rng(12).normal(-3.0, 0.5, size=(z.size, 2))
    model = photoz.build_model(X, z, basis=basis, noise_inputs=E)
    data = photoz.galaxy_data(model, X, noise_inputs=E)
    for name, value in data.items():
        np.testing.assert_allclose(value, model[name].get_value(), rtol=1e-12, err_msg=name)
    far = photoz.galaxy_data(model, X * 10, noise_inputs=E, clip=True)["scaled_features"]
    np.testing.assert_allclose(far.max(axis=0), model["scaled_high"].get_value())


def test_model_basis_returns_the_functions_the_model_was_built_on(toy):
    """A second model on ``model_basis(model)`` has the first one's design matrix."""
    X, z, basis, _ = toy
    model = photoz.build_model(X, z, basis=basis)
    again = photoz.model_basis(model)
    for field in ("feature_center", "feature_scale", "centers", "length_scales"):
        np.testing.assert_array_equal(getattr(again, field), getattr(basis, field), err_msg=field)
    constant = photoz.build_model(X, z, basis=again, heteroscedastic=False)
    np.testing.assert_array_equal(constant["design"].get_value(), basis.design(X))


def test_noise_inputs_enter_the_log_noise(toy):
    """ln s_i = c + x_i . g + u_i . h with u the robust-scaled noise inputs; predict needs them."""
    X, z, basis, _ = toy
    E = np.random.default_rng(9).normal(-3.0, 0.5, size=(z.size, 2))
    model = photoz.build_model(X, z, basis=basis, noise_inputs=E, noise_input_names=["a", "b"])
    assert list(model.coords["noise_term"]) == ["intercept", "x0", "x1", "a", "b"]
    coef = np.random.default_rng(10).normal(0, 0.3, 11)
    noise_coef = np.array([-2.0, 0.1, -0.2, 0.4, 0.3])
    idata = _posterior(model, coef, noise_coef)
    pm.compute_log_likelihood(idata, model=model, progressbar=False)
    Xs = (X - basis.feature_center) / basis.feature_scale
    Es = (E - np.median(E, axis=0)) / np.subtract(*np.percentile(E, [75, 25], axis=0))
    s = np.exp(noise_coef[0] + Xs @ noise_coef[1:3] + Es @ noise_coef[3:])
    terms = np.column_stack([np.ones(z.size), Xs, basis.design(X)])
    ref = stats.norm.logpdf(
        np.log1p(z), terms @ coef, np.sqrt(photoz.NOISE_FLOOR**2 + (s / (1 + s)) ** 2)
    )
    np.testing.assert_allclose(idata["log_likelihood"]["log1pz"].values[0, 0], ref, rtol=1e-9)
    with pytest.raises(ValueError, match="pass noise_inputs for the new galaxies"):
        photoz.predict(model, idata, X[:5])
    with pytest.raises(ValueError, match=r"noise_inputs has shape \(5, 1\), expected \(5, 2\)"):
        photoz.predict(model, idata, X[:5], noise_inputs=E[:5, :1])
    draws = photoz.predict(model, idata, X[:5], noise_inputs=E[:5] + 3.0, rng=0)
    assert draws.shape == (5, 1)


@pytest.mark.parametrize("likelihood", photoz.LIKELIHOODS)
def test_advi_starts_at_the_plug_in_fit_and_predicts(toy, likelihood):
    """pm.fit from the preconditioner's centre: the fitted mean stays near the ridge solution."""
    X, z, basis, _ = toy
    model = photoz.build_model(X, z, basis=basis, likelihood=likelihood)
    idata = photoz.fit(model, method="advi", draws=100, chains=1, vi_steps=3000, rng=0)
    assert idata["posterior"].sizes["draw"] == 100
    assert idata["log_likelihood"]["log1pz"].shape[-1] == z.size
    assert np.isfinite(idata.attrs["advi_loss"]).all()
    draws = photoz.predict(model, idata, X[:40], rng=1)
    rmse = np.sqrt(np.mean((np.log1p(draws.values.mean(axis=1)) - np.log1p(z[:40])) ** 2))
    assert rmse < 0.1  # the toy's noise sd is 0.05
    # leave-one-out from the approximation's draws (one chain): PITs of the training galaxies
    pits = photoz.loo_pit(model, idata, rng=2)
    assert pits.size == z.size and ((pits >= 0) & (pits <= 1)).all()
    assert np.isfinite(pits["pareto_k"]).all()


def test_input_variance_against_finite_differences(toy):
    """g' C g with g the central-difference gradient of mu(x) = terms(x) . coef."""
    X, z, basis, _ = toy
    rng = np.random.default_rng(21)
    coef = rng.normal(0, 0.5, 11)
    A = rng.normal(0, 0.2, size=(z.size, 2, 2))
    cov = A @ A.transpose(0, 2, 1)

    def mu(Xq):
        Xs = (Xq - basis.feature_center) / basis.feature_scale
        return np.column_stack([np.ones(len(Xq)), Xs, basis.design(Xq)]) @ coef

    h = 1e-6
    grad = np.column_stack([(mu(X + h * e) - mu(X - h * e)) / (2 * h) for e in np.eye(2)])
    expected = np.einsum("nk,nkl,nl->n", grad, cov, grad)
    got = photoz.input_variance(basis, X, cov, coef)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    # standard deviations are the diagonal case
    sd = np.sqrt(np.einsum("nkk->nk", cov))
    np.testing.assert_allclose(
        photoz.input_variance(basis, X, sd, coef), (grad * sd) ** 2 @ np.ones(2), rtol=1e-6
    )


def test_feature_errors_add_the_propagated_variance(toy):
    """sigma_i^2 = floor^2 + (s/(1+s))^2 + g_i' C_i g_i, g the plug-in mean's gradient.

    The propagated variance is data (computed once from the plug-in coefficients), not a
    function of the sampled ones; predict needs the new galaxies' errors.
    """
    X, z, basis, _ = toy
    rng = np.random.default_rng(22)
    sd = rng.uniform(0.01, 0.3, size=X.shape)
    model = photoz.build_model(X, z, basis=basis, feature_errors=sd)
    coef, noise_coef = rng.normal(0, 0.3, 11), np.array([-2.0, 0.2, -0.1])
    idata = _posterior(model, coef, noise_coef)
    pm.compute_log_likelihood(idata, model=model, progressbar=False)
    Xs = (X - basis.feature_center) / basis.feature_scale
    phi = basis.design(X)
    terms = np.column_stack([np.ones(z.size), Xs, phi])
    # gradient of the plug-in mean in the raw features, by central differences
    plug = model["input_noise_coef"].get_value()
    assert np.std(terms @ plug - np.log1p(z)) < 0.5 * np.std(np.log1p(z))  # it fits the data

    def mu(Xq):
        Xq_s = (Xq - basis.feature_center) / basis.feature_scale
        return np.column_stack([np.ones(len(Xq)), Xq_s, basis.design(Xq)]) @ plug

    h = 1e-6
    grad = np.column_stack([(mu(X + h * e) - mu(X - h * e)) / (2 * h) for e in np.eye(2)])
    s = np.exp(noise_coef[0] + Xs @ noise_coef[1:])
    var = photoz.NOISE_FLOOR**2 + (s / (1 + s)) ** 2 + ((grad * sd) ** 2).sum(axis=1)
    ref = stats.norm.logpdf(np.log1p(z), terms @ coef, np.sqrt(var))
    # atol: the central differences carry ~1e-10 of rounding, which a log-density near 0 turns
    # into a relative error above 1e-9 (it did once: the plug-in fit's BLAS sums need not be
    # bit-identical from run to run)
    np.testing.assert_allclose(
        idata["log_likelihood"]["log1pz"].values[0, 0], ref, rtol=1e-9, atol=1e-9
    )
    with pytest.raises(ValueError, match="pass feature_errors for the new galaxies"):
        photoz.predict(model, idata, X[:5])
    plain = photoz.build_model(X, z, basis=basis)
    with pytest.raises(ValueError, match="the model was built without them"):
        photoz.galaxy_data(plain, X[:5], feature_errors=sd[:5])
    # the training galaxies' container is what galaxy_data rebuilds
    np.testing.assert_allclose(
        photoz.galaxy_data(model, X, feature_errors=sd)["input_variance"],
        model["input_variance"].get_value(),
        rtol=1e-12,
    )
    # far larger errors on the same galaxies: wider predictive draws
    few = _posterior(model, coef, noise_coef, n_draws=400)
    narrow = photoz.predict(model, few, X[:5], feature_errors=sd[:5], rng=1).values
    wide = photoz.predict(model, few, X[:5], feature_errors=10 * sd[:5], rng=1).values
    assert (np.log1p(wide).std(axis=1) > np.log1p(narrow).std(axis=1)).all()


def test_feature_errors_bad_input(toy):
    X, z, basis, _ = toy
    with pytest.raises(ValueError, match=r"feature_errors has shape \(120, 3\); expected"):
        photoz.build_model(X, z, basis=basis, feature_errors=np.ones((120, 3)))
    with pytest.raises(ValueError, match="feature_errors contains nan"):
        photoz.build_model(X, z, basis=basis, feature_errors=np.full((120, 2), np.nan))
    with pytest.raises(ValueError, match=r"feature_errors must be >= 0, got -1.0 at index"):
        photoz.build_model(X, z, basis=basis, feature_errors=-np.ones((120, 2)))
    asym = np.tile(np.array([[1.0, 0.5], [0.0, 1.0]]), (120, 1, 1))
    with pytest.raises(ValueError, match="galaxy 0's covariance matrix is not symmetric"):
        photoz.build_model(X, z, basis=basis, feature_errors=asym)
    indefinite = np.tile(np.array([[1.0, 2.0], [2.0, 1.0]]), (120, 1, 1))
    with pytest.raises(ValueError, match="galaxy 0's covariance matrix is not positive semi"):
        photoz.build_model(X, z, basis=basis, feature_errors=indefinite)
    # the tolerance is relative to each galaxy's own scale
    with pytest.raises(ValueError, match="not positive semi-definite"):
        photoz.build_model(X, z, basis=basis, feature_errors=indefinite * 1e-12)


def test_run_photometric_errors_choose_the_inputs():
    """propagate: feature covariances only; noise-inputs: ln errors only; ignore: neither."""
    from data_tools.photoz import simulate_galaxy_catalog
    from models.runs.photoz import PhotozRunConfig, _inputs, regression_features

    cat = simulate_galaxy_catalog(300, rng=4)
    bands = ("F606W", "F814W", "F125W", "F160W")
    errors = cat[[f"lupterr_{b}" for b in bands]].to_numpy()
    got = {
        e: _inputs(cat, PhotozRunConfig(photometric_errors=e))
        for e in ("propagate", "noise-inputs", "ignore")
    }
    assert got["propagate"].log_errors is None
    # independent of how feature_covariance orders things: the features are linear in the
    # luptitudes, so a unit shift of band b moves them by column b of their Jacobian A, and
    # the covariance is sum_b err_b^2 A_b A_b'
    base = regression_features(cat, bands)
    expected = np.zeros((len(cat), 4, 4))
    for b in bands:
        shifted = cat.assign(**{f"lupt_{b}": cat[f"lupt_{b}"] + 1.0})
        column = regression_features(shifted, bands) - base
        var = cat[f"lupterr_{b}"].to_numpy() ** 2
        expected += var[:, None, None] * column[:, :, None] * column[:, None, :]
    np.testing.assert_allclose(got["propagate"].covariance, expected, atol=1e-12)
    np.testing.assert_allclose(got["noise-inputs"].log_errors, np.log(errors))
    assert got["noise-inputs"].covariance is None
    assert got["ignore"].log_errors is None and got["ignore"].covariance is None
    with pytest.raises(ValueError, match="photometric_errors must be one of"):
        PhotozRunConfig(photometric_errors="both")


def test_run_weights_choose_the_weighted_variants_weights(monkeypatch, tmp_path, capsys):
    """mixture: the mixtures' density ratios; selection: the true ratios to the test set."""
    from data_tools.photoz import gmm_features, selection_weights
    from models.cli import PHOTOZ_WEIGHTINGS, main
    from models.runs import photoz as run_photoz

    class Trained(Exception):
        pass

    splits, seen = [], {}
    real_split = run_photoz._split

    def split(config, rng):
        splits.append(real_split(config, rng))
        return splits[-1]

    def variant(mode, config, train, z, test, weights, *rest):
        seen[config.weights] = weights
        raise Trained

    monkeypatch.setattr(run_photoz, "_split", split)
    monkeypatch.setattr(run_photoz, "_variant", variant)
    for kind in run_photoz.WEIGHTINGS:
        config = run_photoz.PhotozRunConfig(
            galaxies=3000, test_size=300, weights=kind, out=tmp_path, quiet=False
        )
        with pytest.raises(Trained):
            run_photoz.run(config)
        stage = "divide; true selection weights" if kind == "selection" else "weights and divide"
        assert f"with z_spec): {stage} ..." in capsys.readouterr().out
    cat, train = splits[-1].catalog, splits[-1].train
    np.testing.assert_array_equal(splits[0].train, train)
    # weighted to the test set's galaxies: those without a spectrum
    expected = selection_weights(cat, train, gmm_features(cat), target="without_spectrum").values
    np.testing.assert_allclose(seen["selection"], expected, rtol=1e-12)
    assert seen["mixture"].shape == expected.shape
    assert not np.allclose(seen["mixture"], expected)
    # the printed report says which weights the run used
    report = _failed_report()
    report["mixtures"]["weights"] = "selection"
    assert run_photoz.format_report(report).splitlines()[1] == (
        "mixtures: 2 components; weights ESS 4, 0 capped (the simulated survey's true "
        "selection, not the mixtures')"
    )
    # a catalogue from a file has no known selection
    with pytest.raises(ValueError, match=r"weights='selection'.*simulate"):
        run_photoz.PhotozRunConfig(data=tmp_path / "cat.csv", weights="selection")
    with pytest.raises(ValueError, match="weights must be one of"):
        run_photoz.PhotozRunConfig(weights="true")
    # the command line offers the same choices, with the same default, and passes them on
    assert PHOTOZ_WEIGHTINGS == run_photoz.WEIGHTINGS
    assert PHOTOZ_WEIGHTINGS[0] == run_photoz.PhotozRunConfig().weights
    configs = []
    monkeypatch.setattr(
        run_photoz, "run", lambda c: configs.append(c) or {"diagnostics": {"ok": True}}
    )
    assert main(["run", "photoz", "--weights", "selection", "--quiet"]) == 0
    assert main(["run", "photoz", "--quiet"]) == 0
    assert [c.weights for c in configs] == ["selection", "mixture"]


def test_run_max_leverage_reaches_the_basis(monkeypatch):
    """--max-leverage goes to every model's basis functions; 0.5 by default; checked."""
    from data_tools.photoz import simulate_galaxy_catalog
    from models.cli import main
    from models.runs import photoz as run_photoz

    cat = simulate_galaxy_catalog(300, rng=4)
    inputs = run_photoz._inputs(cat, run_photoz.PhotozRunConfig())
    z = cat["z_true"].to_numpy()
    seen = []
    real = run_photoz.rbf_basis
    monkeypatch.setattr(
        run_photoz, "rbf_basis", lambda *a, **k: seen.append(k["max_leverage"]) or real(*a, **k)
    )
    for cap in (None, 0.5):
        config = run_photoz.PhotozRunConfig(max_leverage=cap, basis=8)
        run_photoz._build(config, inputs, z, None, np.random.default_rng(1))
    assert seen == [None, 0.5]
    # every model's training set has at least MIN_COMPONENT_MEMBERS galaxies, so any accepted
    # value suits rbf_basis; one at or below 1 / 20 would fail only at a divide component's fit
    assert run_photoz.MIN_COMPONENT_MEMBERS == 20
    run_photoz.PhotozRunConfig(max_leverage=0.051)
    for bad in (0.0, 0.05, 1.5, np.nan):
        with pytest.raises(
            ValueError, match=r"max_leverage \(--max-leverage\) must be in \(0.05, 1\]"
        ):
            run_photoz.PhotozRunConfig(max_leverage=bad)
    configs = []
    monkeypatch.setattr(
        run_photoz, "run", lambda c: configs.append(c) or {"diagnostics": {"ok": True}}
    )
    assert main(["run", "photoz", "--max-leverage", "1", "--quiet"]) == 0
    assert main(["run", "photoz", "--quiet"]) == 0
    assert [c.max_leverage for c in configs] == [1.0, 0.5]
    assert run_photoz.PhotozRunConfig().max_leverage == 0.5


def test_divide_fits_only_components_with_enough_members(monkeypatch):
    """A divide component under MIN_COMPONENT_MEMBERS gets no model and its galaxies go to the
    others; with none left the run stops with an error that names the options to change."""
    from data_tools.photoz import Division
    from models.runs import photoz as run_photoz

    n_train, n_test = 90, 7
    rng = np.random.default_rng(0)
    train = run_photoz.Inputs(rng.normal(size=(n_train, 3)), None, None)
    test = run_photoz.Inputs(rng.normal(size=(n_test, 3)), None, None)
    z = rng.uniform(0.1, 3.0, n_train)
    sizes = [40, run_photoz.MIN_COMPONENT_MEMBERS - 1, run_photoz.MIN_COMPONENT_MEMBERS]
    member = np.zeros((n_train, 3), dtype=bool)
    start = 0
    for k, size in enumerate(sizes):
        member[start : start + size, k] = True
        start += size
    trained = []

    def train_one(config, inputs, z_k, weights, rng):
        trained.append(z_k.size)
        return len(trained) - 1, None  # the "model" is the component's index among the fitted

    fitted_value = {0: 10.0, 1: 30.0}  # what each fitted model predicts, by fit order
    monkeypatch.setattr(run_photoz, "_train_one", train_one)
    monkeypatch.setattr(
        run_photoz,
        "_predict",
        lambda m, i, g, r: np.full((g.features.shape[0], 5000), fitted_value[m]),
    )
    # test galaxy 0 belongs to the skipped component only: it falls back to the fitted ones
    resp = np.array([[0, 1, 0]] + [[0.5, 0.2, 0.3]] * (n_test - 1), dtype=float)
    config = run_photoz.PhotozRunConfig(threshold=0.3)
    division = Division(member.astype(float), member, config.threshold)  # the training galaxies
    variant = run_photoz._variant("divide", config, train, z, test, None, division, resp, 1)
    assert trained == [40, run_photoz.MIN_COMPONENT_MEMBERS]
    assert variant.members == [0, 2]
    assert set(np.unique(variant.samples)) == {10.0, 30.0}
    # galaxy 0 draws from both fitted components equally; the others 0.5 : 0.3
    share = (variant.samples == 10.0).mean(axis=1)
    assert share[0] == pytest.approx(0.5, abs=0.03)
    assert share[1:].mean() == pytest.approx(0.5 / 0.8, abs=0.02)

    division.member[:] = False
    division.member[: run_photoz.MIN_COMPONENT_MEMBERS - 1, 0] = True
    with pytest.raises(
        ValueError,
        match=rf"no mixture component has {run_photoz.MIN_COMPONENT_MEMBERS} or more training "
        r"members at threshold 0\.3; lower --threshold or use fewer --components",
    ):
        run_photoz._variant("divide", config, train, z, test, None, division, resp, 1)


def test_run_likelihood_reaches_both_models(monkeypatch):
    """--likelihood sets the noise of every model the run builds, the LOO baseline's too."""
    from data_tools.photoz import simulate_galaxy_catalog
    from models.runs import photoz as run_photoz

    cat = simulate_galaxy_catalog(300, rng=4)
    inputs = run_photoz._inputs(cat, run_photoz.PhotozRunConfig())
    z = cat["z_true"].to_numpy()
    for likelihood, has_nu in [("student_t", True), ("normal", False)]:
        config = run_photoz.PhotozRunConfig(likelihood=likelihood, basis=8)
        model = run_photoz._build(config, inputs, z, None, np.random.default_rng(1))
        assert ("nu" in run_photoz.parameter_names(model)) is has_nu
    assert run_photoz.PhotozRunConfig().likelihood == "student_t"
    # the command line offers the same likelihoods, with the same default
    from models.cli import PHOTOZ_LIKELIHOODS

    assert set(PHOTOZ_LIKELIHOODS) == set(photoz.LIKELIHOODS)
    assert PHOTOZ_LIKELIHOODS[0] == run_photoz.PhotozRunConfig().likelihood
    # the constant-noise model of the LOO comparison gets the run's likelihood too

    class Built(Exception):
        pass

    def record(*args, **kwargs):
        raise Built(kwargs["likelihood"])

    monkeypatch.setattr(run_photoz, "build_model", record)
    simple = run_photoz.Variant(np.zeros((1, 1)), [(model, None)])
    with pytest.raises(Built, match=r"^normal$"):
        run_photoz._loo_noise_models(
            run_photoz.PhotozRunConfig(likelihood="normal"), inputs, z, {"simple": simple}, 1
        )
    with pytest.raises(ValueError, match="likelihood must be one of"):
        run_photoz.PhotozRunConfig(likelihood="cauchy")


def _failed_report(**diagnostics):
    """A run report with no metrics and the given (failed) diagnostics per variant."""
    return {
        "catalogue": {"galaxies": 10, "training": 5, "test": 5, "test_set": "random"},
        "mixtures": {"components": 2, "weights_ess": 4.0, "weights_capped": 0},
        "overall": {},
        "diagnostics": diagnostics | {"ok": False},
        "seconds": 1.0,
    }


def test_a_failed_convergence_check_names_the_parameter():
    """The run's printed report says which fit and which parameter failed (seed 8's case)."""
    # By construction, not by a lucky seed: coef[2]'s chains differ in scale (3x), which the
    # folded r-hat sees (about 1.2) while its draws stay independent (high ESS); nu is the same
    # AR(1) process (0.8) in both chains, so its r-hat is near 1 and its ESS about a tenth of
    # the draws. (Over 20 seeds: r-hat 1.17-1.21 on coef[2], ESS 141-294 on nu.)
    rng = np.random.default_rng(0)
    coef = rng.normal(size=(2, 1000, 3))
    coef[1, :, 2] *= 3.0
    nu = np.zeros((2, 1000))
    shocks = rng.normal(size=(2, 1000))
    for t in range(1, 1000):
        nu[:, t] = 0.8 * nu[:, t - 1] + np.sqrt(1 - 0.8**2) * shocks[:, t]
    idata = az.from_dict(
        {
            "posterior": {"coef": coef, "nu": nu},
            "sample_stats": {"diverging": np.zeros((2, 1000), dtype=bool)},
        }
    )
    diag = convergence(idata, ["coef", "nu"])
    assert not diag["ok"] and diag["max_r_hat"] > 1.1 and diag["min_ess_bulk"] < 400
    assert diag["worst_r_hat"] == "coef[2]" and diag["worst_ess_bulk"] == "nu"
    assert diag["failed"] == ["r_hat", "ess_bulk", "ess_tail"]
    # one chain: r-hat is NaN for every parameter, so there is no worst one (and no crash)
    single = convergence(idata.isel(chain=[0]), ["coef", "nu"])
    assert single["worst_r_hat"] is None and not single["ok"]
    assert "max r-hat nan, min bulk ESS" in format_convergence(single)
    good = {"ok": True, "max_r_hat": 1.001}
    report = _failed_report(
        simple={"fits": [diag], "ok": False},
        divide={
            "fits": [good | {"component": 0}, diag | {"divergences": 2, "component": 3}],
            "ok": False,
        },
    )
    from models.runs import photoz as run_photoz

    lines = run_photoz.format_report(report).splitlines()
    assert "convergence: CHECK (see report.json); 1 s in all" in lines
    failed = [line for line in lines if "r-hat" in line]
    assert len(failed) == 2
    assert failed[0].startswith("  simple fit: max r-hat") and "(coef[2])" in failed[0]
    assert "(nu)" in failed[0]
    assert failed[1].startswith("  divide fit (component 3): max r-hat")
    assert failed[1].endswith("divergences 2")


def test_run_diagnostics_name_each_divide_fits_component(toy):
    """A divide variant skips components with too few members, so fit k is not component k."""
    from models.runs import photoz as run_photoz

    X, z, basis, _ = toy
    model = photoz.build_model(X, z, basis=basis)
    advi = xr.DataTree.from_dict({"posterior": xr.Dataset()})  # no sample_stats: an ADVI fit
    variant = run_photoz.Variant(np.zeros((1, 1)), [(model, advi), (model, advi)], members=[0, 2])
    diag = run_photoz._diagnostics(variant)
    assert [f["component"] for f in diag["fits"]] == [0, 2]
    assert diag["ok"] and all(f["n_galaxy"] == z.size for f in diag["fits"])
    single = run_photoz.Variant(np.zeros((1, 1)), [(model, advi)])
    assert "component" not in run_photoz._diagnostics(single)["fits"][0]


def _chains(model, *, bad: str, seed=0, scale=3.0, draws=1000):
    """Two chains of ``draws`` independent draws, in which parameter ``bad`` differs in scale
    (``scale``; 3x gives a folded r-hat of about 1.2) between the chains and every other
    parameter mixes."""
    rng = np.random.default_rng(seed)
    dim = {"coef": "term", "noise_coef": "noise_term"}
    coords = {d: list(model.coords[d]) for d in dim.values()}
    posterior = {v: rng.normal(size=(2, draws, len(coords[d]))) for v, d in dim.items()}
    if "nu" in model.named_vars:
        posterior["nu"] = rng.lognormal(size=(2, draws))
    var, label = bad.rstrip("]").split("[")
    posterior[var][1, :, coords[dim[var]].index(label)] *= scale
    return az.from_dict(
        {
            "posterior": posterior,
            "sample_stats": {"diverging": np.zeros((2, draws), dtype=bool)},
        },
        coords=coords,
        dims={v: [d] for v, d in dim.items()},
    )


@pytest.mark.parametrize("likelihood", ["normal", "student_t"])
@pytest.mark.parametrize("weighted", [False, True])
def test_a_failed_basis_weight_is_reported_with_its_support(toy, likelihood, weighted):
    """When a basis weight fails the check, the report says how many galaxies inform it."""
    from models.runs import photoz as run_photoz

    X, z, basis, weights = toy
    model = photoz.build_model(
        X, z, basis=basis, likelihood=likelihood, weights=weights if weighted else None
    )
    idata = _chains(model, bad="coef[basis3]")
    diag = run_photoz._diagnostics(run_photoz.Variant(np.zeros((1, 1)), [(model, idata)]))
    fit = diag["fits"][0]
    assert not diag["ok"] and fit["worst_r_hat"] == "coef[basis3]" and fit["max_r_hat"] > 1.1
    # against the basis evaluated directly: sum_i phi_3(x_i), the same with the likelihood's
    # weights (rescaled to sum to their ESS), and the galaxy nearest the centre
    phi = basis.design(X, "X")[:, 3]
    w = np.ones(z.size) if not weighted else weights * weights.sum() / (weights**2).sum()
    support = fit["basis_support"]
    assert support["basis"] == 3
    np.testing.assert_allclose(support["galaxies"], phi.sum(), rtol=1e-12)
    np.testing.assert_allclose(support["effective"], w @ phi, rtol=1e-12)
    np.testing.assert_allclose(support["z_spec"], z[np.argmax(phi)], rtol=1e-12)
    assert support["student_t"] is (likelihood == "student_t")
    # the weight's prior sd, against draws from the model's prior, and its posterior median,
    # against the chains built above
    prior = pm.draw(model["coef"], draws=20_000, random_seed=3)[:, 1 + X.shape[1] + 3]
    np.testing.assert_allclose(support["prior_sd"], prior.std(), rtol=0.03)
    median = np.median(idata["posterior"]["coef"].values[..., 1 + X.shape[1] + 3])
    np.testing.assert_allclose(support["posterior_median"], median, rtol=1e-12)
    lines = run_photoz.format_report(_failed_report(simple=diag)).splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith("  simple fit:"))
    expected = f"    basis function 3 is informed by {phi.sum():.1f} training galaxies"
    if weighted:
        expected += f" ({w @ phi:.1f} effective)"
    assert lines[i + 1].startswith(expected + ", the nearest at z_spec")
    far = abs(median) / support["prior_sd"]
    assert lines[i + 2] == (
        f"    "
        f"its weight's posterior median {median:.2f} is {far:.1f} prior sd "
        f"({support['prior_sd']:.2f}) from zero"
    )
    assert phi.sum() > MIN_SUPPORT + 0.5 and w @ phi > 2
    assert "leave it as an outlier" not in "\n".join(lines)
    # a function informed by about one effective galaxy (weighted fit), or stretched to the
    # minimum support (seed 12's coef[basis99]: 5.0 galaxies), gets the explanation, under
    # Student-t noise only
    for few in ({"effective": 1.2}, {"galaxies": MIN_SUPPORT, "effective": MIN_SUPPORT}):
        lonely = fit | {"basis_support": support | few}
        text = run_photoz.format_report(_failed_report(simple={"fits": [lonely], "ok": False}))
        assert ("leave it as an outlier," in text) is (likelihood == "student_t")
        assert ("redraws the split and the k-means centres" in text) is (likelihood == "student_t")
        # the option is suggested for a function stretched to the minimum support, unless the
        # run used it; leverage does not count weights, so not for one heavily weighted galaxy
        stretched = "galaxies" in few
        assert ("--max-leverage 0.5 widens" in text) is (likelihood == "student_t" and stretched)
        used = _failed_report(simple={"fits": [lonely], "ok": False}) | {
            "config": {"max_leverage": 0.5}
        }
        assert "--max-leverage" not in run_photoz.format_report(used)
        # ... and suggested again when the run turned the default off
        off = used | {"config": {"max_leverage": 1.0}}
        assert ("--max-leverage 0.5 widens" in run_photoz.format_report(off)) is (
            likelihood == "student_t" and stretched
        )


def test_coef_prior_sd_is_the_models_prior(toy):
    """The relevances and scales it reports, against draws from the model's prior."""
    X, z, basis, weights = toy
    model = photoz.build_model(X, z, basis=basis, weights=weights)
    sd = photoz.coef_prior_sd(model)
    assert list(sd["term"].values) == list(model.coords["term"])
    draws = pm.draw(model["coef"], draws=20_000, random_seed=4)
    np.testing.assert_allclose(sd.values, draws.std(axis=0), rtol=0.03)
    # intercept and features: the weighted spread of ln(1 + z) (weights rescaled to their ESS)
    y, w = np.log1p(z), weights * weights.sum() / (weights**2).sum()
    s_y = np.sqrt(np.average((y - np.average(y, weights=w)) ** 2, weights=w))
    np.testing.assert_allclose(sd.values[: 1 + X.shape[1]], s_y, rtol=1e-12)
    assert (sd.values[1 + X.shape[1] :] <= s_y * (1 + 1e-12)).all()
    with pm.Model() as other:
        pm.Normal("a")
    with pm.Model(coords={"term": ["a", "b"]}) as not_normal:
        pm.StudentT("coef", nu=3, sigma=2.0, dims="term")
    for bad in (other, not_normal):
        with pytest.raises(ValueError, match="build_model"):
            photoz.coef_prior_sd(bad)


def test_no_basis_support_when_no_basis_weight_fails(toy):
    """A fit that fails on its noise gets no basis line, though some basis weight is 'worst'."""
    from models.runs import photoz as run_photoz

    X, z, basis, _ = toy
    model = photoz.build_model(X, z, basis=basis)
    idata = _chains(model, bad="noise_coef[x0]")
    fit = run_photoz._diagnostics(run_photoz.Variant(np.zeros((1, 1)), [(model, idata)]))
    fit = fit["fits"][0]
    assert not fit["ok"] and fit["worst_r_hat"] == "noise_coef[x0]"
    # the smallest bulk ESS belongs to a basis weight, but it passes the check
    assert fit["worst_ess_bulk"].startswith("coef[basis") and fit["min_ess_bulk"] >= 400
    assert "basis_support" not in fit
    assert run_photoz._basis_support(model, idata, "noise_coef[x0]") is None
    assert run_photoz._basis_support(model, idata, None) is None


def _fake_fits(monkeypatch, run_photoz, model, results):
    """Make the run's ``fit`` return ``results`` in turn, thinned as ``fit`` thins them
    (``thin_draws``), recording (method, draws, tune, rng, thin)."""
    calls = []

    def fake_fit(model, *, method, draws, tune, rng, thin=1, **kwargs):
        calls.append((method, draws, tune, rng, thin))
        return thin_draws(results[len(calls) - 1].copy(), thin)

    monkeypatch.setattr(run_photoz, "fit", fake_fit)
    monkeypatch.setattr(run_photoz, "_build", lambda *args: model)
    return calls


@pytest.mark.parametrize("refit", [True, False])
def test_a_fit_that_fails_on_mixing_is_fitted_again_with_more_draws(toy, monkeypatch, refit):
    """One more NUTS fit, with REFIT_FACTOR x the draws and tuning, when the first mixes badly."""
    from models.runs import photoz as run_photoz

    X, z, basis, _ = toy
    model = photoz.build_model(X, z, basis=basis)
    factor = run_photoz.REFIT_FACTOR
    failed = _chains(model, bad="coef[basis3]")
    # the refit's chains are factor x longer; every factor-th of their draws is kept
    passed = _chains(model, bad="coef[basis3]", scale=1.0, draws=1000 * factor)
    calls = _fake_fits(monkeypatch, run_photoz, model, [failed, passed])
    config = run_photoz.PhotozRunConfig(draws=300, tune=200, refit=refit, quiet=True)
    rng = np.random.default_rng(0)
    _, idata = run_photoz._train_one(config, None, z, None, rng)
    first = convergence(failed, photoz.parameter_names(model))
    assert set(first["failed"]) <= run_photoz.MIXING_CHECKS and "r_hat" in first["failed"]
    if not refit:
        assert [c[:3] for c in calls] == [("nuts", 300, 200)]
        assert "refitted_after" not in idata.attrs
        return
    # the refit asks for 300 kept draws out of factor x 300 (thin=factor) and factor x the
    # tuning; the fake's longer chains stand in for what the sampler returns
    assert [c[:3] + c[4:] for c in calls] == [("nuts", 300, 200, 1), ("nuts", 300, 800, factor)]
    # the refit draws from a child stream: the run's own generator is where it would be
    assert calls[0][3] is rng and calls[1][3] is not rng
    assert rng.random() == np.random.default_rng(0).random()
    assert idata.attrs["refitted_after"] == format_convergence(first)
    kept = passed["posterior"]["coef"].values[:, ::factor]
    assert kept.shape[1] == 1000
    np.testing.assert_array_equal(idata["posterior"]["coef"].values, kept)
    np.testing.assert_array_equal(idata["posterior"]["draw"].values, np.arange(1000))
    assert idata["sample_stats"].sizes["draw"] == 1000
    diag = run_photoz._diagnostics(run_photoz.Variant(np.zeros((1, 1)), [(model, idata)]))
    assert diag["ok"] and diag["fits"][0]["refitted_after"] == format_convergence(first)
    report = _failed_report() | {"diagnostics": {"simple": diag, "ok": True}}
    lines = run_photoz.format_report(report).splitlines()
    assert "convergence: ok; 1 s in all" in lines
    assert lines[-1] == (
        f"  simple fit: fitted again with {factor} x the draws after {format_convergence(first)}"
    )


def test_a_refit_that_still_fails_is_reported_and_keeps_its_divergences(toy, monkeypatch):
    """Seed 12's case (the refit fails too) gives two report lines; a divergence in a draw
    that thinning drops still fails the check."""
    from models.runs import photoz as run_photoz

    X, z, basis, _ = toy
    model = photoz.build_model(X, z, basis=basis)
    factor = run_photoz.REFIT_FACTOR
    failed = _chains(model, bad="coef[basis3]")
    still = _chains(model, bad="coef[basis3]", seed=1, draws=1000 * factor)
    still["sample_stats"]["diverging"][0, 1] = True  # not a kept draw (0, factor, ...)
    _fake_fits(monkeypatch, run_photoz, model, [failed, still])
    config = run_photoz.PhotozRunConfig(quiet=True)
    _, idata = run_photoz._train_one(config, None, z, None, np.random.default_rng(0))
    diag = run_photoz._diagnostics(run_photoz.Variant(np.zeros((1, 1)), [(model, idata)]))
    fit = diag["fits"][0]
    assert not diag["ok"] and fit["divergences"] == 1
    assert "r_hat" in fit["failed"] and "divergences" in fit["failed"]
    lines = run_photoz.format_report(_failed_report(simple=diag)).splitlines()
    i = lines.index(
        f"  simple fit: fitted again with {factor} x the draws after "
        f"{format_convergence(convergence(failed, photoz.parameter_names(model)))}"
    )
    assert lines[i + 1] == f"  simple fit: {format_convergence(fit)}"


def test_fit_thins_the_draws_before_the_log_likelihood(toy, monkeypatch):
    """``fit(thin=k)`` samples k x the draws and keeps every k-th, divergences folded in, and
    computes the pointwise log-likelihood of the kept draws only."""
    from models import inference

    X, z, basis, _ = toy
    model = photoz.build_model(X, z, basis=basis)
    sampled, loglik_draws = [], []
    long_chains = _chains(model, bad="coef[basis3]", scale=1.0, draws=1000)
    long_chains["sample_stats"]["diverging"][1, 5] = True  # stands for kept draw (1, 1)

    def fake_sample(model, draws, *args):
        sampled.append(draws)
        return long_chains.copy()

    compute = pm.compute_log_likelihood

    def recording(idata, **kwargs):
        loglik_draws.append(idata["posterior"].sizes["draw"])
        return compute(idata, **kwargs)

    monkeypatch.setattr(inference, "_sample", fake_sample)
    monkeypatch.setattr(pm, "compute_log_likelihood", recording)
    idata = photoz.fit(model, draws=250, tune=10, thin=4, rng=0)
    assert sampled == [1000] and loglik_draws == [250]
    kept = long_chains["posterior"]["coef"].values[:, ::4]
    np.testing.assert_array_equal(idata["posterior"]["coef"].values, kept)
    np.testing.assert_array_equal(idata["posterior"]["draw"].values, np.arange(250))
    diverging = idata["sample_stats"]["diverging"].values
    assert diverging.sum() == 1 and diverging[1, 1]
    # the log-likelihood of kept draw (1, 7) against scipy, from the long chain's draw (1, 28)
    loglik = idata["log_likelihood"]["log1pz"].values
    assert loglik.shape == (2, 250, z.size)
    terms = np.column_stack([np.ones(z.size), basis.scale(X), basis.design(X)])
    s = np.exp(terms[:, :3] @ long_chains["posterior"]["noise_coef"].values[1, 28])
    sigma = np.sqrt(photoz.NOISE_FLOOR**2 + (s / (1 + s)) ** 2)
    ref = stats.norm.logpdf(np.log1p(z), terms @ kept[1, 7], sigma)
    np.testing.assert_allclose(loglik[1, 7], ref, rtol=1e-9)
    with pytest.raises(ValueError, match="thin=2 applies to NUTS only"):
        photoz.fit(model, method="advi", thin=2)


def test_no_refit_where_longer_chains_cannot_help(toy, monkeypatch):
    """Divergences need another model, one chain has no r-hat, ADVI has no check."""
    from models.runs import photoz as run_photoz

    X, z, basis, _ = toy
    model = photoz.build_model(X, z, basis=basis)
    good = _chains(model, bad="coef[basis3]", scale=1.0)
    diverged = good.copy(deep=True)
    diverged["sample_stats"]["diverging"][1, 7] = True
    one_chain = good.isel(chain=[0])
    cases = [
        (diverged, run_photoz.PhotozRunConfig(quiet=True), ["divergences"]),
        (one_chain, run_photoz.PhotozRunConfig(chains=1, quiet=True), ["r_hat"]),
        (diverged, run_photoz.PhotozRunConfig(method="advi", quiet=True), None),
        (good, run_photoz.PhotozRunConfig(quiet=True), []),
    ]
    for idata, config, failed in cases:
        calls = _fake_fits(monkeypatch, run_photoz, model, [idata, good])
        _, out = run_photoz._train_one(config, None, z, None, np.random.default_rng(0))
        assert len(calls) == 1 and "refitted_after" not in out.attrs
        if failed is not None:
            assert convergence(idata, photoz.parameter_names(model))["failed"] == failed


def test_the_loo_comparison_records_a_refit_of_its_own_fit_only(toy, monkeypatch):
    """Without a simple variant the comparison fits one itself and says if it was refitted; a
    refitted simple variant is reported by its own diagnostics, not again here."""
    import pandas as pd

    from models.runs import photoz as run_photoz

    X, z, basis, _ = toy
    model = photoz.build_model(X, z, basis=basis)
    refitted = _chains(model, bad="coef[basis3]", scale=1.0)
    refitted.attrs["refitted_after"] = "max r-hat 1.02 (coef[basis3])"
    trained = []
    monkeypatch.setattr(
        run_photoz, "_train_one", lambda *args: trained.append(args) or (model, refitted)
    )
    monkeypatch.setattr(run_photoz, "build_model", lambda *args, **kwargs: model)
    monkeypatch.setattr(run_photoz, "fit", lambda *args, **kwargs: refitted)
    monkeypatch.setattr(
        run_photoz,
        "compare_models",
        lambda fits: pd.DataFrame({"elpd_loo": [0.0, -1.0]}, index=list(fits)),
    )
    monkeypatch.setattr(run_photoz, "loo_summary", lambda idata: {})
    train = run_photoz.Inputs(X, None, None)
    config = run_photoz.PhotozRunConfig(quiet=True)
    own = run_photoz._loo_noise_models(config, train, z, {}, 1)
    assert len(trained) == 1
    assert own["heteroscedastic_refitted_after"] == "max r-hat 1.02 (coef[basis3])"
    simple = {"simple": run_photoz.Variant(np.zeros((1, 1)), [(model, refitted)])}
    reused = run_photoz._loo_noise_models(config, train, z, simple, 1)
    assert len(trained) == 1 and "heteroscedastic_refitted_after" not in reused


def test_no_refit_reaches_the_run(monkeypatch):
    from models.cli import main
    from models.runs import photoz as run_photoz

    seen = []
    monkeypatch.setattr(
        run_photoz, "run", lambda config: seen.append(config) or {"diagnostics": {"ok": True}}
    )
    assert main(["run", "photoz", "--quiet"]) == 0
    assert main(["run", "photoz", "--no-refit", "--quiet"]) == 0
    assert [c.refit for c in seen] == [True, False]


def _spread_posterior(model, coef, noise_coef, *, spread, n_draws, seed):
    """Draws of ``coef`` scattered about ``coef``, the noise fixed, with the fit's other groups.

    Not a posterior, but leave-one-out reweighting holds for any draws: wide enough that
    leaving a galaxy out moves its PIT, not so wide that PSIS fails for most galaxies.
    """
    draws = coef + np.random.default_rng(seed).normal(0, spread, (n_draws, coef.size))
    post = _posterior(model, coef, noise_coef, n_draws=n_draws)["posterior"].to_dataset()
    post["coef"] = (("chain", "draw", "term"), draws[None])
    idata = xr.DataTree.from_dict({"posterior": post})
    pm.compute_log_likelihood(idata, model=model, progressbar=False)
    y = model["log1pz_observed"].get_value()
    idata["observed_data"] = xr.DataTree(
        xr.Dataset({"log1pz": ("galaxy", y)}, coords={"galaxy": np.asarray(model.coords["galaxy"])})
    )
    return idata, draws


@pytest.mark.parametrize("weighted", [False, True])
def test_loo_pit_against_importance_sampling_by_hand(toy, weighted):
    """PIT_i = sum_s r_is Phi((y_i - mu_is) / sigma) / sum_s r_is, r_is = exp(-log L_is).

    Plain importance sampling with the CDF in closed form, against the ECDF of PSIS-weighted
    predictive draws, over the galaxies whose k-hat is below the reliable limit. The weighted
    log-likelihood is what a weighted fit leaves out. Ignoring the log-likelihood (the
    in-sample PIT) would be off by 0.024-0.034 on average here, against 0.004 for loo_pit.
    """
    X, z, basis, weights = toy
    model = photoz.build_model(X, z, basis=basis, weights=weights if weighted else None)
    Xs = (X - basis.feature_center) / basis.feature_scale
    terms = np.column_stack([np.ones(z.size), Xs, basis.design(X)])
    y = np.log1p(z)
    centre = np.linalg.lstsq(terms, y, rcond=None)[0]
    noise_coef = np.array([np.log(0.05), 0.0, 0.0])
    idata, coef = _spread_posterior(model, centre, noise_coef, spread=0.012, n_draws=4000, seed=4)
    got = photoz.loo_pit(model, idata, rng=8)
    assert got.dims == ("galaxy",) and got.size == z.size

    sigma = np.sqrt(photoz.NOISE_FLOOR**2 + (0.05 / 1.05) ** 2)
    cdf = stats.norm.cdf(y, coef @ terms.T, sigma)  # (S, n)
    log_lik = idata["log_likelihood"]["log1pz"].values.reshape(len(coef), -1)
    want = importance_sampling_pit(log_lik, cdf)
    reliable = got["pareto_k"].values < got.attrs["good_k"]
    assert 0.8 < reliable.mean() < 1.0  # some galaxies are flagged, most are not
    assert np.abs(got.values - want)[reliable].mean() < 0.01
    assert np.abs(cdf.mean(axis=0) - want)[reliable].mean() > 0.02  # the test can tell


def test_loo_pit_needs_the_fits_galaxies_and_log_likelihood(toy):
    X, z, basis, _ = toy
    model = photoz.build_model(X, z, basis=basis)
    idata, _ = _spread_posterior(
        model, np.zeros(11), np.array([-2.0, 0, 0]), spread=0.01, n_draws=10, seed=1
    )
    with pytest.raises(ValueError, match="no log_likelihood"):
        photoz.loo_pit(model, xr.DataTree.from_dict({"posterior": idata["posterior"].to_dataset()}))
    with model:
        pm.set_data({"log1pz_observed": np.zeros(z.size)})
    with pytest.raises(ValueError, match="not the galaxies idata was fitted to"):
        photoz.loo_pit(model, idata)


@pytest.mark.slow
def test_loo_pit_coverage_of_a_well_specified_fit():
    """Data the model describes exactly: 68 % / 95 % of the LOO-PITs inside their intervals.

    400 galaxies: binomial sd 0.023 / 0.011, so these bounds are three sd.
    """
    rng = np.random.default_rng(3)
    X = rng.normal(size=(400, 2))
    z = np.expm1(1.0 + 0.2 * X[:, 0] - 0.1 * X[:, 1] + rng.normal(0, 0.05, 400))
    model = photoz.build_model(X, z, basis=rbf_basis(X, z, 10, rng=4))
    idata = photoz.fit(model, draws=1000, chains=2, rng=5)
    pit = photoz.loo_pit(model, idata, rng=6)
    assert (pit["pareto_k"] < pit.attrs["good_k"]).all()
    assert pit_coverage(pit.values, level=0.68) == pytest.approx(0.68, abs=0.07)
    assert pit_coverage(pit.values, level=0.95) == pytest.approx(0.95, abs=0.035)


def test_training_loo_mixes_a_divide_variants_components(toy):
    """Two component fits on overlapping halves of the toy: each training galaxy's PIT is
    sum_k r_k F_k, F_k by importance sampling where it trained component k and the plain
    predictive CDF where it did not, computed here in closed form (normal noise, no feature
    errors; linear terms held at the component's training range, as predict does). Here
    68 % / 95 % coverage is 0.625 / 0.883; mixing the components equally would give 0.692 /
    0.925.
    """
    from models.runs import photoz as run_photoz

    X, z, _, weights = toy
    n = z.size
    y = np.log1p(z)
    rng = np.random.default_rng(12)
    resp = rng.dirichlet([1.0, 1.0], size=n)
    resp[:10] = [0.0, 0.0]  # in neither fitted component: both models equally
    member = np.column_stack([X[:, 0] < 0.3, X[:, 0] > -0.3])
    noise_coef = np.array([np.log(0.05), 0.0, 0.0])
    fits, cdf, reliable = [], np.empty((n, 2)), np.ones(n, dtype=bool)
    for k in range(2):
        rows = np.flatnonzero(member[:, k])
        b = rbf_basis(X[rows], z[rows], 6, rng=k)
        model = photoz.build_model(X[rows], z[rows], basis=b)
        lin = (X - b.feature_center) / b.feature_scale
        held = np.clip(lin, lin[rows].min(axis=0), lin[rows].max(axis=0))
        terms = np.column_stack([np.ones(n), held, b.design(X)])
        centre = np.linalg.lstsq(terms[rows], y[rows], rcond=None)[0]
        idata, coef = _spread_posterior(
            model, centre, noise_coef, spread=0.008, n_draws=4000, seed=20 + k
        )
        fits.append((model, idata))
        sigma = np.sqrt(photoz.NOISE_FLOOR**2 + (0.05 / 1.05) ** 2)
        F = stats.norm.cdf(y, coef @ terms.T, sigma)  # (S, n)
        log_lik = idata["log_likelihood"]["log1pz"].values.reshape(len(coef), -1)
        cdf[:, k] = F.mean(axis=0)
        cdf[rows, k] = importance_sampling_pit(log_lik, F[:, rows])
        reliable[rows] &= photoz.loo_pit(model, idata, rng=0)["pareto_k"].values < 0.7
    variant = run_photoz.Variant(np.zeros((1, 1)), fits, members=[0, 2])
    division = type("Division", (), {})()
    division.member = np.column_stack([member[:, 0], np.zeros(n, dtype=bool), member[:, 1]])
    division.responsibility = np.column_stack([resp[:, 0], np.full(n, 0.5), resp[:, 1]])
    loo = run_photoz.training_loo(
        {"divide": variant},
        run_photoz.Inputs(X, None, None),
        z,
        weights,
        division,
        np.random.default_rng(1),
    )["divide"]
    got = loo.summary

    r = resp.copy()
    r[:10] = 1.0
    want = (r / r.sum(axis=1, keepdims=True) * cdf).sum(axis=1)
    # the PITs themselves (PSIS against plain importance sampling, predictive draws against the
    # closed-form CDF): here 0.003 on average, 0.014 at most
    assert np.abs(loo.pit - want)[reliable].mean() < 0.01
    np.testing.assert_array_equal(loo.weight, weights)
    for level in (0.68, 0.95):
        inside = np.abs(want - 0.5) <= level / 2
        suffix = round(100 * level)
        # PITs near an interval's edge can fall either side: two of 120 galaxies
        assert got[f"coverage_{suffix}"] == pytest.approx(inside.mean(), abs=0.02)
        assert got[f"coverage_{suffix}_population"] == pytest.approx(
            np.average(inside, weights=weights), abs=0.02
        )
    assert reliable.mean() > 0.9
