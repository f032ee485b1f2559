"""Mass–luminosity fit: our marginal model against the original's 2-D importance sampler.

What is timed, on one simulated catalogue in one process:

1. One log-likelihood evaluation of the original method (bigmali): for every halo, 100 draws of
   ``L ~ LogNormal(ln L_obs, sigma_obs)`` and ``M ~ LogNormal`` around the inverted mean relation
   with width ``5.6578 S``, weighted by ``p(L_obs | L) p(L | M, theta) p(M | z) / (q(L) q(M))``
   and averaged; the draws depend on ``theta``, so they are made inside the evaluation, as the
   original did. Written here in vectorised numpy (the original was C++).
2. One evaluation of our model's log-density *and gradient* (what NUTS calls), for importance
   sampling at the default 32 samples per halo and at 100, and for adaptive quadrature (25
   nodes per halo, the deterministic reference); and the time to compute those weights.
3. How our evaluation time scales with the number of halos and of samples per halo.
4. Unless ``nuts=False``: NUTS (2 chains x 1000 draws after 1000 tuning steps, low-rank
   adaptation) for each of the three, target < 5 min at the default; the pointwise
   log-likelihood (for LOO) timed apart; r-hat, ESS, the hyper-seed's z-scores, k-hat at the
   posterior mean, and the importance-sampling posterior means against quadrature's in
   posterior standard deviations (target: within 0.2).

Run it as ``python -m models.benchmarks.mass_luminosity`` or ``astroweights bench
mass-luminosity``.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from typing import Any

import numpy as np
import pymc as pm
from scipy.special import logsumexp

from data_tools.halos import (
    DEFAULT_SAMPLES,
    HYPER_SEED,
    ORIGINAL_PRIOR,
    SIGMA_OBS,
    GaussianMixtureProposal,
    adaptive_quadrature_nodes,
    default_mass_prior,
    importance_diagnostics,
    importance_samples,
    ln_mean_luminosity,
    simulate_lightcone,
)
from models.inference import convergence, sample_posterior
from models.mass_luminosity import PARAMETERS, build_model

__all__ = ["main", "original_log_likelihood"]

NUTS_TARGET_S = 300.0


def _say(text: str = "") -> None:
    print(text, flush=True)


def original_log_likelihood(
    z: np.ndarray,
    lum_obs: np.ndarray,
    theta: dict[str, float],
    *,
    n_samples: int = 100,
    rng: np.random.Generator,
) -> float:
    """Estimate the total log-likelihood as the original did (2-D importance sampling)."""
    prior = default_mass_prior()
    ln_obs = np.log(lum_obs)[:, None]
    n = z.size
    # q(L): log-normal around the observed luminosity with the measurement width
    ln_l = ln_obs + SIGMA_OBS * rng.standard_normal((n, n_samples))
    # q(M): log-normal around the inverted mean relation, width 5.6578 S
    centre = (
        np.log(2.35e14)
        + (ln_obs - theta["alpha1"] - theta["alpha4"] * np.log1p(z)[:, None]) / (theta["alpha2"])
    )
    width = 5.6578 * theta["S"]
    ln_m = centre + width * rng.standard_normal((n, n_samples))
    log_q = (
        -0.5 * ((ln_l - ln_obs) / SIGMA_OBS) ** 2
        - np.log(SIGMA_OBS)
        - 0.5 * ((ln_m - centre) / width) ** 2
        - np.log(width)
        - np.log(2 * np.pi)
    )
    mu = ln_mean_luminosity(ln_m, z[:, None], theta["alpha1"], theta["alpha2"], theta["alpha4"])
    log_p = (
        -0.5 * ((ln_obs - ln_l) / SIGMA_OBS) ** 2
        - np.log(SIGMA_OBS)
        - 0.5 * ((ln_l - mu) / theta["S"]) ** 2
        - np.log(theta["S"])
        - np.log(2 * np.pi)
        + prior.logpdf(ln_m, z)
    )
    per_halo = logsumexp(log_p - log_q, axis=1) - np.log(n_samples) - ln_obs[:, 0]
    return float(per_halo.sum())


def _grad_eval_ms(model, repeats: int) -> float:
    f = model.logp_dlogp_function(ravel_inputs=True)
    f.set_extra_values({})
    point = model.initial_point()
    x0 = np.concatenate([np.atleast_1d(point[v.name]) for v in model.value_vars])
    f(x0)
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(10):
            f(x0)
        best = min(best, (time.perf_counter() - t) / 10)
    return best * 1e3


def _nuts(model, seed: int) -> tuple[Any, float, float]:
    """NUTS 2 x 1000 (timed), then the pointwise log-likelihood (timed apart)."""
    t = time.perf_counter()
    idata = sample_posterior(
        model,
        draws=1000,
        tune=1000,
        chains=2,
        rng=seed,
        posterior_predictive=False,
        progressbar=False,
        adaptation="low_rank",
        var_names=PARAMETERS,
        log_likelihood=False,
    )
    t_nuts = time.perf_counter() - t
    t = time.perf_counter()
    pm.compute_log_likelihood(idata, model=model, progressbar=False)
    return idata, t_nuts, time.perf_counter() - t


def main(
    n_halos: int = 115_919,
    repeats: int = 3,
    nuts: bool = True,
    seed: int = 1,
    n_samples: int = DEFAULT_SAMPLES,
) -> dict[str, Any]:
    """Run the benchmark and print a table; return the numbers."""
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {"n_halos": n_halos, "cpus": os.cpu_count(), "n_samples": n_samples}
    _say(f"mass-luminosity benchmark: {n_halos:,} halos, {os.cpu_count()} CPUs")
    cat = simulate_lightcone(n_halos, rng=rng)
    z, lum = cat.z.values, cat.lum_obs.values
    proposal = GaussianMixtureProposal.fit(rng=rng)
    theta0 = {k: m for k, (m, _) in ORIGINAL_PRIOR.items()}

    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        original_log_likelihood(z, lum, theta0, rng=rng)
        best = min(best, time.perf_counter() - t)
    out["original_eval_ms"] = best * 1e3
    _say(
        f"original 2-D importance sampler, 100 samples: {out['original_eval_ms']:.0f} ms per log L"
    )

    weights = {}
    for key, make in (
        (
            f"is{n_samples}",
            lambda: importance_samples(z, lum, n_samples=n_samples, proposal=proposal, rng=rng),
        ),
        ("is100", lambda: importance_samples(z, lum, n_samples=100, proposal=proposal, rng=rng)),
        ("aq25", lambda: adaptive_quadrature_nodes(z, lum, proposal=proposal)),
    ):
        t = time.perf_counter()
        weights[key] = make()
        out[f"weights_s_{key}"] = time.perf_counter() - t
    models = {key: build_model(z, lum, *w) for key, w in weights.items()}
    for key, model in models.items():
        out[f"ours_{key}_ms"] = _grad_eval_ms(model, repeats)
        out[f"weights_bytes_{key}"] = int(sum(a.nbytes for a in weights[key]))
        ratio = out["original_eval_ms"] / out[f"ours_{key}_ms"]
        out[f"ratio_{key}"] = ratio
        _say(
            f"ours ({key}) log L + gradient: {out[f'ours_{key}_ms']:.1f} ms ({ratio:.0f}x faster); "
            f"weights {out[f'weights_bytes_{key}'] / 1e6:.0f} MB in {out[f'weights_s_{key}']:.0f} s"
        )

    _say("scaling of one log L + gradient evaluation [ms] (cost depends only on the shape):")
    scaling = {}
    for n in sorted({10_000, 30_000, n_halos}):
        if n > n_halos:
            continue
        for k in (17, 33, 65, 101):
            nodes = adaptive_quadrature_nodes(z[:n], lum[:n], n_nodes=k, proposal=proposal)
            scaling[(n, k)] = _grad_eval_ms(build_model(z[:n], lum[:n], *nodes), 1)
            _say(
                f"  {n:>7,} halos x {k:>3} per halo: {scaling[(n, k)]:7.1f} ms "
                f"({scaling[(n, k)] * 1e6 / (n * k):.1f} ns per halo-node)"
            )
    out["scaling_ms"] = {f"{n}x{k}": v for (n, k), v in scaling.items()}

    if nuts:
        means, sds = {}, {}
        for key, model in models.items():
            idata, t_nuts, t_ll = _nuts(model, seed)
            out[f"nuts_s_{key}"] = t_nuts
            out[f"loglik_s_{key}"] = t_ll
            conv = convergence(idata, PARAMETERS)
            out[f"convergence_{key}"] = conv
            post = idata["posterior"]
            means[key] = {p: float(post[p].mean()) for p in PARAMETERS}
            sds[key] = {p: float(post[p].std()) for p in PARAMETERS}
            out[f"z_scores_{key}"] = {
                p: (means[key][p] - HYPER_SEED[p]) / sds[key][p] for p in PARAMETERS
            }
            label = " (default)" if key == f"is{n_samples}" else ""
            met = "met" if t_nuts < NUTS_TARGET_S else "MISSED"
            _say(
                f"NUTS 2 x 1000 draws, {key}{label}: {t_nuts:.0f} s (target < "
                f"{NUTS_TARGET_S:.0f} s: {met}); pointwise log-likelihood {t_ll:.0f} s more"
            )
            _say(f"  {conv}")
            zs = {k: round(v, 2) for k, v in out[f"z_scores_{key}"].items()}
            _say(f"  hyper-seed z-scores: {zs}")
            del idata
            if key.startswith("is"):
                diag = importance_diagnostics(*weights[key], z, lum, means[key])
                out[f"frac_khat_above_{key}"] = diag.attrs["frac_khat_above"]
                _say(
                    f"  k-hat > 0.7 at the posterior mean: {diag.attrs['n_khat_above']} halos "
                    f"({100 * diag.attrs['frac_khat_above']:.2f}%), median ESS "
                    f"{diag.attrs['median_ess']:.0f} of {weights[key][0].shape[1]}"
                )
        for key in means:
            if key == "aq25":
                continue
            shift = {p: (means[key][p] - means["aq25"][p]) / sds["aq25"][p] for p in PARAMETERS}
            out[f"shift_vs_quadrature_{key}"] = shift
            _say(
                f"{key} - quadrature posterior means, in posterior sd: "
                f"{ {k: round(v, 3) for k, v in shift.items()} }"
            )
    out["max_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    _say(f"peak memory {out['max_rss_gb']:.1f} GB")
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--halos", type=int, default=115_919)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-nuts", action="store_true")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES)
    args = parser.parse_args()
    main(
        n_halos=args.halos,
        repeats=args.repeats,
        nuts=not args.skip_nuts,
        seed=args.seed,
        n_samples=args.samples,
    )
    sys.exit(0)
