import numpy as np
import pymc as pm
import pytest
import xarray as xr
from pymc.model.transform.conditioning import remove_value_transforms
from references import (
    say_neg_llh,
    seed_bin_masks,
    seed_expectation,
    seed_fit,
    seed_neg_llh,
    seed_weights,
)

from data_tools.neutrino import HESEBinning, model_inputs, simulate_hese_data, simulate_hese_toy
from models.neutrino_diffuse import (
    DEFAULT_PRIORS,
    build_model,
    max_likelihood,
    parameter_names,
)

TRUTH = {"atmo_norm": 1.0, "astro_norm": 6.7, "astro_gamma": 3.0}


@pytest.fixture(scope="module")
def problem():
    """A small simulation, data drawn from it, and the exercise's per-bin masks."""
    sim = simulate_hese_toy(20_000, rng=5)
    data = simulate_hese_data(sim, **TRUTH, rng=6)
    b = HESEBinning()
    inputs = model_inputs(sim, data, b)
    masks = seed_bin_masks(
        sim["energy"],
        sim["zenith"],
        sim["topology"],
        b.energy_edges,
        b.zenith_edges,
        b.topology_edges,
    )
    return {"sim": sim, "data": data, "inputs": inputs, "masks": masks}


def _loglike_fn(model):
    """Observed-data log-likelihood as a function of natural (untransformed) parameters."""
    plain = remove_value_transforms(model)
    fn = plain.compile_logp(vars=plain.observed_RVs, jacobian=False)
    return lambda **params: float(fn(params))


def _reference_neg_llh(problem, likelihood, atmo_norm, astro_norm, astro_gamma, curvature=0.0):
    sim, k = problem["sim"], problem["inputs"]["counts"]
    w = seed_weights(
        sim["atmoWeight"],
        sim["astroWeight"],
        sim["primaryEnergy"],
        atmo_norm,
        astro_norm,
        astro_gamma,
        curvature,
    )
    mu = seed_expectation(w, problem["masks"])
    if likelihood == "poisson":
        return seed_neg_llh(k, mu)
    return say_neg_llh(k, mu, seed_expectation(w**2, problem["masks"]))


# ---------------------------------------------------------------------------- structure
@pytest.mark.parametrize("likelihood", ["poisson", "effective"])
@pytest.mark.parametrize("spectrum", ["power_law", "log_parabola"])
def test_every_variable_is_named_and_dimensioned(problem, likelihood, spectrum):
    model = build_model(**problem["inputs"], likelihood=likelihood, spectrum=spectrum)
    assert [rv.name for rv in model.free_RVs] == parameter_names(spectrum)
    dims = model.named_vars_to_dims
    assert dims["mu"] == ("analysis_bin",) and dims["counts"] == ("analysis_bin",)
    labels = model.coords["analysis_bin"]
    # only bins the simulation reaches are in the model, labelled by their flat index
    reached = (
        np.bincount(problem["inputs"]["mc_bin"][problem["inputs"]["mc_bin"] >= 0], minlength=400)
        > 0
    )
    np.testing.assert_array_equal(labels, np.flatnonzero(reached))
    assert np.isfinite(model.point_logps()["counts"])


def test_dataarray_counts_lend_their_labels(problem):
    inputs = dict(problem["inputs"])
    labels = np.array([f"bin{i:03d}" for i in range(400)])
    inputs["counts"] = xr.DataArray(
        inputs["counts"], dims="analysis_bin", coords={"analysis_bin": labels}
    )
    model = build_model(**inputs)
    assert model.coords["analysis_bin"][0].startswith("bin")


# ---------------------------------------------------------------------------- forward model
def test_expected_counts_equal_the_exercise_masks(problem):
    model = build_model(**problem["inputs"], spectrum="log_parabola")
    params = {"atmo_norm": 0.8, "astro_norm": 5.0, "astro_gamma": 2.7, "astro_curvature": 0.15}
    mu = pm.draw(pm.do(model, params)["mu"])
    sim = problem["sim"]
    ref = seed_expectation(
        seed_weights(
            sim["atmoWeight"], sim["astroWeight"], sim["primaryEnergy"], 0.8, 5.0, 2.7, 0.15
        ),
        problem["masks"],
    )
    labels = np.asarray(model.coords["analysis_bin"])
    np.testing.assert_allclose(mu, ref[labels], rtol=1e-12)
    assert np.all(ref[np.setdiff1d(np.arange(400), labels)] == 0)


