"""Input validation shared by the data tools and the model factories.

Every check raises ``TypeError`` for a wrong type and ``ValueError`` for a wrong value or shape,
with a message that names the argument, says what was expected, what arrived and how to fix it.
NaN and inf never pass.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "as_counts",
    "as_finite_array",
    "as_index",
    "as_int",
    "same_length",
]


def _first_bad(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def as_finite_array(
    name: str,
    value: Any,
    *,
    ndim: int | None = 1,
    nonnegative: bool = False,
    positive: bool = False,
) -> np.ndarray:
    """Return ``value`` as a float64 array after checking that it is numeric and finite.

    Parameters
    ----------
    name
        The argument's name, used in error messages.
    value
        Array-like of numbers.
    ndim
        Required number of dimensions (``None``: any).
    nonnegative, positive
        Also require every element to be ``>= 0`` or ``> 0``.
    """
    arr = np.asarray(value)
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.bool_)
    ):
        raise TypeError(
            f"{name} must be an array of numbers, got dtype {arr.dtype}; "
            f"convert it with np.asarray({name}, dtype=float)."
        )
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise TypeError(f"{name} must be real, got complex dtype {arr.dtype}.")
    arr = arr.astype(np.float64, copy=False)
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional, got shape {arr.shape}.")
    bad = ~np.isfinite(arr)
    if bad.any():
        i = np.unravel_index(_first_bad(bad.ravel()), arr.shape)
        raise ValueError(
            f"{name} contains {arr[i]} at index {tuple(map(int, i))}; NaN and inf are not "
            f"allowed: remove or repair those entries first."
        )
    if positive and (arr <= 0).any():
        i = np.unravel_index(_first_bad((arr <= 0).ravel()), arr.shape)
        raise ValueError(f"{name} must be > 0, got {arr[i]} at index {tuple(map(int, i))}.")
    if nonnegative and (arr < 0).any():
        i = np.unravel_index(_first_bad((arr < 0).ravel()), arr.shape)
        raise ValueError(f"{name} must be >= 0, got {arr[i]} at index {tuple(map(int, i))}.")
    return arr


def as_int(name: str, value: Any, *, minimum: int = 1) -> int:
    """Return ``value`` as a Python int after checking it is a whole number ``>= minimum``.

    Raises ``TypeError`` for non-integers (bools included) and ``ValueError`` below ``minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}.")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}.")
    return int(value)


def as_counts(name: str, value: Any) -> np.ndarray:
    """Return observed counts as a 1-D int64 array of non-negative integers."""
    arr = np.asarray(value)
    if np.issubdtype(arr.dtype, np.bool_) or not np.issubdtype(arr.dtype, np.number):
        raise TypeError(f"{name} must be an array of integer counts, got dtype {arr.dtype}.")
    if arr.ndim != 1:
        raise ValueError(
            f"{name} must be 1-dimensional (one count per bin), got shape {arr.shape}."
        )
    if arr.size == 0:
        raise ValueError(f"{name} is empty: at least one bin is needed.")
    if np.issubdtype(arr.dtype, np.floating):
        finite = np.isfinite(arr)
        if not finite.all():
            i = _first_bad(~finite)
            raise ValueError(f"{name}[{i}] is {arr[i]}; counts must be finite integers.")
        frac = arr != np.round(arr)
        if frac.any():
            i = _first_bad(frac)
            raise ValueError(
                f"{name}[{i}] = {arr[i]} is not an integer; counts must be whole numbers of "
                f"events (did you pass expected rates instead of observed counts?)."
            )
    if (arr < 0).any():
        i = _first_bad(arr < 0)
        raise ValueError(f"{name}[{i}] = {arr[i]} is negative; counts must be >= 0.")
    return arr.astype(np.int64)


def as_index(
    name: str,
    value: Any,
    *,
    n: int,
    allow_outside: bool = True,
    what: str = "bin",
    hint: str = "build it with a binning's bin_index(...)",
) -> np.ndarray:
    """Return integer indices in ``[0, n)`` (and ``-1`` for "outside" when allowed).

    ``what`` names one of the ``n`` things indexed (``"bin"``, ``"catalogue row"``) and
    ``hint`` says how to build a valid index; both go into the error messages.
    """
    arr = np.asarray(value)
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must hold integer {what} indices, got dtype {arr.dtype}; {hint}.")
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-dimensional, got shape {arr.shape}.")
    low = -1 if allow_outside else 0
    bad = (arr < low) | (arr >= n)
    if bad.any():
        i = _first_bad(bad)
        allowed = f"-1 (outside) or 0..{n - 1}" if allow_outside else f"0..{n - 1}"
        raise ValueError(
            f"{name}[{i}] = {arr[i]} is out of range: expected {allowed} for {n} {what}s."
        )
    return arr.astype(np.int64)


def same_length(**arrays: np.ndarray) -> int:
    """Check that all named arrays have the same length; return it."""
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{k}={n}" for k, n in lengths.items())
        raise ValueError(
            f"these arrays must have one entry per event, but lengths differ: {listed}."
        )
    return next(iter(lengths.values()))
