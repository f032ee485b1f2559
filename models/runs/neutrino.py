"""``astroweights run neutrino``: the diffuse fit end to end, with the standard output set."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data_tools.neutrino import (
    HESEBinning,
    model_inputs,
    read_hese_json,
    simulate_hese_data,
    simulate_hese_toy,
)
from models import plots
from models.inference import (
    compare_models,
    convergence,
    format_convergence,
    loo_summary,
    posterior_digest,
    sample_posterior,
)
from models.neutrino_diffuse import build_model, max_likelihood, parameter_names
from models.runs._common import Progress, honours_quiet, write_standard_outputs

__all__ = ["TRUTH", "NeutrinoRunConfig", "run"]

TRUTH = {"atmo_norm": 1.0, "astro_norm": 6.7, "astro_gamma": 3.0}
"""Parameters the simulated data are drawn from: the exercise's best fit, rounded."""

SEED_FIT = {"atmo_norm": 0.99639, "astro_norm": 6.71418, "astro_gamma": 2.99388}
"""The exercise's own L-BFGS-B result on its files (-ln L = 175.4846), for comparison."""


@dataclass(frozen=True)
class NeutrinoRunConfig:
    """Settings of one run; every field is a command-line option."""

    out: Path = Path("results/neutrino")
    data: Path | None = None
    sim: Path | None = None
    n_sim: int = 1_000_000
    draws: int = 1000
    tune: int = 1000
    chains: int = 2
    seed: int = 20260
    likelihood: str = "poisson"
    compare: bool = True
    quiet: bool = False

    def __post_init__(self) -> None:
        if (self.data is None) != (self.sim is None):
            raise ValueError(
                "give both --data and --sim (your observed events and the simulation that "
                "describes them), or neither to simulate both."
            )
        for name in ("n_sim", "draws", "chains"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.tune < 0:
            raise ValueError(f"tune must be >= 0, got {self.tune}.")
        if self.likelihood not in ("poisson", "effective"):
            raise ValueError(
                f"likelihood must be 'poisson' or 'effective', got {self.likelihood!r}."
            )


@honours_quiet
def run(config: NeutrinoRunConfig) -> dict[str, Any]:
    """Simulate or load, fit (MLE and NUTS, power law and log-parabola), write and report.

    Returns
    -------
    dict
        The content of ``report.json``.
    """
    t_start = time.perf_counter()
    progress = Progress(5 if config.compare else 4, quiet=config.quiet)
    seeds = np.random.SeedSequence(config.seed).spawn(4)
    binning = HESEBinning()
    names = parameter_names("power_law")

    with progress.stage("loading data" if config.data else f"simulating {config.n_sim:,} events"):
        if config.data is not None:
            sim = read_hese_json(config.sim, kind="simulation")
            data = read_hese_json(config.data, kind="data")
            truth = None
        else:
            sim = simulate_hese_toy(config.n_sim, rng=seeds[0])
            data = simulate_hese_data(sim, **TRUTH, rng=seeds[1])
            truth = dict(TRUTH)
        inputs = model_inputs(sim, data, binning)

    with progress.stage(f"building the {config.likelihood} model and its maximum-likelihood point"):
        model = build_model(**inputs, likelihood=config.likelihood)
        mle = max_likelihood(model)

    with progress.stage(f"sampling {config.chains} chains x {config.draws} draws (NUTS)"):
        idata = sample_posterior(
            model,
            draws=config.draws,
            tune=config.tune,
            chains=config.chains,
            rng=seeds[2],
            progressbar=not config.quiet,
        )
        diag = convergence(idata, names)
        loo = loo_summary(idata)

    comparison = None
    if config.compare:
        with progress.stage("fitting the log-parabola alternative for LOO comparison"):
            alt = build_model(**inputs, likelihood=config.likelihood, spectrum="log_parabola")
            idata_alt = sample_posterior(
                alt,
                draws=config.draws,
                tune=config.tune,
                chains=config.chains,
                rng=seeds[3],
                posterior_predictive=False,
                progressbar=not config.quiet,
            )
            comparison = compare_models({"power_law": idata, "log_parabola": idata_alt})
            alt_post = posterior_digest(idata_alt, parameter_names("log_parabola"))
            alt_diag = convergence(idata_alt, parameter_names("log_parabola"))

    out = Path(config.out)
    with progress.stage(f"writing results to {out}"):
        report: dict[str, Any] = {
            "use_case": "neutrino",
            "settings": {
                k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()
            },
            "data": {
                "n_sim_events": int(inputs["mc_bin"].size),
                "n_sim_in_bins": int((inputs["mc_bin"] >= 0).sum()),
                "n_data_events": int(data["energy"].size),
                "n_data_in_bins": int(inputs["counts"].sum()),
                "n_bins": binning.n_bins,
                "n_bins_in_model": int(idata["observed_data"]["counts"].size),
            },
            "truth": truth,
            "mle": mle.to_dict(),
            "posterior": posterior_digest(idata, names),
            "diagnostics": diag,
            "loo": loo,
        }
        if comparison is not None:
            report["loo_compare"] = [
                {
                    "model": str(name),
                    **{c: row[c] for c in ("rank", "elpd", "elpd_diff", "dse", "weight")},
                }
                for name, row in comparison.iterrows()
            ]
            report["log_parabola_posterior"] = alt_post
            report["log_parabola_diagnostics"] = alt_diag
        files = ["idata.nc", "summary.csv", "report.json"]
        markers = {"MLE": mle.params}
        if truth is not None:
            markers = {"truth": truth, **markers}
        plots.save_trace(idata, names, out / "trace.png")
        plots.save_pair(idata, names, out / "pair.png", markers=markers)
        save_counts_plot(idata, binning, out / "ppc_counts.png")
        plots.save_loo_pit(idata, out / "loo_pit.png")
        files += ["trace.png", "pair.png", "ppc_counts.png", "loo_pit.png"]
        if comparison is not None:
            plots.save_compare(comparison, out / "loo_compare.png")
            files.append("loo_compare.png")
        report["files"] = files
        report["timing_s"] = {**progress.timings, "total": time.perf_counter() - t_start}
        write_standard_outputs(out, idata, names, report)

    if not config.quiet:
        print(format_report(report))
    return report


def save_counts_plot(idata, binning: HESEBinning, path: Path) -> None:
    """Observed counts against the posterior predictive, by energy and cos(zenith) per topology."""
    labels = np.asarray(idata["observed_data"]["analysis_bin"].values)
    observed = np.zeros(binning.n_bins)
    observed[labels] = np.asarray(idata["observed_data"]["counts"])
    pp = np.asarray(idata["posterior_predictive"]["counts"])
    predictive = np.zeros((pp.shape[0] * pp.shape[1], binning.n_bins))
    predictive[:, labels] = pp.reshape(-1, pp.shape[-1])
    coords = binning.coords()
    fig = plots.binned_ppc_figure(
        observed,
        predictive,
        {"topology": coords["topology"]},
        {"log10_energy": coords["log10_energy"], "cos_zenith": coords["cos_zenith"]},
        panel_titles={"0": "cascades", "1": "tracks"},
        axis_labels={
            "log10_energy": "reconstructed energy [GeV]",
            "cos_zenith": "cos(reconstructed zenith)",
        },
        log_x=("log10_energy",),
    )
    plots.save_figure(fig, path)


def format_report(report: dict[str, Any]) -> str:
    """Format a short plain-text report: parameters, convergence, LOO."""
    truth = report.get("truth") or {}
    mle = report["mle"]
    lines = [
        "",
        f"neutrino diffuse fit: {report['data']['n_data_in_bins']} events in "
        f"{report['data']['n_bins_in_model']} populated bins, "
        f"{report['data']['n_sim_in_bins']:,} simulated events in the bins",
        f"{'parameter':<13}{'truth':>8}{'MLE':>9}{'mean':>9}{'sd':>8}{'90% interval':>20}",
    ]
    for name, p in report["posterior"].items():
        t = f"{truth[name]:.3g}" if name in truth else "-"
        lines.append(
            f"{name:<13}{t:>8}{mle[name]:>9.3f}{p['mean']:>9.3f}{p['sd']:>8.3f}"
            f"{f'[{p["q05"]:.3f}, {p["q95"]:.3f}]':>20}"
        )
    d = report["diagnostics"]
    lines.append(f"{format_convergence(d)}  -> {'converged' if d['ok'] else 'CHECK CONVERGENCE'}")
    lines.append(
        f"-ln L at the MLE {mle['neg_log_likelihood']:.3f}; elpd_loo "
        f"{report['loo']['elpd_loo']:.2f} +- {report['loo']['se']:.2f}"
    )
    if "log_parabola_diagnostics" in report:
        d = report["log_parabola_diagnostics"]
        lines.append(f"log-parabola: {format_convergence(d)}")
    for row in report.get("loo_compare", []):
        lines.append(
            f"  LOO {row['model']:<13} elpd {row['elpd']:8.2f}  diff {row['elpd_diff']:6.2f} "
            f"+- {row['dse']:.2f}  weight {row['weight']:.2f}"
        )
    return "\n".join(lines)
