"""Audit export and import against real servers: a round trip into a new server verifies
and exports the same trail, a second import stores nothing, a damaged line stops the import
at its number with everything before it stored, and producers never reuse clock values."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from eventstore import (
    AppendRequest,
    EmbeddedServer,
    EventStore,
    InvalidEvent,
    MachineTable,
    NewEvent,
    Rules,
    StreamSettings,
    export_events,
    import_events,
)
from projections import EntitiesProjection, ProjectionDB, Runner, verify

ROOT = Path(__file__).resolve().parent.parent


async def fill(store: EventStore, n: int, aggregates: int = 17) -> None:
    """``n`` events over ``aggregates`` aggregates, with transitions and nested data."""
    for start in range(0, n, 250):
        requests = [
            AppendRequest("agent", f"a{i % aggregates}",
                          [NewEvent("Changed", {"i": i, "nested": {"k": [i, str(i)]}})])
            for i in range(start, min(n, start + 250))
        ]  # fmt: skip
        for r in await store.append_many(requests):
            assert not isinstance(r, BaseException), r


async def export_bytes(store: EventStore, **filters: Any) -> bytes:
    out = io.BytesIO()
    await export_events(store, out, **filters)
    return out.getvalue()


def without_recorded_at(data: bytes) -> list[dict[str, Any]]:
    """The trail as the new log must repeat it: everything but the time it was stored."""
    return [{k: v for k, v in json.loads(x).items() if k != "recorded_at"}
            for x in data.splitlines()]  # fmt: skip


async def test_round_trip_into_a_new_server_verifies_and_exports_the_same_trail(
    store: EventStore, private_server: EmbeddedServer, tmp_path: Path
) -> None:
    """Export -> import into a fresh server -> a projection of it verifies, and its export
    equals the first line for line (ids, versions, clocks, occurred_at, seq); a second
    import stores nothing."""
    await fill(store, 3000)
    first = await export_bytes(store)
    assert len(first.splitlines()) == 3000
    async with await EventStore.connect(
        private_server.url, producer="importer", stream=store.settings
    ) as target:
        report = await import_events(target, io.BytesIO(first))
        assert (report.lines, report.imported, report.skipped) == (3000, 3000, 0)
        again = await import_events(target, io.BytesIO(first))
        assert (again.imported, again.skipped) == (0, 3000)
        assert await target.head() == 3000
        second = await export_bytes(target)
        assert without_recorded_at(second) == without_recorded_at(first)
        async with await ProjectionDB.open(tmp_path / "new.db") as db:
            await Runner(target, db, [EntitiesProjection()]).catch_up()
            checked = await verify(target, db, [EntitiesProjection()])
        assert checked.ok and checked.messages == 3000, checked.mismatches


async def test_a_damaged_line_is_named_and_nothing_after_the_last_good_line_is_stored(
    store: EventStore, private_server: EmbeddedServer
) -> None:
    """Line 701 of 1000 is cut short: the import fails naming line 701, the 700 events before
    it are stored (across a batch boundary), none after; fixed, the import completes."""
    await fill(store, 1000)
    lines = (await export_bytes(store)).splitlines(keepends=True)
    damaged = [*lines[:700], lines[700][:40] + b"\n", *lines[701:]]
    async with await EventStore.connect(
        private_server.url, producer="importer", stream=store.settings
    ) as target:
        with pytest.raises(InvalidEvent, match="line 701 is not an event"):
            await import_events(target, io.BytesIO(b"".join(damaged)))
        stored = without_recorded_at(await export_bytes(target))
        assert stored == without_recorded_at(b"".join(lines[:700]))
        report = await import_events(target, io.BytesIO(b"".join(lines)))
        assert (report.imported, report.skipped) == (300, 700)
        assert await target.head() == 1000


async def test_a_stream_with_another_history_is_refused(
    store: EventStore, private_server: EmbeddedServer
) -> None:
    """An aggregate that already holds other events at the file's versions stops the import
    (nothing of it overwritten, nothing appended after it); a version gap is refused too."""
    await fill(store, 20, aggregates=2)
    data = await export_bytes(store)
    async with await EventStore.connect(
        private_server.url, producer="other", stream=store.settings
    ) as target:
        await target.append("agent", "a0", NewEvent("Elsewhere"))
        with pytest.raises(InvalidEvent, match="another history"):
            await import_events(target, io.BytesIO(data))
        assert await target.head() == 1
    gap = b"".join(x for x in data.splitlines(keepends=True) if b'"version":1,' not in x)
    async with await EventStore.connect(
        private_server.url, producer="other", stream=StreamSettings(name="GAP", prefix="gap")
    ) as target:
        with pytest.raises(InvalidEvent, match="import its history"):
            await import_events(target, io.BytesIO(gap))


async def test_filters_select_by_type_aggregate_sequence_and_time(store: EventStore) -> None:
    """TYPE, TYPE ID, --from-seq and --since/--until select exactly the matching events;
    a malformed message is left out and reported."""
    await fill(store, 30, aggregates=3)
    await store.append("task", "t1", NewEvent("Opened"))
    await store.js.publish(f"{store.settings.prefix}.agent.junk", b"not json")
    everything = [json.loads(x) for x in (await export_bytes(store)).splitlines()]
    assert len(everything) == 31
    agents = without_recorded_at(await export_bytes(store, aggregate_type="agent"))
    assert len(agents) == 30 and {e["aggregate_type"] for e in agents} == {"agent"}
    one = without_recorded_at(await export_bytes(store, aggregate_type="agent", aggregate_id="a1"))
    assert [e["version"] for e in one] == list(range(1, 11))
    later = without_recorded_at(await export_bytes(store, from_seq=25))
    assert [e["seq"] for e in later] == list(range(25, 32))
    at = [datetime.fromisoformat(e["recorded_at"]) for e in everything]
    window = await export_bytes(store, since=at[10], until=at[20])
    assert [json.loads(x)["seq"] for x in window.splitlines()] == [
        e["seq"] for e, t in zip(everything, at, strict=True) if at[10] <= t <= at[20]
    ]


async def test_a_producer_appending_after_an_import_never_reuses_a_clock_value(
    store: EventStore, private_server: EmbeddedServer
) -> None:
    """The imported producer's next event in the new stream is above its imported Lamport
    time and own counter."""
    await fill(store, 600, aggregates=5)
    data = await export_bytes(store)
    top = max(json.loads(x)["lamport"] for x in data.splitlines())
    own = max(json.loads(x)["vclock"]["tester"] for x in data.splitlines())
    async with await EventStore.connect(
        private_server.url, producer="importer", stream=store.settings
    ) as target:
        await import_events(target, io.BytesIO(data))
    async with await EventStore.connect(
        private_server.url, producer="tester", stream=store.settings
    ) as again:
        await again.append("agent", "a0", NewEvent("After"))
        (last,) = [e async for e in again.read_all(601)]
    assert last.lamport > top and last.vclock["tester"] > own


def test_cli_export_and_import_round_trip_and_a_damaged_file_is_one_line(
    nats_url: str, private_server: EmbeddedServer, settings: StreamSettings, tmp_path: Path
) -> None:
    """``eventstore export --out`` then ``eventstore import`` on another server prints the
    counts; a damaged file is one line on stderr naming the line, exit 1, no traceback."""
    base = [sys.executable, "-m", "consumers.cli", "--stream", settings.name,
            "--prefix", settings.prefix]  # fmt: skip

    def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*base, "--url", url, *args], capture_output=True, text=True,
                              cwd=ROOT, timeout=60)  # fmt: skip

    for i in range(5):
        assert (
            cli(nats_url, "publish", "agent", "x", "E", "--data", f'{{"i": {i}}}').returncode == 0
        )
    trail = tmp_path / "trail.jsonl"
    exported = cli(nats_url, "export", "--out", str(trail))
    assert exported.returncode == 0, exported.stderr
    assert len(trail.read_text().splitlines()) == 5
    imported = cli(private_server.url, "import", str(trail))
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout) == {"lines": 5, "imported": 5, "skipped": 0}
    broken = tmp_path / "broken.jsonl"
    broken.write_text(trail.read_text() + "{oops\n")
    failed = cli(private_server.url, "import", str(broken))
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert failed.stderr.count("\n") == 1 and "line 6" in failed.stderr, failed.stderr


async def test_an_imported_rules_change_is_in_force_on_the_importing_connection_at_once(
    store: EventStore, private_server: EmbeddedServer, tmp_path: Path
) -> None:
    """A trail holding rules changes: right after ``import_events`` returns, the importing
    connection's book holds them (no wait for the subscription's re-read), so a fold and
    ``verify`` on that same connection use the rules the source folded with."""
    job = MachineTable("Queued", [("Queued", "Running"), ("Running", "Done")])
    await store.set_rules(Rules(machines={"job": job}))
    await fill(store, 40)
    await store.set_rules(Rules(resolvers={"entities": "lww"}), expected_version=1)
    await fill(store, 40)
    data = await export_bytes(store)
    async with await EventStore.connect(
        private_server.url, producer="importer", stream=store.settings
    ) as target:
        assert target.rules.version == 0
        await import_events(target, io.BytesIO(data))
        assert target.rules.version == 2  # at once, not after a re-read in the background
        assert target.rules.current is not None
        source = store.rules.current
        assert source is not None and target.rules.current.rules.digest == source.rules.digest
        async with await ProjectionDB.open(tmp_path / "rules.db") as db:
            await Runner(target, db, [EntitiesProjection()]).catch_up()
            checked = await verify(target, db, [EntitiesProjection()])
        assert checked.ok, checked.mismatches
