"""Slow tier: the seed's DM search recovers its truths; a small SBC of the gamma-ray model.

The full calibration study is ``astroweights sbc gamma-dm --replicates 200``; see the README.
"""

import json

import pytest

from models.calibration import run_sbc
from models.cli import main

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
    for name in report["files"]:
        assert (tmp_path / name).stat().st_size > 0


def test_sbc_ranks_are_uniform_on_a_small_configuration(tmp_path):
    s = run_sbc("gamma-dm", 40, out=tmp_path, size="small", seed=5, workers=2, progress=False)
    assert s.attrs["n_ok"] == 40 and s.attrs["n_failed"] == 0
    assert bool(s["passed"].all()), s["p_uniform"].values
    assert (s["coverage90"] >= 0.75).all()
