"""Neutrino diffuse fit: our model against the exercise's per-bin-mask method, in one run.

What is timed
-------------
1. One log-likelihood evaluation. The reference is the exercise's method, written out here
   (independently of :mod:`models.neutrino_diffuse`): 400 boolean masks over all simulated
   events, built once with ``np.digitize`` outside the timed region; each evaluation reweights
   every event, sums the weights under each mask and evaluates the Poisson ``-ln L``. Ours is
   the compiled PyMC log-density *and its gradient* (the function NUTS calls), so ours does
   strictly more work per call (gradient, priors and Jacobian included). Both are the best of
   ``repeats`` timings; ours averages many calls per timing because one call is short.
2. The maximum-likelihood fit. The reference is ``scipy.optimize.minimize`` of the reference
   ``-ln L`` with L-BFGS-B and numerical gradients from ``(1, 8, 2.5)``, as in the exercise;
   ours is :func:`models.neutrino_diffuse.max_likelihood`, compile time included.
3. The full NUTS posterior (unless ``nuts=False``): model build plus
   :func:`models.inference.sample_posterior` with 2 chains of 1000 tuning and 1000 kept draws.
   The exercise has no posterior, so this is timed against a fixed target.

Why it is fair
--------------
Both methods see the same simulation and the same data in the same process, with the same
numerical libraries and threads. Before any timing, the two log-likelihoods are checked to agree
at the true parameters to ``1e-8`` relative, so both compute the same quantity. The reference is
not slowed: its masks are built once, as in the exercise, and it uses plain vectorised numpy.

Run it as ``astroweights bench neutrino`` or ``python -m models.benchmarks.neutrino``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import scipy.optimize
import scipy.special
from pymc.model.transform.conditioning import remove_value_transforms

from data_tools.neutrino import HESEBinning, model_inputs, simulate_hese_data, simulate_hese_toy
from models.inference import convergence, sample_posterior
from models.neutrino_diffuse import build_model, max_likelihood

__all__ = ["TRUTH", "main"]

TRUTH = {"atmo_norm": 1.0, "astro_norm": 6.7, "astro_gamma": 3.0}
"""Parameters the data are drawn from and at which the two likelihoods are compared."""

START = (1.0, 8.0, 2.5)
"""The exercise's starting point of the fit: ``(atmo_norm, astro_norm, astro_gamma)``."""

RATIO_TARGET = 20.0
"""Required speed-up of one log-likelihood-and-gradient evaluation over the reference."""
NUTS_TARGET_S = 120.0
"""Required wall time of model build plus NUTS sampling, seconds (2 cores)."""
AGREEMENT_TOL = 1e-8
"""Required relative agreement of the two log-likelihoods at the truth."""
CALLS_PER_TIMING = 50
"""Calls of our compiled function averaged in one timing."""

PARAMS = ("atmo_norm", "astro_norm", "astro_gamma")


def _say(text: str = "") -> None:
    print(text, flush=True)


# --------------------------------------------------------------------------------------------
# The reference: the exercise's method
# --------------------------------------------------------------------------------------------
def reference_masks(
    energy: np.ndarray,
    zenith: np.ndarray,
    topology: np.ndarray,
    binning: HESEBinning,
) -> list[np.ndarray]:
    """One boolean mask over all events per analysis bin, topology-zenith-energy order."""
    e_map = np.digitize(energy, bins=binning.energy_edges) - 1
    z_map = np.digitize(zenith, bins=binning.zenith_edges) - 1
    t_map = np.digitize(topology, bins=binning.topology_edges) - 1
    n_t, n_z, n_e = binning.shape
    masks = []
    for i in range(n_t):
        for j in range(n_z):
            for k in range(n_e):
                masks.append((t_map == i) & (z_map == j) & (e_map == k))
    return masks


def reference_weights(
    w_atmo: np.ndarray,
    w_astro: np.ndarray,
    e_primary: np.ndarray,
    atmo_norm: float,
    astro_norm: float,
    astro_gamma: float,
) -> np.ndarray:
    """Per-event weights of the exercise's power law."""
    return atmo_norm * w_atmo + astro_norm * w_astro * (e_primary / 1e5) ** -(astro_gamma - 2.5)


