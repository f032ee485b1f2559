"""Declarative PyMC models, one module per use case, each with ``build_model(...) -> pm.Model``."""
