"""The TOML configuration file shared by every layer (``--config`` or ``EVENTSTORE_CONFIG``).

Each layer reads its own tables (``[machines.*]`` here, ``[projections]`` above); this module
only finds and parses the file, so that every layer reports a missing or broken file the same
way: one ``ConfigError`` naming the file and what is wrong with it (missing, a directory,
unreadable, larger than ``MAX_CONFIG_BYTES``, not UTF-8, not TOML). A pipe (``--config
<(...)``) is read like a file; one that nobody writes to reads as empty instead of blocking.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from eventstore.errors import ConfigError

__all__ = ["MAX_CONFIG_BYTES", "read_config"]

MAX_CONFIG_BYTES = 1 << 20


def _read_bytes(p: Path) -> bytes:
    # O_NONBLOCK: opening a FIFO without a writer must not block; reads block again after.
    fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        os.set_blocking(fd, True)
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_CONFIG_BYTES:
            chunk = os.read(fd, MAX_CONFIG_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {p} is larger than {MAX_CONFIG_BYTES} bytes")
    return b"".join(chunks)


def read_config(path: str | Path | None = None) -> tuple[dict[str, Any], str] | None:
    """``(tables, source)`` of ``path``, else of ``EVENTSTORE_CONFIG``; None if neither is set."""
    chosen = path or os.environ.get("EVENTSTORE_CONFIG")
    if not chosen:
        return None
    p = Path(chosen)
    try:
        raw = _read_bytes(p)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {p} not found") from exc
    except IsADirectoryError as exc:
        raise ConfigError(f"config file {p} is a directory, not a TOML file") from exc
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        raise ConfigError(
            f"config file {p} cannot be read: {getattr(exc, 'strerror', None) or exc}"
        ) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {p} is not UTF-8 text (byte {raw[exc.start]:#04x} at offset "
            f"{exc.start}); TOML files are UTF-8"
        ) from exc
    try:
        return tomllib.loads(text), str(p)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {p} is not valid TOML: {exc}") from exc
    except RecursionError as exc:
        raise ConfigError(f"config file {p} is nested too deeply to be a configuration") from exc
