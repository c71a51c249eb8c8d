"""The seed 004 scenarios: CQRS read models, the L1 cache as a live view, read-your-writes,
and time-travel debugging of a swarm run."""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from consumers import ProjectionClient
from eventstore import EventStore, NewEvent
from examples._shell import Checks
from examples.vrooli.cache import ChatCache
from projections import EntitiesProjection, Point, ProjectionDB, TimeTravel


@dataclass
class Env:
    store: EventStore
    client: ProjectionClient
    db: Path
    run: str
    checks: Checks
    messages: dict[str, int] = field(default_factory=dict)  # chat -> messages posted

    def id(self, name: str) -> str:
        return f"{name}-{self.run}"

    async def post(self, chat: str) -> Any:
        """The command "post a message": the chat's message count goes up by one."""
        self.messages[chat] = self.messages.get(chat, 0) + 1
        return await self.store.append(
            "chat", chat, NewEvent("MessagePosted", {"messages": self.messages[chat]})
        )

    async def open_chat(self, chat: str, team: str, participants: list[str]) -> Any:
        self.messages[chat] = 0
        return await self.store.append(
            "chat",
            chat,
            NewEvent("ChatStarted", {"team": team, "participants": participants, "messages": 0}),
            expected_version=0,
        )


async def _rows(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """The example's own read-model tables, read as the UI's backend would: read-only, through
    ``ProjectionDB`` (the public way to open the worker's file, never a private table)."""
    async with await ProjectionDB.open(db, readonly=True) as con:
        return [tuple(row) for row in await con.fetchall(sql, params)]


async def read_models(env: Env) -> dict[str, Any]:
    """A team of three bots and two chats; the read-model tables answer the UI's queries."""
    team, bots = env.id("team"), [env.id(f"bot{i}") for i in range(3)]
    await env.store.append(
        "team",
        team,
        NewEvent("TeamCreated", {"name": "research", "objective": "survey", "members": bots}),
        expected_version=0,
    )
    for i, bot in enumerate(bots):
        await env.store.append(
            "bot",
            bot,
            NewEvent(
                "BotConfigured",
                {"name": f"bot {i}", "team": team, "persona": ["analyst", "critic", "writer"][i]},
            ),
        )
    await env.open_chat(env.id("chat0"), team, bots[:2])
    last = await env.open_chat(env.id("chat1"), team, bots)
    await env.client.wait_for(last.last_seq, projection="vrooli")
    teams = await _rows(env.db, "SELECT name, members FROM vrooli_teams WHERE id = ?", team)
    bot_rows = await _rows(
        env.db, "SELECT id, persona FROM vrooli_bots WHERE team = ? ORDER BY id", team
    )
    chats = await _rows(
        env.db, "SELECT id, participants FROM vrooli_chats WHERE team = ? ORDER BY id", team
    )
    served = await env.client.query("vrooli", aggregate_type="bot", where={"team": team})
    print(f"  vrooli_teams: {teams}; vrooli_bots: {bot_rows}; vrooli_chats: {chats}")
    print(f"  the query service, bots where team={team}: {len(served.items)}")
    c = env.checks
    c.check("the teams table has the team and its 3 members", teams == [("research", 3)])
    c.check(
        "the bots table lists the team's bots",
        [r[1] for r in bot_rows] == ["analyst", "critic", "writer"],
    )
    c.check("the chats table has both chats", [r[1] for r in chats] == [2, 3])
    c.check("the service's query agrees", len(served.items) == 3)
    return {"team": team, "bots": len(bot_rows), "chats": len(chats)}


async def cache(env: Env, operations: int = 300) -> dict[str, Any]:
    """Reads and writes on the chats, reads from the live view: hit rate, and how stale a read
    can be (a write not yet delivered by the feed), with no TTL anywhere."""
    team = env.id("team")
    chats = [env.id(f"chat{i}") for i in range(2)]
    for i in range(2, 5):
        res = await env.open_chat(env.id(f"chat{i}"), team, [env.id("bot0")])
        chats.append(env.id(f"chat{i}"))
    await env.client.wait_for(res.last_seq, projection="vrooli")
    l1 = await ChatCache(env.client).start()
    rng = random.Random(4)
    written: list[tuple[str, int, float]] = []  # (chat, version, acknowledged at)
    latest: dict[str, int] = {}
    reads = stale = unseen = 0
    try:
        for op in range(operations):
            if op % 60 == 59:  # a new chat, read at once by its creator: read-your-writes
                chat = env.id(f"chat{len(chats)}")
                res = await env.open_chat(chat, team, [env.id("bot1")])
                latest[chat] = 1
                version, _ = await l1.get(chat, min_seq=res.last_seq)
                reads += 1
                stale += version < 1
                unseen += version < 1
                await l1.holds({chat: 1})  # others read it once the feed has brought it
                chats.append(chat)
            elif op % 3 == 0:
                chat = rng.choice(chats)
                res = await env.post(chat)
                written.append((chat, res.version, time.monotonic()))
                latest[chat] = res.version
            else:
                chat = rng.choice(chats)
                version, _ = await l1.get(chat)
                reads += 1
                stale += version < latest.get(chat, version)
        await env.client.wait_for(res.last_seq, projection="vrooli")
        view = l1.view
        assert view is not None
        delivered = await l1.holds(latest)
        exact = delivered
        for chat in chats:
            served = await env.client.state("chat", chat, projection="vrooli")
            cached = view.get(chat)
            exact &= cached is not None and (cached.version, cached.state) == (
                served.version,
                served.state,
            )
        delays = [
            max(0.0, r - t) * 1000 for c, v, t in written if (r := l1.reached(c, v)) is not None
        ]
    finally:
        await l1.close()
    hit_rate = l1.hits / max(1, l1.hits + l1.misses)
    print(
        f"  {reads} reads, {len(written)} writes over {len(chats)} chats: hit rate "
        f"{hit_rate:.3f} ({l1.misses} misses), {stale} reads saw a write not yet delivered"
    )
    if delays:
        print(
            f"  write acknowledged -> in the cache: median {statistics.median(delays):.1f} ms, "
            f"max {max(delays):.1f} ms"
        )
    c = env.checks
    c.check("every write reached the cache through the feed", len(delays) == len(written))
    c.check("after the feed, every cached chat equals the projection (nothing stale)", exact)
    c.check("a creator's read of its new chat saw it (min_seq)", unseen == 0)
    return {
        "reads": reads,
        "writes": len(written),
        "hit_rate": round(hit_rate, 4),
        "misses": l1.misses,
        "stale_reads": stale,
        "staleness_ms_median": round(statistics.median(delays), 2) if delays else None,
        "staleness_ms_max": round(max(delays), 2) if delays else None,
    }


async def read_your_writes(env: Env) -> dict[str, Any]:
    """A command, then a read that must see it: wait for the append's seq, then read."""
    team = env.id("team")
    res = await env.store.append("team", team, NewEvent("TeamRenamed", {"name": "deep research"}))
    await env.client.wait_for(res.last_seq, projection="vrooli")
    reply = await env.client.state("team", team, projection="vrooli")
    rows = await _rows(env.db, "SELECT name FROM vrooli_teams WHERE id = ?", team)
    posted = await env.post(env.id("chat0"))
    l1 = await ChatCache(env.client).start()
    try:
        version, state = await l1.get(env.id("chat0"), min_seq=posted.last_seq)
    finally:
        await l1.close()
    print(
        f"  renamed at seq {res.last_seq}: state {reply.state['name']!r}, table {rows}; "
        f"chat0 after posting: version {version}, messages {state['messages']}"
    )
    env.checks.check(
        "the state read after wait_for shows the rename",
        reply.state["name"] == "deep research" and reply.checkpoint >= res.last_seq,
    )
    env.checks.check("and so does the read model", rows == [("deep research",)])
    env.checks.check(
        "a cache read with min_seq sees the poster's own message", version == posted.version
    )
    return {"seq": res.last_seq, "name": reply.state["name"], "chat_version": version}


STEPS = [
    ("planner", {"step": 1, "budget": 80, "plan": ["search", "summarise", "review"]}),
    ("researcher", {"step": 2, "budget": 55, "tool": "web_search", "cost": 25}),
    ("researcher", {"step": 3, "budget": -15, "tool": "web_search", "cost": 70}),
    ("writer", {"step": 4, "budget": -30, "tool": "draft", "cost": 15}),
]


async def swarm_debugging(env: Env) -> dict[str, Any]:
    """A swarm run whose budget went negative: its state at each step (time travel through
    the worker), the first step that broke the invariant, and the diff that broke it."""
    swarm = env.id("swarm")
    await env.store.append(
        "swarm",
        swarm,
        NewEvent(
            "SwarmStarted", {"goal": "survey agent memory", "budget": 100, "chat": env.id("chat1")}
        ),
    )
    for bot, data in STEPS:
        res = await env.store.append(
            "swarm", swarm, NewEvent("StepCompleted", {**data, "bot": bot})
        )
    res = await env.store.append(
        "swarm", swarm, NewEvent("SwarmFailed", {"error": "out of budget"})
    )
    await env.client.wait_for(res.last_seq)
    budgets = []
    for v in range(1, res.version + 1):
        past = await env.client.state("swarm", swarm, version=v)
        budgets.append(past.state["budget"])
        print(
            f"  v{v}: step {past.state.get('step', 0)} budget {past.state['budget']:>4} "
            f"{past.state.get('error', '')}"
        )
    broken = next(v for v, b in enumerate(budgets, start=1) if b < 0)
    diff = await TimeTravel(env.store, EntitiesProjection()).diff(
        "swarm", swarm, Point(version=broken - 1), Point(version=broken)
    )
    for ch in diff.changes:
        print(f"  v{broken - 1} -> v{broken}: {'.'.join(ch.path)} {ch.old!r} -> {ch.new!r}")
    culprit = diff.events[-1]
    print(f"  through {culprit.type} (seq {culprit.seq}) by bot {culprit.data['bot']}")
    c = env.checks
    c.check("the budget first went negative at version 4 (step 3)", broken == 4)
    c.check(
        "the diff shows budget 55 -> -15 and the 70 cost of web_search",
        {(tuple(ch.path), ch.old, ch.new) for ch in diff.changes}
        >= {(("budget",), 55, -15), (("cost",), 25, 70)},
    )
    c.check(
        "through one event, the researcher's step",
        len(diff.events) == 1 and culprit.data["bot"] == "researcher",
    )
    return {"versions": res.version, "broken_at": broken, "budgets": budgets}
