"""eventstore: the event log on NATS JetStream (events, clocks, subjects, producer, reader)."""

from eventstore.clocks import LamportClock, Order, VectorClock
from eventstore.errors import (
    AppendTimeout,
    ConfigError,
    EventStoreError,
    InvalidEvent,
    InvalidTransition,
    NotConnected,
    PermissionDenied,
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
    "AppendRequest",
    "AppendResult",
    "AppendTimeout",
    "ConfigError",
    "EmbeddedServer",
    "Envelope",
    "Event",
    "EventStore",
    "EventStoreError",
    "InvalidEvent",
    "InvalidTransition",
    "LamportClock",
    "Machines",
    "Malformed",
    "NewEvent",
    "NotConnected",
    "Order",
    "PermissionDenied",
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
