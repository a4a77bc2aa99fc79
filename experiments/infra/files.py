"""Whole-file writes that a crash cannot leave half-done, and the JSON reader that goes with them.

No jax here (nor in anything imported): make_dataset uses this module and stays jax-free.
"""

from __future__ import annotations

import json
import os
from typing import Optional, Union


def write_atomic(path: str, content: Union[str, bytes], newline: Optional[str] = None) -> None:
    """Writes `content` to `path` + '.tmp', then renames it onto `path`: a reader sees the old file or
    the new one, never part of one. Text is written with `newline` as open() takes it."""
    tmp = path + ".tmp"
    if isinstance(content, bytes):
        with open(tmp, "wb") as f:
            f.write(content)
    else:
        with open(tmp, "w", newline=newline) as f:
            f.write(content)
    os.replace(tmp, path)


def write_json(path: str, value, indent: int = 2) -> None:
    """`value` as JSON (`indent` spaces), written atomically."""
    write_atomic(path, json.dumps(value, indent=indent))


def read_json(path: str) -> Optional[dict]:
    """The parsed file, or None when it is missing or unreadable (not JSON, truncated)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
