"""Simulation-based calibration of the mass-luminosity model, the small CI version.

The full study (100 replicates of 2,000-halo catalogues) is
``astroweights sbc mass-luminosity --replicates 100 --size medium``; see the README.
"""

import json

import pytest

from models.calibration import run_sbc
from models.cli import main

pytestmark = pytest.mark.slow


def test_ranks_are_uniform_on_small_catalogues(tmp_path):
    s = run_sbc(
        "mass-luminosity", 16, out=tmp_path, size="small", seed=3, workers=2, progress=False
    )
    assert s.attrs["n_ok"] == 16 and s.attrs["n_failed"] == 0
    assert bool(s["passed"].all()), s["p_uniform"].values
    assert (s["max_r_hat"] < 1.05).all()
    assert len(list((tmp_path / "replicates").glob("*.json"))) == 16
    # coverage of the 90% intervals is in the range 16 calibrated replicates allow
    assert (s["coverage90"] >= 0.6).all()


def test_a_misspecified_fit_is_flagged_by_the_command(tmp_path, capsys):
    # observed luminosities have sigma_obs = 0.05; fitting with 0.3 leaves S no room
    code = main(
        [
            "sbc",
            "mass-luminosity",
            "--replicates",
            "10",
            "--size",
            "small",
            "--workers",
            "2",
            "--out",
            str(tmp_path),
            "--option",
            "fit_sigma_obs=0.3",
            "--quiet",
        ]
    )
    assert code == 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert not summary["all_passed"]
    assert not summary["parameters"]["S"]["passed"]
    assert summary["parameters"]["S"]["p_uniform"] < 1e-3
    assert summary["settings"]["options"] == {"fit_sigma_obs": 0.3}
    assert (tmp_path / "sbc.png").stat().st_size > 10_000
