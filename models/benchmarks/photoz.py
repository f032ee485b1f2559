"""Photometric redshifts: our GPz-like model against scikit-learn's gradient boosting, one run.

What is timed
-------------
The issue's target: training and prediction wall time for 5,000 training galaxies with 100
basis functions, against the scikit-learn baseline, in one run.

1. Ours, stage by stage: the basis functions (:func:`data_tools.photoz.rbf_basis`: k-means centres
   and the Gaussian-process length scales); the model (:func:`models.photoz.build_model`: ARD
   relevances and the preconditioner, computed once; Student-t noise by default, as
   ``run photoz``, or ``--likelihood normal``); the fit (:func:`models.photoz.fit`) with NUTS
   (its default low-rank mass matrix), 2 chains of 1000 tuning and 1000 kept draws, and with ADVI
   (its default steps and convergence check, then 2000 draws), each with compilation and the
   pointwise log-likelihood that :func:`~models.photoz.fit` adds by default included; and the
   prediction (:func:`models.photoz.predict`, compilation included, then
   :func:`models.photoz.prediction_summary`), 2000 predictive draws per test galaxy. Basis and model
   are built once and shared by both fits; each method's training total is basis + build + its fit.
   The model is built without ``feature_errors`` (``run photoz`` passes them by default): they add
   one data vector, computed in ``build_model``, and do not change what is sampled.
2. The reference: ``sklearn.ensemble.HistGradientBoostingRegressor`` (defaults, as the
   baseline of ``astroweights run photoz``) ``fit`` on ``ln(1 + z)`` and ``predict``.

The table gives seconds of ours and of the reference and their ratio *ours / reference*: how
many times longer ours takes (the other benchmarks print reference / ours because there ours
is the faster; here the reference is a point estimator and far cheaper, so the slow-down reads
better). Below it: sigma_NMAD, bias and outlier fraction of both on the test set
(:func:`data_tools.photoz.point_metrics`, ours' point estimate is the predictive median) and the
coverage of our 68 % and 95 % predictive intervals (:func:`data_tools.photoz.interval_metrics`).

Which galaxies
--------------
One catalogue of ``n_train + n_test`` galaxies is simulated
(:func:`data_tools.photoz.simulate_galaxy_catalog`) and split at random: ``n_train`` train on
their true redshift, the other ``n_test`` are predicted and scored against theirs. This
training set is *unbiased* (a random sample of the population), unlike the catalogue's
spectroscopic subset (about 15 % of the galaxies, brighter and at lower redshift). The
benchmark is about time, not bias: an unbiased split needs 10,000 simulated galaxies rather
than ~35,000 to reach 5,000 spectra, gives a test set from the same population whose metrics
are easy to read, and leaves the bias question to ``astroweights run photoz``, which trains on
the spectroscopic subset with and without weights.

Why it is fair
--------------
Both methods see the same features (:func:`models.runs.photoz.regression_features`: three
colours and F160W), the same training and test galaxies and the same target in the same
process. The two cores are used by both: NUTS runs its two chains in parallel and the
gradient boosting uses OpenMP threads. The reference is timed twice, with its default threads
and with one (``threadpoolctl``), and the faster of each stage counts: on a 2-core machine
shared with another job, two spinning OpenMP threads made its fit six times *slower* than one
thread, and the reference should not pay for that. They do not do the same work: ours returns
a predictive distribution (2000 draws) per galaxy, the reference one number; the ratio is the
price of the distributions. Every stage is timed once; another job on the machine slows
everything, so the load average is printed at the start and the end. A method that raises is
reported as FAILED in the table (the others still run) and the command exits with status 1.

Run it as ``astroweights bench photoz`` or ``python -m models.benchmarks.photoz``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.ensemble import HistGradientBoostingRegressor
from threadpoolctl import threadpool_limits

from data_tools.photoz import (
    BANDS,
    interval_metrics,
    point_metrics,
    rbf_basis,
    simulate_galaxy_catalog,
)
from models.inference import convergence
from models.photoz import LIKELIHOODS, build_model, fit, predict, prediction_summary
from models.runs.photoz import feature_names, regression_features

__all__ = ["main"]

METHODS = ("nuts", "advi")
DRAWS, TUNE, CHAINS = 1000, 1000, 2


def _say(text: str = "") -> None:
    print(text, flush=True)


def _load() -> str:
    try:
        return "load average {:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg())
    except OSError:
        return "load average unavailable"


def _timed(label: str, fn, *args, **kwargs) -> tuple[Any, float]:
    """Run ``fn``, announce it before and its wall time after; return ``(result, seconds)``."""
    _say(f"  {label} ...")
    t0 = time.perf_counter()
    result = fn(*args, **kwargs)
    seconds = time.perf_counter() - t0
    _say(f"  {label}: {seconds:.2f} s")
    return result, seconds


def _table(rows: Sequence[Sequence[str]], right: int = 1) -> str:
    """Left-align the first ``right`` columns and right-align the rest, with a rule."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            cell.ljust(w) if i < right else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _ratio(ours: float | None, ref: float | None) -> str:
    if ours is None or ref is None:
        return "-"
    r = ours / ref
    return f"{r:.0f}x" if r >= 10 else f"{r:.2g}x"


