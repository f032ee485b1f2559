"""Simulation-based calibration (SBC), one engine for every use case, replicates as Dask tasks.

SBC (Talts et al. 2018; Modrák et al. 2023) checks that a model and its sampler give
calibrated posteriors: draw parameters from the prior, simulate a data set, fit it, and record
where each true parameter ranks among its posterior draws. If everything is right the ranks are
uniform. A use case provides one function, ``simulate_and_fit(seed, size, options)`` (see
:class:`Case`); this module runs the replicates, records them, tests and plots the ranks.

- **Reproducible.** Replicate ``i`` of a run with seed ``s`` draws everything from
  ``SeedSequence(s, spawn_key=(i,))``: it is the same whatever the number of replicates, and any
  replicate can be re-run alone (:func:`run_replicate`).
- **Distributed.** Replicates are Dask tasks: on a ``LocalCluster`` (one single-threaded worker
  process per core) by default, or on an existing cluster given its scheduler address. A worker
  that dies mid-replicate has its task re-run elsewhere by the scheduler.
- **Resumable.** Each replicate's record is written atomically to ``<out>/replicates/`` as it
  arrives; a rerun of the same command skips what is on disk, so an interrupted run (Ctrl-C, a
  lost machine) loses at most the replicates in flight. Replicates that fail (an exception, a
  worker killed too often) are recorded as failed and counted in the summary, never dropped.
- **Tested.** Per parameter: the PIT-ECDF uniformity test of arviz-stats (``pot_c``), a
  chi-square test of the rank histogram, and the coverage of the 50% and 90% central
  intervals; a parameter passes when its p-value is at least ``0.01 / n_parameters``.

The rank of a true value is counted among ``n_rank_draws`` draws thinned evenly from the pooled
chains (default 100 of 2 x 500), which keeps them nearly independent, as SBC needs; the PIT is
the rank plus a uniform jitter over ``n_rank_draws + 1`` (continuous and exactly uniform under
calibration).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from data_tools._io import atomic_path, atomic_write_text
from data_tools.checks import as_int

__all__ = [
    "CASES",
    "Case",
    "FitResult",
    "load_records",
    "replicate_seed",
    "run_replicate",
    "run_sbc",
    "summarise",
    "verdicts",
    "write_outputs",
]

N_RANK_DRAWS = 100
ALPHA = 0.01


@dataclass(frozen=True)
class FitResult:
    """What one replicate's ``simulate_and_fit`` returns.

    Attributes
    ----------
    truth
        The parameter values drawn from the prior, by name.
    draws
        Posterior draws by name, each of shape ``(chain, draw)``.
    diagnostics
        ``max_r_hat``, ``min_ess_bulk``, ``divergences`` (as :func:`models.inference.convergence`).
    """

    truth: Mapping[str, float]
    draws: Mapping[str, np.ndarray]
    diagnostics: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Case:
    """A use case's calibration: its parameters, sizes and simulate-and-fit function.

    ``function`` names ``module:attribute`` so that Dask workers import it rather than unpickle
    it; it is called as ``function(seed, size=size, **options)`` with ``seed`` a
    ``numpy.random.SeedSequence`` and returns a :class:`FitResult`.
    """

    name: str
    parameters: tuple[str, ...]
    sizes: Mapping[str, str]
    function: str
    option_parameters: Mapping[tuple[str, Any], tuple[str, ...]] = field(default_factory=dict)
    """Parameters ranked in addition when an option has a value: ``{(option, value): names}``
    (e.g. a likelihood option that adds a parameter to the model)."""

    def parameters_for(self, options: Mapping[str, Any] | None) -> tuple[str, ...]:
        """Return the parameters ranked by a study run with ``options``."""
        extra = [
            name
            for (option, value), names in self.option_parameters.items()
            if (options or {}).get(option) == value
            for name in names
        ]
        return (*self.parameters, *extra)

    def resolve(self) -> Callable[..., FitResult]:
        """Import and return the case's simulate-and-fit function."""
        module, attr = self.function.split(":")
        return getattr(importlib.import_module(module), attr)


