"""The ``astroweights`` command line.

``astroweights run neutrino [...]`` fits one use case and writes its standard output set;
``astroweights demo`` runs every implemented use case at small size; ``astroweights bench
neutrino`` times our likelihood and fit against the exercise's method in the same run;
``astroweights run gamma-dm`` runs the seed's DM search;
``astroweights sbc mass-luminosity --replicates 100`` runs simulation-based calibration on a
Dask cluster (local by default) and can be interrupted and resumed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

__all__ = ["main"]


def _int_at_least(minimum: int):
    """Return an argparse type that accepts whole numbers >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a number >= {minimum}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)
_nonnegative_int = _int_at_least(0)


def _existing_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return path


def _components(text: str) -> int | str:
    if text == "bic":
        return "bic"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an integer >= 1 or 'bic', got {text!r}"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1 or 'bic', got {text!r}")
    return value


def _option(text: str) -> tuple[str, object]:
    """Parse ``KEY=VALUE`` (VALUE a number when it reads as one)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    for kind in (int, float):
        try:
            return key.replace("-", "_"), kind(value)
        except ValueError:
            pass
    return key.replace("-", "_"), value


PHOTOZ_LIKELIHOODS = ("student_t", "normal")
"""``models.photoz.LIKELIHOODS``, default first, spelled out so parsing does not import PyMC."""

PHOTOZ_WEIGHTINGS = ("mixture", "selection")
"""``models.runs.photoz.WEIGHTINGS``, default first, spelled out for the same reason."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="astroweights",
        description="Bayesian fits of astro-particle problems whose awkward part is precomputed "
        "as weights.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="fit one use case and write its results")
    run_sub = run.add_subparsers(dest="use_case", required=True)
    nu = run_sub.add_parser(
        "neutrino",
        help="neutrino diffuse-flux fit (simulated by default, or --data/--sim JSON files)",
    )
    nu.add_argument("--data", type=_existing_file, help="observed events, HESE JSON schema")
    nu.add_argument("--sim", type=_existing_file, help="simulated events, HESE JSON schema")
    nu.add_argument("--out", type=Path, default=Path("results/neutrino"), help="output folder")
    nu.add_argument(
        "--n-sim",
        type=_positive_int,
        default=1_000_000,
        help="simulated events when simulating (default 1,000,000)",
    )
    nu.add_argument("--draws", type=_positive_int, default=1000, help="draws per chain")
    nu.add_argument("--tune", type=_nonnegative_int, default=1000, help="tuning steps per chain")
    nu.add_argument("--chains", type=_positive_int, default=2, help="number of chains")
    nu.add_argument("--seed", type=int, default=20260, help="seed of everything random")
    nu.add_argument("--likelihood", choices=("poisson", "effective"), default="poisson")
    nu.add_argument(
        "--no-compare", action="store_true", help="skip the log-parabola fit and the LOO comparison"
    )
    nu.add_argument("--quiet", action="store_true", help="no progress or report on stdout")

    ml = run_sub.add_parser(
        "mass-luminosity",
        help="halo mass-luminosity relation (simulated lightcone by default, or --data CSV)",
    )
    ml.add_argument("--data", type=_existing_file, help="catalogue CSV with columns z, lum_obs")
    ml.add_argument("--out", type=Path, default=Path("results/mass_luminosity"))
    ml.add_argument(
        "--halos",
        type=_positive_int,
        default=20_000,
        help="halos to simulate (default 20,000; the original had 115,919)",
    )
    ml.add_argument(
        "--samples",
        type=_positive_int,
        default=32,
        help="importance samples (or quadrature nodes) per halo (default 32: the k-hat check)",
    )
    ml.add_argument("--method", choices=("importance", "quadrature"), default="importance")
    ml.add_argument("--priors", choices=("weak", "original"), default="weak")
    ml.add_argument("--draws", type=_positive_int, default=1000, help="draws per chain")
    ml.add_argument("--tune", type=_nonnegative_int, default=1000, help="tuning steps per chain")
    ml.add_argument("--chains", type=_positive_int, default=2, help="number of chains")
    ml.add_argument("--seed", type=int, default=20260, help="seed of everything random")
    ml.add_argument("--quiet", action="store_true", help="no progress or report on stdout")

    gd = run_sub.add_parser(
        "gamma-dm",
        help="gamma-ray DM search: the seed's 500 events, 5 h at the Galactic Centre",
        description="Simulate events from DM plus cosmic-ray, local-source and diffuse "
        "backgrounds through a CTA-South-like response, marginalise the true energy and "
        "direction, fit the mixture with NUTS and compare with a background-only model by LOO.",
    )
    gd.add_argument("--out", type=Path, default=Path("results/gamma_dm"), help="output folder")
    gd.add_argument("--events", type=_positive_int, default=500, help="measured events")
    gd.add_argument("--signal-fraction", type=float, default=0.5, help="DM share of the events")
    gd.add_argument("--mass", type=float, default=1.0, help="DM mass in TeV (0.12-80)")
    gd.add_argument("--livetime-h", type=float, default=5.0, help="observation time in hours")
    gd.add_argument("--draws", type=_positive_int, default=1000, help="draws per chain")
    gd.add_argument("--tune", type=_nonnegative_int, default=1000, help="tuning steps per chain")
    gd.add_argument("--chains", type=_positive_int, default=2, help="number of chains")
    gd.add_argument("--seed", type=int, default=20260, help="seed of everything random")
    gd.add_argument(
        "--no-compare",
        action="store_true",
        help="skip the background-only fit, the LOO comparison and the SMC Bayes factor",
    )
    gd.add_argument("--quiet", action="store_true", help="no progress or report on stdout")

    pz = run_sub.add_parser(
        "photoz",
        help="photometric redshifts with Gaussian-mixture weights and divide (simulated "
        "deep field by default, or --data CSV)",
        description="Train a GPz-like sparse Gaussian process on a biased spectroscopic sample "
        "as it is, with mixture density-ratio weights, divided by mixture component, or both; "
        "score every variant and a gradient-boosting baseline on one held-out test set.",
    )
    pz.add_argument("--data", type=_existing_file, help="catalogue CSV: magnitudes, errors, z_spec")
    pz.add_argument("--out", type=Path, default=Path("results/photoz"), help="output folder")
    pz.add_argument(
        "--galaxies", type=_positive_int, default=10_000, help="galaxies to simulate (10,000)"
    )
    pz.add_argument(
        "--test-size", type=_positive_int, default=2_000, help="held-out test galaxies (2,000)"
    )
    pz.add_argument(
        "--components",
        type=_components,
        default=4,
        help="mixture components, or 'bic' to choose by BIC (default 4, the seed's)",
    )
    pz.add_argument(
        "--mode",
        dest="modes",
        nargs="+",
        choices=("simple", "weighted", "divide", "divide-weighted"),
        default=["simple", "weighted", "divide", "divide-weighted"],
        help="training variants to run and compare (default: all four)",
    )
    pz.add_argument(
        "--threshold",
        type=float,
        default=0.2,
        help="divide membership threshold (0.2, as the guide)",
    )
    pz.add_argument("--max-weight", type=float, default=100.0, help="cap on the weights (100)")
    pz.add_argument(
        "--max-leverage",
        type=float,
        default=0.5,
        help="widen every basis function until no training galaxy holds more than this share of "
        "its squared response, in (0.05, 1] (default 0.5: the weight of a function one "
        "galaxy dominates mixes slowly; 1: no limit)",
    )
    pz.add_argument(
        "--weights",
        choices=PHOTOZ_WEIGHTINGS,
        default=PHOTOZ_WEIGHTINGS[0],
        help="the weighted variants' weights: the mixtures' density ratio (default), or, for a "
        "simulated catalogue, the survey's true selection (a reference for the mixtures' estimate)",
    )
    pz.add_argument(
        "--photometric-errors",
        choices=("propagate", "noise-inputs", "ignore"),
        default="propagate",
        help="how the magnitude errors widen the predictions: propagated through the fitted "
        "colour-redshift relation (GPz's input noise, default), as inputs of the log-noise "
        "(GPz++), or not at all",
    )
    pz.add_argument(
        "--likelihood",
        choices=PHOTOZ_LIKELIHOODS,
        default=PHOTOZ_LIKELIHOODS[0],
        help="noise of ln(1 + z) about the mean: Student-t (default; robust to the colour "
        "degeneracies' catastrophic outliers) or normal (GPz)",
    )
    pz.add_argument("--basis", type=_positive_int, default=100, help="basis functions (100)")
    pz.add_argument(
        "--method",
        choices=("auto", "nuts", "advi"),
        default="auto",
        help="NUTS, ADVI, or auto: NUTS up to 5,000 training galaxies",
    )
    pz.add_argument("--draws", type=_positive_int, default=2000, help="draws per chain (2000)")
    pz.add_argument("--tune", type=_nonnegative_int, default=1000, help="tuning steps per chain")
    pz.add_argument("--chains", type=_positive_int, default=2, help="number of chains")
    pz.add_argument("--seed", type=int, default=20260, help="seed of everything random")
    pz.add_argument(
        "--bands",
        nargs="+",
        default=["F606W", "F814W", "F125W", "F160W"],
        help="bands, blue to red (with --data)",
    )
    pz.add_argument("--mag-prefix", default="lupt_", help="magnitude column prefix (with --data)")
    pz.add_argument("--err-prefix", default="lupterr_", help="error column prefix (with --data)")
    pz.add_argument("--z-column", default="z_spec", help="spectroscopic redshift column")
    pz.add_argument(
        "--no-compare", action="store_true", help="skip the LOO comparison of noise models"
    )
    pz.add_argument(
        "--no-refit",
        action="store_true",
        help="do not fit a model again with four times the draws and tuning when its NUTS fit "
        "fails the convergence check",
    )
    pz.add_argument("--quiet", action="store_true", help="no progress or report on stdout")

    demo = sub.add_parser("demo", help="every implemented use case at small size (minutes)")
    demo.add_argument("--out", type=Path, default=Path("results/demo"), help="output folder")
    demo.add_argument("--seed", type=int, default=20260)

    bench = sub.add_parser("bench", help="benchmarks against the original methods")
    bench_sub = bench.add_subparsers(dest="use_case", required=True)
    bnu = bench_sub.add_parser("neutrino", help="likelihood and fit timings vs per-bin masks")
    bnu.add_argument("--n-sim", type=_positive_int, default=1_000_000)
    bnu.add_argument("--repeats", type=_positive_int, default=5)
    bnu.add_argument("--skip-nuts", action="store_true", help="time only the likelihood and MLE")
    bnu.add_argument("--seed", type=int, default=1)
    bml = bench_sub.add_parser("mass-luminosity", help="log L timings vs the original sampler")
    bml.add_argument("--halos", type=_positive_int, default=115_919)
    bml.add_argument("--repeats", type=_positive_int, default=3)
    bml.add_argument("--skip-nuts", action="store_true", help="time only the likelihood")
    bml.add_argument("--seed", type=int, default=1)
    bml.add_argument(
        "--samples", type=_positive_int, default=32, help="importance samples per halo (default)"
    )

    bgd = bench_sub.add_parser(
        "gamma-dm", help="marginalisation vs the original's per-bin scan; NUTS and SMC timings"
    )
    bgd.add_argument("--skip-nuts", action="store_true", help="time only the marginalisation")
    bgd.add_argument("--seed", type=int, default=1)
    bpz = bench_sub.add_parser(
        "photoz", help="photo-z training and prediction vs HistGradientBoostingRegressor"
    )
    bpz.add_argument("--train", type=_positive_int, default=5000, help="training galaxies")
    bpz.add_argument("--test", type=_positive_int, default=5000, help="galaxies to predict")
    bpz.add_argument("--basis", type=_positive_int, default=100, help="basis functions")
    bpz.add_argument("--skip-nuts", action="store_true", help="time ADVI only")
    bpz.add_argument(
        "--likelihood",
        choices=PHOTOZ_LIKELIHOODS,
        default=PHOTOZ_LIKELIHOODS[0],
        help="the model's noise (run photoz's default: student_t)",
    )
    bpz.add_argument("--seed", type=int, default=1)
    bsbc = bench_sub.add_parser("sbc", help="SBC replicates per minute on 1 and 2 local workers")
    bsbc.add_argument("--case", default="gamma-dm", help="use case (default gamma-dm)")
    bsbc.add_argument("--replicates", type=_positive_int, default=60)
    bsbc.add_argument("--size", choices=("small", "medium"), default="small")
    sbc = sub.add_parser(
        "sbc",
        help="simulation-based calibration of a use case on a Dask cluster (resumable)",
        description="Draw parameters from the prior, simulate, fit, rank the truths; replicates "
        "run as Dask tasks and are written as they finish, so rerunning the same command "
        "resumes. Writes sbc.nc, ranks.csv, summary.json and sbc.png.",
    )
    from models.calibration import CASES

    sbc.add_argument("use_case", choices=sorted(CASES))
    sbc.add_argument("--replicates", type=_positive_int, default=100)
    sbc.add_argument(
        "--size",
        choices=("small", "medium", "full"),
        default="small",
        help="mass-luminosity: 300, 2,000 or 115,919 (full) halos; neutrino: 20,000 or "
        "100,000 simulated events; gamma-dm: 200 or 500 measured events; photoz: deep fields "
        "of 1,500 or 6,000 galaxies",
    )
    sbc.add_argument("--out", type=Path, default=None, help="default results/sbc/<use case>-<size>")
    sbc.add_argument("--seed", type=int, default=0, help="replicate i uses SeedSequence(seed, i)")
    sbc.add_argument(
        "--scheduler", default=None, help="address of a running Dask scheduler (tcp://host:8786)"
    )
    sbc.add_argument(
        "--workers",
        type=_positive_int,
        default=None,
        help="local worker processes (default: cores)",
    )
    sbc.add_argument(
        "--option",
        type=_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="passed to the use case's replicate, e.g. fit_sigma_obs=0.15 (a mis-specified "
        "mass-luminosity fit), method=importance|adaptive, priors=original, "
        "truth=hyper-seed (parameter recovery at fixed truths), likelihood=effective",
    )
    sbc.add_argument("--quiet", action="store_true", help="no progress or verdicts on stdout")
    return parser


