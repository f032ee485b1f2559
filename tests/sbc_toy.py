"""A conjugate toy case for testing the SBC engine: exact posterior draws, no sampler.

mu ~ N(0, 1), y_i ~ N(mu, 1) for 10 observations; the posterior is N(sum(y) / 11, 1 / 11).
``wrong_sigma`` fits with a wrong noise scale (below 1: overconfident, which SBC must flag;
far above 1 the posterior tends to the prior, which SBC cannot tell from calibrated); ``fail``
raises; ``die`` kills the worker process the first time; ``extra`` adds a parameter ``tau`` that
the case ranks only under that option.
"""

import os

import numpy as np

from models.calibration import Case, FitResult

CASE = Case(
    "toy", ("mu",), {"small": "10 observations"}, "sbc_toy:replicate", {("extra", True): ("tau",)}
)


def replicate(seed, *, size="small", wrong_sigma=1.0, fail=False, die=False, extra=False):
    if fail:
        raise RuntimeError("this replicate was told to fail")
    if die and not os.path.exists(die):  # kill the worker process the first time only
        open(die, "w").close()
        os._exit(1)
    rng = np.random.default_rng(seed)
    mu = rng.normal()
    y = rng.normal(mu, 1.0, size=10)
    prec = 1.0 + y.size / wrong_sigma**2
    post_mean = y.sum() / wrong_sigma**2 / prec
    draws = rng.normal(post_mean, prec**-0.5, size=(2, 200))
    truth, posterior = {"mu": mu}, {"mu": draws}
    if extra:  # a second parameter the data say nothing about: its posterior is its prior
        truth["tau"], posterior["tau"] = rng.normal(), rng.normal(size=(2, 200))
    return FitResult(truth, posterior, {"max_r_hat": 1.0, "divergences": 0})
