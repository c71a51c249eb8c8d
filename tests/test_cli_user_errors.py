"""User errors on the command line: one line on stderr, a non-zero exit, no traceback, no hang.

Every hostile invocation runs as a real ``python -m consumers.cli`` subprocess (concurrently, so
the tables stay fast); most of them need no server and point at a port where nothing listens,
so that an argument the CLI fails to check shows up as the wrong exit code or message. The
library entry points behind the options are checked in-process as well.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from eventstore import (
    ConfigError,
    EventStore,
    InvalidEvent,
    NewEvent,
    StreamSettings,
)
from eventstore.config import read_config
from eventstore.errors import ProjectionError
from eventstore.server import free_port
from projections import (
    FunctionResolver,
    LastWriterWins,
    TimeTravel,
    load_projection,
    resolver_from_spec,
)
from projections.entities import EntitiesProjection
from projections.objects import import_object
from projections.timetravel import Point

BIG63 = str(2**63)
BIG64 = str(2**64)
MAX = str(2**63 - 1)  # the largest version or sequence: SQLite's INTEGER, JetStream's int64
TIMEOUT = 25.0  # per invocation; each one normally takes well under a second

PLUGIN = """
from pathlib import Path

from projections import Projection, EntitiesProjection

MARK = Path(__file__).with_name("called")


def touch(*args, **kwargs):
    MARK.touch()
    return EntitiesProjection()


class Touch:
    def __init__(self, *args, **kwargs):
        MARK.touch()


class NeedsArgs(Projection):
    name = "needs-args"

    def __init__(self, where):
        super().__init__()


class Broken(Projection):
    name = "broken"

    def __init__(self):
        raise RuntimeError("boom")


class LwwAgain:
    name = "lww-again"
    needs_history = True

    def resolve(self, ctx):
        return ctx.prefer_event()


def pick(ctx):
    return "event"


def two_args(a, b):
    return "event"


