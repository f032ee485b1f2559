"""Slow tier: the photo-z variants end to end through the command line, scored on one test set."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from models.cli import main

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
            "--draws", "300",
            "--tune", "300",
            "--seed", "7",
            "--mode", "simple", "weighted", "divide",
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
    assert np.isfinite(preds["simple:z_phot"]).all()
    assert set(table["variant"]) == {"simple", "weighted", "divide", "hgb", "hgb-weighted"}
    # the test galaxies have no spectrum: the population, not the biased training sample
    assert "without z_spec" in report["catalogue"]["test_set"]
    mix = report["mixtures"]
    assert sum(mix["divergence_weighted"]) < sum(mix["divergence_unweighted"])


def test_fits_converge(result):
    code, _, report, _ = result
    for mode in ("simple", "weighted", "divide"):
        for fit in report["diagnostics"][mode]["fits"]:
            assert fit["divergences"] == 0, mode
            assert fit["max_r_hat"] < 1.03, mode
    assert code in (0, 1)


def test_intervals_are_calibrated(result):
    """68 % predictive intervals cover 68 +- 5 % of the population's test galaxies."""
    _, _, _, table = result
    for variant in ("simple", "divide"):
        assert abs(_row(table, variant)["coverage_68"] - 0.68) < 0.05, variant


def test_dividing_reduces_the_faint_and_high_redshift_bias(result):
    """Measured at this seed: faint bias -0.042 -> -0.029, 2.5 < z < 4 bias -0.455 -> -0.357.

    The weighted variant does not reduce these biases here (see the README); it is scored,
    not asserted.
    """
    _, _, _, table = result
    simple_faint = abs(_row(table, "simple", "lupt_F160W", "(26.5, inf]")["bias"])
    simple_high = abs(_row(table, "simple", "z_true", "(2.5, 4.0]")["bias"])
    assert abs(_row(table, "divide", "lupt_F160W", "(26.5, inf]")["bias"]) < simple_faint
    assert abs(_row(table, "divide", "z_true", "(2.5, 4.0]")["bias"]) < simple_high - 0.05


def test_close_to_gradient_boosting_at_small_size(result):
    """At 40 functions sigma_NMAD is within 10 % of HistGradientBoosting's (0.123 vs 0.115)."""
    _, _, _, table = result
    best = min(_row(table, v)["sigma_nmad"] for v in ("simple", "weighted", "divide"))
    assert best <= _row(table, "hgb")["sigma_nmad"] * 1.10


def test_loo_prefers_the_heteroscedastic_noise(result):
    _, _, report, _ = result
    rows = {r["model"]: r for r in report["loo_noise_models"]["table"]}
    assert rows["heteroscedastic"]["rank"] == 0
    assert rows["constant noise"]["elpd_diff"] < -4 * rows["constant noise"]["dse"]
