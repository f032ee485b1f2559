import json

import numpy as np
import pytest

from models import calibration
from models.calibration import (
    load_records,
    run_replicate,
    run_sbc,
    summarise,
    verdicts,
    write_outputs,
)


@pytest.fixture
def toy(monkeypatch, tmp_path):
    """Register the conjugate toy case; Dask workers import it from tests/ via PYTHONPATH."""
    import sbc_toy

    tests_dir = str(__import__("pathlib").Path(sbc_toy.__file__).parent)
    monkeypatch.setitem(calibration.CASES, "toy", sbc_toy.CASE)
    monkeypatch.setenv("PYTHONPATH", tests_dir)
    return tmp_path


def _records(pits, *, failed=0):
    rng = np.random.default_rng(0)
    out = []
    for i, pit in enumerate(pits):
        rank = int(pit * 100)
        out.append(
            {
                "index": i,
                "status": "ok",
                "truth": {"a": rng.normal()},
                "rank": {"a": rank},
                "pit": {"a": (rank + rng.uniform()) / 101},
                "mean": {"a": 0.0},
                "sd": {"a": 1.0},
                "in50": {"a": bool(0.25 <= pit <= 0.75)},
                "in90": {"a": bool(0.05 <= pit <= 0.95)},
                "n_rank_draws": 100,
                "diagnostics": {"max_r_hat": 1.0, "divergences": 0},
                "seconds": 1.0,
            }
        )
    for j in range(failed):
        out.append({"index": len(pits) + j, "status": "failed", "error": "RuntimeError: boom"})
    return out


def test_summary_passes_uniform_ranks_and_counts_failures():
    pits = np.random.default_rng(1).uniform(size=300)
    s = summarise(_records(pits, failed=2), ["a"])
    assert s.attrs["n_ok"] == 300 and s.attrs["n_failed"] == 2
    assert json.loads(s.attrs["failures"]) == {
        "300": "RuntimeError: boom",
        "301": "RuntimeError: boom",
    }
    assert bool(s["passed"].sel(parameter="a"))
    assert float(s["p_uniform"].sel(parameter="a")) > 0.01
    assert float(s["coverage90"].sel(parameter="a")) == pytest.approx(0.9, abs=0.06)
    assert verdicts(s)[0].startswith("pass  a:")
    # recovery z-scores: (posterior mean 0 - truth) / posterior sd 1, over the ok replicates
    truths = np.array([r["truth"]["a"] for r in _records(pits)])
    assert float(s["z_mean"].sel(parameter="a")) == pytest.approx(-truths.mean(), rel=1e-12)
    assert float(s["z_max_abs"].sel(parameter="a")) == pytest.approx(np.abs(truths).max())
    assert f"max |z| {np.abs(truths).max():.2f}" in verdicts(s)[0]


@pytest.mark.parametrize("transform", [lambda u: u**1.5, lambda u: 0.5 + 0.6 * (u - 0.5)])
def test_summary_fails_biased_or_overdispersed_ranks(transform):
    pits = transform(np.random.default_rng(2).uniform(size=300))
    s = summarise(_records(pits), ["a"])
    assert not bool(s["passed"].sel(parameter="a"))
    assert float(s["p_uniform"].sel(parameter="a")) < 1e-4
    assert verdicts(s)[0].startswith("FAIL  a:")


def test_replicates_are_reproducible_alone(toy, monkeypatch):
    a = run_replicate("toy", 7, seed=3)
    b = run_replicate("toy", 7, seed=3)
    c = run_replicate("toy", 8, seed=3)
    assert a["rank"] == b["rank"] and a["pit"] == b["pit"] and a["truth"] != c["truth"]
    bad = run_replicate("toy", 1, seed=3, options={"fail": True})
    assert bad["status"] == "failed" and "told to fail" in bad["error"]


def test_run_on_dask_resumes_and_flags_misspecification(toy):
    out = toy / "run"
    s = run_sbc("toy", 60, out=out, seed=5, workers=2, progress=False)
    assert s.attrs["n_ok"] == 60 and bool(s["passed"].all())
    first = {r["index"]: r for r in load_records(out, range(60))}
    # an interrupted run: some records missing; the rerun redoes exactly those, identically
    for i in (3, 17, 42):
        (out / "replicates" / f"{i:05d}.json").unlink()
    s2 = run_sbc("toy", 60, out=out, seed=5, workers=2, progress=False)
    again = {r["index"]: r for r in load_records(out, range(60))}
    assert all(again[i]["rank"] == first[i]["rank"] for i in range(60))
    np.testing.assert_array_equal(s2["rank"].values, s["rank"].values)
    with pytest.raises(ValueError, match="holds an SBC run with other settings"):
        run_sbc("toy", 60, out=out, seed=6, workers=2, progress=False)
    files = write_outputs(s, out)
    assert json.loads((out / "summary.json").read_text())["all_passed"] is True
    assert (out / "sbc.png").stat().st_size > 10_000 and len(files) == 4
    # the same machinery flags a model fitted with the wrong noise scale
    bad = run_sbc(
        "toy", 60, out=toy / "bad", seed=5, workers=2, progress=False, options={"wrong_sigma": 0.3}
    )
    assert not bool(bad["passed"].all())