def main(
    *,
    n_train: int = 5000,
    n_test: int = 5000,
    n_basis: int = 100,
    seed: int = 1,
    methods: Sequence[str] = METHODS,
    likelihood: str = "student_t",
) -> dict[str, Any]:
    """Time training and prediction of ours and of gradient boosting; print as it goes.

    Parameters
    ----------
    n_train, n_test
        Training and test galaxies, a random split of one simulated catalogue.
    n_basis
        Radial basis functions, ``1 <= n_basis <= n_train``.
    seed
        Seed of the catalogue, the split, the basis, the fits and the prediction.
    methods
        Our fitting methods to time, from ``("nuts", "advi")`` (NUTS takes minutes).
    likelihood
        The model's noise, ``"student_t"`` (``run photoz``'s default) or ``"normal"`` (GPz's).

    Returns
    -------
    dict
        Every printed number: ``basis_s``, ``build_s``; per method ``<method>_fit_s``,
        ``<method>_train_s`` (basis + build + fit), ``<method>_predict_s`` and its metrics
        ``<method>_sigma_nmad``, ``_bias``, ``_outlier_fraction``, ``_coverage_68``,
        ``_coverage_95`` (NUTS adds ``nuts_max_r_hat``, ``nuts_min_ess_bulk``,
        ``nuts_divergences``; ADVI ``advi_steps``); the same timings and point metrics with
        prefix ``hgb_`` (each timing the faster of ``hgb_*_s_default`` and
        ``hgb_*_s_1thread``); ``<method>_error`` for a method that raised; and the setup
        (``cpu_count``, ``n_train``, ``n_test``, ``n_basis``, ``seed``, ``load_end``).

    Raises
    ------
    ValueError
        Sizes below 1, ``n_basis > n_train``, an unknown method or likelihood.
    """
    for name, value in (("n_train", n_train), ("n_test", n_test), ("n_basis", n_basis)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
    if n_basis > n_train:
        raise ValueError(
            f"n_basis={n_basis} exceeds n_train={n_train}; use fewer basis functions or more "
            f"training galaxies."
        )
    methods = tuple(methods)
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"methods must be chosen from {METHODS}, got {list(methods)}.")
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}.")
    seeds = np.random.SeedSequence(seed).spawn(5 + len(METHODS))
    out: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "n_train": int(n_train),
        "n_test": int(n_test),
        "n_basis": int(n_basis),
        "likelihood": likelihood,
        "seed": int(seed),
    }
    _say(
        f"astroweights bench photoz: {n_train:,} training and {n_test:,} test galaxies, "
        f"{n_basis} basis functions, {likelihood} noise, "
        f"methods {', '.join(methods) or 'none'}, seed {seed}"
    )
    _say(f"machine: os.cpu_count() = {os.cpu_count()}; {_load()}")

    # The same galaxies and features for both methods; none of this is timed.
    t0 = time.perf_counter()
    cat = simulate_galaxy_catalog(n_train + n_test, rng=np.random.default_rng(seeds[0]))
    order = np.random.default_rng(seeds[1]).permutation(len(cat))
    train, test = order[:n_train], order[n_train : n_train + n_test]
    X = regression_features(cat, BANDS)
    z = cat["z_true"].to_numpy()
    X_train, z_train, X_test, z_test = X[train], z[train], X[test], z[test]
    n_spec = int(np.isfinite(cat["z_spec"].to_numpy()).sum())
    _say(
        f"catalogue: {len(cat):,} galaxies simulated in {time.perf_counter() - t0:.1f} s "
        f"({n_spec:,} with z_spec, not used: training is a random split on z_true); "
        f"features {', '.join(feature_names(BANDS))}; median z train {np.median(z_train):.2f}, "
        f"test {np.median(z_test):.2f}"
    )

    # The reference first: seconds, and it fails fast if the features are wrong. Timed with
    # its default threads and with one; the faster counts (see the module docstring).
    hgb_seed = int(np.random.default_rng(seeds[2]).integers(2**31 - 1))
    y_hgb = None
    for threads in (None, 1):
        label = "1 thread" if threads == 1 else "default threads"
        _say(f"reference: HistGradientBoostingRegressor on ln(1 + z), {label}")
        hgb = HistGradientBoostingRegressor(random_state=hgb_seed)
        with threadpool_limits(threads):
            _, fit_s = _timed("fit", hgb.fit, X_train, np.log1p(z_train))
            y, predict_s = _timed("predict", hgb.predict, X_test)
        y_hgb = y if y_hgb is None else y_hgb
        out[f"hgb_fit_s_{'1thread' if threads == 1 else 'default'}"] = fit_s
        out[f"hgb_predict_s_{'1thread' if threads == 1 else 'default'}"] = predict_s
    out["hgb_fit_s"] = min(out["hgb_fit_s_default"], out["hgb_fit_s_1thread"])
    out["hgb_predict_s"] = min(out["hgb_predict_s_default"], out["hgb_predict_s_1thread"])
    out["hgb_train_s"] = out["hgb_fit_s"]
    for key, value in point_metrics(z_spec=z_test, z_phot=np.expm1(y_hgb)).items():
        if key != "n":
            out[f"hgb_{key}"] = value

    _say(f"ours: GPz-like model, {n_basis} basis functions")
    basis, out["basis_s"] = _timed(
        "basis functions (k-means + GP length scales)",
        rbf_basis,
        X_train,
        z_train,
        n_basis,
        rng=np.random.default_rng(seeds[3]),
    )
    model, out["build_s"] = _timed(
        "build_model (ARD relevances + preconditioner)",
        build_model,
        X_train,
        z_train,
        basis=basis,
        likelihood=likelihood,
        feature_names=feature_names(BANDS),
    )
    for method in methods:
        try:
            out |= _time_method(
                method,
                model,
                X_test,
                z_test,
                rng=np.random.default_rng(seeds[5 + METHODS.index(method)]),
                shared_s=out["basis_s"] + out["build_s"],
            )
        except Exception as err:
            # A broken method is a result to report, not a reason to lose the others' numbers.
            out[f"{method}_error"] = f"{type(err).__name__}: {err}"
            _say(f"  {method.upper()} FAILED: {out[f'{method}_error']}")
            _say("".join(traceback.format_exception(err, limit=-3)).rstrip())

    out["load_end"] = _load()
    _say()
    _say(_summary(out, methods))
    return out


