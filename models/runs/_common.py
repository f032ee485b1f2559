"""Pieces every command-line run shares: progress lines, the standard output set."""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from data_tools._io import atomic_path, atomic_write_text
from models.inference import finite_or_none, summary_table

__all__ = ["Progress", "honours_quiet", "pymc_logs_quiet", "write_standard_outputs"]


class Progress:
    """Numbered stage lines with elapsed time, flushed at once (visible in CI logs too)."""

    def __init__(self, n_stages: int, *, quiet: bool = False, stream=None) -> None:
        self.n_stages, self.quiet = n_stages, quiet
        self.stream = stream or sys.stdout
        self.i = 0
        self.timings: dict[str, float] = {}

    @contextmanager
    def stage(self, label: str) -> Iterator[None]:
        """Announce a stage, time it, report when done."""
        self.i += 1
        if not self.quiet:
            print(f"[{self.i}/{self.n_stages}] {label} ...", file=self.stream, flush=True)
        t0 = time.perf_counter()
        yield
        dt = time.perf_counter() - t0
        self.timings[label] = dt
        if not self.quiet:
            print(f"      done in {dt:.1f} s", file=self.stream, flush=True)


@contextmanager
def pymc_logs_quiet(quiet: bool) -> Iterator[None]:
    """Hold back PyMC's INFO lines ("NUTS[nutpie]: [...]", "Sampling: [...]") while ``quiet``.

    PyMC logs them to stderr through its own handler, so ``--quiet`` would otherwise still
    print them. Warnings and errors still show; the logger's level is restored afterwards.
    """
    logger = logging.getLogger("pymc")
    level = logger.level
    if quiet:
        logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def honours_quiet[F: Callable[..., Any]](run: F) -> F:
    """Decorate a ``run(config)``: PyMC's INFO lines are held back when ``config.quiet``."""

    @functools.wraps(run)
    def wrapper(config, *args, **kwargs):
        with pymc_logs_quiet(bool(config.quiet)):
            return run(config, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _netcdf_safe(idata: xr.DataTree) -> xr.DataTree:
    """Copy with object-typed variables (sampler messages, SMC stats) made netCDF-writable."""
    out = idata.copy()
    for node in out.subtree:
        ds = node.to_dataset()
        changed = False
        for name, var in ds.data_vars.items():
            if var.dtype == object:
                try:
                    ds[name] = var.astype(float)
                except (TypeError, ValueError):
                    ds[name] = var.fillna("").astype(str)
                changed = True
        if changed:
            out[node.path] = xr.DataTree(ds)
    return out


def write_idata(idata: xr.DataTree, path: str | Path) -> None:
    """Write a DataTree as netCDF atomically."""
    with atomic_path(path) as tmp:
        _netcdf_safe(idata).to_netcdf(tmp)


def write_standard_outputs(
    out_dir: Path,
    idata: xr.DataTree,
    var_names: Sequence[str],
    report: Mapping[str, Any],
) -> list[str]:
    """Write ``idata.nc``, ``summary.csv`` and ``report.json``; return the file names."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_idata(idata, out_dir / "idata.nc")
    table = summary_table(idata, var_names)
    with atomic_path(out_dir / "summary.csv") as tmp:
        table.to_csv(tmp, index_label="parameter")
    atomic_write_text(out_dir / "report.json", json.dumps(_jsonable(report), indent=2) + "\n")
    return ["idata.nc", "summary.csv", "report.json"]


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return finite_or_none(obj)
    return obj
