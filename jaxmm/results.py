"""JSON files of results: NumPy, JAX, dataclass and path values as plain JSON types.

One home for the conversion used by the studies (``experiments``) and the training command
(``train``); it imports neither.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np

__all__ = [
    "jsonable",
    "write_json",
]


def jsonable(value: Any) -> Any:
    """Plain JSON types; non-finite floats become the strings "inf", "-inf", "nan"; dataclasses
    become dicts of their fields and paths their strings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray | jax.Array):
        return jsonable(np.asarray(value).tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    """``payload`` as indented JSON at ``path`` (parent folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(jsonable(payload), indent=2) + "\n")
    return path
