import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt
import pytest
import scipy.stats
from pymc.model.transform.conditioning import remove_value_transforms
from scipy.special import logsumexp

from data_tools.halos import (
    HYPER_SEED,
    SIGMA_OBS,
    default_mass_prior,
    importance_samples,
    ln_mean_luminosity,
    quadrature_nodes,
    simulate_lightcone,
)
from models._likelihoods import marginal_normal_logp
from models.mass_luminosity import build_latent_model, build_model, sampler_point

THETA = {"alpha1": 10.72, "alpha2": 0.355, "alpha4": 1.2, "S": 0.16}


@pytest.fixture(scope="module")
def cat():
    c = simulate_lightcone(300, rng=3)
    return c.z.values, c.lum_obs.values


def _sampler_point(theta):
    """The sampler's parameters for natural ones: the intercept is moved to 1e11 M_sun."""
    point = {k: v for k, v in theta.items() if k != "alpha1"}
    point["alpha1_at_pivot"] = theta["alpha1"] - theta["alpha2"] * np.log(2.35e14 / 1e11)
    return point


def _pointwise(model, theta):
    """Per-halo log-likelihood at natural parameter values."""
    plain = remove_value_transforms(model)
    obs = plain.observed_RVs[0]
    logp = plain.logp(vars=[obs], sum=False)[0]
    fn = plain.compile_fn(logp, inputs=plain.value_vars, on_unused_input="ignore")
    return np.asarray(fn(_sampler_point(theta)))


def _reference(z, lum, x, lw, theta):
    s = np.hypot(theta["S"], SIGMA_OBS)
    mean = ln_mean_luminosity(
        np.asarray(x, float), z[:, None], theta["alpha1"], theta["alpha2"], theta["alpha4"]
    )
    terms = np.asarray(lw, float) + scipy.stats.norm.logpdf(np.log(lum)[:, None], mean, s)
    return logsumexp(terms, axis=1) - np.log(lum)


# ---------------------------------------------------------------------------- likelihood op
def test_marginal_normal_logp_value_and_gradient(rng):
    n, k = 40, 12
    x, lw = rng.normal(size=(n, k)), rng.normal(size=(n, k))
    lw[3, :5] = -np.inf  # nodes outside the support
    v, a = rng.normal(size=n), rng.normal(size=n)
    slope, sigma = pt.dscalar("slope"), pt.dscalar("sigma")
    total = marginal_normal_logp(pt.as_tensor(v), pt.as_tensor(a), slope, sigma, x, lw).sum()
    fn = pytensor.function([slope, sigma], [total, *pt.grad(total, [slope, sigma])])

    def ref(b, s):
        return logsumexp(lw + scipy.stats.norm.logpdf(v[:, None], a[:, None] + b * x, s), 1).sum()

    val, g_slope, g_sigma = fn(0.7, 0.4)
    assert val == pytest.approx(ref(0.7, 0.4), rel=1e-6)  # exp in single precision: ~1e-7
    eps = 1e-6
    assert g_slope == pytest.approx(
        (ref(0.7 + eps, 0.4) - ref(0.7 - eps, 0.4)) / (2 * eps), rel=1e-5
    )
    assert g_sigma == pytest.approx(
        (ref(0.7, 0.4 + eps) - ref(0.7, 0.4 - eps)) / (2 * eps), rel=1e-5
    )


def test_shared_nodes_broadcast(rng):
    x, lw = rng.normal(size=(1, 9)), rng.normal(size=(5, 9))
    v = rng.normal(size=5)
    got = marginal_normal_logp(pt.as_tensor(v), 0.0, 1.3, 0.5, x, lw).eval()
    ref = logsumexp(lw + scipy.stats.norm.logpdf(v[:, None], 1.3 * x, 0.5), axis=1)
    np.testing.assert_allclose(got, ref, rtol=1e-6)


