"""Slow tier: the seed's DM search recovers its truths; a small SBC of the gamma-ray model.

The full calibration study is ``astroweights sbc gamma-dm --replicates 200``; see the README.
"""

import json

import numpy as np
import pytest
import xarray as xr
from scipy.special import gammaln

from data_tools.gamma.events import (
    BACKGROUNDS,
    Observation,
    bin_counts,
    marginal_tables,
    simulate_events,
)
from data_tools.gamma.instrument import Binning
from models.calibration import run_sbc
from models.cli import main
from models.gamma_dm import build_model
from models.inference import convergence, log_evidence, sample_posterior

pytestmark = pytest.mark.slow


def test_seed_configuration_is_recovered_by_the_command(tmp_path):
    """500 events, half DM at 1 TeV, backgrounds 70/20/10%, 5 h at the GC (the tutorial).

    One fixed seed; calibration across many seeds is the SBC below and in the README.
    """
    code = main(["run", "gamma-dm", "--out", str(tmp_path), "--quiet"])
    assert code == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["data"]["n_events"] == 500
    assert report["diagnostics"]["max_r_hat"] <= 1.01
    assert report["diagnostics"]["divergences"] == 0
    for name, z in report["z_score"].items():
        assert abs(z) < 2, (name, z, report["posterior"][name])
    # half the events are DM: LOO must prefer the DM model over background only
    best, other = report["comparison"]
    assert best["index"] == "dm" and -other["elpd_diff"] > 2 * other["dse"]
    # and so must the evidence (SMC), with two independent runs agreeing
    bf = report["bayes_factor"]
    assert bf["ln_bayes_factor"] > 5 and bf["ln_bayes_factor_sd"] < 1.0
    for name in report["files"]:
        assert (tmp_path / name).stat().st_size > 0


def test_sbc_ranks_are_uniform_on_a_small_configuration(tmp_path):
    s = run_sbc("gamma-dm", 40, out=tmp_path, size="small", seed=5, workers=2, progress=False)
    assert s.attrs["n_ok"] == 40 and s.attrs["n_failed"] == 0
    assert bool(s["passed"].all()), s["p_uniform"].values
    assert (s["coverage90"] >= 0.75).all()


def test_smc_evidence_matches_the_dirichlet_multinomial_closed_form():
    """Bins each reachable by one background only: the evidence is known exactly.

    With Dirichlet(1, 1, 1) on the split, Z = prod_i m_i^n_i * 2 prod_k N_k! / (N + 2)!.
    """
    rng = np.random.default_rng(11)
    n_bin = 30
    comp = np.arange(n_bin) % 3
    log_m = np.log(rng.uniform(0.01, 0.05, n_bin))
    counts = rng.integers(1, 5, n_bin)
    log_m_bkg = np.full((n_bin, 3), -700.0)
    log_m_bkg[np.arange(n_bin), comp] = log_m
    grid = np.linspace(np.log10(0.12), np.log10(80.0), 5)
    tables = xr.Dataset(
        {
            "counts": ("bin", counts),
            "log_m_background": (("bin", "background"), log_m_bkg),
            "log_m_dm": (("log10_mass", "bin"), np.full((5, n_bin), -700.0)),
            "expected_background": ("background", np.ones(3)),
            "expected_dm": ("log10_mass", np.ones(5)),
        },
        coords={"bin": np.arange(n_bin), "background": list(BACKGROUNDS), "log10_mass": grid},
    )
    result = log_evidence(build_model(tables, signal=False), draws=2000, rng=0)
    n_k = np.bincount(comp, weights=counts, minlength=3)
    exact = (counts * log_m).sum() + np.log(2) + gammaln(n_k + 1).sum() - gammaln(n_k.sum() + 3)
    assert result["log_z"] == pytest.approx(exact, abs=0.15)
    assert result["log_z_sd"] < 0.2
    # the SMC posterior is the conjugate Dirichlet(1 + N_k)
    split = result["idata"]["posterior"]["background_split"].mean(("chain", "draw")).values
    np.testing.assert_allclose(split, (1 + n_k) / (3 + n_k.sum()), atol=0.01)


def test_extended_model_recovers_the_cross_section_from_physical_rates():
    """Poisson counts from the physical rates (sigma_v = 1e-24 cm^3/s, 2 TeV, 5 h at the GC):
    about 625,000 events, 1.9% of them DM, on a coarser measured grid (4,400 bins)."""
    obs = Observation(
        true=Binning.regular(per_decade=20, pixel=0.1),
        reco=Binning.regular(per_decade=10, pixel=0.4),
    )
    events = simulate_events(obs, n_events=None, sigma_v=1e-24, mass=2.0, rng=3)
    tables = marginal_tables(obs, bin_counts(events, obs.reco))
    idata = sample_posterior(
        build_model(tables, extended=True),
        draws=500,
        tune=500,
        chains=2,
        rng=1,
        posterior_predictive=False,
        log_likelihood=False,
        progressbar=False,
    )
    assert (
        convergence(idata, ["signal_fraction", "log10_mass", "expected_events"])["max_r_hat"] < 1.01
    )
    post = idata["posterior"]
    truth = {"sigma_v": 1e-24, "mass": 2.0, "signal_events": events.attrs["n_dm"]}
    for name, value in truth.items():
        draws = post[name].values.ravel()
        assert abs(draws.mean() - value) < 2.5 * draws.std(), (name, draws.mean(), draws.std())


def test_a_wrong_psf_is_flagged_by_the_command(tmp_path):
    """Tables computed with a PSF three times too wide: the point sources' share is biased.

    40 replicates: p = 3.9e-5 for the local sources' share (December 2026; 1.3e-8 at 100), 25
    times below the bound, and 85 s against 113 s for 60.
    """
    code = main(
        [
            "sbc",
            "gamma-dm",
            "--replicates",
            "40",
            "--out",
            str(tmp_path),
            "--option",
            "fit_psf_scale=3",
            "--quiet",
        ]
    )
    assert code == 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert not summary["parameters"]["local_sources"]["passed"]
    assert summary["parameters"]["local_sources"]["p_uniform"] < 1e-3