@pytest.mark.parametrize("likelihood", ["poisson", "effective"])
def test_log_likelihood_equals_independent_reference_at_many_points(problem, likelihood):
    loglike = _loglike_fn(build_model(**problem["inputs"], likelihood=likelihood))
    grid = np.random.default_rng(3)
    for _ in range(25):
        p = {
            "atmo_norm": grid.uniform(0.05, 3),
            "astro_norm": grid.uniform(0.5, 20),
            "astro_gamma": grid.uniform(1.8, 4.0),
        }
        expected = -_reference_neg_llh(problem, likelihood, **p)
        assert loglike(**p) == pytest.approx(expected, rel=1e-10, abs=1e-8)


def test_log_parabola_with_zero_curvature_is_the_power_law(problem):
    pl = _loglike_fn(build_model(**problem["inputs"]))
    lp = _loglike_fn(build_model(**problem["inputs"], spectrum="log_parabola"))
    p = {"atmo_norm": 1.1, "astro_norm": 6.0, "astro_gamma": 2.9}
    assert lp(**p, astro_curvature=0.0) == pytest.approx(pl(**p), rel=1e-13)
    assert lp(**p, astro_curvature=0.3) == pytest.approx(
        -_reference_neg_llh(problem, "poisson", **p, curvature=0.3), rel=1e-10
    )


# ln L at the truth of this fixed toy, computed once with the independent per-bin-mask
# reference (tests/references.py), not with the model: it pins the simulator and the model.
REFERENCE_LN_L_3000 = -99.49466191921115


def test_pinned_log_likelihood():
    sim = simulate_hese_toy(3_000, rng=123)
    data = simulate_hese_data(sim, **TRUTH, rng=321)
    inputs = model_inputs(sim, data)
    masks = seed_bin_masks(
        sim["energy"],
        sim["zenith"],
        sim["topology"],
        *(getattr(HESEBinning(), f"{a}_edges") for a in ("energy", "zenith", "topology")),
    )
    w = seed_weights(sim["atmoWeight"], sim["astroWeight"], sim["primaryEnergy"], 1.0, 6.7, 3.0)
    reference = -seed_neg_llh(inputs["counts"], seed_expectation(w, masks))
    assert reference == pytest.approx(REFERENCE_LN_L_3000, rel=1e-12)  # the toy has not moved
    assert _loglike_fn(build_model(**inputs))(**TRUTH) == pytest.approx(reference, rel=1e-12)


# ---------------------------------------------------------------------------- MLE
def test_maximum_likelihood_equals_an_independent_scipy_fit(problem):
    model = build_model(**problem["inputs"])
    ours = max_likelihood(model)
    sim = problem["sim"]
    ref = seed_fit(
        problem["inputs"]["counts"],
        problem["masks"],
        sim["atmoWeight"],
        sim["astroWeight"],
        sim["primaryEnergy"],
    )
    assert ours.success
    for name, value in zip(["atmo_norm", "astro_norm", "astro_gamma"], ref.x, strict=True):
        assert ours.params[name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
    assert ours.neg_log_likelihood == pytest.approx(ref.fun, rel=1e-8)
    # the maximum is a maximum: nudging any parameter lowers the likelihood
    loglike = _loglike_fn(model)
    best = loglike(**ours.params)
    for name in ours.params:
        for step in (-1e-3, 1e-3):
            moved = dict(ours.params, **{name: ours.params[name] * (1 + step)})
            assert loglike(**moved) <= best + 1e-9


def test_maximum_likelihood_respects_the_bounds(problem):
    # With no observed event, -ln L = sum(mu) falls without limit as the norms go negative;
    # only the bounds stop it, at exactly (0, 0) with -ln L = 0.
    empty = dict(problem["inputs"], counts=np.zeros_like(problem["inputs"]["counts"]))
    ours = max_likelihood(build_model(**empty))
    assert ours.params["atmo_norm"] == pytest.approx(0.0, abs=1e-9)
    assert ours.params["astro_norm"] == pytest.approx(0.0, abs=1e-9)
    assert ours.neg_log_likelihood == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="unknown parameter"):
        max_likelihood(build_model(**problem["inputs"]), start={"gamma": 2.0})


