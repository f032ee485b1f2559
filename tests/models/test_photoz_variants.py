"""Slow tier: the photo-z variants end to end through the command line, scored on one test set."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from references import importance_sampling_pit
from scipy import special, stats

from models.cli import main
from models.photoz import NOISE_FLOOR
from models.runs.photoz import format_report

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("photoz")
    code = main(
        [
            "run", "photoz",
            "--galaxies", "8000",
            "--test-size", "2000",
            "--basis", "40",
            "--components", "3",
            "--draws", "500",
            "--tune", "300",
            "--seed", "7",
            "--mode", "simple", "weighted", "divide",
            # at 500 draws a fit can miss the run's ESS >= 400 and be fitted again: this tier
            # checks the variants' numbers at fixed draws (the refit: test_photoz)
            "--no-refit",
            "--out", str(out),
            "--quiet",
        ]
    )  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    table = pd.read_csv(out / "metrics.csv")
    return code, out, report, table


def _row(table, variant, group="all", bin_="all"):
    t = table[(table["variant"] == variant) & (table["group"] == group) & (table["bin"] == bin_)]
    assert len(t) == 1, (variant, group, bin_)
    return t.iloc[0]


def test_outputs_are_complete(result):
    _, out, report, table = result
    for name in report["files"]:
        assert (out / name).stat().st_size > 0, name
    preds = pd.read_csv(out / "predictions.csv")
    assert len(preds) == report["catalogue"]["test"] == 2000
    assert np.isfinite(preds[["simple:z_phot", "simple:z_mean"]]).all(axis=None)
    # z_phot is the predictive median, inside every 68 % interval (a mean need not be)
    inside = (preds["simple:z_lo68"] <= preds["simple:z_phot"]) & (
        preds["simple:z_phot"] <= preds["simple:z_hi68"]
    )
    assert inside.all()
    assert set(table["variant"]) == {"simple", "weighted", "divide", "hgb", "hgb-weighted"}
    # the test galaxies have no spectrum: the population, not the biased training sample
    assert "without z_spec" in report["catalogue"]["test_set"]
    mix = report["mixtures"]
    assert sum(mix["divergence_weighted"]) < sum(mix["divergence_unweighted"])


def test_fits_converge(result):
    _, _, report, _ = result
    for mode in ("simple", "weighted", "divide"):
        for fit in report["diagnostics"][mode]["fits"]:
            assert fit["divergences"] == 0, mode
            assert fit["max_r_hat"] < 1.03, mode


def test_intervals_are_calibrated(result):
    """68 % predictive intervals cover 68 +- 5 % of the population's test galaxies.

    Measured at this seed (Student-t noise, photometric errors propagated, leverage at most
    0.5: the defaults): 0.652 simple, 0.715 weighted, 0.723 divide. With normal noise divide
    over-covered (0.734 here, earlier basis); with the errors as noise inputs the weighted fit
    covered 0.615 (0.43 of the faint galaxies).
    """
    _, _, _, table = result
    for variant in ("simple", "weighted", "divide"):
        assert abs(_row(table, variant)["coverage_68"] - 0.68) < 0.05, variant


def test_weighting_and_dividing_reduce_the_high_redshift_bias(result):
    """Bias at 2.5 < z < 4 at this seed (z_phot the predictive median): -0.572 simple, -0.471
    weighted, -0.515 divide, on 189 test galaxies.

    Required: a reduction by more than 0.015, twice the paired bootstrap sd of the difference
    (0.007 for divide at this seed, measured with the earlier basis, ``--max-leverage 1``). The
    default size's results are in docs/photoz.md.
    """
    _, _, _, table = result
    simple = abs(_row(table, "simple", "z_true", "(2.5, 4.0]")["bias"])
    for variant in ("weighted", "divide"):
        assert abs(_row(table, variant, "z_true", "(2.5, 4.0]")["bias"]) < simple - 0.015, variant


def test_weighting_and_dividing_reduce_the_faint_bias(result):
    """Bias above F160W = 26.5 at this seed: -0.178 simple, -0.103 weighted, -0.112 divide.

    Not at every seed: see the tables in docs/photoz.md.
    """
    _, _, _, table = result
    simple = abs(_row(table, "simple", "lupt_F160W", "(26.5, inf]")["bias"])
    for variant in ("weighted", "divide"):
        assert abs(_row(table, variant, "lupt_F160W", "(26.5, inf]")["bias"]) < simple, variant


def test_close_to_gradient_boosting_at_small_size(result):
    """At 40 functions sigma_NMAD is within 10 % of HistGradientBoosting's (0.123 vs 0.115).

    At the default 100 functions dividing is at least as accurate as it at each of 18 seeds
    (README).
    """
    _, _, _, table = result
    best = min(_row(table, v)["sigma_nmad"] for v in ("simple", "weighted", "divide"))
    assert best <= _row(table, "hgb")["sigma_nmad"] * 1.10


def test_loo_prefers_the_heteroscedastic_noise(result):
    _, _, report, _ = result
    rows = {r["model"]: r for r in report["loo_noise_models"]["table"]}
    assert rows["heteroscedastic"]["rank"] == 0
    assert rows["constant noise"]["elpd_diff"] < -4 * rows["constant noise"]["dse"]


def test_run_from_a_csv_catalogue(tmp_path):
    """--data: the user's columns by name, a fifth of the spectra held out, scored on z_spec."""
    from data_tools.photoz import simulate_galaxy_catalog

    cat = simulate_galaxy_catalog(2500, rng=3)
    bands = ("F606W", "F814W", "F125W", "F160W")
    renamed = {f"lupt_{b}": f"mag_{b}" for b in bands} | {f"lupterr_{b}": f"err_{b}" for b in bands}
    cat.rename(columns=renamed | {"z_spec": "zspec"}).drop(columns=["z_true"]).to_csv(
        tmp_path / "catalogue.csv", index=False
    )
    out = tmp_path / "out"
    code = main(
        [
            "run", "photoz",
            "--data", str(tmp_path / "catalogue.csv"),
            "--mag-prefix", "mag_", "--err-prefix", "err_", "--z-column", "zspec",
            "--components", "2", "--basis", "10", "--mode", "simple",
            "--draws", "200", "--tune", "200", "--no-compare", "--no-refit",
            "--out", str(out), "--quiet",
        ]
    )  # fmt: skip
    assert code in (0, 1)
    report = json.loads((out / "report.json").read_text())
    n_spec = int(np.isfinite(cat["z_spec"]).sum())
    assert report["catalogue"]["test"] == n_spec // 5
    preds = pd.read_csv(out / "predictions.csv")
    truth = cat.set_index("id").loc[preds["id"], "z_spec"].to_numpy()
    np.testing.assert_allclose(preds["z_spec"], truth)
    table = pd.read_csv(out / "metrics.csv")
    simple = _row(table, "simple")
    # spectroscopic test galaxies are like the training set: an easy, in-sample-like test
    assert simple["sigma_nmad"] < 0.1
    assert abs(simple["coverage_68"] - 0.68) < 0.1


