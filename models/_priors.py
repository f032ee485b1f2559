"""Registering a model's priors from defaults and user overrides, with clear errors."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pymc as pm
from pytensor.tensor.random.op import RandomVariable
from pytensor.tensor.variable import TensorVariable

__all__ = ["register_priors"]


def register_priors(
    model: pm.Model,
    names: Sequence[str],
    defaults: Mapping[str, Callable[[], TensorVariable]],
    overrides: Mapping[str, Any] | None,
) -> dict[str, TensorVariable]:
    """Add one scalar free variable per name to ``model`` (which must be the active context).

    Parameters
    ----------
    model
        The model being built.
    names
        Parameter names, in order.
    defaults
        Name to a zero-argument factory returning an unnamed ``pm.<Dist>.dist(...)``.
    overrides
        Name to a user-supplied ``pm.<Dist>.dist(...)`` replacing the default.
    """
    if overrides is not None and not isinstance(overrides, Mapping):
        raise TypeError(f"priors must be a dict of name to pm.<Dist>.dist(...), got {overrides!r}.")
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise ValueError(
            f"priors has unknown parameter(s) {unknown}; this model's parameters are {list(names)}."
        )
    out = {}
    for name in names:
        dist = overrides[name] if name in overrides else defaults[name]()
        owner = getattr(dist, "owner", None)
        if (
            not isinstance(dist, TensorVariable)
            or owner is None
            or not isinstance(
                owner.op, RandomVariable | pm.distributions.distribution.SymbolicRandomVariable
            )
        ):
            raise TypeError(
                f"priors[{name!r}] must be an unnamed distribution such as "
                f"pm.Normal.dist(mu=2.5, sigma=0.5), got {dist!r}."
            )
        if dist.ndim != 0:
            raise ValueError(f"priors[{name!r}] must be scalar, got ndim={dist.ndim}.")
        out[name] = model.register_rv(dist, name)
    return out
