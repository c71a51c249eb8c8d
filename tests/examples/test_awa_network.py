"""examples.awa_network (seed 000) against the session's real nats-server, with the real worker
processes it starts: the domain outcome, from its JSON line and read back through the API."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

from helpers_examples import run_example

from eventstore import EventStore, NewEvent, StreamSettings, export_events
from examples.awa_network.realms import RealmProjection, seed_state, shape
from projections import ProjectionDB, TimeTravel, list_conflicts, list_quarantine, verify


async def test_awa_network_runs_seed_000_end_to_end(nats_url: str, tmp_path: Path) -> None:
    """Exit 0 with every check held; the realms read back from the log have the seed's shape,
    the stale holder's write is fenced, conflicts were resolved by lww, the crash repaired, the
    lock free, each realm's export its whole history, and verify agrees with the worker."""
    settings = StreamSettings(
        name=f"AWA_{uuid.uuid4().hex[:8]}", prefix="awa" + uuid.uuid4().hex[:8]
    )
    proc, figures = run_example("awa_network", nats_url, settings=settings, workdir=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert figures["ok"] is True and all(figures["checks"].values())
    assert figures["stale_before"] == ["vector_store"] and figures["stale_after"] == []
    assert figures["lock"]["refused_while_held"] and figures["lock"]["max_hold_s"] == 300
    assert figures["expiry"]["new_token"] > figures["expiry"]["old_token"]
    assert figures["concurrent"]["updates"] == 36 and figures["concurrent"]["conflicts"] >= 12
    assert figures["crash"]["repaired"] == ["ocr_pipeline"]

    async with await EventStore.connect(nats_url, producer="awa-test", stream=settings) as store:
        tt = TimeTravel(store, RealmProjection())
        te_po = (await tt.state_at("realm", "te_po")).state
        te_hau = (await tt.state_at("realm", "te_hau")).state
        now = datetime.now(UTC)
        for realm, state in (("te_po", te_po), ("te_hau", te_hau)):
            seed = {"version": "1.0", "realm": realm, "timestamp": "t", **seed_state(realm, now)}
            assert shape(state) == shape(seed), realm
        assert te_po["assistants"]["asst_qa"]["model"] == "gpt-4o"  # not the fenced write
        assert te_po["pipelines"]["ocr_pipeline"]["status"] == "idle"  # reconciled
        assert te_po["vector_store"]["document_count"] == 1240
        assert await store.leases.show("realm:te_po") == []
        events = [e async for e in store.read("realm", "te_po")]
        assert [e.type for e in events].count("reconcile") == 1
        out = tmp_path / "te_po.jsonl"
        with out.open("wb") as f:
            report = await export_events(store, f, aggregate_type="realm", aggregate_id="te_po")
        assert report.events == len(events) == figures["carving"]["te_po"]
        async with await ProjectionDB.open(tmp_path / "worker.db", readonly=True) as db:
            fenced = [q for q in await list_quarantine(db, "realms") if q.kind == "fenced"]
            conflicts = await list_conflicts(db, "realms")
            checked = await verify(store, db, [RealmProjection()])
    assert [q.seq for q in fenced] == figures["expiry"]["fenced_seqs"]
    assert len(conflicts) >= figures["concurrent"]["conflicts"]  # the crash step adds one
    assert {c.resolver for c in conflicts} == {"lww"}
    assert checked.ok, checked.mismatches


async def test_awa_network_refuses_a_stream_that_already_holds_events(
    nats_url: str, store: EventStore, tmp_path: Path
) -> None:
    """A stream with history is refused with one line and exit 1, and nothing is written."""
    await store.append("realm", "te_po", NewEvent("Existing"))
    head = await store.head()
    proc, _ = run_example("awa_network", nats_url, settings=store.settings, workdir=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "already holds events" in proc.stderr
    assert await store.head() == head
