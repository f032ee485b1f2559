"""``astroweights run gamma-dm``: the seed's DM search, end to end, with the standard outputs."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from data_tools.gamma.events import (
    BACKGROUNDS,
    COMPONENTS,
    MASS_RANGE,
    Observation,
    bin_counts,
    marginal_tables,
    simulate_events,
)
from data_tools.gamma.sources import GC_SOURCES
from models import plots
from models.gamma_dm import build_model
from models.inference import (
    compare_models,
    convergence,
    format_convergence,
    log_evidence,
    loo_summary,
    posterior_digest,
    sample_posterior,
)
from models.runs._common import Progress, honours_quiet, write_standard_outputs

__all__ = ["GammaRunConfig", "run"]

TRACE_VARS = ["signal_fraction", "mass", "background_split"]


@dataclass(frozen=True)
class GammaRunConfig:
    """Settings of one run; every field is a command-line option (seed defaults: the tutorial)."""

    out: Path = Path("results/gamma_dm")
    events: int = 500
    signal_fraction: float = 0.5
    background_split: tuple[float, float, float] = (0.7, 0.2, 0.1)
    mass: float = 1.0
    livetime_h: float = 5.0
    draws: int = 1000
    tune: int = 1000
    chains: int = 2
    seed: int = 20260
    compare: bool = True
    quiet: bool = False

    def __post_init__(self) -> None:
        for name in ("events", "draws", "chains"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.tune < 0:
            raise ValueError(f"tune must be >= 0, got {self.tune}.")
        if not 0 <= self.signal_fraction <= 1:
            raise ValueError(f"signal_fraction must be in [0, 1], got {self.signal_fraction}.")
        split = np.asarray(self.background_split, float)
        if split.shape != (3,) or (split < 0).any() or not np.isclose(split.sum(), 1):
            raise ValueError(
                f"background_split must be 3 fractions (cosmic rays, local, diffuse) summing to "
                f"1, got {self.background_split}."
            )
        if not MASS_RANGE[0] <= self.mass <= MASS_RANGE[1]:
            raise ValueError(f"mass must be in {MASS_RANGE} TeV, got {self.mass}.")

    @property
    def fractions(self) -> dict[str, float]:
        """Leaf fractions of the mixture tree."""
        f = self.signal_fraction
        split = dict(zip(BACKGROUNDS, self.background_split, strict=True))
        return {"dm": f, **{k: (1 - f) * v for k, v in split.items()}}


@honours_quiet
def run(config: GammaRunConfig) -> dict[str, Any]:
    """Simulate the seed's observation, marginalise, fit with NUTS, compare, write, report."""
    t_start = time.perf_counter()
    progress = Progress(5 + 2 * config.compare, quiet=config.quiet)
    seeds = np.random.SeedSequence(config.seed).spawn(3)

    with progress.stage("building the response and source templates (5 h at the GC)"):
        obs = Observation(livetime_h=config.livetime_h)
        _ = obs.response, obs.dm_spatial, obs.backgrounds
    with progress.stage(f"simulating {config.events} events"):
        events = simulate_events(
            obs, n_events=config.events, fractions=config.fractions, mass=config.mass, rng=seeds[0]
        )
        binned = bin_counts(events, obs.reco)
    with progress.stage(f"marginalising true energy and direction ({binned.sizes['bin']} bins)"):
        tables = marginal_tables(obs, binned)
    with progress.stage(f"sampling {config.chains} chains x {config.draws} draws (NUTS)"):
        model = build_model(tables)
        idata = sample_posterior(
            model,
            draws=config.draws,
            tune=config.tune,
            chains=config.chains,
            rng=seeds[1],
            posterior_predictive=False,
            progressbar=not config.quiet,
        )
        diag = convergence(idata, ["signal_fraction", "log10_mass", "background_split"])
    comparison = bayes = None
    if config.compare:
        with progress.stage("fitting the background-only model and comparing by LOO"):
            null = sample_posterior(
                null_model := build_model(tables, signal=False),
                draws=config.draws,
                tune=config.tune,
                chains=config.chains,
                rng=seeds[2],
                posterior_predictive=False,
                progressbar=False,
            )
            comparison = compare_models({"dm": idata, "background_only": null})
        with progress.stage("evidence of both models by SMC (Bayes factor)"):
            z_dm = log_evidence(model, rng=seeds[2])
            z_bkg = log_evidence(null_model, rng=seeds[2])
            bayes = {
                "ln_evidence_dm": z_dm["log_z"],
                "ln_evidence_background_only": z_bkg["log_z"],
                "ln_bayes_factor": z_dm["log_z"] - z_bkg["log_z"],
                "ln_bayes_factor_sd": float(np.hypot(z_dm["log_z_sd"], z_bkg["log_z_sd"])),
                "smc_chains": len(z_dm["log_z_chains"]),
            }

    out = Path(config.out)
    with progress.stage(f"writing results to {out}"):
        post = posterior_digest(idata, ["signal_fraction", "mass"])
        frac = idata["posterior"]["fraction"]
        for k in COMPONENTS:
            draws = frac.sel(component=k).values.ravel()
            post[f"fraction[{k}]"] = {"mean": float(draws.mean()), "sd": float(draws.std(ddof=1))}
        truth = {
            "signal_fraction": config.signal_fraction,
            "mass": config.mass,
            **{f"fraction[{k}]": v for k, v in config.fractions.items()},
        }
        report: dict[str, Any] = {
            "use_case": "gamma-dm",
            "settings": {
                k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()
            },
            "data": {
                "n_events": int(events.sizes["event"]),
                "n_bins": int(binned.sizes["bin"]),
                "events_per_component": {k: events.attrs[f"n_{k}"] for k in COMPONENTS},
            },
            "truth": truth,
            "posterior": post,
            "z_score": {k: (post[k]["mean"] - truth[k]) / post[k]["sd"] for k in truth},
            "diagnostics": diag,
            "loo": loo_summary(idata),
        }
        if comparison is not None:
            report["comparison"] = comparison.reset_index().to_dict(orient="records")
            report["bayes_factor"] = bayes
        plots.save_trace(idata, TRACE_VARS, out / "trace.png")
        plots.save_pair(
            idata,
            ["signal_fraction", "mass"],
            out / "pair.png",
            markers={"truth": {"signal_fraction": config.signal_fraction, "mass": config.mass}},
        )
        plots.save_figure(counts_figure(obs, binned, idata), out / "counts.png")
        report["files"] = [
            "idata.nc",
            "summary.csv",
            "report.json",
            "trace.png",
            "pair.png",
            "counts.png",
        ]
        report["timing_s"] = {**progress.timings, "total": time.perf_counter() - t_start}
        write_standard_outputs(out, idata, ["signal_fraction", "mass", "fraction"], report)

    if not config.quiet:
        print(format_report(report))
    return report