def _time_method(
    method: str,
    model,
    X_test: np.ndarray,
    z_test: np.ndarray,
    *,
    rng: np.random.Generator,
    shared_s: float,
) -> dict[str, Any]:
    """Fit with ``method``, predict the test galaxies, score; return timings and metrics."""
    out: dict[str, Any] = {}
    what = (
        f"NUTS {CHAINS} x ({TUNE} tune + {DRAWS} draws)"
        if method == "nuts"
        else f"ADVI, then {CHAINS * DRAWS} draws"
    )
    idata, out[f"{method}_fit_s"] = _timed(
        f"fit: {what}, compile and log-likelihood included",
        fit,
        model,
        method=method,
        draws=DRAWS,
        tune=TUNE,
        chains=CHAINS,
        rng=rng,
    )
    out[f"{method}_train_s"] = shared_s + out[f"{method}_fit_s"]
    if method == "nuts":
        diag = convergence(idata, ["coef", "noise_coef"])
        out.update(
            nuts_max_r_hat=diag["max_r_hat"],
            nuts_min_ess_bulk=diag["min_ess_bulk"],
            nuts_min_ess_tail=diag["min_ess_tail"],
            nuts_divergences=diag["divergences"],
        )
        _say(
            f"  NUTS: max r-hat {diag['max_r_hat']:.3f}, min bulk ESS "
            f"{diag['min_ess_bulk']:.0f}, min tail ESS {diag['min_ess_tail']:.0f}, "
            f"divergences {diag['divergences']}"
        )
    else:
        out["advi_steps"] = int(np.asarray(idata.attrs["advi_loss"]).size)
        _say(f"  ADVI: {out['advi_steps']:,} steps")

    def predict_and_summarise():
        samples = predict(model, idata, X_test, rng=rng).values
        return samples, prediction_summary(samples)

    (samples, summary), out[f"{method}_predict_s"] = _timed(
        f"predict {X_test.shape[0]:,} galaxies x {samples_per_galaxy(idata)} draws + summary, "
        f"compile included",
        predict_and_summarise,
    )
    metrics = point_metrics(z_spec=z_test, z_phot=summary["z_phot"])
    metrics |= interval_metrics(z_spec=z_test, samples=samples)
    for key, value in metrics.items():
        if key != "n":
            out[f"{method}_{key}"] = value
    return out


def samples_per_galaxy(idata) -> int:
    """Posterior draws in a fit, i.e. predictive draws per galaxy."""
    post = idata["posterior"]
    return int(post.sizes["chain"] * post.sizes["draw"])