CASES: dict[str, Case] = {
    "mass-luminosity": Case(
        "mass-luminosity",
        ("alpha1", "alpha2", "alpha4", "S"),
        {
            "small": "300 halos",
            "medium": "2,000 halos",
            "full": "115,919 halos, the original catalogue's size (method=adaptive)",
        },
        "models.runs.sbc:mass_luminosity_replicate",
    ),
    "neutrino": Case(
        "neutrino",
        ("atmo_norm", "astro_norm", "astro_gamma"),
        {"small": "HESE toy, 20,000 simulated events", "medium": "HESE toy, 100,000 events"},
        "models.runs.sbc:neutrino_replicate",
    ),
    "gamma-dm": Case(
        "gamma-dm",
        ("signal_fraction", "log10_mass", "cosmic_rays", "local_sources", "diffuse"),
        {"small": "200 events, 5 h at the GC", "medium": "500 events (the seed's), 5 h at the GC"},
        "models.runs.sbc:gamma_dm_replicate",
    ),
    "photoz": Case(
        "photoz",
        (
            "intercept",
            "slope_F814W-F125W",
            "slope_F160W",
            "basis_weight_0",
            "log_noise",
            "noise_slope_F160W",
            "noise_slope_F606W-F814W",
        ),
        {
            "small": "deep field of 1,500 galaxies (about 250 fitted), 10 basis functions",
            "medium": "deep field of 6,000 galaxies (about 1,000 fitted), 30 basis functions",
        },
        "models.runs.sbc:photoz_replicate",
        {("likelihood", "student_t"): ("nu",)},
    ),
}
"""The use cases SBC knows, by command-line name."""


def _case(case: str | Case, size: str) -> Case:
    """Return the :class:`Case` named (or given), with ``size`` checked against it."""
    if not isinstance(case, Case):
        if case not in CASES:
            raise ValueError(f"unknown use case {case!r}; choose one of {sorted(CASES)}.")
        case = CASES[case]
    if size not in case.sizes:
        raise ValueError(f"size must be one of {sorted(case.sizes)} for {case.name}, got {size!r}.")
    return case


def replicate_seed(seed: int, index: int) -> np.random.SeedSequence:
    """Return the seed of replicate ``index`` of a run seeded with ``seed``."""
    return np.random.SeedSequence(int(seed), spawn_key=(int(index),))


def run_replicate(
    case: str | Case,
    index: int,
    *,
    seed: int,
    size: str = "small",
    options: Mapping[str, Any] | None = None,
    n_rank_draws: int = N_RANK_DRAWS,
) -> dict[str, Any]:
    """Run one replicate and return its record (a JSON-able dict); never raises for a bad fit.

    ``case`` is a key of :data:`CASES` or a :class:`Case`. A fit that raises is recorded with
    ``status = "failed"`` and the error, so that it is counted rather than lost.
    """
    spec = _case(case, size)
    n_rank_draws = as_int("n_rank_draws", n_rank_draws)
    t0 = time.perf_counter()
    seq = replicate_seed(seed, index)
    fit_seed, jitter_seed = seq.spawn(2)
    record: dict[str, Any] = {
        "case": spec.name,
        "index": int(index),
        "seed": int(seed),
        "size": size,
    }
    try:
        result = spec.resolve()(fit_seed, size=size, **dict(options or {}))
        parameters = spec.parameters_for(options)
        record.update(_ranks(result, parameters, n_rank_draws, jitter_seed))
        record["status"] = "ok"
    except Exception as err:  # a failed replicate is data: record it, keep going
        record.update(status="failed", error=f"{type(err).__name__}: {err}")
        record["traceback"] = traceback.format_exc(limit=5)
    record["seconds"] = time.perf_counter() - t0
    return record


