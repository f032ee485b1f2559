"""SBC throughput: replicates per minute on 1 and on 2 local Dask workers, in one run.

Both runs do the same replicates (same case, size, seed and count) into fresh folders, so
they do the same work; the wall time includes starting the cluster and each worker's first
compilation, as a user's run would. The ratio is the speed-up from the second worker (at most
2 on a 2-core machine; less where start-up or the longest replicate dominates).

Run it as ``astroweights bench sbc`` or ``python -m models.benchmarks.sbc_throughput``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from models.calibration import run_sbc

__all__ = ["main"]


def main(*, case: str = "gamma-dm", replicates: int = 60, size: str = "small", seed: int = 7):
    """Time ``replicates`` replicates on 1 and on 2 workers; print and return the rates."""
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (1, 2):
            t0 = time.perf_counter()
            s = run_sbc(
                case,
                replicates,
                out=Path(tmp) / f"w{workers}",
                size=size,
                seed=seed,
                workers=workers,
                progress=False,
            )
            wall = time.perf_counter() - t0
            rates[workers] = replicates / wall * 60
            print(
                f"{case} ({size}), {replicates} replicates on {workers} worker(s): {wall:.0f} s, "
                f"{rates[workers]:.1f} replicates/min ({s.attrs['n_failed']} failed)",
                flush=True,
            )
    print(f"speed-up of 2 workers over 1: {rates[2] / rates[1]:.2f}x")
    return rates


def _cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="gamma-dm")
    parser.add_argument("--replicates", type=int, default=60)
    parser.add_argument("--size", default="small")
    args = parser.parse_args(argv)
    main(case=args.case, replicates=args.replicates, size=args.size)
    return 0


if __name__ == "__main__":
    sys.exit(_cli())
