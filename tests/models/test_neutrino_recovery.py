"""Slow tier: the posterior recovers the truth, and the effective likelihood earns its keep."""

import logging

import numpy as np
import pytest

from data_tools.neutrino import (
    HESEBinning,
    model_inputs,
    simulate_hese_data,
    simulate_hese_toy,
    with_exposure,
)
from models.inference import convergence, sample_posterior
from models.neutrino_diffuse import build_model

pytestmark = pytest.mark.slow

TRUTH = {"atmo_norm": 1.0, "astro_norm": 6.7, "astro_gamma": 3.0}
NAMES = list(TRUTH)


@pytest.fixture(autouse=True)
def _quiet_pymc():
    logging.getLogger("pymc").setLevel(logging.ERROR)


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_posterior_recovers_the_truth(seed):
    sim = simulate_hese_toy(100_000, rng=seed)
    data = simulate_hese_data(sim, **TRUTH, rng=seed + 100)
    model = build_model(**model_inputs(sim, data))
    # 2 x 2000 draws: astro_norm and astro_gamma are correlated, and on a fresh install
    # (November 2026: pymc 6.4.0, nutpie 0.16.11) seed 13's bulk ESS was 324 of 2 x 1000 draws
    # (855 of 2 x 2000), below the 400 every run requires
    idata = sample_posterior(
        model,
        draws=2000,
        tune=1000,
        chains=2,
        rng=seed,
        posterior_predictive=False,
        progressbar=False,
    )
    diag = convergence(idata, NAMES)
    assert diag["max_r_hat"] <= 1.01
    assert diag["min_ess_bulk"] >= 400
    assert diag["divergences"] == 0
    post = idata["posterior"]
    for name, truth in TRUTH.items():
        draws = np.asarray(post[name]).ravel()
        z = (draws.mean() - truth) / draws.std()
        assert abs(z) < 3, f"{name}: posterior mean {draws.mean():.3f}, truth {truth}, z={z:.2f}"


def test_effective_likelihood_covers_the_truth_more_often_with_a_small_simulation():
    """Ten times the exposure (~1000 events) against 1,500 simulated events (~300 in range).

    The simulation's statistical error is then larger than the data's. The Poisson likelihood
    treats the simulation as exact and its 90 % intervals under-cover; the effective likelihood
    widens them. Data come from a large independent simulation, so the fitted simulation's
    fluctuations are really there.
    """
    exposure, n_small, n_rep = 10.0, 1_500, 12
    big = with_exposure(simulate_hese_toy(300_000, rng=999), exposure)
    # Coarse bins, as one would choose for such a small simulation: 3 energies x 2 zenith bands.
    binning = HESEBinning.from_cos_zenith(np.geomspace(6e4, 1e6, 4), [-1, 0, 1], [0, 2])
    covered = {"poisson": [], "effective": []}
    for rep in range(n_rep):
        small = with_exposure(simulate_hese_toy(n_small, rng=rep), exposure)
        data = simulate_hese_data(big, **TRUTH, rng=1_000 + rep)
        inputs = model_inputs(small, data, binning)
        for likelihood, hits in covered.items():
            idata = sample_posterior(
                build_model(**inputs, likelihood=likelihood),
                draws=500,
                tune=500,
                chains=2,
                rng=rep,
                posterior_predictive=False,
                progressbar=False,
            )
            for name, truth in TRUTH.items():
                lo, hi = np.quantile(np.asarray(idata["posterior"][name]), [0.05, 0.95])
                hits.append(lo <= truth <= hi)
    coverage = {k: float(np.mean(v)) for k, v in covered.items()}
    print(f"90% interval coverage over {n_rep} replicates x 3 parameters: {coverage}")
    assert coverage["effective"] > coverage["poisson"]
    assert coverage["effective"] >= 0.8
