"""The TOML configuration file shared by every layer (``--config`` or ``EVENTSTORE_CONFIG``).

Each layer reads its own tables (``[machines.*]`` here, ``[projections]`` above); this module
only finds and parses the file, so that every layer reports a missing or broken file the same
way.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from eventstore.errors import ConfigError

__all__ = ["read_config"]


def read_config(path: str | Path | None = None) -> tuple[dict[str, Any], str] | None:
    """``(tables, source)`` of ``path``, else of ``EVENTSTORE_CONFIG``; None if neither is set."""
    chosen = path or os.environ.get("EVENTSTORE_CONFIG")
    if not chosen:
        return None
    p = Path(chosen)
    try:
        return tomllib.loads(p.read_text()), str(p)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {p} not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {p} is not valid TOML: {exc}") from exc
