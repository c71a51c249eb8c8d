"""The console's pages as HTML: plain string templates over the data of ``views`` (every
value escaped here, once), the same data embedded as JSON for the page's script
(``static/console.js``: plots, slider, live updates), so nothing is computed twice.
"""

from __future__ import annotations

from html import escape
from typing import Any
from urllib.parse import quote, urlencode

import msgspec

from consumers.console.machine import machine_svg

__all__ = [
    "aggregate_page",
    "aggregate_path",
    "aggregates_page",
    "error_page",
    "overview_page",
    "tail_page",
]

_encode = msgspec.json.Encoder().encode


def _json(data: Any) -> str:
    """JSON safe inside ``<script>`` (no ``</script>`` can end it early)."""
    return _encode(data).decode().replace("<", "\\u003c").replace(">", "\\u003e")


def _pretty(value: Any) -> str:
    return escape(msgspec.json.format(_encode(value), indent=2).decode())


def aggregate_path(aggregate_type: str, aggregate_id: str) -> str:
    return f"/aggregates/{quote(aggregate_type, safe='')}/{quote(aggregate_id, safe='')}"


def _layout(title: str, body: str, data: Any, page: str) -> str:
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{escape(title)} · eventstore console</title>
<link rel="stylesheet" href="/static/uPlot.min.css">
<link rel="stylesheet" href="/static/console.css">
</head><body data-page="{page}">
<nav><b>eventstore console</b> <a href="/">Overview</a> <a href="/aggregates">Aggregates</a>
<a href="/tail">Live tail</a></nav>
<main>{body}</main>
<script type="application/json" id="page-data">{_json(data)}</script>
<script src="/static/uPlot.iife.min.js"></script>
<script src="/static/console.js"></script>
</body></html>"""


def error_page(status: int, title: str, message: str) -> str:
    body = (
        f'<h1>{escape(title)}</h1><p class="error" id="error">{escape(message)}</p>'
        f'<p>HTTP {status}. <a href="/">Back to the overview</a></p>'
    )
    return _layout(title, body, {"error": message, "status": status}, "error")


def _row(*cells: Any) -> str:
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def overview_page(d: dict[str, Any]) -> str:
    s = d["stream"]
    stream = "".join(
        _row(escape(k), f'<span id="stream-{k}">{escape(str(s.get(k)))}</span>')
        for k in ("name", "messages", "bytes", "first_seq", "last_seq", "first_time", "last_time")
    )
    projections = "".join(
        _row(
            escape(p["projection"]),
            f'<span class="checkpoint">{p["checkpoint"]}</span>',
            f'<span class="lag">{p["lag"]}</span>',
            f'<span class="conflicts">{p.get("conflicts")}</span>',
            f'<span class="quarantined">{p.get("quarantined")}</span>',
        )
        for p in d["projections"]
    )
    services = (
        "".join(
            _row(
                escape(str(v["name"])),
                escape(str(v["id"])),
                escape(str(v["version"])),
                escape(", ".join(f"{k}={x}" for k, x in sorted(v["metadata"].items()))),
            )
            for v in d["services"]
        )
        or '<tr><td colspan="4">none answered $SRV.PING</td></tr>'
    )
    body = f"""<h1>Overview</h1>