def _ranks(result: FitResult, parameters, n_rank_draws: int, jitter_seed) -> dict[str, Any]:
    if set(result.truth) != set(parameters):
        # the case's list (Case.parameters_for) and the replicate's truths must agree: an
        # unranked parameter would otherwise go unchecked without a word
        raise ValueError(
            f"the replicate returned truths for {sorted(result.truth)} but the case ranks "
            f"{sorted(parameters)}; make Case.parameters (or option_parameters) and the "
            f"replicate function name the same parameters."
        )
    out: dict[str, Any] = {"truth": {}, "rank": {}, "pit": {}, "mean": {}, "sd": {}}
    out["in50"], out["in90"] = {}, {}
    jitter = np.random.default_rng(jitter_seed).uniform(size=len(parameters))
    for p, u in zip(parameters, jitter, strict=True):
        truth = float(result.truth[p])
        pooled = np.asarray(result.draws[p], dtype=np.float64).ravel()
        if not np.isfinite(truth) or not np.all(np.isfinite(pooled)):
            raise ValueError(f"{p}: non-finite truth or posterior draws")
        if pooled.size < n_rank_draws:
            raise ValueError(f"{p}: {pooled.size} draws, fewer than n_rank_draws={n_rank_draws}")
        thinned = pooled[np.linspace(0, pooled.size - 1, n_rank_draws).round().astype(int)]
        rank = int(np.sum(thinned < truth))
        q = np.quantile(pooled, [0.05, 0.25, 0.75, 0.95])
        out["truth"][p] = truth
        out["rank"][p] = rank
        out["pit"][p] = (rank + u) / (n_rank_draws + 1)
        out["mean"][p] = float(pooled.mean())
        out["sd"][p] = float(pooled.std(ddof=1))
        out["in50"][p] = bool(q[1] <= truth <= q[2])
        out["in90"][p] = bool(q[0] <= truth <= q[3])
    out["n_rank_draws"] = int(n_rank_draws)
    out["diagnostics"] = {k: _plain(v) for k, v in result.diagnostics.items()}
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value


# --------------------------------------------------------------------------------------------
# Running many
# --------------------------------------------------------------------------------------------
def _record_path(out: Path, index: int) -> Path:
    return out / "replicates" / f"{index:05d}.json"


def _check_run_settings(out: Path, settings: Mapping[str, Any]) -> None:
    """Refuse to mix replicates of different settings in one folder."""
    path = out / "settings.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old != settings:
            raise ValueError(
                f"{out} holds an SBC run with other settings ({old}); "
                "use another --out or the same settings to resume it."
            )
    else:
        atomic_write_text(path, json.dumps(settings, indent=2) + "\n")


def run_sbc(
    case: str,
    replicates: int,
    *,
    out: str | os.PathLike[str],
    size: str = "small",
    seed: int = 0,
    options: Mapping[str, Any] | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    n_rank_draws: int = N_RANK_DRAWS,
    progress: bool = True,
) -> xr.Dataset:
    """Run (or resume) ``replicates`` SBC replicates of ``case`` and summarise them.

    Parameters
    ----------
    case
        A key of :data:`CASES`.
    replicates
        How many replicates the run has in all (those already on disk are not redone).
    out
        Folder for ``replicates/*.json`` (one per replicate, written as it finishes), and the
        summary files written by :func:`write_outputs`.
    size, options
        The case's configuration (``options`` are passed to its function, for example a
        deliberately mis-specified fit).
    scheduler
        Address of a running Dask scheduler (``tcp://host:8786``); default: a local cluster of
        ``workers`` single-threaded processes (default one per core).

    Returns
    -------
    xarray.Dataset
        The summary (see :func:`summarise`).
    """
    spec = _case(case, size)
    replicates = as_int("replicates", replicates)
    n_rank_draws = as_int("n_rank_draws", n_rank_draws)
    out = Path(out)
    settings = {
        "case": case,
        "size": size,
        "seed": int(seed),
        "options": dict(options or {}),
        "n_rank_draws": int(n_rank_draws),
    }
    _check_run_settings(out, settings)
    parameters = spec.parameters_for(options)
    todo = _todo(out, replicates, parameters)
    if todo:
        _run_on_dask(spec, todo, out, settings, scheduler, workers, progress, replicates)
    records = load_records(out, range(replicates))
    return summarise(records, parameters, settings)


def _todo(out: Path, replicates: int, parameters: Sequence[str]) -> list[int]:
    """Return the replicates to run: those without a record, and successful ones missing a rank.

    A record can lack a parameter's rank when an earlier version of the case did not rank it
    (e.g. nu of the Student-t photo-z model); resuming re-runs those replicates.
    """
    todo = []
    for i in range(replicates):
        found = load_records(out, [i])
        if not found or (
            found[0].get("status") == "ok" and not set(parameters) <= set(found[0].get("rank", {}))
        ):
            todo.append(i)
    return todo


