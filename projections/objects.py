"""Finding a user's object by its ``module:object`` name (projections, resolvers)."""

from __future__ import annotations

import importlib
from typing import Any

from eventstore import ConfigError

__all__ = ["import_object"]


def import_object(spec: str, what: str) -> Any:
    """The object named ``module:attr.path``; ``ConfigError`` naming ``what`` if it is missing."""
    module_name, _, attr = spec.strip().partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{what} {spec!r} cannot be loaded: give it as package.module:object")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"{what} {spec!r} cannot be loaded: {exc}") from exc
    except Exception as exc:  # the module itself failed while being imported
        raise ConfigError(
            f"{what} {spec!r} cannot be loaded: importing {module_name} failed with "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return obj
