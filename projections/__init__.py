"""projections: folding the log into state in SQLite, now and at any point in the past."""

from eventstore import (
    DatabaseLocked,
    ForeignDatabase,
    InvalidRequest,
    ProjectionError,
    UnknownProjection,
)
from projections.conflicts import (
    ConflictContext,
    FunctionResolver,
    LastWriterWins,
    LogOrder,
    Resolution,
    Resolver,
    SourcePriority,
    resolver_from_spec,
)
from projections.db import SCHEMA_VERSION, ProjectionDB
from projections.entities import EntitiesProjection
from projections.failures import ProjectionFailure
from projections.fold import AggregateState, Folder
from projections.identity import check_database, check_stream_name
from projections.listing import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    Scalar,
    StatePage,
    StateRecord,
    projection_checkpoint,
    query_states,
    read_state,
    states_between,
)
from projections.loading import (
    BUILTIN_PROJECTIONS,
    ProjectionsConfig,
    load_config,
    load_projection,
    load_projections,
    needs_origin,
)
from projections.lock import DatabaseLock
from projections.mergepatch import merge_patch
from projections.objects import import_object, make_without_arguments
from projections.origins import recorded_origin
from projections.points import Diff, HistoryEntry, PastState, Point
from projections.projection import Change, Projection, Statement
from projections.rebuild import RebuildResult, rebuild
from projections.recorder import list_aggregates, list_conflicts, list_quarantine
from projections.records import ConflictRecord, ProjectionInfo, QuarantineRecord
from projections.repository import Loaded, Repository, Updated
from projections.runner import CommitInfo, Runner, RunnerSettings
from projections.snapshots import SnapshotPolicy
from projections.status import (
    ProjectionCounts,
    ProjectionStatus,
    StatusReport,
    projection_counts,
    projection_status,
    status_report,
)
from projections.timetravel import TimeTravel, current_state
from projections.verify import Mismatch, VerifyReport, verify

__all__ = [
    "BUILTIN_PROJECTIONS",
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "SCHEMA_VERSION",
    "AggregateState",
    "Change",
    "CommitInfo",
    "ConflictContext",
    "ConflictRecord",
    "DatabaseLock",
    "DatabaseLocked",
    "Diff",
    "EntitiesProjection",
    "Folder",
    "ForeignDatabase",
    "FunctionResolver",
    "HistoryEntry",
    "InvalidRequest",
    "LastWriterWins",
    "Loaded",
    "LogOrder",
    "Mismatch",
    "PastState",
    "Point",
    "Projection",
    "ProjectionCounts",
    "ProjectionDB",
    "ProjectionError",
    "ProjectionFailure",
    "ProjectionInfo",
    "ProjectionStatus",
    "ProjectionsConfig",
    "QuarantineRecord",
    "RebuildResult",
    "Repository",
    "Resolution",
    "Resolver",
    "Runner",
    "RunnerSettings",
    "Scalar",
    "SnapshotPolicy",
    "SourcePriority",
    "StatePage",
    "StateRecord",
    "Statement",
    "StatusReport",
    "TimeTravel",
    "UnknownProjection",
    "Updated",
    "VerifyReport",
    "check_database",
    "check_stream_name",
    "current_state",
    "import_object",
    "list_aggregates",
    "list_conflicts",
    "list_quarantine",
    "load_config",
    "load_projection",
    "load_projections",
    "make_without_arguments",
    "merge_patch",
    "needs_origin",
    "projection_checkpoint",
    "projection_counts",
    "projection_status",
    "query_states",
    "read_state",
    "rebuild",
    "recorded_origin",
    "resolver_from_spec",
    "states_between",
    "status_report",
    "verify",
]
