"""The state machine of an aggregate type drawn as inline SVG, its current state marked.

States sit on a circle in the order the table names them (initial first, at the top), each
transition is an arrow from one to the other; no layout library, no JavaScript, so the page
shows it even when scripts are off and the browser tests can read it as text.
"""

from __future__ import annotations

import math
from html import escape
from typing import Any

__all__ = ["machine_svg"]

_R_NODE = 34
_SIZE = 420


def _states(machine: dict[str, Any]) -> list[str]:
    order = [machine["initial"]]
    for a, b in machine["transitions"]:
        for s in (a, b):
            if s not in order:
                order.append(s)
    current = machine.get("current")
    if current is not None and current not in order:
        order.append(current)  # a state the table does not know (rules changed): still shown
    return order


def machine_svg(machine: dict[str, Any]) -> str:
    """``<svg>`` of ``{"initial", "transitions": [[from, to]...], "current"}``."""
    states = _states(machine)
    n = len(states)
    center = _SIZE / 2
    radius = 0 if n == 1 else center - _R_NODE - 12
    pos = {
        s: (
            center + radius * math.sin(2 * math.pi * i / n),
            center - radius * math.cos(2 * math.pi * i / n),
        )
        for i, s in enumerate(states)
    }
    parts = [
        f'<svg class="machine" viewBox="0 0 {_SIZE} {_SIZE}" width="{_SIZE}" height="{_SIZE}" '
        'xmlns="http://www.w3.org/2000/svg" role="img" aria-label="state machine">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
        'fill="#667"/></marker></defs>',
    ]
    for a, b in machine["transitions"]:
        (x1, y1), (x2, y2) = pos[a], pos[b]
        if a == b:  # a loop above the node
            parts.append(
                f'<path class="edge" d="M{x1 - 12:.1f},{y1 - _R_NODE + 4:.1f} '
                f"C{x1 - 40:.1f},{y1 - _R_NODE - 40:.1f} {x1 + 40:.1f},{y1 - _R_NODE - 40:.1f} "
                f'{x1 + 12:.1f},{y1 - _R_NODE + 4:.1f}" fill="none" stroke="#667" '
                'marker-end="url(#arrow)"/>'
            )
            continue
        dx, dy = x2 - x1, y2 - y1
        d = math.hypot(dx, dy) or 1.0
        ux, uy = dx / d, dy / d
        # Bend a little to the right, so that A->B and B->A are two arrows, not one line.
        mx, my = (x1 + x2) / 2 - uy * 18, (y1 + y2) / 2 + ux * 18
        sx, sy = x1 + ux * _R_NODE, y1 + uy * _R_NODE
        ex, ey = x2 - ux * (_R_NODE + 2), y2 - uy * (_R_NODE + 2)
        parts.append(
            f'<path class="edge" data-from="{escape(a)}" data-to="{escape(b)}" '
            f'd="M{sx:.1f},{sy:.1f} Q{mx:.1f},{my:.1f} {ex:.1f},{ey:.1f}" fill="none" '
            'stroke="#667" marker-end="url(#arrow)"/>'
        )
    for s in states:
        x, y = pos[s]
        current = s == machine.get("current")
        cls = "state current" if current else "state"
        fill = "#ffd54f" if current else ("#e3f2fd" if s == machine["initial"] else "#f5f5f5")
        width = 4 if current else 1.5
        label = escape(s if len(s) <= 12 else s[:11] + "…")
        parts.append(
            f'<g class="{cls}" data-state="{escape(s)}"><title>{escape(s)}</title>'
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{_R_NODE}" fill="{fill}" stroke="#334" '
            f'stroke-width="{width}"/><text x="{x:.1f}" y="{y + 4:.1f}" text-anchor="middle" '
            f'font-size="12">{label}</text></g>'
        )
    parts.append("</svg>")
    return "".join(parts)