copy = EntitiesProjection(name="entities-copy")
"""


@dataclass
class Case:
    """One invocation: its arguments, and what its single stderr line must say."""

    args: list[str]
    code: int | None = None  # None: any non-zero exit code
    says: str = ""
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Outcome:
    case: Case
    argv: list[str]
    returncode: int | None
    stderr: str
    seconds: float

    def problem(self) -> str | None:
        """Why this outcome is not a proper user error, or None."""
        lines = self.stderr.strip().splitlines()
        if self.returncode is None:
            return f"did not finish within {TIMEOUT}s"
        if self.returncode == 0:
            return "exit code 0"
        if self.case.code is not None and self.returncode != self.case.code:
            return f"exit code {self.returncode}, expected {self.case.code}"
        if "Traceback" in self.stderr:
            return "a traceback"
        if len(lines) != 1:
            return f"{len(lines)} lines on stderr"
        if not lines[0].startswith("eventstore"):
            return "the line does not start with 'eventstore'"
        if self.case.says.lower() not in lines[0].lower():
            return f"the line does not say {self.case.says!r}"
        return None


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTSTORE_")}
    env["EVENTSTORE_LOG_LEVEL"] = "warning"
    env.update(extra)
    return env


def _fill(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    return text


def _run(case: Case, values: dict[str, str], cwd: Path) -> Outcome:
    argv = [_fill(a, values) for a in case.args]
    env = _env({k: _fill(v, values) for k, v in case.env.items()})
    started = time.monotonic()
    with subprocess.Popen(
        [sys.executable, "-m", "consumers.cli", *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=cwd,
    ) as proc:
        try:
            _, err = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            # SIGTERM first: a server that should never have started stops its nats-server.
            proc.terminate()
            try:
                _, err = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            return Outcome(case, argv, None, err, time.monotonic() - started)
    return Outcome(case, argv, proc.returncode, err, time.monotonic() - started)


def run_cases(cases: Iterable[Case], tmp_path: Path, **values: str) -> list[Outcome]:
    """Run every case concurrently; fail naming each one that is not a proper user error."""
    values = {"tmp": str(tmp_path), "dead": f"nats://127.0.0.1:{free_port()}", **values}
    cwd = tmp_path / "cwd"
    cwd.mkdir(exist_ok=True)
    with ThreadPoolExecutor(max_workers=6) as pool:
        outcomes = list(pool.map(lambda c: _run(c, values, cwd), cases))
    bad = [
        f"{o.argv} -> {o.problem()}: {o.stderr.strip()[-300:]!r}" for o in outcomes if o.problem()
    ]
    assert not bad, "\n".join(bad)
    return outcomes


def dead(*args: str) -> list[str]:
    """Arguments pointed at a port where nothing listens."""
    return ["--url", "{dead}", *args]


# -- 9: integers ---------------------------------------------------------------------------


def test_integer_options_are_bounded(tmp_path: Path) -> None:
    """Versions and sequences of 2**63 or more (or below their minimum) are usage errors."""
    cases = [
        Case(dead("state", "agent", "a", "--version", BIG63), 2, "--version"),
        Case(dead("state", "agent", "a", "--seq", BIG63), 2, "--seq"),
        Case(dead("state", "agent", "a", "--seq", BIG64), 2, "--seq"),
        Case(dead("state", "agent", "a", "--version", "9" * 5000), 2, "--version"),
        Case(dead("tail", "--from-seq", BIG64), 2, "--from-seq"),
        Case(dead("tail", "--from-seq", BIG63), 2, "--from-seq"),
        Case(dead("tail", "--from-seq", "-1"), 2, "--from-seq"),
        Case(dead("history", "agent", "a", "--from-version", BIG63), 2, "--from-version"),
        Case(dead("history", "agent", "a", "--from-version", "0"), 2, "--from-version"),
        Case(dead("history", "agent", "a", "--to-version", BIG63), 2, "--to-version"),
        Case(dead("publish", "agent", "a", "T", "--expect-version", BIG63), 2, "--expect-version"),
        Case(dead("publish", "agent", "a", "T", "--expect-version", "1e3"), 2, "--expect-version"),
        # Points are parsed by the library: the same bound, exit 1.
        Case(dead("diff", "agent", "a", "--from", f"seq:{BIG63}"), 1, MAX),
        Case(dead("diff", "agent", "a", "--from", "1", "--to", f"version:{BIG63}"), 1, MAX),
        Case(dead("diff", "agent", "a", "--from", BIG64), 1, MAX),
    ]
    run_cases(cases, tmp_path)


def test_check_int_bounds_and_types() -> None:
    """The library's integer check refuses bools, non-integers and values out of range."""
    from eventstore.validate import MAX_INT, check_int

    assert check_int(0, "seq") == 0
    assert check_int(MAX_INT, "seq") == MAX_INT
    for bad in (-1, MAX_INT + 1, 2**64, True, 1.0, "3", None):
        with pytest.raises(InvalidEvent):
            check_int(bad, "seq")
    with pytest.raises(ProjectionError, match="version"):
        check_int(0, "version", minimum=1, error=ProjectionError)
    with pytest.raises(InvalidEvent, match="bit"):  # never str() of a huge int (3.11 limit)
        check_int(10**5000, "seq")


async def _drain(gen: AsyncIterator[Any]) -> None:
    async for _ in gen:
        pass


async def test_store_entry_points_refuse_out_of_range_integers(store: EventStore) -> None:
    """read, read_by_seq, read_all, follow, raw, raw_aggregate and append check their integers."""
    await store.append("agent", "a", [NewEvent("Created")])
    calls: list[Callable[[], Any]] = [
        lambda: _drain(store.read("agent", "a", from_version=2**63)),
        lambda: _drain(store.read("agent", "a", to_version=2**63)),
        lambda: _drain(store.read("agent", "a", from_version=True)),
        lambda: _drain(store.read_by_seq("agent", "a", from_seq=2**64)),
        lambda: _drain(store.read_by_seq("agent", "a", to_seq=-1)),
        lambda: _drain(store.read_all(from_seq=2**64)),
        lambda: _drain(store.follow(from_seq=2**64)),
        lambda: _drain(store.follow(from_seq=-5)),
        lambda: _drain(store.raw(from_seq=2**64)),
        lambda: _drain(store.raw(stop_seq=2**63)),
        lambda: _drain(store.raw_aggregate("agent", "a", from_seq=2**64)),
        lambda: store.append("agent", "a", [NewEvent("X")], expected_version=2**63),
    ]
    for call in calls:
        with pytest.raises(InvalidEvent):
            await asyncio.wait_for(call(), 5)
    assert await store.version("agent", "a") == 1