def _loo_coverage_by_hand(path, weights, level=0.68):
    """Plain importance-sampling LOO with the Student-t CDF in closed form, from a saved fit.

    mu = [1, x, phi(x)] . coef; sigma^2 = floor^2 + sigmoid(ln s)^2 + input variance, all
    read from the file's constant data; r_is = exp(-weighted log L_is).
    """
    dt = xr.open_datatree(path)
    c, post = dt["constant_data"], dt["posterior"]
    terms = np.column_stack(
        [np.ones(c.sizes["galaxy"]), c["scaled_features"].values, c["design"].values]
    )
    coef = post["coef"].values.reshape(-1, terms.shape[1])
    noise = post["noise_coef"].values.reshape(-1, post.sizes["noise_term"])
    nu = post["nu"].values.reshape(-1, 1)
    log_s = noise[:, :1] + noise[:, 1:] @ c["noise_features"].values.T
    sigma = np.sqrt(NOISE_FLOOR**2 + special.expit(log_s) ** 2 + c["input_variance"].values)
    y = dt["observed_data"]["log1pz"].values
    cdf = stats.t.cdf((y - coef @ terms.T) / sigma, nu)
    log_lik = dt["log_likelihood"]["log1pz"].values.reshape(len(nu), -1)
    pit = importance_sampling_pit(log_lik, cdf)
    return np.average(np.abs(pit - 0.5) <= level / 2, weights=weights)


def test_training_loo_coverage_against_a_computation_by_hand(result):
    """The report's leave-one-out coverage of the training galaxies, as they are and weighted
    by the density ratios of weights.csv, recomputed from the saved fits.

    The run's PITs are ECDFs of 1,000 PSIS-weighted predictive draws; a galaxy near an
    interval's edge can fall either side, hence 0.02.
    """
    _, out, report, _ = result
    weights = pd.read_csv(out / "weights.csv")["weight"].to_numpy()
    for mode in ("simple", "weighted"):
        got = report["training_loo"][mode]
        path = out / f"idata_{mode}.nc"
        assert got["coverage_68"] == pytest.approx(_loo_coverage_by_hand(path, None), abs=0.02)
        assert got["coverage_68_population"] == pytest.approx(
            _loo_coverage_by_hand(path, weights), abs=0.02
        )
        assert 0.9 < got["coverage_95"] <= 1.0, mode
    for mode in ("simple", "weighted", "divide"):
        assert report["training_loo"][mode]["pareto_k_high"] < 0.05, mode
    assert "leave-one-out coverage" in format_report(report)