def _config(cls, args: argparse.Namespace, **extra):
    """Build a run's config dataclass from the parsed options of the same names."""
    names = {f.name for f in dataclasses.fields(cls)} - set(extra)
    return cls(**{k: v for k, v in vars(args).items() if k in names}, **extra)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``astroweights`` command."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    args = _parser().parse_args(argv)
    try:
        if args.command == "run" and args.use_case == "neutrino":
            from models.runs.neutrino import NeutrinoRunConfig, run

            report = run(_config(NeutrinoRunConfig, args, compare=not args.no_compare))
            return 0 if report["diagnostics"]["ok"] else 1
        if args.command == "run" and args.use_case == "mass-luminosity":
            from models.runs.mass_luminosity import MassLuminosityRunConfig
            from models.runs.mass_luminosity import run as run_ml

            report = run_ml(_config(MassLuminosityRunConfig, args))
            return 0 if report["diagnostics"]["ok"] else 1
        if args.command == "run" and args.use_case == "gamma-dm":
            from models.runs.gamma_dm import GammaRunConfig
            from models.runs.gamma_dm import run as run_gamma

            report = run_gamma(_config(GammaRunConfig, args, compare=not args.no_compare))
            return 0 if report["diagnostics"]["ok"] else 1
        if args.command == "run" and args.use_case == "photoz":
            from models.runs.photoz import PhotozRunConfig
            from models.runs.photoz import run as run_photoz

            report = run_photoz(
                _config(
                    PhotozRunConfig,
                    args,
                    compare=not args.no_compare,
                    refit=not args.no_refit,
                    modes=tuple(args.modes),
                    bands=tuple(args.bands),
                )
            )
            return 0 if report["diagnostics"]["ok"] else 1
        if args.command == "sbc":
            from models.runs.sbc import run as run_sbc

            out = args.out or Path("results/sbc") / f"{args.use_case}-{args.size}"
            result = run_sbc(
                args.use_case,
                replicates=args.replicates,
                out=out,
                size=args.size,
                seed=args.seed,
                scheduler=args.scheduler,
                workers=args.workers,
                options=dict(args.option),
                quiet=args.quiet,
            )
            return 0 if bool(result["summary"]["passed"].all()) else 1
        if args.command == "demo":
            return _demo(args.out, args.seed)
        if args.command == "bench" and args.use_case == "neutrino":
            from models.benchmarks import neutrino as bench

            bench.main(
                n_sim=args.n_sim, repeats=args.repeats, nuts=not args.skip_nuts, seed=args.seed
            )
            return 0
        if args.command == "bench" and args.use_case == "mass-luminosity":
            from models.benchmarks import mass_luminosity as bench_ml

            bench_ml.main(
                n_halos=args.halos,
                repeats=args.repeats,
                nuts=not args.skip_nuts,
                seed=args.seed,
                n_samples=args.samples,
            )
            return 0
        if args.command == "bench" and args.use_case == "gamma-dm":
            from models.benchmarks import gamma_dm as bench_gd

            bench_gd.main(seed=args.seed, nuts=not args.skip_nuts)
            return 0
        if args.command == "bench" and args.use_case == "photoz":
            from models.benchmarks import photoz as bench_pz

            bench_pz.main(
                n_train=args.train,
                n_test=args.test,
                n_basis=args.basis,
                seed=args.seed,
                methods=("advi",) if args.skip_nuts else ("nuts", "advi"),
                likelihood=args.likelihood,
            )
            return 0
        if args.command == "bench" and args.use_case == "sbc":
            from models.benchmarks import sbc_throughput

            sbc_throughput.main(case=args.case, replicates=args.replicates, size=args.size)
            return 0
    except (ValueError, TypeError) as err:
        print(f"astroweights: error: {err}", file=sys.stderr)
        return 2
    raise AssertionError(f"unhandled command {args}")  # argparse makes this unreachable