def reference_neg_llh(counts: np.ndarray, expectation: np.ndarray) -> float:
    """Poisson ``-ln L`` of the exercise, with 0 for bins where ``k = 0`` and ``mu = 0``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = -(counts * np.log(expectation) - expectation - scipy.special.gammaln(counts + 1))
    terms[(counts == 0) & (expectation == 0)] = 0.0
    return float(terms.sum())


def reference_objective(
    counts: np.ndarray,
    masks: Sequence[np.ndarray],
    w_atmo: np.ndarray,
    w_astro: np.ndarray,
    e_primary: np.ndarray,
) -> Callable[[Sequence[float]], float]:
    """``theta -> -ln L``: reweight every event, sum under each mask, Poisson likelihood."""

    def objective(theta: Sequence[float]) -> float:
        w = reference_weights(w_atmo, w_astro, e_primary, *theta)
        expectation = np.array([w[mask].sum() for mask in masks])
        return reference_neg_llh(counts, expectation)

    return objective


# --------------------------------------------------------------------------------------------
# Timing helpers
# --------------------------------------------------------------------------------------------
def _best_time(fn: Callable[[], Any], repeats: int, calls: int = 1) -> float:
    """Best over ``repeats`` of the mean wall time of ``calls`` calls of ``fn``, seconds."""
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) / calls)
    return float(best)


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    value = float(value)
    if value == 0 or 1e-3 <= abs(value) < 1e5:
        return f"{value:.4g}{unit}"
    return f"{value:.3e}{unit}"


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------
def main(n_sim: int = 1_000_000, repeats: int = 5, nuts: bool = True, seed: int = 1) -> dict:
    """Time our likelihood, fit and posterior against the exercise's method; print as it goes.

    Parameters
    ----------
    n_sim
        Simulated events of the toy simulation.
    repeats
        Timings per measured quantity; the best one is kept.
    nuts
        Also time the full NUTS posterior (minutes).
    seed
        Seed of the simulation (``seed``), the data (``seed + 1``) and the sampler.

    Returns
    -------
    dict
        Every printed number: setup (``cpu_count``, ``n_sim``, ``n_sim_in_bins``, ``n_obs``,
        ``n_obs_in_bins``), the likelihood check (``loglike_*``), per-evaluation times and their
        ratio (``eval_*``), the two fits (``fit_*``), the posterior (``nuts_*``, if run) and
        whether each target was met (``*_met``).

    Raises
    ------
    ValueError
        ``n_sim`` or ``repeats`` below 1.
    RuntimeError
        The two log-likelihoods disagree at the truth: the timings would compare different
        computations.
    """
    if n_sim < 1 or repeats < 1:
        raise ValueError(f"n_sim and repeats must be >= 1, got {n_sim} and {repeats}.")
    out: dict[str, Any] = {"cpu_count": os.cpu_count(), "n_sim": int(n_sim), "seed": int(seed)}
    _say(f"astroweights bench neutrino: n_sim = {n_sim:,}, repeats = {repeats}, seed = {seed}")
    _say(f"machine: os.cpu_count() = {os.cpu_count()}")

    # 1. Same simulation and data for both methods.
    t0 = time.perf_counter()
    sim = simulate_hese_toy(n_sim, rng=seed)
    data = simulate_hese_data(sim, **TRUTH, rng=seed + 1)
    binning = HESEBinning()
    inputs = model_inputs(sim, data, binning)
    out["setup_s"] = time.perf_counter() - t0
    counts = np.asarray(inputs["counts"])
    out["n_sim_in_bins"] = int((inputs["mc_bin"] >= 0).sum())
    out["n_obs"] = int(data["energy"].size)
    out["n_obs_in_bins"] = int(counts.sum())
    out["n_bins"] = binning.n_bins
    _say(
        f"simulation: {n_sim:,} events, {out['n_sim_in_bins']:,} inside the {binning.n_bins} "
        f"bins; data: {out['n_obs']:,} events, {out['n_obs_in_bins']:,} inside "
        f"(setup {out['setup_s']:.2f} s)"
    )

    # 2. The reference: masks built once, outside every timed region, as in the exercise.
    w_atmo = np.asarray(sim["atmoWeight"], dtype=np.float64)
    w_astro = np.asarray(sim["astroWeight"], dtype=np.float64)
    e_primary = np.asarray(sim["primaryEnergy"], dtype=np.float64)
    t0 = time.perf_counter()
    masks = reference_masks(sim["energy"], sim["zenith"], sim["topology"], binning)
    out["ref_masks_s"] = time.perf_counter() - t0
    _say(f"reference: {len(masks)} masks built in {out['ref_masks_s']:.2f} s (not timed below)")
    ref_nll = reference_objective(counts, masks, w_atmo, w_astro, e_primary)
    truth = tuple(TRUTH[p] for p in PARAMS)

    # 3. Ours, and the check that both compute the same likelihood.
    t0 = time.perf_counter()
    model = build_model(**inputs)
    out["build_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    plain = remove_value_transforms(model)
    loglike_fn = plain.compile_logp(vars=plain.observed_RVs, jacobian=False)
    ours_loglike = float(loglike_fn(dict(TRUTH)))
    ref_loglike = -ref_nll(truth)
    rel = abs(ours_loglike - ref_loglike) / max(abs(ref_loglike), np.finfo(float).tiny)
    out.update(
        loglike_ours=ours_loglike,
        loglike_reference=ref_loglike,
        loglike_rel_diff=rel,
        loglike_met=bool(rel <= AGREEMENT_TOL),
    )
    _say(
        f"ln L at truth: ours {ours_loglike:.10f}, reference {ref_loglike:.10f}, "
        f"relative difference {rel:.2e} (target <= {AGREEMENT_TOL:g}: "
        f"{_fmt(out['loglike_met'])})"
    )
    if not out["loglike_met"]:
        raise RuntimeError(
            f"our log-likelihood at the truth ({ours_loglike!r}) differs from the reference's "
            f"({ref_loglike!r}) by {rel:.2e} relative; the timings would not be comparable."
        )

    f = model.logp_dlogp_function(ravel_inputs=True)
    f.set_extra_values({})
    point = model.initial_point()
    x0 = np.concatenate([np.ravel(point[v.name]) for v in model.value_vars]).astype(f.dtype)
    for _ in range(5):
        f(x0)
    out["compile_s"] = time.perf_counter() - t0
    _say(f"ours: model built in {out['build_s']:.2f} s, compiled in {out['compile_s']:.2f} s")

    out["eval_reference_s"] = _best_time(lambda: ref_nll(truth), repeats)
    _say(f"reference -ln L evaluation: {out['eval_reference_s'] * 1e3:.3f} ms")
    out["eval_ours_s"] = _best_time(lambda: f(x0), repeats, CALLS_PER_TIMING)
    _say(f"ours ln L + gradient evaluation: {out['eval_ours_s'] * 1e3:.4f} ms")
    out["eval_ratio"] = out["eval_reference_s"] / out["eval_ours_s"]
    out["eval_met"] = bool(out["eval_ratio"] >= RATIO_TARGET)
    _say(
        f"ratio reference / ours: {out['eval_ratio']:.1f}x (target >= {RATIO_TARGET:g}x: "
        f"{_fmt(out['eval_met'])})"
    )

    # 4. Whole maximum-likelihood fits.
    _say("reference fit: L-BFGS-B, numerical gradients, from (1, 8, 2.5) ...")
    t0 = time.perf_counter()
    ref_fit = scipy.optimize.minimize(
        ref_nll,
        np.asarray(START, dtype=np.float64),
        method="L-BFGS-B",
        bounds=[(0, None), (0, None), (None, None)],
    )
    out["fit_reference_s"] = time.perf_counter() - t0
    out["fit_reference_nfev"] = int(ref_fit.nfev)
    out["fit_reference_point"] = dict(zip(PARAMS, map(float, ref_fit.x), strict=True))
    out["fit_reference_nll"] = float(ref_fit.fun)
    _say(
        f"reference fit: {out['fit_reference_s']:.2f} s, nfev {ref_fit.nfev}, "
        f"-ln L {ref_fit.fun:.6f}, point {_point(out['fit_reference_point'])}, "
        f"success {bool(ref_fit.success)}"
    )
    t0 = time.perf_counter()
    ours_fit = max_likelihood(model)
    out["fit_ours_s"] = time.perf_counter() - t0
    out["fit_ours_nfev"] = ours_fit.n_evaluations
    out["fit_ours_point"] = dict(ours_fit.params)
    out["fit_ours_nll"] = ours_fit.neg_log_likelihood
    out["fit_ratio"] = out["fit_reference_s"] / out["fit_ours_s"]
    _say(
        f"ours fit (compile included): {out['fit_ours_s']:.2f} s, nfev {ours_fit.n_evaluations}, "
        f"-ln L {ours_fit.neg_log_likelihood:.6f}, point {_point(ours_fit.params)}, "
        f"success {ours_fit.success}"
    )
    _say(f"fit ratio reference / ours: {out['fit_ratio']:.1f}x")

    # 5. The full posterior, timed from model build to finished draws.
    if nuts:
        _say("NUTS: build + sample_posterior(draws=1000, tune=1000, chains=2) ...")
        t0 = time.perf_counter()
        nuts_model = build_model(**inputs)
        t1 = time.perf_counter()
        idata = sample_posterior(
            nuts_model, draws=1000, tune=1000, chains=2, rng=seed, progressbar=False
        )
        t2 = time.perf_counter()
        diag = convergence(idata, list(PARAMS))
        out.update(
            nuts_build_s=t1 - t0,
            nuts_sample_s=t2 - t1,
            nuts_total_s=t2 - t0,
            nuts_max_r_hat=diag["max_r_hat"],
            nuts_min_ess_bulk=diag["min_ess_bulk"],
            nuts_min_ess_tail=diag["min_ess_tail"],
            nuts_divergences=diag["divergences"],
            nuts_converged=diag["ok"],
        )
        out["nuts_met"] = bool(out["nuts_total_s"] < NUTS_TARGET_S)
        _say(
            f"NUTS: build {out['nuts_build_s']:.2f} s + sample {out['nuts_sample_s']:.2f} s = "
            f"{out['nuts_total_s']:.2f} s (target < {NUTS_TARGET_S:g} s: "
            f"{_fmt(out['nuts_met'])})"
        )
        _say(
            f"NUTS: max r-hat {diag['max_r_hat']:.4f}, min bulk ESS {diag['min_ess_bulk']:.0f}, "
            f"min tail ESS {diag['min_ess_tail']:.0f}, divergences {diag['divergences']}"
        )

    _say()
    _say(_summary(out))
    return out


def _point(params: Mapping[str, float]) -> str:
    return "(" + ", ".join(f"{params[p]:.5f}" for p in PARAMS) + ")"


def _summary(out: Mapping[str, Any]) -> str:
    """Format the final table: quantity, ours, reference, ratio, target, met."""
    rows = [
        ["quantity", "ours", "reference", "ratio", "target", "met"],
        [
            "ln L at truth",
            f"{out['loglike_ours']:.6f}",
            f"{out['loglike_reference']:.6f}",
            f"rel {out['loglike_rel_diff']:.1e}",
            f"rel <= {AGREEMENT_TOL:g}",
            _fmt(out["loglike_met"]),
        ],
        [
            "one evaluation [ms]",
            _fmt(out["eval_ours_s"] * 1e3),
            _fmt(out["eval_reference_s"] * 1e3),
            f"{out['eval_ratio']:.1f}x",
            f">= {RATIO_TARGET:g}x",
            _fmt(out["eval_met"]),
        ],
        [
            "ML fit [s]",
            _fmt(out["fit_ours_s"]),
            _fmt(out["fit_reference_s"]),
            f"{out['fit_ratio']:.1f}x",
            "-",
            "-",
        ],
        ["ML fit nfev", _fmt(out["fit_ours_nfev"]), _fmt(out["fit_reference_nfev"]), "-", "-", "-"],
        [
            "ML fit -ln L",
            f"{out['fit_ours_nll']:.6f}",
            f"{out['fit_reference_nll']:.6f}",
            "-",
            "-",
            "-",
        ],
    ]
    if "nuts_total_s" in out:
        rows += [
            [
                "NUTS build+sample [s]",
                _fmt(out["nuts_total_s"]),
                "-",
                "-",
                f"< {NUTS_TARGET_S:g}",
                _fmt(out["nuts_met"]),
            ],
            ["NUTS max r-hat", f"{out['nuts_max_r_hat']:.4f}", "-", "-", "<= 1.01", "-"],
            ["NUTS min bulk ESS", f"{out['nuts_min_ess_bulk']:.0f}", "-", "-", ">= 400", "-"],
        ]
        rows[-2][-1] = _fmt(out["nuts_max_r_hat"] <= 1.01)
        rows[-1][-1] = _fmt(out["nuts_min_ess_bulk"] >= 400)
    setup = (
        f"machine: {out['cpu_count']} CPUs; n_sim {out['n_sim']:,} ({out['n_sim_in_bins']:,} "
        f"inside bins); data {out['n_obs']:,} events ({out['n_obs_in_bins']:,} inside bins)"
    )
    return _table(rows) + "\n" + setup


def _cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m models.benchmarks.neutrino",
        description="Time the neutrino diffuse likelihood and fit against per-bin masks.",
    )
    parser.add_argument("--n-sim", type=int, default=1_000_000, help="simulated events")
    parser.add_argument("--repeats", type=int, default=5, help="timings per quantity (best kept)")
    parser.add_argument("--skip-nuts", action="store_true", help="time only likelihood and MLE")
    parser.add_argument("--seed", type=int, default=1, help="seed of everything random")
    args = parser.parse_args(argv)
    if args.n_sim < 1 or args.repeats < 1:
        parser.error("--n-sim and --repeats must be >= 1")
    main(n_sim=args.n_sim, repeats=args.repeats, nuts=not args.skip_nuts, seed=args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(_cli())