<div class="cols"><section><h2>Stream</h2><table id="stream">{stream}</table>
<h3>Append rate (events/s)</h3><div id="rate-plot" class="plot"></div></section>
<section><h2>Projections</h2>
<table id="projections"><tr><th>projection</th><th>checkpoint</th><th>lag (events)</th>
<th>conflicts</th><th>quarantined</th></tr>
{projections}</table>
<h3>Lag over the last minutes</h3><div id="lag-plot" class="plot"></div>
<p>Concurrent events in the log (by vector clock): <b id="conflicts">{d["conflicts"]}</b> ·
undecodable messages: <b id="quarantined">{d["quarantined"]}</b> <small>(the console's own
count from the log up to seq <span id="counted">{d["counted_to_seq"]}</span>; the table's
conflicts and quarantined are the worker's)</small></p></section></div>
<section><h2>Services ($SRV.PING)</h2>
<table id="services"><tr><th>name</th><th>id</th><th>version</th><th>metadata</th></tr>
{services}</table></section>"""
    return _layout("Overview", body, d, "overview")


def _link(aggregate_type: str, aggregate_id: str) -> str:
    href = escape(aggregate_path(aggregate_type, aggregate_id))
    return f'<a class="agg" href="{href}">{escape(aggregate_id)}</a>'


def aggregates_page(d: dict[str, Any], where_text: list[str]) -> str:
    wheres = [*where_text, "", ""][: max(2, len(where_text) + 1)]
    inputs = "".join(
        f'<input name="where" placeholder="field=value" value="{escape(w)}">' for w in wheres
    )
    rows = (
        "".join(
            _row(
                escape(i["aggregate_type"]),
                _link(i["aggregate_type"], i["aggregate_id"]),
                i["version"],
                i["seq"],
                f"<code>{escape(_encode(i['state']).decode()[:160])}</code>",
            )
            for i in d["items"]
        )
        or '<tr><td colspan="5">no aggregate matches</td></tr>'
    )
    more = ""
    if d["next_cursor"]:
        query = [("type", d["aggregate_type"] or ""), *(("where", w) for w in where_text)]
        query += [("limit", str(d["limit"])), ("cursor", d["next_cursor"])]
        more = f'<p><a id="next" href="/aggregates?{escape(urlencode(query))}">next page</a></p>'
    body = f"""<h1>Aggregates <small>({escape(d["projection"])}, checkpoint {d["checkpoint"]})
</small></h1>
<form id="filters" method="get" action="/aggregates">
<input name="type" placeholder="aggregate type" value="{escape(d["aggregate_type"] or "")}">
{inputs}<input name="limit" size="4" value="{d["limit"]}"><button>filter</button></form>
<table id="aggregates"><tr><th>type</th><th>id</th><th>version</th><th>seq</th><th>state</th>
</tr>{rows}</table>{more}"""
    return _layout("Aggregates", body, d, "aggregates")


def _history_rows(rows: list[dict[str, Any]]) -> str:
    out = []
    for r in rows:
        cls = " ".join(
            c
            for c, on in (
                ("concurrent", r["concurrent"]),
                ("quarantined", r["outcome"] == "quarantined"),
            )
            if on
        )
        transition = "→".join(r["transition"]) if r["transition"] else ""
        vclock = _encode(r["vclock"]).decode() if r["vclock"] is not None else ""
        out.append(
            f'<tr class="{cls}" data-version="{r["version"]}" data-seq="{r["seq"]}">'
            + "".join(
                f"<td>{escape(str(c))}</td>"
                for c in (
                    r["version"],
                    r["seq"],
                    r["recorded_at"],
                    r["type"],
                    r["producer"],
                    transition,
                    r["lamport"],
                    vclock,
                    r["outcome"],
                    r["detail"] or "",
                )
            )
            + "</tr>"
        )
    return "".join(out)


def aggregate_page(d: dict[str, Any], point: dict[str, Any] | None) -> str:
    machine = (
        machine_svg(d["machine"])
        if d["machine"]
        else "<p>no state machine is stored for this aggregate type</p>"
    )
    at = point or {"version": d["version"], "state": d["state"], "changes": []}
    body = f"""<h1>{escape(d["aggregate_type"])} / <span id="agg-id">{escape(d["aggregate_id"])}
</span></h1>
<div class="cols"><section><h2>State now <small>version <span id="version">{d["version"]}</span>,
seq <span id="seq">{d["seq"]}</span></small></h2><pre id="state">{_pretty(d["state"])}</pre>
</section>
<section><h2>Time travel</h2>
<label>version <input type="range" id="slider" min="1" max="{max(d["version"], 1)}"
value="{at["version"]}"> <b id="slider-version">{at["version"]}</b></label>
<label>or at <input type="datetime-local" id="at-picker" step="0.001"></label>
<button id="at-go">show</button>
<p id="point-info"></p><pre id="point-state">{_pretty(at["state"])}</pre>
<h3>Diff to the previous point</h3><table id="point-diff"></table></section>
<section><h2>State machine</h2><div id="machine">{machine}</div></section></div>
<h2>History <small>resolver: {escape(d["resolver"])}; concurrent events are highlighted
</small></h2>
<table id="history"><thead><tr><th>version</th><th>seq</th><th>recorded</th><th>type</th>
<th>producer</th><th>transition</th><th>Lamport</th><th>vector clock</th><th>outcome</th>
<th>decision / reason</th></tr></thead><tbody>{_history_rows(d["history"])}</tbody></table>"""
    data = {**d, "path": aggregate_path(d["aggregate_type"], d["aggregate_id"]), "point": point}
    return _layout(f"{d['aggregate_type']}/{d['aggregate_id']}", body, data, "aggregate")


def history_html(rows: list[dict[str, Any]]) -> str:
    """The history table's rows alone (the page's script swaps them in on a change)."""
    return _history_rows(rows)


def tail_page(d: dict[str, Any]) -> str:
    body = f"""<h1>Live tail</h1>
<form id="tail-filter" method="get" action="/tail">
<input name="type" placeholder="aggregate type" value="{escape(d["aggregate_type"] or "")}">
<button>follow</button> <button type="button" id="pause">pause</button>
<span id="tail-status">connecting…</span></form>
<h2>Quarantined</h2><table id="quarantined"><tr><th>seq</th><th>subject</th><th>kind</th>
<th>reason</th></tr></table>
<h2>Events <small>(newest first)</small></h2>
<table id="tail"><thead><tr><th>seq</th><th>recorded</th><th>aggregate</th><th>version</th>
<th>type</th><th>producer</th><th>transition</th><th>data</th></tr></thead>
<tbody id="tail-rows"></tbody></table>"""
    return _layout("Live tail", body, d, "tail")
