"""Finding a user's object by its ``module:object`` name (projections, resolvers)."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from eventstore import ConfigError

__all__ = ["import_object", "make_without_arguments"]


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


def make_without_arguments(cls: type, spec: str, what: str) -> Any:
    """An instance of ``cls`` (a class already checked to be of the expected kind), made with
    no arguments; ``ConfigError`` naming ``what`` if it needs some or fails when made."""
    try:
        inspect.signature(cls).bind()
    except TypeError as exc:
        raise ConfigError(
            f"{what} {spec!r} cannot be made without arguments ({exc}); name an instance made "
            "in its module instead"
        ) from exc
    except ValueError:  # no signature to inspect: let the call tell
        pass
    try:
        return cls()
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"{what} {spec!r} failed when made: {type(exc).__name__}: {exc}") from exc
