"""The public face of the eventstore package."""

from __future__ import annotations

import types

import eventstore

EXPORTED = [
    "AUTH_INCLUDE",
    "DEFAULT_LEASE_TTL",
    "DEFAULT_MAX_HOLD",
    "DEFAULT_URL",
    "MAX_EVENTS_PER_TRANSACTION",
    "MAX_INT",
    "MAX_NESTING",
    "ROLES",
    "RULES_EVENT",
    "RULES_ID",
    "RULES_TYPE",
    "SERVER_HEALTH_SUBJECT",
    "TOO_DEEP",
    "UPCASTERS",
    "AggregateNotFound",
    "AppendRequest",
    "AppendResult",
    "AppendTimeout",
    "AuthProfile",
    "BoundaryConflict",
    "CodeVersionChanged",
    "ConfigError",
    "ConnectSettings",
    "DatabaseLocked",
    "EmbeddedServer",
    "Envelope",
    "Event",
    "EventStore",
    "EventStoreError",
    "ExportReport",
    "ForeignDatabase",
    "ImportReport",
    "InvalidEvent",
    "InvalidPoint",
    "InvalidRequest",
    "InvalidTransition",
    "LamportClock",
    "Lease",
    "LeaseInfo",
    "LeaseLost",
    "LeaseUnavailable",
    "Leases",
    "LocalCluster",
    "LocalRules",
    "MachineTable",
    "Machines",
    "Malformed",
    "NewEvent",
    "NotConnected",
    "Order",
    "PermissionDenied",
    "ProjectionError",
    "RequestTimeout",
    "Retryable",
    "RuleBook",
    "RuleVersion",
    "Rules",
    "RulesMismatch",
    "ServerError",
    "ServerHealth",
    "StateMachine",
    "StoredMessage",
    "StreamIdentity",
    "StreamMisconfigured",
    "StreamSettings",
    "Transaction",
    "Transition",
    "UnknownProjection",
    "UpcastFailed",
    "Upcaster",
    "Upcasters",
    "VectorClock",
    "VersionConflict",
    "cancel_and_wait",
    "check_int",
    "check_local_config",
    "check_optional_int",
    "check_time",
    "client_options",
    "cluster_config",
    "collecting_less",
    "configure_logging",
    "decode_id",
    "decode_message",
    "default_config_path",
    "encode_id",
    "export_events",
    "fenced_events",
    "find_nats_server",
    "free_port",
    "get_logger",
    "guarded_connect",
    "import_events",
    "init_auth",
    "load_upcasters",
    "misplaced",
    "nesting_exceeds",
    "next_version",
    "parse_subject",
    "permissions",
    "producer_grant",
    "read_config",
    "read_creds",
    "read_local_rules",
    "resolver_spec_problem",
    "rules_subject",
    "server_health",
    "server_urls",
    "tls_context",
    "typed_event",
    "upcaster",
    "uuid7",
    "validate_aggregate_type",
    "validate_stream_name",
    "validate_stream_prefix",
]


def test_all_is_exactly_the_public_face() -> None:
    """``__all__`` is exactly this list (sorted the RUF022 way): a name added or removed is a
    decision made here too."""
    assert eventstore.__all__ == EXPORTED


def test_every_public_member_is_exported() -> None:
    """Every name ``import eventstore`` binds (but its submodules) is in ``__all__`` and
    resolves: nothing is public by accident."""
    public = {
        name
        for name, value in vars(eventstore).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == set(eventstore.__all__)


def test_errors_share_one_root() -> None:
    """Every public error class derives from EventStoreError."""
    errors = [
        getattr(eventstore, n)
        for n in eventstore.__all__
        if isinstance(getattr(eventstore, n), type)
        and issubclass(getattr(eventstore, n), Exception)
    ]
    assert len(errors) >= 8
    assert all(issubclass(e, eventstore.EventStoreError) for e in errors)


def test_eventstore_does_not_import_upper_layers() -> None:
    """Dependencies point one way: nothing in eventstore imports projections or consumers."""
    import pathlib

    root = pathlib.Path(eventstore.__file__).parent
    for path in root.glob("*.py"):
        imports = [
            line.strip()
            for line in path.read_text().splitlines()
            if line.strip().startswith(("import ", "from "))
        ]
        for line in imports:
            assert not line.split()[1].startswith(
                ("projections", "consumers", "sqlite", "aiosqlite")
            ), f"{path.name}: {line}"