def _run_on_dask(spec, todo, out, settings, scheduler, workers, progress, total) -> None:
    from dask.distributed import Client, LocalCluster, as_completed
    from distributed import KilledWorker
    from tqdm.auto import tqdm

    cluster = None
    if scheduler:
        client = Client(scheduler, timeout="30s")
    else:
        n = int(workers or os.cpu_count() or 1)
        cluster = LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",  # any free port: never collide with another cluster
            silence_logs=logging.ERROR,
        )
        client = Client(cluster)
    kwargs = {k: settings[k] for k in ("seed", "size", "options", "n_rank_draws")}
    failed = 0
    bar = tqdm(
        total=total,
        initial=total - len(todo),
        desc=f"SBC {spec.name}",
        unit="replicate",
        disable=not progress,
    )
    try:
        futures = {
            client.submit(
                run_replicate,
                spec,
                i,
                **kwargs,
                key=f"sbc-{spec.name}-{settings['size']}-{settings['seed']}-{i}",
                pure=False,
            ): i
            for i in todo
        }
        for fut in as_completed(futures):
            i = futures[fut]
            try:
                record = fut.result()
            except KilledWorker as err:  # the task took down its worker too many times
                record = {
                    "case": spec.name,
                    "index": i,
                    "status": "failed",
                    "error": f"KilledWorker: {err}",
                }
            fut.release()
            failed += record["status"] != "ok"
            atomic_write_text(_record_path(out, i), json.dumps(record) + "\n")
            bar.update(1)
            bar.set_postfix(failed=failed)
    finally:
        bar.close()
        client.close()
        if cluster is not None:
            cluster.close()


def load_records(out: str | os.PathLike[str], indices: Sequence[int] | range) -> list[dict]:
    """Read the records of ``indices`` from ``out/replicates`` (missing ones are skipped)."""
    out = Path(out)
    records = []
    for i in indices:
        path = _record_path(out, i)
        if path.exists():
            records.append(json.loads(path.read_text()))
    return records


# --------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------
def summarise(
    records: Sequence[Mapping[str, Any]],
    parameters: Sequence[str],
    settings: Mapping[str, Any] | None = None,
    *,
    n_bins: int = 20,
) -> xr.Dataset:
    """Rank statistics of the successful replicates, with tests and a verdict per parameter.

    Returns
    -------
    xarray.Dataset
        Over ``replicate`` x ``parameter``: ``truth``, ``rank``, ``pit``, ``post_mean``,
        ``post_sd``, ``in50``, ``in90``; over ``replicate``: ``max_r_hat``, ``divergences``,
        ``seconds``; over ``parameter``: ``p_uniform`` (PIT-ECDF test, ``pot_c``),
        ``p_chi2`` (rank histogram, ``n_bins`` bins), ``coverage50``, ``coverage90``,
        ``passed``, and the recovery z-scores ``(post_mean - truth) / post_sd``: their mean
        ``z_mean`` and largest magnitude ``z_max_abs``. Attributes: counts of replicates
        (``n_ok``, ``n_failed``, ``n_not_converged``), the p-value threshold, the failures'
        errors and the settings.
    """
    from arviz_stats.base import array_stats
    from scipy.stats import chisquare

    ok = [r for r in records if r.get("status") == "ok"]
    failed = [r for r in records if r.get("status") != "ok"]
    params = list(parameters)
    if not ok:
        raise ValueError(f"no successful replicate to summarise ({len(failed)} failed).")
    n_rank = int(ok[0]["n_rank_draws"])

    def table(key):
        return np.array([[r[key][p] for p in params] for r in ok], dtype=np.float64)

    def diag(key, default):
        return np.array([r.get("diagnostics", {}).get(key, default) for r in ok], dtype=float)

    ds = xr.Dataset(
        {
            "truth": (("replicate", "parameter"), table("truth")),
            "rank": (("replicate", "parameter"), table("rank").astype(int)),
            "pit": (("replicate", "parameter"), table("pit")),
            "post_mean": (("replicate", "parameter"), table("mean")),
            "post_sd": (("replicate", "parameter"), table("sd")),
            "in50": (("replicate", "parameter"), table("in50").astype(bool)),
            "in90": (("replicate", "parameter"), table("in90").astype(bool)),
            "max_r_hat": ("replicate", diag("max_r_hat", np.nan)),
            "divergences": ("replicate", diag("divergences", 0).astype(int)),
            "seconds": ("replicate", np.array([r["seconds"] for r in ok])),
        },
        coords={"replicate": [r["index"] for r in ok], "parameter": params},
    )
    pit = ds["pit"].values
    p_unif = np.array(
        [float(array_stats.uniformity_test(pit[:, j])[0]) for j in range(len(params))]
    )
    edges = np.linspace(0, n_rank + 1, n_bins + 1)
    counts = np.stack([np.histogram(ds["rank"].values[:, j], edges)[0] for j in range(len(params))])
    expected = np.diff(edges) / (n_rank + 1) * len(ok)
    p_chi2 = np.array([chisquare(c, expected * c.sum() / expected.sum()).pvalue for c in counts])
    threshold = ALPHA / len(params)
    ds["p_uniform"] = ("parameter", p_unif)
    ds["p_chi2"] = ("parameter", p_chi2)
    ds["coverage50"] = ("parameter", ds["in50"].mean("replicate").values)
    ds["coverage90"] = ("parameter", ds["in90"].mean("replicate").values)
    ds["passed"] = ("parameter", p_unif >= threshold)
    # parameter recovery: how far each posterior mean lies from the truth, in posterior sds
    z = (ds["post_mean"] - ds["truth"]) / ds["post_sd"]
    ds["z_mean"] = ("parameter", z.mean("replicate").values)
    ds["z_max_abs"] = ("parameter", np.abs(z).max("replicate").values)
    not_converged = int(np.sum((ds["max_r_hat"].values > 1.01) | (ds["divergences"].values > 0)))
    ds.attrs = {
        "n_replicates": len(records),
        "n_ok": len(ok),
        "n_failed": len(failed),
        "n_not_converged": not_converged,
        "n_rank_draws": n_rank,
        "p_threshold": threshold,
        "failures": json.dumps({str(r.get("index")): r.get("error", "") for r in failed}),
        "settings": json.dumps(dict(settings or {})),
    }
    return ds