def _summary(out: dict[str, Any], methods: Sequence[str]) -> str:
    """Format the timing table and the metrics table."""
    rows = [["stage", "ours [s]", "baseline [s]", "ratio ours/baseline"]]
    rows.append(["basis functions (k-means + GP length scales)", _s(out["basis_s"]), "-", "-"])
    rows.append(["build_model (ARD relevances + preconditioner)", _s(out["build_s"]), "-", "-"])
    for method in methods:
        name = method.upper()
        if f"{method}_error" in out:
            rows.append([f"{name}: FAILED ({out[f'{method}_error'].split(':')[0]}, see above)"])
            rows[-1] += ["-", "-", "-"]
            continue
        rows += [
            [f"{name} fit (compile + log-likelihood incl.)", _s(out[f"{method}_fit_s"]), "-", "-"],
            [
                f"training total, {name} (basis + build + fit)",
                _s(out[f"{method}_train_s"]),
                _s(out["hgb_train_s"]),
                _ratio(out[f"{method}_train_s"], out["hgb_train_s"]),
            ],
            [
                f"prediction, {name} (predict + summary)",
                _s(out[f"{method}_predict_s"]),
                _s(out["hgb_predict_s"]),
                _ratio(out[f"{method}_predict_s"], out["hgb_predict_s"]),
            ],
            [
                f"training + prediction, {name}",
                _s(out[f"{method}_train_s"] + out[f"{method}_predict_s"]),
                _s(out["hgb_train_s"] + out["hgb_predict_s"]),
                _ratio(
                    out[f"{method}_train_s"] + out[f"{method}_predict_s"],
                    out["hgb_train_s"] + out["hgb_predict_s"],
                ),
            ],
        ]
    if all(f"{m}_error" in out for m in methods):
        rows.append(["training, baseline", "-", _s(out["hgb_train_s"]), "-"])
        rows.append(["prediction, baseline", "-", _s(out["hgb_predict_s"]), "-"])

    metric_rows = [["test set", "sigma_NMAD", "bias", "outliers", "cov68", "cov95"]]
    done = [m for m in methods if f"{m}_error" not in out]
    for prefix, label in [*((m, f"ours, {m.upper()}") for m in done), ("hgb", "baseline")]:
        cov = [
            f"{out[f'{prefix}_coverage_{c}']:.3f}" if f"{prefix}_coverage_{c}" in out else "-"
            for c in (68, 95)
        ]
        metric_rows.append(
            [
                label,
                f"{out[f'{prefix}_sigma_nmad']:.4f}",
                f"{out[f'{prefix}_bias']:+.4f}",
                f"{out[f'{prefix}_outlier_fraction']:.4f}",
                *cov,
            ]
        )
    hgb_threads = (
        f"baseline fit {out['hgb_fit_s_default']:.2f} s with default threads, "
        f"{out['hgb_fit_s_1thread']:.2f} s with 1; predict {out['hgb_predict_s_default']:.2f} s, "
        f"{out['hgb_predict_s_1thread']:.2f} s (the faster counts)"
    )
    setup = (
        f"{out['n_train']:,} training and {out['n_test']:,} test galaxies (random split, z_true), "
        f"{out['n_basis']} basis functions, {out['likelihood']} noise; {out['cpu_count']} CPUs; "
        f"at the end: {out['load_end']}"
    )
    return _table(rows) + "\n" + hgb_threads + "\n\n" + _table(metric_rows) + "\n" + setup


def _cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m models.benchmarks.photoz",
        description="Time photo-z training and prediction against gradient boosting.",
    )
    parser.add_argument("--train", type=int, default=5000, help="training galaxies")
    parser.add_argument("--test", type=int, default=5000, help="test galaxies")
    parser.add_argument("--basis", type=int, default=100, help="radial basis functions")
    parser.add_argument("--seed", type=int, default=1, help="seed of everything random")
    parser.add_argument("--skip-nuts", action="store_true", help="time ADVI only (no NUTS)")
    parser.add_argument(
        "--likelihood", choices=LIKELIHOODS, default="student_t", help="the model's noise"
    )
    args = parser.parse_args(argv)
    if min(args.train, args.test, args.basis) < 1:
        parser.error("--train, --test and --basis must be >= 1")
    if args.basis > args.train:
        parser.error("--basis must not exceed --train")
    methods = ("advi",) if args.skip_nuts else METHODS
    out = main(
        n_train=args.train,
        n_test=args.test,
        n_basis=args.basis,
        seed=args.seed,
        methods=methods,
        likelihood=args.likelihood,
    )
    return int(any(f"{m}_error" in out for m in methods))


if __name__ == "__main__":
    sys.exit(_cli())
