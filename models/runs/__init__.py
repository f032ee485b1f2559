"""Command-line runs: simulate or load, fit, and write the standard output set of a use case.

Every use case's run writes into its output folder:

- ``idata.nc``: the posterior as a netCDF ``DataTree`` with ``log_likelihood``,
- ``summary.csv``: the ArviZ summary, one row per parameter named as in the model,
- ``report.json``: point estimates, truths when simulated, diagnostics and LOO,
- PNG figures.
"""