def counts_figure(obs: Observation, binned, idata) -> plt.Figure:
    """Measured counts: spectrum with the fitted components, and the sky map with sources."""
    post = idata["posterior"]
    frac = post["fraction"].mean(("chain", "draw"))
    mass = float(np.exp(np.log(post["mass"]).mean()))
    n = int(binned["counts"].sum())
    reco = obs.reco
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    measured = binned["cube"].sum(("lon", "lat")).values
    edges = reco.energy_edges
    a.stairs(measured, edges, color="k", lw=1.5, label=f"measured ({n} events)")
    a.errorbar(reco.energy, measured, yerr=np.sqrt(measured), fmt="none", color="k", lw=0.8)
    total = np.zeros(reco.shape[0])
    for k, colour in zip(COMPONENTS, ("C3", "C0", "C2", "C1"), strict=True):
        cube = obs.reco_counts(k, mass=mass)
        shape = cube.sum(axis=(1, 2)) / cube.sum()
        expected = n * float(frac.sel(component=k)) * shape
        total += expected
        label = f"DM ({mass:.2f} TeV)" if k == "dm" else k.replace("_", " ")
        a.stairs(expected, edges, color=colour, lw=1.0, label=label)
    a.stairs(total, edges, color="0.4", lw=1.0, ls="--", label="fitted total")
    a.set(xscale="log", yscale="log", xlabel="reconstructed energy [TeV]", ylabel="events / bin")
    a.set_ylim(0.05, None)
    a.legend(frameon=False, fontsize=8)
    sky = binned["cube"].sum("energy").values.T
    im = b.pcolormesh(reco.lon_edges, reco.lat_edges, sky, cmap="magma", shading="flat")
    fig.colorbar(im, ax=b, label="events / pixel")
    for src in GC_SOURCES:
        b.plot(src.lon, src.lat, "c+", ms=8)
    b.plot([0], [0], "wx", ms=7, label="Galactic Centre")
    b.set(xlabel="Galactic longitude [deg]", ylabel="Galactic latitude [deg]", aspect="equal")
    b.invert_xaxis()
    b.legend(frameon=False, fontsize=8, loc="lower left", labelcolor="w")
    fig.tight_layout()
    return fig


def format_report(report: dict[str, Any]) -> str:
    """Format a short plain-text report: parameters against truth, convergence, LOO."""
    lines = [
        "",
        f"gamma-ray DM search: {report['data']['n_events']} events in "
        f"{report['data']['n_bins']} measured bins",
        f"{'parameter':<24}{'truth':>9}{'mean':>9}{'sd':>8}{'z':>7}",
    ]
    for name, p in report["posterior"].items():
        t = report["truth"][name]
        lines.append(
            f"{name:<24}{t:>9.3f}{p['mean']:>9.3f}{p['sd']:>8.3f}{(p['mean'] - t) / p['sd']:>+7.2f}"
        )
    d = report["diagnostics"]
    lines.append(f"{format_convergence(d)} -> {'converged' if d['ok'] else 'CHECK CONVERGENCE'}")
    if "comparison" in report:
        best, other = report["comparison"][0], report["comparison"][1]
        lines.append(
            f"LOO prefers {best['index']} over {other['index']}: elpd difference "
            f"{abs(other['elpd_diff']):.1f} +- {other['dse']:.1f}"
        )
        bf = report["bayes_factor"]
        lines.append(
            f"ln Bayes factor DM vs background only (SMC evidence): "
            f"{bf['ln_bayes_factor']:.1f} +- {bf['ln_bayes_factor_sd']:.1f}"
        )
    return "\n".join(lines)