def _demo(out: Path, seed: int) -> int:
    """Every implemented use case at a size that runs in a few minutes on 2 cores."""
    from models.runs.neutrino import NeutrinoRunConfig, run

    t0 = time.perf_counter()
    print("astroweights demo: neutrino diffuse fit (100,000 simulated events)", flush=True)
    report = run(NeutrinoRunConfig(out=out / "neutrino", n_sim=100_000, seed=seed))
    ok = report["diagnostics"]["ok"]
    from models.runs.mass_luminosity import MassLuminosityRunConfig
    from models.runs.mass_luminosity import run as run_ml

    print("\nastroweights demo: halo mass-luminosity relation (2,000 halos)", flush=True)
    report = run_ml(MassLuminosityRunConfig(out=out / "mass_luminosity", halos=2_000, seed=seed))
    ok = ok and report["diagnostics"]["ok"]
    from models.runs.gamma_dm import GammaRunConfig
    from models.runs.gamma_dm import run as run_gamma

    print("\nastroweights demo: gamma-ray DM search (the seed's 500 events)", flush=True)
    report = run_gamma(GammaRunConfig(out=out / "gamma_dm", seed=seed))
    ok = ok and report["diagnostics"]["ok"]
    from models.runs.photoz import PhotozRunConfig
    from models.runs.photoz import run as run_photoz

    print("\nastroweights demo: photometric redshifts (4,000 galaxies, 30 functions)", flush=True)
    report = run_photoz(
        PhotozRunConfig(
            out=out / "photoz",
            galaxies=4_000,
            test_size=800,
            basis=30,
            # all four variants: at this size and the default seed every fit converges
            # without a refit (r-hat <= 1.005, bulk ESS >= 1,206; December 2026)
            seed=seed,
        )
    )
    ok = ok and report["diagnostics"]["ok"]
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f} s; results in {out}/", flush=True)
    if not ok:
        print("demo: convergence check failed (see report.json)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
