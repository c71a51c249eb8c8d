"""The CQRS read models of seed 004: teams, bots and chats, as one projection with tables of
its own.

The write side is events on ``team``, ``bot`` and ``chat`` aggregates; the fold is the
entities fold (each event's data merged in), and ``write`` keeps three tables shaped for the
queries the UI makes (bots of a team, chats of a team by activity). The tables are written in
the same SQLite transaction as the states and the checkpoint, so a read model is never ahead
of or behind the state it comes from, whatever crashes where.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from projections import Change, EntitiesProjection, Statement

TABLES = ("vrooli_teams", "vrooli_bots", "vrooli_chats")


class ReadModels(EntitiesProjection):
    name = "vrooli"
    version = "1"
    aggregate_types = frozenset({"team", "bot", "chat"})
    schema = (
        "CREATE TABLE IF NOT EXISTS vrooli_teams (id TEXT PRIMARY KEY, name TEXT, "
        "objective TEXT, members INTEGER)",
        "CREATE TABLE IF NOT EXISTS vrooli_bots (id TEXT PRIMARY KEY, name TEXT, team TEXT, "
        "persona TEXT)",
        "CREATE TABLE IF NOT EXISTS vrooli_chats (id TEXT PRIMARY KEY, team TEXT, "
        "participants INTEGER, messages INTEGER, version INTEGER)",
    )
    tables = TABLES

    def write(self, changes: Sequence[Change[Any]]) -> list[Statement]:
        teams, bots, chats = [], [], []
        for c in changes:
            s = c.state
            if c.aggregate_type == "team":
                teams.append(
                    (c.aggregate_id, s.get("name"), s.get("objective"), len(s.get("members", [])))
                )
            elif c.aggregate_type == "bot":
                bots.append((c.aggregate_id, s.get("name"), s.get("team"), s.get("persona")))
            else:
                chats.append(
                    (
                        c.aggregate_id,
                        s.get("team"),
                        len(s.get("participants", [])),
                        int(s.get("messages", 0)),
                        c.version,
                    )
                )
        out = []
        if teams:
            out.append(Statement("INSERT OR REPLACE INTO vrooli_teams VALUES (?, ?, ?, ?)", teams))
        if bots:
            out.append(Statement("INSERT OR REPLACE INTO vrooli_bots VALUES (?, ?, ?, ?)", bots))
        if chats:
            out.append(
                Statement("INSERT OR REPLACE INTO vrooli_chats VALUES (?, ?, ?, ?, ?)", chats)
            )
        return out
