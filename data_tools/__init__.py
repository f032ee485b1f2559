"""Pure numpy/scipy/scikit-learn tools: simulators, loaders, binning and weights.

Nothing in this package imports PyMC: everything here is computed once, before a model is
built, and handed to :mod:`models` as data.
"""
