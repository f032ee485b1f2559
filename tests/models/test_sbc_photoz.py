"""Simulation-based calibration of the photo-z regression, the small CI version.

The full study (200 replicates) is ``astroweights sbc photoz --replicates 200``; see the README.
"""

import numpy as np
import pytest

from models.calibration import CASES, run_replicate, run_sbc
from models.runs.sbc import PHOTOZ_PARAMETERS


def test_the_case_ranks_what_the_replicate_returns():
    assert CASES["photoz"].parameters == tuple(PHOTOZ_PARAMETERS)
    # the Student-t model's degrees of freedom are ranked too, when the study samples them
    case = CASES["photoz"]
    assert case.parameters_for({"likelihood": "student_t"}) == (*PHOTOZ_PARAMETERS, "nu")
    assert case.parameters_for({"likelihood": "normal"}) == tuple(PHOTOZ_PARAMETERS)
    assert case.parameters_for(None) == tuple(PHOTOZ_PARAMETERS)


@pytest.mark.slow
def test_ranks_are_uniform_on_small_deep_fields(tmp_path):
    s = run_sbc("photoz", 20, out=tmp_path, size="small", seed=4, workers=2, progress=False)
    assert s.attrs["n_ok"] == 20 and s.attrs["n_failed"] == 0
    assert bool(s["passed"].all()), s["p_uniform"].values
    assert (s["max_r_hat"] < 1.05).all()
    assert (s["coverage90"] >= 0.6).all()


@pytest.mark.slow
def test_a_replicate_reruns_alone_to_the_same_ranks():
    # the Student-t model, run photoz's default, whose nu is ranked with the coefficients
    options = {"likelihood": "student_t"}
    a = run_replicate("photoz", 3, seed=11, options=options)
    b = run_replicate("photoz", 3, seed=11, options=options)
    assert a["status"] == b["status"] == "ok", a.get("error")
    assert a["rank"] == b["rank"]
    assert set(a["rank"]) == {*PHOTOZ_PARAMETERS, "nu"}
    assert np.isfinite(list(a["truth"].values())).all()