async def test_time_travel_points_are_bounded(store: EventStore) -> None:
    """A point at version or sequence 2**63 is a ProjectionError, before SQLite sees it."""
    for kwargs in ({"version": 2**63}, {"seq": 2**63}, {"version": 2**64}, {"seq": True}):
        with pytest.raises(ProjectionError):
            Point(**kwargs)
    with pytest.raises(ProjectionError):
        Point.parse(f"seq:{2**63}")
    tt = TimeTravel(store, EntitiesProjection())
    with pytest.raises(ProjectionError):
        await tt.state_at("agent", "a", version=2**63)


async def test_runner_wait_for_refuses_an_impossible_sequence(
    store: EventStore, tmp_path: Path
) -> None:
    """``Runner.wait_for(2**63)`` is refused at once instead of waiting for ever."""
    from projections.db import ProjectionDB
    from projections.runner import Runner

    async with await ProjectionDB.open(tmp_path / "p.db") as db:
        runner = Runner(store, db, [EntitiesProjection()])
        for bad in (2**63, -1):
            with pytest.raises(ProjectionError, match="seq"):
                await asyncio.wait_for(runner.wait_for(bad), 2)


# -- 10: stream names and prefixes ----------------------------------------------------------

BAD_STREAMS = ["A.B", "A B", "", "*", ">", "A/B", "A\\B", "A\tB", "X" * 256, "É"]
BAD_PREFIXES = ["a b", "", "a..b", ".a", "a.", "a.*", "a.>", "_INBOX", "$JS", "x" * 200]


def test_invalid_stream_names_are_usage_errors(tmp_path: Path) -> None:
    """An invalid --stream (or EVENTSTORE_STREAM) is refused on every command, exit 2."""
    commands = [
        ["history", "agent", "a"],
        ["permissions", "producer"],
        ["status"],
        ["tail"],
        ["worker"],
        ["publish", "agent", "a", "T"],
    ]
    cases = [
        Case(dead("--stream", name, *commands[i % len(commands)]), 2, "--stream")
        for i, name in enumerate(BAD_STREAMS)
    ]
    cases += [
        Case(dead("history", "--stream", "A.B", "agent", "a"), 2, "--stream"),
        Case(dead("history", "agent", "a"), 2, "--stream", env={"EVENTSTORE_STREAM": "A.B"}),
        Case(
            ["server", "--port", str(free_port()), "--store-dir", "{tmp}/s", "--stream", "A.B"],
            2,
            "--stream",
        ),
    ]
    cases += [
        Case(dead("--prefix", prefix, *commands[i % len(commands)]), 2, "--prefix")
        for i, prefix in enumerate(BAD_PREFIXES)
    ]
    cases.append(Case(dead("status"), 2, "--prefix", env={"EVENTSTORE_PREFIX": "a b"}))
    run_cases(cases, tmp_path)


def test_stream_settings_validate_names_and_prefixes() -> None:
    """StreamSettings refuses names and prefixes JetStream or NATS subjects cannot carry."""
    for good in ("EVENTS", "T_abc-1", "A" * 234):
        assert StreamSettings(name=good).name == good
    for bad in [*BAD_STREAMS, "A" * 235]:
        with pytest.raises(ConfigError, match="stream name"):
            StreamSettings(name=bad)
    for prefix in ("events", "a.b-c_d", "A1.b2"):
        assert StreamSettings(prefix=prefix).prefix == prefix
    for bad in BAD_PREFIXES:
        with pytest.raises(ConfigError, match="prefix"):
            StreamSettings(prefix=bad)
    for kwargs in ({"replicas": 0}, {"duplicate_window": 0}, {"max_age": -1}, {"max_bytes": 0}):
        with pytest.raises(ConfigError):
            StreamSettings(**kwargs)  # type: ignore[arg-type]


async def test_connect_refuses_an_invalid_stream_name(nats_url: str) -> None:
    """``EventStore.connect(stream="A.B")`` is a ConfigError, not nats-py's ValueError."""
    with pytest.raises(ConfigError, match="stream name"):
        await EventStore.connect(nats_url, stream="A.B")


# -- 11: config files ----------------------------------------------------------------------