def test_an_option_adds_a_ranked_parameter_and_older_records_are_redone(toy):
    out = toy / "run"
    options = {"extra": True}
    s = run_sbc("toy", 20, out=out, seed=5, workers=2, progress=False, options=options)
    assert list(s["parameter"].values) == ["mu", "tau"] and bool(s["passed"].all())
    # records written before the case ranked tau: a resumed study redoes exactly those
    for i in (2, 9):
        path = out / "replicates" / f"{i:05d}.json"
        record = json.loads(path.read_text())
        for key in ("truth", "rank", "pit", "mean", "sd", "in50", "in90"):
            del record[key]["tau"]
        path.write_text(json.dumps(record))
    assert calibration._todo(out, 20, ("mu", "tau")) == [2, 9]
    assert calibration._todo(out, 21, ("mu",)) == [20]
    s2 = run_sbc("toy", 20, out=out, seed=5, workers=2, progress=False, options=options)
    np.testing.assert_array_equal(s2["rank"].values, s["rank"].values)
    assert calibration._todo(out, 20, ("mu", "tau")) == []


def test_a_replicate_must_return_exactly_the_ranked_parameters(toy):
    # a case that does not know the option's extra parameter: the replicate fails, loudly
    unaware = calibration.Case("toy", ("mu",), {"small": "10"}, "sbc_toy:replicate")
    record = run_replicate(unaware, 0, seed=1, options={"extra": True})
    assert record["status"] == "failed"
    assert "returned truths for ['mu', 'tau'] but the case ranks ['mu']" in record["error"]
    assert run_replicate("toy", 0, seed=1, options={"extra": True})["status"] == "ok"


def test_a_worker_killed_mid_replicate_loses_nothing(toy):
    marker = toy / "died-once"
    s = run_sbc(
        "toy", 6, out=toy / "kill", seed=1, workers=2, progress=False, options={"die": str(marker)}
    )
    assert marker.exists()  # a worker did die
    assert s.attrs["n_ok"] == 6 and s.attrs["n_failed"] == 0


def test_bad_arguments_are_named(toy):
    with pytest.raises(ValueError, match="unknown use case 'nope'"):
        run_sbc("nope", 3, out=toy / "x")
    with pytest.raises(ValueError, match="size must be one of"):
        run_sbc("toy", 3, out=toy / "x", size="huge")
    with pytest.raises(ValueError, match="replicates must be >= 1"):
        run_sbc("toy", 0, out=toy / "x")
    with pytest.raises(TypeError, match="replicates must be an int"):
        run_sbc("toy", 2.5, out=toy / "x")


def test_recovery_options_of_the_mass_luminosity_case():
    """Fixed truths are the hyper-seed; a global grid at full size is refused before any work."""
    from data_tools.halos import HYPER_SEED
    from models.runs.sbc import mass_luminosity_replicate

    with pytest.raises(ValueError, match="pass --option method=adaptive"):
        mass_luminosity_replicate(np.random.SeedSequence(0), size="full", truth="hyper-seed")
    with pytest.raises(ValueError, match="truth must be 'prior' or 'hyper-seed'"):
        mass_luminosity_replicate(np.random.SeedSequence(0), truth="fixed")
    with pytest.raises(ValueError, match="method must be 'quadrature', 'importance' or"):
        mass_luminosity_replicate(np.random.SeedSequence(0), method="grid")
    assert calibration.CASES["mass-luminosity"].sizes.keys() >= {"small", "medium", "full"}
    assert set(HYPER_SEED) == set(calibration.CASES["mass-luminosity"].parameters)


def test_cases_cover_their_parameters():
    from models.mass_luminosity import PARAMETERS
    from models.neutrino_diffuse import parameter_names

    assert calibration.CASES["mass-luminosity"].parameters == tuple(PARAMETERS)
    assert calibration.CASES["neutrino"].parameters == tuple(parameter_names("power_law"))