# ---------------------------------------------------------------------------- model
@pytest.mark.parametrize("method", ["importance", "quadrature"])
def test_pointwise_log_likelihood_equals_numpy_reference(cat, method):
    z, lum = cat
    if method == "importance":
        x, lw = importance_samples(z, lum, n_samples=24, rng=1)
    else:
        x, lw = quadrature_nodes(z, n_nodes=101)
    model = build_model(z, lum, x, lw)
    assert model.named_vars_to_dims["lum_obs"] == ("halo",)
    assert [v.name for v in model.free_RVs] == ["alpha2", "alpha4", "S", "alpha1_at_pivot"]
    assert "alpha1" in model.named_vars and model["alpha1"] in model.deterministics
    for theta in (THETA, HYPER_SEED, {"alpha1": 10.5, "alpha2": 0.3, "alpha4": 0.9, "S": 0.3}):
        np.testing.assert_allclose(
            _pointwise(model, theta), _reference(z, lum, x, lw, theta), rtol=1e-6, atol=1e-6
        )


def test_quadrature_model_matches_scipy_integration(cat):
    """Independent check: the model's marginal for a few halos by adaptive scipy quadrature."""
    import scipy.integrate

    z, lum = cat[0][:4], cat[1][:4]
    prior = default_mass_prior()
    model = build_model(z, lum, *quadrature_nodes(z))
    got = _pointwise(model, THETA)
    s = np.hypot(THETA["S"], SIGMA_OBS)
    for h in range(4):

        def f(x, h=h):
            mean = ln_mean_luminosity(x, z[h], THETA["alpha1"], THETA["alpha2"], THETA["alpha4"])
            return np.exp(prior.logpdf([x], [z[h]])[0, 0]) * scipy.stats.lognorm.pdf(
                lum[h], s, scale=np.exp(mean)
            )

        val, _ = scipy.integrate.quad(f, *prior.ln_m_range, limit=400, epsrel=1e-8)
        assert got[h] == pytest.approx(np.log(val), abs=3e-4)


def test_priors(cat):
    z, lum = cat
    x, lw = quadrature_nodes(z, n_nodes=51)
    original = build_model(z, lum, x, lw, priors="original")
    lp = original.compile_logp(vars=[original["alpha2"]])
    point = original.initial_point()
    point["alpha2"] = 0.36
    assert float(lp(point)) == pytest.approx(scipy.stats.norm.logpdf(0.36, 0.359, 0.009))
    custom = build_model(z, lum, x, lw, priors={"S": pm.HalfNormal.dist(0.2)})
    assert custom["S"].owner.op.name == "halfnormal"
    with pytest.raises(ValueError, match="priors must be one of"):
        build_model(z, lum, x, lw, priors="flat")
    with pytest.raises(TypeError, match="priors must be a prior-set name"):
        build_model(z, lum, x, lw, priors=["weak"])
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['alpha3'\]"):
        build_model(z, lum, x, lw, priors={"alpha3": pm.Normal.dist(0, 1)})
    with pytest.raises(ValueError, match=r"priors\['alpha1'\] must be pm.Normal.dist"):
        build_model(z, lum, x, lw, priors={"alpha1": pm.StudentT.dist(nu=3, mu=10.7, sigma=1.0)})


def test_sampler_point_and_intervention(cat):
    assert sampler_point(THETA) == pytest.approx(_sampler_point(THETA))
    with pytest.raises(ValueError, match=r"theta is missing \['S'\]"):
        sampler_point({k: v for k, v in THETA.items() if k != "S"})
    z, lum = cat
    x, lw = quadrature_nodes(z, n_nodes=51)
    fixed = pm.do(build_model(z, lum, x, lw), sampler_point(THETA))
    assert pm.draw(fixed["alpha1"]) == pytest.approx(THETA["alpha1"])
    assert float(fixed.compile_logp()({})) == pytest.approx(
        _reference(z, lum, x, lw, THETA).sum(), rel=1e-8
    )


