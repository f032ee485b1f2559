"""The DM mixture model against an independent numpy likelihood at fixed parameters."""

import warnings

import numpy as np
import pymc as pm
import pytest
import scipy.stats
from pymc.model.transform.conditioning import remove_value_transforms
from scipy.special import logsumexp

from data_tools.gamma.events import Observation, bin_counts, marginal_tables, simulate_events
from models.gamma_dm import build_model

POINT = {"signal_fraction": 0.4, "background_split": np.array([0.6, 0.3, 0.1]), "log10_mass": 0.13}


@pytest.fixture(scope="module")
def seed_config():
    obs = Observation()
    events = simulate_events(obs, rng=0)
    binned = bin_counts(events, obs.reco)
    return obs, binned, marginal_tables(obs, binned)


def _numpy_pointwise(tables, point, signal=True):
    counts = tables["counts"].values
    bkg = tables["log_m_background"].values
    split = point["background_split"]
    if not signal:
        return counts * logsumexp(np.log(split) + bkg, axis=1)
    grid = tables["log10_mass"].values
    ld = np.array(
        [np.interp(point["log10_mass"], grid, col) for col in tables["log_m_dm"].values.T]
    )
    f = point["signal_fraction"]
    terms = np.column_stack([np.log(f) + ld, np.log1p(-f) + np.log(split) + bkg])
    return counts * logsumexp(terms, axis=1)


def _pointwise(model, point):
    plain = remove_value_transforms(model)
    logp = plain.logp(vars=[plain["counts"]], sum=False)[0]
    fn = plain.compile_fn(logp, inputs=plain.value_vars, on_unused_input="ignore")
    return np.asarray(fn({k: v for k, v in point.items() if k in plain.named_vars}))


def test_pointwise_log_likelihood_equals_numpy(seed_config):
    _, _, tables = seed_config
    model = build_model(tables)
    assert model.named_vars_to_dims["counts"] == ("bin",)
    assert model.named_vars_to_dims["fraction"] == ("component",)
    assert model.named_vars_to_dims["background_split"] == ("background",)
    for point in (POINT, {**POINT, "log10_mass": -0.62, "signal_fraction": 0.05}):
        np.testing.assert_allclose(
            _pointwise(model, point), _numpy_pointwise(tables, point), rtol=1e-10
        )
    fixed = pm.do(model, POINT)
    np.testing.assert_allclose(
        pm.draw(fixed["fraction"]), [0.4, 0.6 * 0.6, 0.6 * 0.3, 0.6 * 0.1], rtol=1e-12
    )
    assert pm.draw(fixed["mass"]) == pytest.approx(10**0.13)
    # predictive counts: Poisson(N m_i) in each measured bin
    n = int(tables["counts"].sum())
    expected = n * np.exp(_numpy_pointwise(tables, POINT) / tables["counts"].values)
    with warnings.catch_warnings():  # numpy random in a numba graph runs in object mode
        warnings.filterwarnings("ignore", message="Numba will use object mode")
        draws = pm.draw(fixed["counts"], draws=400, random_seed=3)
    assert draws.shape == (400, tables.sizes["bin"])
    np.testing.assert_allclose(draws.mean(0).sum(), expected.sum(), rtol=0.01)
    z = (draws.mean(0) - expected) / np.sqrt(expected / 400)
    assert np.abs(z).max() < 5
    assert np.isfinite(model.point_logps()["counts"])


def test_background_only_model(seed_config):
    _, _, tables = seed_config
    model = build_model(tables, signal=False)
    assert {v.name for v in model.free_RVs} == {"background_split"}
    assert list(model.coords["component"]) == ["cosmic_rays", "local_sources", "diffuse"]
    np.testing.assert_allclose(
        _pointwise(model, POINT), _numpy_pointwise(tables, POINT, signal=False), rtol=1e-10
    )


def test_mass_interpolation_is_accurate_between_nodes(seed_config):
    """Off the grid, the interpolated log-likelihood equals a direct computation at that mass."""
    obs, binned, tables = seed_config
    model = build_model(tables)
    e, li, bi = (binned[k].values for k in ("energy_idx", "lon_idx", "lat_idx"))
    for log10_mass in (-0.4567, 0.0123, 0.987):
        cube = obs.reco_counts("dm", mass=10**log10_mass)
        with np.errstate(divide="ignore"):  # bins a light particle cannot reach
            direct = np.maximum(np.log(cube[e, li, bi] / cube.sum()), -700.0)
        point = {**POINT, "log10_mass": log10_mass}
        f = point["signal_fraction"]
        terms = np.column_stack(
            [
                np.log(f) + direct,
                np.log1p(-f)
                + np.log(point["background_split"])
                + tables["log_m_background"].values,
            ]
        )
        ref = (tables["counts"].values * logsumexp(terms, axis=1)).sum()
        assert _pointwise(model, point).sum() == pytest.approx(ref, abs=0.05)


