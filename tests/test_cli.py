import json
import logging

import arviz as az
import numpy as np
import pandas as pd
import pytest

from data_tools.neutrino import simulate_hese_data, simulate_hese_toy, write_hese_json
from models.cli import main


def test_data_without_sim_is_refused(tmp_path, capsys):
    (tmp_path / "d.json").write_text('{"mapping": {}, "events": []}')
    code = main(
        ["run", "neutrino", "--data", str(tmp_path / "d.json"), "--out", str(tmp_path / "out")]
    )
    assert code == 2
    assert "give both --data and --sim" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_bad_file_is_reported_and_nothing_is_written(tmp_path, capsys):
    sim = simulate_hese_toy(200, rng=1)
    write_hese_json(tmp_path / "sim.json", sim)
    (tmp_path / "data.json").write_text(
        json.dumps({"mapping": {"energy": 0, "topology": 1}, "events": [[1e5, 0]]})
    )
    code = main(
        [
            "run",
            "neutrino",
            "--data",
            str(tmp_path / "data.json"),
            "--sim",
            str(tmp_path / "sim.json"),
            "--out",
            str(tmp_path / "out"),
            "--quiet",
        ]
    )
    assert code == 2
    assert "missing column(s) ['zenith']" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--draws", "0"], "expected a number >= 1"),
        (["--tune", "-1"], "expected a number >= 0"),
        (["--likelihood", "gauss"], "invalid choice"),
        (["--data", "/nonexistent.json"], "no such file"),
    ],
)
def test_bad_options_exit_with_usage(args, message, capsys):
    with pytest.raises(SystemExit) as err:
        main(["run", "neutrino", *args])
    assert err.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_run_from_files_writes_the_standard_set(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="pymc")  # --quiet must hold PyMC's INFO lines back
    sim = simulate_hese_toy(30_000, rng=4)
    data = simulate_hese_data(sim, atmo_norm=1.0, astro_norm=6.7, astro_gamma=3.0, rng=5)
    write_hese_json(tmp_path / "sim.json", sim)
    write_hese_json(tmp_path / "data.json", data)
    out = tmp_path / "out"
    code = main(
        [
            "run",
            "neutrino",
            "--data",
            str(tmp_path / "data.json"),
            "--sim",
            str(tmp_path / "sim.json"),
            "--out",
            str(out),
            "--draws",
            "1000",
            "--tune",
            "1000",
            "--seed",
            "3",
            "--quiet",
        ]
    )
    assert code == 0
    expected = {
        "idata.nc",
        "summary.csv",
        "report.json",
        "trace.png",
        "pair.png",
        "ppc_counts.png",
        "loo_pit.png",
        "loo_compare.png",
    }
    assert expected <= {p.name for p in out.iterdir()}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporaries left
    report = json.loads((out / "report.json").read_text())
    assert report["truth"] is None
    assert report["data"]["n_data_in_bins"] > 50
    assert {row["model"] for row in report["loo_compare"]} == {"power_law", "log_parabola"}
    assert report["diagnostics"]["max_r_hat"] <= 1.01
    summary = pd.read_csv(out / "summary.csv", index_col="parameter")
    assert list(summary.index) == ["atmo_norm", "astro_norm", "astro_gamma"]
    for name in summary.index:  # report and CSV say the same thing
        assert report["posterior"][name]["mean"] == pytest.approx(summary.loc[name, "mean"])
    idata = az.from_netcdf(out / "idata.nc")
    assert idata["log_likelihood"]["counts"].dims[-1] == "analysis_bin"
    # the fit is near the truth the file's data were drawn from
    assert (
        abs(report["posterior"]["astro_gamma"]["mean"] - 3.0)
        < 3 * report["posterior"]["astro_gamma"]["sd"]
    )
    assert np.isfinite(report["mle"]["neg_log_likelihood"])
    assert not [r for r in caplog.records if r.name.startswith("pymc") and r.levelno < 30]


@pytest.mark.slow
def test_simulated_run_is_reproducible_from_its_seed(tmp_path):
    logging.getLogger("pymc").setLevel(logging.ERROR)
    reports = []
    for name in ("a", "b"):
        code = main(
            [
                "run",
                "neutrino",
                "--n-sim",
                "20000",
                "--draws",
                "200",
                "--tune",
                "200",
                "--seed",
                "9",
                "--no-compare",
                "--quiet",
                "--out",
                str(tmp_path / name),
            ]
        )
        assert code in (0, 1)  # 200 draws may not meet the ESS bar; reproducibility is the point
        reports.append(json.loads((tmp_path / name / "report.json").read_text()))
    assert reports[0]["truth"] == {"atmo_norm": 1.0, "astro_norm": 6.7, "astro_gamma": 3.0}
    assert reports[0]["posterior"] == reports[1]["posterior"]
    assert reports[0]["mle"] == reports[1]["mle"]


def test_mass_luminosity_bad_catalogue_is_refused(tmp_path, capsys):
    (tmp_path / "cat.csv").write_text("z,lum_obs\n0.5,1e10\n4.2,2e10\n")
    code = main(
        [
            "run",
            "mass-luminosity",
            "--data",
            str(tmp_path / "cat.csv"),
            "--out",
            str(tmp_path / "out"),
            "--quiet",
        ]
    )
    assert code == 2
    assert "z of halo 1 is 4.2, outside" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_mass_luminosity_run_from_a_catalogue_file(tmp_path):
    from data_tools.halos import simulate_lightcone

    logging.getLogger("pymc").setLevel(logging.ERROR)
    cat = simulate_lightcone(1_000, rng=21)
    cat[["z", "lum_obs"]].to_dataframe().to_csv(tmp_path / "cat.csv", index=False)
    out = tmp_path / "out"
    code = main(
        [
            "run",
            "mass-luminosity",
            "--data",
            str(tmp_path / "cat.csv"),
            "--out",
            str(out),
            "--draws",
            "1000",
            "--tune",
            "1000",
            "--quiet",
        ]
    )
    assert code in (0, 1)
    report = json.loads((out / "report.json").read_text())
    assert {
        "idata.nc",
        "summary.csv",
        "report.json",
        "trace.png",
        "pair.png",
        "khat.png",
        "importance_diagnostics.csv",
    } <= {p.name for p in out.iterdir()}
    assert report["truth"] is None and report["data"]["n_halos"] == 1000
    assert report["diagnostics"]["max_r_hat"] <= 1.01
    assert report["importance"]["frac_khat_above"] < 0.02
    for name, truth in cat.attrs.items():
        if name in report["posterior"]:
            p = report["posterior"][name]
            assert abs(p["mean"] - truth) < 3 * p["sd"], name
    summary = pd.read_csv(out / "summary.csv", index_col="parameter")
    assert list(summary.index) == ["alpha1", "alpha2", "alpha4", "S"]