@pytest.mark.parametrize("build", ["marginal", "latent"])
def test_intercept_reparameterisation_keeps_the_prior(cat, build):
    """alpha1 = alpha1_at_pivot + alpha2 D must be exactly the requested N(m1, s1), and
    independent of alpha2, whichever prior set or override is in force."""
    z, lum = cat[0][:20], cat[1][:20]
    x, lw = quadrature_nodes(z, n_nodes=21)
    for priors, (m1, s1) in [
        ("weak", (10.7, 1.0)),
        ("original", (10.709, 0.022)),
        ({"alpha1": pm.Normal.dist(11.5, 0.3)}, (11.5, 0.3)),
    ]:
        if build == "marginal":
            model = build_model(z, lum, x, lw, priors=priors)
        else:
            model = build_latent_model(z, lum, mass_prior=default_mass_prior(), priors=priors)
        a1, a2 = pm.draw([model["alpha1"], model["alpha2"]], draws=20_000, random_seed=5)
        assert np.mean(a1) == pytest.approx(m1, abs=4 * s1 / np.sqrt(20_000))
        assert np.std(a1) == pytest.approx(s1, rel=0.03)
        assert abs(np.corrcoef(a1, a2)[0, 1]) < 0.03
        assert scipy.stats.kstest(a1, scipy.stats.norm(m1, s1).cdf).pvalue > 1e-3


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (
            lambda z, lum, x, w: (z, lum, x, w[:-1]),
            ValueError,
            r"log_weights must have shape \(n_halo, n_node\) = \(300, K\)",
        ),
        (lambda z, lum, x, w: (z, lum, x[:, :-1], w), ValueError, "ln_mass must have shape"),
        (
            lambda z, lum, x, w: (z, lum, x, np.where(np.arange(300)[:, None] == 7, np.nan, w)),
            ValueError,
            "log_weights of halo 7 contain NaN",
        ),
        (
            lambda z, lum, x, w: (z, lum, x, np.where(np.arange(300)[:, None] == 9, -np.inf, w)),
            ValueError,
            "every log-weight of halo 9 is -inf",
        ),
        (
            lambda z, lum, x, w: (z, np.where(np.arange(300) == 2, -1.0, lum), x, w),
            ValueError,
            "lum_obs of halo 2 is -1.0",
        ),
        (
            lambda z, lum, x, w: (z, np.where(np.arange(300) == 4, np.nan, lum), x, w),
            ValueError,
            "lum_obs of halo 4 is nan",
        ),
        (
            lambda z, lum, x, w: (np.where(np.arange(300) == 5, 3.6, z), lum, x, w),
            ValueError,
            "z of halo 5 is 3.6, outside",
        ),
        (lambda z, lum, x, w: (z[:-1], lum, x, w), ValueError, "lengths differ"),
        (lambda z, lum, x, w: (z, lum, x, w.astype(int)), TypeError, "log_weights must be a float"),
    ],
)
def test_bad_input_names_the_problem(cat, change, error, match):
    z, lum = cat
    x, lw = quadrature_nodes(z, n_nodes=21)
    x = np.repeat(x, z.size, axis=0)
    with pytest.raises(error, match=match):
        build_model(*change(z, lum, x, lw))
    with pytest.raises(ValueError, match="sigma_obs must be finite"):
        build_model(z, lum, x, lw, sigma_obs=-0.1)


# ---------------------------------------------------------------------------- latent model
def test_latent_model_maps_eps_through_the_mass_prior(cat):
    z, lum = cat[0][:50], cat[1][:50]
    prior = default_mass_prior()
    model = build_latent_model(z, lum, mass_prior=prior)
    assert model.named_vars_to_dims["ln_mass"] == ("halo",)
    eps = np.linspace(-2.5, 2.5, 50)
    point = _sampler_point(THETA)
    point["eps"] = eps
    intervened = pm.do(model, point)
    ln_mass = pm.draw(intervened["ln_mass"])
    assert pm.draw(intervened["alpha1"]) == pytest.approx(THETA["alpha1"])
    # Phi(eps) is the CDF level of ln_mass under p(ln M | z) for each halo
    for h in (0, 17, 49):
        grid = np.linspace(*prior.ln_m_range, 20001)
        dens = np.exp(prior.logpdf(grid, [z[h]])[0])
        cdf = np.concatenate([[0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(grid))])
        level = np.interp(ln_mass[h], grid, cdf / cdf[-1])
        assert level == pytest.approx(scipy.stats.norm.cdf(eps[h]), abs=2e-3)
    # and the likelihood is the log-normal at that mass
    plain = remove_value_transforms(model)
    lp = plain.compile_logp(vars=plain.observed_RVs, jacobian=False)
    mean = ln_mean_luminosity(ln_mass, z, THETA["alpha1"], THETA["alpha2"], THETA["alpha4"])
    ref = scipy.stats.lognorm.logpdf(lum, np.hypot(THETA["S"], SIGMA_OBS), scale=np.exp(mean))
    assert float(lp(point)) == pytest.approx(ref.sum(), rel=1e-9)
