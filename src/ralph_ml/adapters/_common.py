"""Shared by the adapters: scalar metrics out of framework logs, clear missing-extra errors."""

from __future__ import annotations

from typing import Any, Mapping


def scalars(logs: Mapping[str, Any] | None) -> dict[str, float]:
    """The entries of ``logs`` that are single numbers, as floats.

    Frameworks log a mix: Python numbers, numpy scalars, 0-d or 1-element tensors and
    arrays (torch, JAX, Keras), and also strings or whole arrays. Anything that is not
    one number is left out rather than failing the trial. NaN and infinities are kept:
    ``trial`` writes them as ``"nan"``/``"inf"``, and a diverged run must show up.
    """
    out: dict[str, float] = {}
    for name, value in (logs or {}).items():
        if isinstance(value, (str, bytes)) or value is None:
            continue
        size = getattr(value, "size", 1)  # numpy/JAX arrays: an int; torch: a method
        if callable(size):
            size = value.numel()
        if size != 1:
            continue
        try:  # .item(): numpy >= 2 refuses float() of a 1-element array; torch and JAX have it too
            number = float(value.item() if hasattr(value, "item") else value)
        except (TypeError, ValueError):
            continue
        out[str(name)] = number
    return out


def missing_extra(framework: str, extra: str, exc: ImportError) -> ImportError:
    """An ImportError that names the exact install command."""
    return ImportError(
        f"ralph_ml.adapters.{extra} needs {framework}, which is not installed ({exc}). "
        f"Install it with: pip install 'ralph-ml[{extra}]'"
    )