def verdicts(summary: xr.Dataset) -> list[str]:
    """One line per parameter: pass/FAIL, the p-values, the interval coverage, the z-scores."""
    lines = []
    n = summary.attrs["n_ok"]
    for p in summary["parameter"].values:
        s = summary.sel(parameter=p)
        word = "pass" if bool(s["passed"]) else "FAIL"
        lines.append(
            f"{word}  {p}: uniformity p = {float(s['p_uniform']):.3g} (threshold "
            f"{summary.attrs['p_threshold']:.2g}), rank chi2 p = {float(s['p_chi2']):.3g}, "
            f"50% interval covers {100 * float(s['coverage50']):.0f}%, 90% covers "
            f"{100 * float(s['coverage90']):.0f}% of {n}; z-score mean "
            f"{float(s['z_mean']):+.2f}, max |z| {float(s['z_max_abs']):.2f}"
        )
    return lines


def write_outputs(summary: xr.Dataset, out: str | os.PathLike[str]) -> list[str]:
    """Write ``sbc.nc``, ``ranks.csv``, ``summary.json`` and ``sbc.png``; return their names."""
    from models.plots import save_sbc

    out = Path(out)
    with atomic_path(out / "sbc.nc") as tmp:
        summary.to_netcdf(tmp)
    frame = summary[["truth", "rank", "pit", "post_mean", "post_sd"]].to_dataframe()
    with atomic_path(out / "ranks.csv") as tmp:
        frame.to_csv(tmp)
    per_param = {
        str(p): {
            k: _plain(summary[k].sel(parameter=p).values.item())
            for k in (
                "p_uniform",
                "p_chi2",
                "coverage50",
                "coverage90",
                "z_mean",
                "z_max_abs",
                "passed",
            )
        }
        for p in summary["parameter"].values
    }
    doc = {
        **{k: v for k, v in summary.attrs.items() if k not in ("failures", "settings")},
        "settings": json.loads(summary.attrs["settings"]),
        "failures": json.loads(summary.attrs["failures"]),
        "parameters": per_param,
        "verdicts": verdicts(summary),
        "all_passed": bool(summary["passed"].all()),
    }
    atomic_write_text(out / "summary.json", json.dumps(doc, indent=2) + "\n")
    save_sbc(summary, out / "sbc.png")
    return ["sbc.nc", "ranks.csv", "summary.json", "sbc.png"]
