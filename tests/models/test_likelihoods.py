import numpy as np
import pytensor.tensor as pt
import pytest
import scipy.stats
from iminuit.cost import template_nll_asy
from references import say_neg_llh

from models._likelihoods import (
    binned_sum,
    effective_logp,
    effective_random,
    poisson_logp,
    poisson_random,
)


def _eval(graph):
    return np.asarray(graph.eval())


def test_poisson_logp_matches_scipy_and_the_empty_bin_convention():
    k = np.array([0, 1, 5, 30, 0, 2])
    mu = np.array([0.3, 2.0, 4.5, 25.0, 0.0, 0.0])
    got = _eval(poisson_logp(k, pt.as_tensor(mu)))
    np.testing.assert_allclose(got[:4], scipy.stats.poisson.logpmf(k[:4], mu[:4]), rtol=1e-12)
    assert got[4] == 0.0  # k = 0, mu = 0: the exercise's convention
    assert got[5] == -np.inf


def test_poisson_logp_gradient_is_finite_in_empty_bins():
    mu = pt.dvector("mu")
    logp = poisson_logp(np.array([0, 3]), mu).sum()
    grad = pt.grad(logp, mu).eval({mu: np.array([0.0, 2.0])})
    np.testing.assert_allclose(grad, [-1.0, 3 / 2 - 1])


def test_effective_logp_matches_eq_315_iminuit_and_the_negative_binomial(rng):
    k = rng.integers(0, 40, 200)
    mu = rng.uniform(0.01, 40, 200)
    sigma2 = mu * rng.uniform(1e-3, 3, 200)
    got = _eval(effective_logp(k, pt.as_tensor(mu), pt.as_tensor(sigma2)))
    np.testing.assert_allclose(-got.sum(), template_nll_asy(k, mu, sigma2), rtol=1e-10)
    np.testing.assert_allclose(-got.sum(), say_neg_llh(k, mu, sigma2), rtol=1e-10)
    alpha, beta = mu**2 / sigma2 + 1, mu / sigma2
    np.testing.assert_allclose(
        got, scipy.stats.nbinom.logpmf(k, alpha, beta / (1 + beta)), rtol=1e-9
    )


def test_effective_logp_tends_to_poisson_as_the_simulation_grows():
    k = np.array([0, 1, 4, 20])
    mu = np.array([0.5, 1.5, 3.0, 22.0])
    poisson = scipy.stats.poisson.logpmf(k, mu)
    errors = []
    for rel_var in (1e-2, 1e-4, 1e-6):
        got = _eval(effective_logp(k, pt.as_tensor(mu), pt.as_tensor(mu * rel_var)))
        errors.append(np.abs(got - poisson).max())
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-4


def test_effective_logp_bins_without_simulation_fall_back_to_poisson():
    got = _eval(
        effective_logp(np.array([0, 2]), pt.as_tensor([0.0, 0.0]), pt.as_tensor([0.0, 0.0]))
    )
    assert got[0] == 0.0 and got[1] == -np.inf


def test_random_draws_have_the_right_moments():
    mu, sigma2 = np.array([3.0, 10.0, 0.5]), np.array([1.5, 20.0, 0.0])
    draws = effective_random(mu, sigma2, rng=np.random.default_rng(0), size=(200_000, 3))
    alpha, beta = mu**2 / np.where(sigma2 > 0, sigma2, 1) + 1, mu / np.where(sigma2 > 0, sigma2, 1)
    nb = scipy.stats.nbinom(alpha[:2], beta[:2] / (1 + beta[:2]))
    np.testing.assert_allclose(draws[:, :2].mean(0), nb.mean(), rtol=0.01)
    np.testing.assert_allclose(draws[:, :2].var(0), nb.var(), rtol=0.03)
    assert draws[:, 2].mean() == pytest.approx(0.5, rel=0.02)  # Poisson where sigma2 = 0
    p = poisson_random(np.array([2.0, 7.0]), rng=np.random.default_rng(1), size=(100_000, 2))
    np.testing.assert_allclose(p.mean(0), [2.0, 7.0], rtol=0.01)


def test_binned_sum_and_its_gradient(rng):
    idx = rng.integers(0, 7, 1000)
    v = pt.dvector("v")
    values = rng.uniform(size=1000)
    out = binned_sum(v, idx, 7)
    np.testing.assert_allclose(out.eval({v: values}), np.bincount(idx, values, minlength=7))
    w = rng.uniform(size=7)
    grad = pt.grad((out * w).sum(), v).eval({v: values})
    np.testing.assert_allclose(grad, w[idx])


def test_gradient_through_the_moment_outputs_is_refused(rng):
    from models._likelihoods import normal_logsumexp

    slope = pt.dscalar("slope")
    _, m1, _ = normal_logsumexp(
        slope, rng.normal(size=3), 2.0, rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    )
    with pytest.raises(NotImplementedError, match="not its moments"):
        pt.grad(m1.sum(), slope)
