"""eventstore: the event log on NATS JetStream (events, clocks, subjects, producer, reader)."""

from eventstore.clocks import LamportClock, Order, VectorClock
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
    InvalidTransition,
    NotConnected,
    PermissionDenied,
    ProjectionError,
    RequestTimeout,
    Retryable,
    ServerError,
    StreamMisconfigured,
    VersionConflict,
)
from eventstore.events import AppendResult, Envelope, Event, NewEvent, Transition
from eventstore.ids import uuid7
from eventstore.machines import Machines, StateMachine, load_machines
from eventstore.reader import Malformed, StoredMessage, decode_message
from eventstore.server import EmbeddedServer
from eventstore.store import DEFAULT_URL, AppendRequest, EventStore, StreamIdentity
from eventstore.streams import StreamSettings
from eventstore.subjects import decode_id, encode_id

__all__ = [
    "DEFAULT_URL",
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
    "VectorClock",
    "VersionConflict",
    "decode_id",
    "decode_message",
    "encode_id",
    "load_machines",
    "uuid7",
]
