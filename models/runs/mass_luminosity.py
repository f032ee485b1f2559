"""``astroweights run mass-luminosity``: the halo relation fit with the standard output set."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from data_tools._io import atomic_path
from data_tools.halos import (
    DEFAULT_SAMPLES,
    HYPER_SEED,
    GaussianMixtureProposal,
    adaptive_quadrature_nodes,
    default_mass_prior,
    importance_diagnostics,
    importance_samples,
    read_catalogue_csv,
    simulate_lightcone,
)
from models import plots
from models.inference import (
    convergence,
    format_convergence,
    loo_summary,
    posterior_digest,
    sample_posterior,
)
from models.mass_luminosity import PARAMETERS, build_model
from models.runs._common import Progress, honours_quiet, write_standard_outputs

__all__ = ["MassLuminosityRunConfig", "run"]


@dataclass(frozen=True)
class MassLuminosityRunConfig:
    """Settings of one run; every field is a command-line option."""

    out: Path = Path("results/mass_luminosity")
    data: Path | None = None
    halos: int = 20_000
    samples: int = DEFAULT_SAMPLES
    method: str = "importance"
    priors: str = "weak"
    draws: int = 1000
    tune: int = 1000
    chains: int = 2
    seed: int = 20260
    quiet: bool = False

    def __post_init__(self) -> None:
        for name in ("halos", "samples", "draws", "chains"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.tune < 0:
            raise ValueError(f"tune must be >= 0, got {self.tune}.")
        if self.method not in ("importance", "quadrature"):
            raise ValueError(f"method must be 'importance' or 'quadrature', got {self.method!r}.")
        if self.priors not in ("weak", "original"):
            raise ValueError(f"priors must be 'weak' or 'original', got {self.priors!r}.")


@honours_quiet
def run(config: MassLuminosityRunConfig) -> dict[str, Any]:
    """Simulate or load a catalogue, compute weights, fit with NUTS, write and report."""
    t_start = time.perf_counter()
    progress = Progress(4, quiet=config.quiet)
    seeds = np.random.SeedSequence(config.seed).spawn(3)
    prior = default_mass_prior()

    with progress.stage(
        f"loading {config.data}" if config.data else f"simulating {config.halos:,} halos"
    ):
        if config.data is not None:
            cat = read_catalogue_csv(config.data)
            truth = None
        else:
            cat = simulate_lightcone(config.halos, rng=seeds[0])
            truth = dict(HYPER_SEED)
        z, lum = cat["z"].values, cat["lum_obs"].values

    diagnostics = None
    with progress.stage(f"computing {config.method} weights"):
        rng = np.random.default_rng(seeds[1])
        proposal = GaussianMixtureProposal.fit(prior, rng=rng)
        if config.method == "importance":
            x, lw = importance_samples(
                z, lum, n_samples=config.samples, proposal=proposal, mass_prior=prior, rng=rng
            )
        else:  # Simpson's rule on each halo's own window needs an odd number of nodes
            x, lw = adaptive_quadrature_nodes(
                z, lum, n_nodes=config.samples | 1, proposal=proposal, mass_prior=prior
            )

    with progress.stage(f"sampling {config.chains} chains x {config.draws} draws (NUTS)"):
        model = build_model(z, lum, x, lw, priors=config.priors)
        idata = sample_posterior(
            model,
            draws=config.draws,
            tune=config.tune,
            chains=config.chains,
            rng=seeds[2],
            posterior_predictive=False,
            adaptation="low_rank",
            var_names=PARAMETERS,
            progressbar=not config.quiet,
        )
        diag = convergence(idata, PARAMETERS)
        loo = loo_summary(idata)
        post = posterior_digest(idata, PARAMETERS)
        if config.method == "importance":
            at_mean = {p: post[p]["mean"] for p in PARAMETERS}
            diagnostics = importance_diagnostics(x, lw, z, lum, at_mean)

    out = Path(config.out)
    with progress.stage(f"writing results to {out}"):
        report: dict[str, Any] = {
            "use_case": "mass-luminosity",
            "settings": {
                k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()
            },
            "data": {"n_halos": int(z.size), "n_nodes_per_halo": int(lw.shape[1])},
            "truth": truth,
            "posterior": post,
            "diagnostics": diag,
            "loo": loo,
        }
        if truth is not None:
            report["z_score"] = {p: (post[p]["mean"] - truth[p]) / post[p]["sd"] for p in truth}
        files = ["idata.nc", "summary.csv", "report.json", "trace.png", "pair.png"]
        plots.save_trace(idata, PARAMETERS, out / "trace.png")
        plots.save_pair(
            idata, PARAMETERS, out / "pair.png", markers={"hyper-seed": truth} if truth else None
        )
        if diagnostics is not None:
            report["importance"] = {
                k: diagnostics.attrs[k]
                for k in ("n_khat_above", "frac_khat_above", "khat_threshold", "median_ess")
            }
            with atomic_path(out / "importance_diagnostics.csv") as tmp:
                diagnostics.to_dataframe().to_csv(tmp)
            plots.save_figure(_khat_figure(diagnostics), out / "khat.png")
            files += ["importance_diagnostics.csv", "khat.png"]
        report["files"] = files
        report["timing_s"] = {**progress.timings, "total": time.perf_counter() - t_start}
        write_standard_outputs(out, idata, PARAMETERS, report)

    if not config.quiet:
        print(format_report(report))
    return report


def _khat_figure(diagnostics) -> plt.Figure:
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    khat = diagnostics["khat"].values
    a.hist(khat[np.isfinite(khat)], bins=60, color="C0")
    a.axvline(diagnostics.attrs["khat_threshold"], color="C3", ls="--", label="0.7")
    a.set_xlabel("Pareto k-hat per halo")
    a.set_ylabel("halos")
    a.legend(frameon=False)
    b.hist(diagnostics["ess"].values, bins=60, color="C1")
    b.set_xlabel("importance ESS per halo")
    fig.suptitle(
        f"{diagnostics.attrs['frac_khat_above']:.2%} of halos above k-hat 0.7 "
        f"({diagnostics.attrs['n_samples']} samples per halo)"
    )
    fig.tight_layout()
    return fig


def format_report(report: dict[str, Any]) -> str:
    """Format a short plain-text report: parameters against truth, convergence, k-hat."""
    truth = report.get("truth") or {}
    lines = [
        "",
        f"mass-luminosity fit: {report['data']['n_halos']:,} halos, "
        f"{report['data']['n_nodes_per_halo']} nodes per halo",
        f"{'parameter':<10}{'truth':>10}{'mean':>10}{'sd':>9}{'z':>7}",
    ]
    for name, p in report["posterior"].items():
        t = truth.get(name)
        z = f"{(p['mean'] - t) / p['sd']:+.2f}" if t is not None else "-"
        ts = f"{t:.4f}" if t is not None else "-"
        lines.append(f"{name:<10}{ts:>10}{p['mean']:>10.4f}{p['sd']:>9.4f}{z:>7}")
    d = report["diagnostics"]
    lines.append(f"{format_convergence(d)} -> {'converged' if d['ok'] else 'CHECK CONVERGENCE'}")
    if "importance" in report:
        imp = report["importance"]
        lines.append(
            f"importance weights at the posterior mean: {imp['frac_khat_above']:.2%} of halos "
            f"above k-hat {imp['khat_threshold']}, median ESS {imp['median_ess']:.1f}"
        )
    return "\n".join(lines)