def test_extended_model_rates_and_cross_section(seed_config):
    _, _, tables = seed_config
    n_total = int(tables["counts"].sum())
    model = build_model(tables, extended=True)
    point = {**POINT, "expected_events": 480.0}
    fixed = pm.do(model, point)
    assert pm.draw(fixed["signal_events"]) == pytest.approx(0.4 * 480)
    grid = tables["log10_mass"].values
    n_dm = np.exp(np.interp(0.13, grid, np.log(tables["expected_dm"].values)))
    assert pm.draw(fixed["sigma_v"]) == pytest.approx(3e-26 * 0.4 * 480 / n_dm, rel=1e-10)
    plain = remove_value_transforms(model)
    lp = plain.compile_logp(vars=[plain["n_events"]])
    assert float(lp(point)) == pytest.approx(scipy.stats.poisson.logpmf(n_total, 480.0))
    with pytest.raises(ValueError, match="n_events"):
        build_model(tables, extended=True, n_events=3)


@pytest.mark.parametrize(
    ("change", "kwargs", "error", "match"),
    [
        (lambda t: t["counts"].values, {}, TypeError, "tables must be the xarray.Dataset"),
        (lambda t: t.drop_vars("log_m_dm"), {}, ValueError, r"missing \['log_m_dm'\]"),
        (
            lambda t: t.assign(log_m_dm=t["log_m_dm"].where(t["bin"] != 3)),
            {},
            ValueError,
            "log-probabilities",
        ),
        (lambda t: t.assign(counts=t["counts"] - 5), {}, ValueError, "negative"),
        (
            lambda t: t.assign(expected_dm=t["expected_dm"] * 0),
            {},
            ValueError,
            r"tables\['expected_dm'\] must be > 0",
        ),
        (lambda t: t, {"signal_concentration": (1, 1, 1)}, ValueError, "needs 2 values"),
        (lambda t: t, {"background_concentration": (1, -1, 1)}, ValueError, "must be > 0"),
    ],
)
def test_bad_input_names_the_problem(seed_config, change, kwargs, error, match):
    with pytest.raises(error, match=match):
        build_model(change(seed_config[2]), **kwargs)


def test_several_observations_share_the_physics(seed_config):
    """A second pointing with twice the live time: its fractions follow the exposure ratios."""
    _, _, tables0 = seed_config
    obs1 = Observation(livetime_h=10.0, pointing=(1.0, 0.5))
    tables1 = marginal_tables(obs1, bin_counts(simulate_events(obs1, rng=1), obs1.reco))
    model = build_model([tables0, tables1], extended=True)
    n0, n1 = tables0.sizes["bin"], tables1.sizes["bin"]
    assert model.named_vars_to_dims["counts"] == ("bin",) and len(model.coords["bin"]) == n0 + n1
    assert model.named_vars_to_dims["n_events"] == ("observation",)
    # numpy reference: shares f_k r_ok / sum_j f_j r_oj with r from the expected counts
    grid = tables0["log10_mass"].values
    f = np.array([0.4, *(0.6 * POINT["background_split"])])
    r = [
        np.concatenate(
            [
                [np.exp(np.interp(0.13, grid, np.log(t["expected_dm"].values)))],
                t["expected_background"].values,
            ]
        )
        for t in (tables0, tables1)
    ]
    f1 = f * r[1] / r[0]
    f1 /= f1.sum()
    fixed = pm.do(model, {**POINT, "expected_events": 500.0})
    shares = pm.draw(fixed["fraction_by_observation"])
    np.testing.assert_allclose(shares, np.stack([f, f1]), rtol=1e-10)
    ref = np.concatenate(
        [
            _numpy_pointwise(tables0, POINT),
            _numpy_pointwise(
                tables1,
                {
                    "signal_fraction": f1[0],
                    "background_split": f1[1:] / f1[1:].sum(),
                    "log10_mass": 0.13,
                },
            ),
        ]
    )
    got = _pointwise(model, {**POINT, "expected_events": 500.0})
    np.testing.assert_allclose(got, ref, rtol=1e-9)
    # the Poisson totals scale with each observation's expected counts
    plain = remove_value_transforms(model)
    lp = plain.compile_logp(vars=[plain["n_events"]])
    totals = [int(t["counts"].sum()) for t in (tables0, tables1)]
    scale1 = (f * r[1] / r[0]).sum()
    expected = scipy.stats.poisson.logpmf(totals, [500.0, 500.0 * scale1]).sum()
    assert float(lp({**POINT, "expected_events": 500.0})) == pytest.approx(expected)
    with pytest.raises(ValueError, match="another log10-mass grid"):
        build_model([tables0, tables0.isel(log10_mass=slice(0, -1))])
    with pytest.raises(ValueError, match="empty list"):
        build_model([])