def _config_files(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "latin1.toml").write_bytes(b'[machines.agent]\ninitial = "\xe9t\xe9"\n')
    (tmp_path / "invalid.toml").write_text("[machines\n")
    (tmp_path / "confdir").mkdir()
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    return {"fifo": str(fifo)}


def test_unreadable_config_files_are_one_line(tmp_path: Path) -> None:
    """A --config that is not UTF-8, a directory, missing or not TOML: one line naming it."""
    _config_files(tmp_path)
    cases = []
    for cmd in (["history", "agent", "a"], ["worker"], ["state", "agent", "a"]):
        cases += [
            Case(dead("--config", "{tmp}/latin1.toml", *cmd), 1, "latin1.toml is not UTF-8"),
            Case(dead("--config", "{tmp}/confdir", *cmd), 1, "confdir is a directory"),
            Case(dead("--config", "{tmp}/missing.toml", *cmd), 1, "missing.toml not found"),
            Case(dead("--config", "{tmp}/invalid.toml", *cmd), 1, "invalid.toml is not valid TOML"),
        ]
    cases += [
        Case(dead("history", "agent", "a"), 1, "is a directory",
             env={"EVENTSTORE_CONFIG": "{tmp}/confdir"}),
        Case(dead("--config", "", "history", "agent", "a"), 2, "--config"),
        Case(dead("--config", "/dev/zero", "history", "agent", "a"), 1, "larger than"),
        # A FIFO nobody writes to reads as empty: no hang, the command goes on (no server).
        Case(dead("--config", "{tmp}/fifo.toml", "history", "agent", "a"), 1, "no NATS server"),
    ]  # fmt: skip
    run_cases(cases, tmp_path)


def test_config_values_are_refused_before_connecting(tmp_path: Path) -> None:
    """Out-of-range [projections] values are one line naming the file, before any connection."""
    cases = []
    for i, (body, says) in enumerate(
        (
            ("batch_size = 99999999999999999999999", "batch_size"),
            ("batch_size = 0", "batch_size"),
            ("batch_delay = nan", "batch_delay"),
            ("snapshot_interval = inf", "snapshot_interval"),
            ("snapshot_every = 99999999999999999999", "snapshot_every"),
            ('load = ["os:system"]', "not a Projection"),
            ('resolvers = {entities = "builtins print"}', "unknown resolver"),
        )
    ):
        (tmp_path / f"c{i}.toml").write_text(f"[projections]\n{body}\n")
        cases.append(Case(dead("--config", f"{{tmp}}/c{i}.toml", "worker"), 1, says))
    run_cases(cases, tmp_path)


def test_read_config_names_the_file_and_the_problem(tmp_path: Path) -> None:
    """``read_config`` turns every way a file can be unreadable into one ConfigError."""
    _config_files(tmp_path)
    for name, says in (
        ("latin1.toml", "is not UTF-8"),
        ("confdir", "is a directory"),
        ("missing.toml", "not found"),
        ("invalid.toml", "is not valid TOML"),
    ):
        with pytest.raises(ConfigError, match=f"{name}.*{says}"):
            read_config(tmp_path / name)
    with pytest.raises(ConfigError, match="larger than"):
        read_config("/dev/zero")
    assert read_config("/dev/null") == ({}, "/dev/null")


# -- 12: the database path -----------------------------------------------------------------


def test_db_whose_parent_cannot_be_created(
    tmp_path: Path, nats_url: str, settings: StreamSettings
) -> None:
    """A --db under a regular file is one line naming it, for the commands that create it."""
    (tmp_path / "afile").write_text("not a directory\n")
    live = ["--url", nats_url, "--stream", settings.name, "--prefix", settings.prefix]
    cases = [
        Case([*live, "--db", "{tmp}/afile/sub/p.db", "worker"], 1, "afile"),
        Case([*live, "--db", "{tmp}/afile/p.db", "worker"], 1, "afile"),
        Case([*live, "--db", "{tmp}/afile/p.db", "rebuild"], 1, "afile"),
        Case([*live, "--db", "{tmp}/afile/p.db", "status"], 1, "afile"),
        Case(dead("--db", "", "status"), 2, "--db"),
    ]
    run_cases(cases, tmp_path)
    assert (tmp_path / "afile").read_text() == "not a directory\n"


