"""eventstore: the event log on NATS JetStream (events, clocks, subjects, producer, reader)."""

from eventstore.clocks import LamportClock, Order, VectorClock
from eventstore.config import read_config
from eventstore.connecting import ConnectSettings
from eventstore.errors import (
    AggregateNotFound,
    AppendTimeout,
    CodeVersionChanged,
    ConfigError,
    DatabaseLocked,
    EventStoreError,
    ForeignDatabase,
    InvalidEvent,
    InvalidPoint,
    InvalidRequest,
    InvalidTransition,
    NotConnected,
    PermissionDenied,
    ProjectionError,
    RequestTimeout,
    Retryable,
    ServerError,
    StreamMisconfigured,
    UnknownProjection,
    VersionConflict,
)
from eventstore.events import (
    MAX_NESTING,
    TOO_DEEP,
    AppendResult,
    Envelope,
    Event,
    NewEvent,
    Transition,
    nesting_exceeds,
    validate_aggregate_type,
)
from eventstore.health import SERVER_HEALTH_SUBJECT, server_health
from eventstore.ids import uuid7
from eventstore.logging import configure_logging
from eventstore.machines import Machines, StateMachine, load_machines
from eventstore.permissions import ROLES, permissions
from eventstore.reader import Malformed, StoredMessage, decode_message
from eventstore.server import EmbeddedServer, free_port
from eventstore.store import DEFAULT_URL, AppendRequest, EventStore, StreamIdentity
from eventstore.streams import StreamSettings, validate_stream_name, validate_stream_prefix
from eventstore.subjects import decode_id, encode_id, parse_subject
from eventstore.validate import MAX_INT, check_int, check_optional_int
from eventstore.versions import next_version

__all__ = [
    "DEFAULT_URL",
    "MAX_INT",
    "MAX_NESTING",
    "ROLES",
    "SERVER_HEALTH_SUBJECT",
    "TOO_DEEP",
    "AggregateNotFound",
    "AppendRequest",
    "AppendResult",
    "AppendTimeout",
    "CodeVersionChanged",
    "ConfigError",
    "ConnectSettings",
    "DatabaseLocked",
    "EmbeddedServer",
    "Envelope",
    "Event",
    "EventStore",
    "EventStoreError",
    "ForeignDatabase",
    "InvalidEvent",
    "InvalidPoint",
    "InvalidRequest",
    "InvalidTransition",
    "LamportClock",
    "Machines",
    "Malformed",
    "NewEvent",
    "NotConnected",
    "Order",
    "PermissionDenied",
    "ProjectionError",
    "RequestTimeout",
    "Retryable",
    "ServerError",
    "StateMachine",
    "StoredMessage",
    "StreamIdentity",
    "StreamMisconfigured",
    "StreamSettings",
    "Transition",
    "UnknownProjection",
    "VectorClock",
    "VersionConflict",
    "check_int",
    "check_optional_int",
    "configure_logging",
    "decode_id",
    "decode_message",
    "encode_id",
    "free_port",
    "load_machines",
    "nesting_exceeds",
    "next_version",
    "parse_subject",
    "permissions",
    "read_config",
    "server_health",
    "uuid7",
    "validate_aggregate_type",
    "validate_stream_name",
    "validate_stream_prefix",
]
