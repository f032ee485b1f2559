"""Gamma-ray tools for the dark-matter search.

Binning, an analytic CTA-like response, source models, event simulation
and the nuisance marginalisation that turns them into per-bin probabilities for the model.
"""

from data_tools.gamma.instrument import Binning, Instrument, Response, response
from data_tools.gamma.sources import Einasto, j_factor, j_factor_map

__all__ = ["Binning", "Einasto", "Instrument", "Response", "j_factor", "j_factor_map", "response"]