# -- 13: --projection module:object ---------------------------------------------------------


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    where = tmp_path / "plug"
    where.mkdir()
    (where / "evilplug.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(where))
    return where


def test_projection_names_never_call_arbitrary_objects(tmp_path: Path, plugin_dir: Path) -> None:
    """--projection naming a function or a foreign class is refused without calling it."""
    env = {"PYTHONPATH": str(plugin_dir)}
    conf = tmp_path / "resolvers.toml"
    conf.write_text('[projections.resolvers]\nentities = "evilplug:Touch"\n')
    osconf = tmp_path / "os.toml"
    osconf.write_text('[projections.resolvers]\nentities = "os:system"\n')
    cases = [
        Case(dead("state", "agent", "a", "--projection", spec), 1, says, env=env)
        for spec, says in (
            ("evilplug:touch", "not a Projection"),
            ("evilplug:Touch", "not a Projection"),
            ("os:system", "not a Projection"),
            ("sys:exit", "not a Projection"),
            ("os:path.join", "not a Projection"),
            ("evilplug:NeedsArgs", "without arguments"),
            ("evilplug:Broken", "boom"),
            (":", "cannot be loaded"),
            ("evilplug:", "cannot be loaded"),
        )
    ]
    cases += [
        Case(dead("worker", "--projection", "evilplug:touch"), 1, "not a Projection", env=env),
        Case(dead("verify", "--projection", "evilplug:Touch"), 1, "not a Projection", env=env),
        Case(dead("rebuild", "--projection", "os:system"), 1, "not a Projection", env=env),
        Case(dead("rules", "set", str(conf)), 1, "not a resolver", env=env),
        Case(dead("rules", "set", str(osconf)), 1, "not a resolver", env=env),
    ]
    run_cases(cases, tmp_path)
    assert not (plugin_dir / "called").exists()


def test_load_projection_accepts_instances_and_subclasses_only(plugin_dir: Path) -> None:
    """An instance or a Projection subclass loads; a factory function is refused, uncalled."""
    assert load_projection("evilplug:copy").name == "entities-copy"
    assert load_projection("projections.entities:EntitiesProjection").name == "entities"
    for spec, says in (
        ("evilplug:touch", "not a Projection"),
        ("evilplug:Touch", "not a Projection"),
        ("evilplug:NeedsArgs", "without arguments"),
        ("evilplug:Broken", "boom"),
    ):
        with pytest.raises(ConfigError, match=says):
            load_projection(spec)
    assert not (plugin_dir / "called").exists()


def test_resolver_specs_never_call_arbitrary_objects(plugin_dir: Path) -> None:
    """A resolver is an instance, a resolver class (made with no arguments) or a one-argument
    Python function; builtins, foreign classes and other callables are refused uncalled."""
    lww = resolver_from_spec("projections.conflicts:LastWriterWins")
    assert isinstance(lww, LastWriterWins)
    assert resolver_from_spec("evilplug:LwwAgain").name == "lww-again"
    assert isinstance(resolver_from_spec("evilplug:pick"), FunctionResolver)
    for spec in ("os:system", "builtins:print", "evilplug:Touch", "evilplug:two_args", "os:sep"):
        with pytest.raises(ConfigError, match="resolver"):
            resolver_from_spec(spec)
    assert not (plugin_dir / "called").exists()


def test_import_object_errors_are_config_errors(plugin_dir: Path) -> None:
    """An empty module name or a module that fails to import is a ConfigError."""
    (plugin_dir / "failing_import.py").write_text("raise RuntimeError('broken at import')\n")
    for spec in (":", ":x", "failing_import:x", "evilplug:", "evilplug:nope"):
        with pytest.raises(ConfigError, match="cannot be loaded"):
            import_object(spec, "projection")


# -- 14a: ports ----------------------------------------------------------------------------


def test_ports_out_of_range_are_usage_errors(tmp_path: Path) -> None:
    """up/server --port 70000, 0, -1, abc or empty, and a --url port out of range: exit 2."""
    cases = [
        Case([cmd, "--port", port, "--store-dir", "{tmp}/s"], 2, "--port")
        for cmd in ("up", "server")
        for port in ("70000", "0", "-1", "abc", "", BIG64)
    ]
    cases += [
        Case(["--url", "nats://127.0.0.1:70000", "history", "agent", "a"], 2, "--url"),
        Case(["--url", "nats://127.0.0.1:0", "up", "--store-dir", "{tmp}/s"], 2, "--url"),
    ]
    run_cases(cases, tmp_path)
    assert not (tmp_path / "s").exists()


# -- everything else -----------------------------------------------------------------------


def test_hostile_arguments_of_every_command(tmp_path: Path) -> None:
    """Empty strings, oversized ids, bad JSON, bad times, bad URLs: one line each, bounded."""
    (tmp_path / "afile").write_text("x")
    deep = '{"a": ' + "[" * 5000 + "]" * 5000 + "}"
    cases = [
        Case(dead("publish", "", "x", "T"), 2, "aggregate type"),
        Case(dead("publish", "agent", "", "T"), 2, "aggregate id"),
        Case(dead("publish", "agent", "x" * 300, "T"), 2, "256"),
        Case(dead("publish", "agent", "x", ""), 1, "event type"),
        Case(dead("publish", "agent", "x", "T", "--id", ""), 1, "event id"),
        Case(dead("publish", "agent", "x", "T", "--producer", ""), 1, "producer"),
        Case(dead("publish", "agent", "x", "T", "--data", "[1]"), 2, "--data"),
        Case(dead("publish", "agent", "x", "T", "--data", "nope"), 2, "--data"),
        Case(dead("publish", "agent", "x", "T", "--data", deep), 2, "--data"),
        Case(dead("publish", "agent", "x", "T", "--metadata", "5"), 2, "--metadata"),
        Case(dead("publish", "agent", "x", "T", "--transition", "nocolon"), 1, "transition"),
        Case(dead("history", "", "x"), 2, "aggregate type"),
        Case(dead("history", "agent", "x" * 300), 2, "256"),
        Case(dead("tail", "agent", ""), 2, "aggregate id"),
        Case(dead("state", "agent", "a", "--at", "yesterday"), 1, "not understood"),
        Case(dead("state", "agent", "a", "--at", ""), 1, "not understood"),
        Case(dead("state", "agent", "a", "--version", "1", "--seq", "1"), 1, "one of"),
        Case(dead("diff", "agent", "a", "--from", ""), 1, "not understood"),
        Case(dead("diff", "agent", "a", "--from", "at:2025-01-01T00:00:00+25:00"), 1, "point"),
        Case(["--url", "", "history", "agent", "a"], 2, "--url"),
        Case(["--url", "not a url", "history", "agent", "a"], 2, "--url"),
        Case(["--url", "http://127.0.0.1:4222", "history", "agent", "a"], 2, "--url"),
        Case(["--url", "nats://", "history", "agent", "a"], 2, "--url"),
        Case(["--url", "nats://a:1,,nats://b:2", "history", "agent", "a"], 2, "--url"),
        Case(["--url", "{dead},{dead}", "history", "agent", "a"], 1, "no NATS server"),
        Case(["--url", "nats://127.0.0.1:1", "history", "agent", "a"], 1, "no NATS server"),
        Case(["--url", "nats://127.0.0.1:1", "tail"], 1, "no NATS server"),
        Case(["--url", "nats://127.0.0.1:1", "--db", "{tmp}/p.db", "status"], 1, "NATS"),
        Case(dead("history", "agent", "a"), 2, "--log-level",
             env={"EVENTSTORE_LOG_LEVEL": "loud"}),
        Case(dead("--log-level", "loud", "history", "agent", "a"), 2, "--log-level"),
        Case(dead("--db", "{tmp}/missing.db", "conflicts"), 1, "missing.db"),
        Case(dead("--db", "{tmp}/afile/x.db", "quarantine", "agent", "a"), 1, "afile"),
        Case(["demo", "--dir", "{tmp}/afile"], 1, "afile"),
        Case(["demo", "--dir", ""], 2, "--dir"),
        Case(["server", "--store-dir", "", "--port", str(free_port())], 2, "--store-dir"),
        Case(["up", "--store-dir", "", "--port", str(free_port())], 2, "--store-dir"),
        Case(["permissions", "nobody"], 2, "role"),
        Case([], 2, "COMMAND"),
        Case(["bogus"], 2, "bogus"),
    ]  # fmt: skip
    run_cases(cases, tmp_path)