# ---------------------------------------------------------------------------- priors
def test_priors_are_documented_defaults_and_can_be_replaced(problem):
    model = build_model(**problem["inputs"])
    lp = model.compile_logp(vars=[model["astro_gamma"]])
    point = model.initial_point()
    point["astro_gamma"] = 3.0
    assert float(lp(point)) == pytest.approx(
        float(pm.logp(DEFAULT_PRIORS["astro_gamma"](), 3.0).eval())
    )
    custom = build_model(**problem["inputs"], priors={"astro_gamma": pm.Normal.dist(2.0, 0.1)})
    lp = custom.compile_logp(vars=[custom["astro_gamma"]])
    assert float(lp(point)) == pytest.approx(-0.5 * 100 - np.log(0.1 * np.sqrt(2 * np.pi)))


def test_bad_priors_are_rejected(problem):
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['gamma'\]"):
        build_model(**problem["inputs"], priors={"gamma": pm.Normal.dist(2.5, 1)})
    with pytest.raises(TypeError, match="must be an unnamed distribution"):
        build_model(**problem["inputs"], priors={"astro_gamma": 2.5})
    with pytest.raises(TypeError, match="priors must be a dict"):
        build_model(**problem["inputs"], priors=[pm.Normal.dist(2.5, 1)])
    with pytest.raises(ValueError, match="must be scalar"):
        build_model(**problem["inputs"], priors={"astro_gamma": pm.Normal.dist(0, 1, shape=2)})


# ---------------------------------------------------------------------------- validation
def _bad(problem, **changes):
    inputs = dict(problem["inputs"])
    inputs.update(changes)
    return inputs


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda p: {"counts": p["counts"] - 1}, ValueError, r"counts\[\d+\] = -1 is negative"),
        (lambda p: {"counts": p["counts"] + 0.5}, ValueError, r"is not an integer"),
        (
            lambda p: {"counts": np.where(np.arange(400) == 3, np.nan, p["counts"])},
            ValueError,
            r"counts\[3\] is nan",
        ),
        (lambda p: {"counts": p["counts"].reshape(20, 20)}, ValueError, "1-dimensional"),
        (lambda p: {"counts": p["counts"].astype(str)}, TypeError, "integer counts"),
        (
            lambda p: {"w_atmo": np.where(np.arange(p["w_atmo"].size) == 7, -1.0, p["w_atmo"])},
            ValueError,
            r"w_atmo must be >= 0, got -1.0 at index \(7,\)",
        ),
        (
            lambda p: {
                "w_astro": np.where(np.arange(p["w_astro"].size) == 2, np.inf, p["w_astro"])
            },
            ValueError,
            "w_astro contains inf",
        ),
        (
            lambda p: {"e_primary": p["e_primary"][:-1]},
            ValueError,
            "lengths differ: mc_bin=20000, w_atmo=20000, w_astro=20000, e_primary=19999",
        ),
        (
            lambda p: {"e_primary": np.zeros_like(p["e_primary"])},
            ValueError,
            "e_primary must be > 0",
        ),
        (
            lambda p: {"mc_bin": np.where(np.arange(p["mc_bin"].size) == 4, 400, p["mc_bin"])},
            ValueError,
            r"mc_bin\[4\] = 400 is out of range",
        ),
        (lambda p: {"mc_bin": p["mc_bin"].astype(float)}, TypeError, "integer bin indices"),
    ],
)
def test_bad_input_is_rejected_with_a_clear_message(problem, change, error, match):
    with pytest.raises(error, match=match):
        build_model(**_bad(problem, **change(problem["inputs"])))


def test_events_where_the_simulation_has_none_are_rejected(problem):
    counts = problem["inputs"]["counts"].copy()
    empty = np.flatnonzero(
        np.bincount(problem["inputs"]["mc_bin"][problem["inputs"]["mc_bin"] >= 0], minlength=400)
        == 0
    )
    counts[empty[0]] = 2
    with pytest.raises(ValueError, match=rf"counts\[{empty[0]}\] = 2 but no simulated event"):
        build_model(**_bad(problem, counts=counts))


def test_bad_options_are_rejected(problem):
    with pytest.raises(ValueError, match="likelihood must be one of"):
        build_model(**problem["inputs"], likelihood="gauss")
    with pytest.raises(ValueError, match="spectrum must be one of"):
        build_model(**problem["inputs"], spectrum="broken_power_law")
    with pytest.raises(TypeError, match=r"positional argument"):
        build_model(*problem["inputs"].values(), "poisson")
