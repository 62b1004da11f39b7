"""A transition drawn as a timeline: one lane per task over time.

Input is a transition record as plain data (``TransitionRecord.as_dict()``,
as ``sys/kernel/debug/livefs/transitions.json`` serves it).  :func:`layout`
turns it into lanes of segments (unswitched, blocked on F, switched, gone)
and markers (attempts, signals, force, reversal, completion); the renderers
draw a layout as text for a terminal, as SVG (no dependencies), or as PNG
(with matplotlib, the optional ``plot`` extra).

With many tasks one lane each is useless, so past ``max_lanes`` the tasks that
switched are folded into one lane per cause, each drawn as the share of its
group switched so far, and only the stragglers -- the tasks that switched last
or not at all -- keep lanes of their own.
"""

from __future__ import annotations

import html
from typing import Any

import attrs

NSEC_PER_SEC = 1_000_000_000

PENDING, SWITCHED, GONE = "unswitched", "switched", "gone"
UNSAFE = "switched inside "  # + the function it was in
MARKERS = {"attempt": "R", "signal": "S", "force": "F", "reverse": "V", "complete": "C", "cancel": "X"}


@attrs.define
class Segment:
    start_ns: int
    end_ns: int
    state: str  # PENDING, SWITCHED, GONE, "blocked: <why>" or "switched inside <function>"
    share: float = 1.0  # for a group lane: the part of the group in this state


@attrs.define
class Lane:
    label: str
    segments: list[Segment] = attrs.field(factory=list)
    detail: str = ""  # how it ended: the cause of its switch, or "never switched"


@attrs.define
class Layout:
    title: str
    start_ns: int
    end_ns: int
    lanes: list[Lane]
    markers: list[tuple[int, str, str]]  # (t_ns, kind, detail)
    summary: list[str]


def _history(record: dict[str, Any]) -> tuple[dict[int, list[tuple[int, str]]], dict[int, str]]:
    """Each task's states over time as (t_ns, state) changes, and how it ended."""
    start = record["start_ns"]
    pending = set(record["initial_pending"])
    changes: dict[int, list[tuple[int, str]]] = {pid: [(start, PENDING)] for pid in pending}
    state: dict[int, str] = {pid: PENDING for pid in pending}
    ended: dict[int, str] = {}
    stream: list[tuple[int, int, str, Any]] = []
    for i, s in enumerate(record["switches"]):
        stream.append((s["t_ns"], i, "switch", s))
    for i, b in enumerate(record["blocked"]):
        stream.append((b["t_ns"], i, "blocked", b))
    for i, e in enumerate(record["events"]):
        stream.append((e["t_ns"], i, "unsafe" if e["kind"] == "unsafe" else "event", e))
    order = {"event": 0, "blocked": 1, "switch": 2, "unsafe": 3}
    stream.sort(key=lambda x: (x[0], order[x[2]], x[1]))

    def move(pid: int, t: int, new: str) -> None:
        if state.get(pid) != new:
            state[pid] = new
            changes.setdefault(pid, []).append((t, new))

    for t, _, kind, item in stream:
        if kind == "switch":
            cause = item["cause"]
            move(item["id"], t, GONE if cause == "exit" else SWITCHED)
            ended[item["id"]] = cause
        elif kind == "unsafe":
            # switched (forced, or with no consistency model) while inside code the transition takes away
            pid, _, func = item["detail"].partition(":")
            move(int(pid), t, f"{UNSAFE}{func}")
            ended[int(pid)] = f"{ended.get(int(pid), '?')} inside {func}"
        elif kind == "blocked":
            if state.get(item["id"], PENDING) != SWITCHED:
                move(item["id"], t, f"blocked: {item['why']}")
        elif item["kind"] == "pending":
            move(int(item["detail"]), t, PENDING)
            ended.pop(int(item["detail"]), None)
        elif item["kind"] == "reverse":
            # the target flips: who had switched must switch back, who had not is there already
            for pid, now in list(state.items()):
                if now == GONE:
                    continue
                move(pid, t, PENDING if now == SWITCHED else SWITCHED)
                if now == SWITCHED:
                    ended.pop(pid, None)
                else:
                    ended[pid] = "reversal"
    return changes, ended


def _segments(changes: list[tuple[int, str]], end_ns: int) -> list[Segment]:
    """Segments of the states a task held for some time (a state left at the
    instant it was entered, such as a switch back at the same syscall's exit,
    draws nothing), neighbours in one state merged."""
    out: list[Segment] = []
    for (t0, s), (t1, _) in zip(changes, changes[1:] + [(end_ns, "")]):
        if t1 <= t0 and out:
            continue
        if out and out[-1].state == s:
            out[-1].end_ns = max(t0, t1)
        else:
            out.append(Segment(t0, max(t0, t1), s))
    return out


# a transition that ended within the write that began it (the immediate model,
# or one CPU) still gets a visible stretch of its end state
MIN_SPAN_NS = NSEC_PER_SEC // 10


def layout(record: dict[str, Any], now_ns: int | None = None, max_lanes: int = 40) -> Layout:
    real_end = record["end_ns"] if record["end_ns"] is not None else max(now_ns or 0, _last_time(record))
    end = max(real_end, record["start_ns"] + MIN_SPAN_NS)
    changes, ended = _history(record)
    names = {t["id"]: (t["pid"], t["comm"]) for t in record["tasks"]}
    done_at = {pid: ch[-1][0] for pid, ch in changes.items()}

    def label(key: int) -> str:
        pid, comm = names.get(key, (key, "?"))
        return f"{pid} {comm}"

    def finish(pid: int) -> str:
        return ended.get(pid, "never switched")

    def key(pid: int) -> tuple:
        # stragglers last: never switched, then latest switch
        return (pid not in ended, done_at[pid], pid)

    pids = sorted(changes, key=key)
    lanes: list[Lane] = []
    if len(pids) <= max_lanes:
        lanes = [Lane(label(p), _segments(changes[p], end), finish(p)) for p in pids]
    else:
        groups: dict[str, list[int]] = {}
        for p in pids:
            groups.setdefault(finish(p), []).append(p)
        room = max(1, max_lanes - len(groups))
        stragglers = pids[-room:]
        for cause, members in sorted(groups.items(), key=lambda g: -len(g[1])):
            lanes.append(_group_lane(f"{len(members)} tasks: {cause}", [changes[p] for p in members],
                                     record["start_ns"], end, cause))
        lanes += [Lane(label(p), _segments(changes[p], end), finish(p)) for p in stragglers]
    markers = [(e["t_ns"], e["kind"], e["detail"]) for e in record["events"] if e["kind"] in MARKERS]
    return Layout(_title(record), record["start_ns"], end, lanes, markers, _summary(record, ended, real_end))


def _group_lane(label: str, histories: list[list[tuple[int, str]]], start: int, end: int, cause: str) -> Lane:
    """A lane for many tasks: at each change, the share of them switched."""
    times = sorted({t for h in histories for t, _ in h} | {start})
    lane = Lane(label, detail=cause)
    n = len(histories)
    for t0, t1 in zip(times, times[1:] + [end]):
        done = sum(1 for h in histories if _state_at(h, t0) in (SWITCHED, GONE))
        lane.segments.append(Segment(t0, max(t0, t1), SWITCHED if done else PENDING,
                                     share=done / n if done else 1.0))
    return lane


def _state_at(history: list[tuple[int, str]], t: int) -> str:
    state = history[0][1]
    for when, s in history:
        if when > t:
            break
        state = s
    return state


def _last_time(record: dict[str, Any]) -> int:
    times = [x["t_ns"] for key in ("switches", "blocked", "events") for x in record[key]]
    return max(times, default=record["start_ns"])


def _title(record: dict[str, Any]) -> str:
    model = "" if record["model"] == "hybrid" else f", {record['model']} model"
    return f"'{record['patch']}' to {record['target']} ({record['outcome']}{model})"


def _summary(record: dict[str, Any], ended: dict[int, str], end: int) -> list[str]:
    causes: dict[str, int] = {}
    for cause in ended.values():
        causes[cause] = causes.get(cause, 0) + 1
    attempts = sum(1 for e in record["events"] if e["kind"] == "attempt")
    signals = sum(1 for e in record["events"] if e["kind"] == "signal")
    lines = [f"{(end - record['start_ns']) / NSEC_PER_SEC:.2f} s, {attempts} attempts, {signals} signal rounds, "
             f"{len(record['blocked'])} blocked checks"]
    if causes:
        lines.append("switched by: " + ", ".join(f"{c} {n}" for c, n in sorted(causes.items(), key=lambda c: -c[1])))
    return lines


# -- text ------------------------------------------------------------------------------------------------------

_TEXT = {PENDING: ".", SWITCHED: "#", GONE: " "}


def _char(state: str) -> str:
    if state.startswith(UNSAFE):
        return "!"
    return "b" if state.startswith("blocked") else _TEXT[state]


def render_text(lay: Layout, width: int = 60) -> str:
    span = max(1, lay.end_ns - lay.start_ns)

    def col(t: int) -> int:
        return min(width - 1, (t - lay.start_ns) * width // span)

    labels = [ln.label[:24] for ln in lay.lanes]
    pad = max([len(x) for x in labels] + [8])
    out = [lay.title, *lay.summary, ""]
    marks = [" "] * width
    for t, kind, _ in lay.markers:
        if kind == "attempt":
            marks[col(t)] = "R"
    # the other marks keep their order: one that would share a column moves right (or, at the edge, the
    # ones before it move left); retries give way
    named = [(col(t), MARKERS[kind]) for t, kind, _ in lay.markers if kind != "attempt"][-width:]
    places: list[int] = []
    for c, _ in named:
        places.append(max(c, places[-1] + 1) if places else c)
    for i in range(len(places) - 1, -1, -1):
        places[i] = min(places[i], width - 1 if i == len(places) - 1 else places[i + 1] - 1)
    for p, (_, mark) in zip(places, named):
        marks[p] = mark
    out.append(f"{'events':<{pad}} |{''.join(marks)}|")
    for ln, name in zip(lay.lanes, labels):
        cells = [" "] * width
        for seg in ln.segments:
            for c in range(col(seg.start_ns), col(seg.end_ns) + 1 if seg.end_ns > seg.start_ns else col(seg.start_ns) + 1):
                cells[c] = _char(seg.state) if seg.share >= 0.5 or seg.state != SWITCHED else "+"
        out.append(f"{name:<{pad}} |{''.join(cells)}| {ln.detail}")
    out.append(f"{'':<{pad}}  0 s{' ' * max(1, width - 10)}{span / NSEC_PER_SEC:.1f} s")
    out.append("legend: . unswitched  b blocked  # switched  ! switched inside changed code  "
               "+ partly switched (group)  R retry  S signals  F force  V reversal  C complete  X canceled")
    blocked = sorted({s.state[9:] for ln in lay.lanes for s in ln.segments if s.state.startswith("blocked")})
    if blocked:
        out.append("blocked by: " + "; ".join(blocked))
    return "\n".join(out) + "\n"


# -- SVG -------------------------------------------------------------------------------------------------------

COLORS = {PENDING: "#d9d9d9", SWITCHED: "#4c9a5f", GONE: "#ffffff", "blocked": "#d9822b", "unsafe": "#c0392b"}
MARK_COLORS = {"attempt": "#bbbbbb", "signal": "#7b4fbf", "force": "#c0392b", "reverse": "#2c6fbb",
               "complete": "#222222", "cancel": "#c0392b"}


def _color(state: str) -> str:
    if state.startswith(UNSAFE):
        return COLORS["unsafe"]
    return COLORS["blocked"] if state.startswith("blocked") else COLORS[state]


def render_svg(lay: Layout, width: int = 900) -> str:
    char_w = 6.7  # monospace at font-size 11
    left, top, lane_h = 190, 86, 18
    right = max(170, int(char_w * max((len(ln.detail) for ln in lay.lanes), default=0)) + 16)
    plot_w = width - left - right
    height = top + lane_h * len(lay.lanes) + 60
    span = max(1, lay.end_ns - lay.start_ns)

    def x(t: int) -> float:
        return left + (t - lay.start_ns) * plot_w / span

    esc = html.escape
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="monospace" font-size="11">',
             f'<rect width="{width}" height="{height}" fill="white"/>',
             f'<text x="10" y="18" font-size="13" font-weight="bold">{esc(lay.title)}</text>']
    for i, line in enumerate(lay.summary):
        parts.append(f'<text x="10" y="{34 + 13 * i}">{esc(line)}</text>')
    for i, ln in enumerate(lay.lanes):
        y = top + i * lane_h
        parts.append(f'<text x="{left - 6}" y="{y + 12}" text-anchor="end">{esc(ln.label[:26])}</text>')
        for seg in ln.segments:
            w = max(0.5, x(seg.end_ns) - x(seg.start_ns))
            h = (lane_h - 4) * (seg.share if seg.state == SWITCHED else 1.0)
            if seg.state == SWITCHED and seg.share < 1.0:  # the rest of the group is still unswitched
                parts.append(f'<rect x="{x(seg.start_ns):.1f}" y="{y + 2}" width="{w:.1f}" height="{lane_h - 4}" '
                             f'fill="{COLORS[PENDING]}"/>')
            title = f"<title>{esc(ln.label)}: {esc(seg.state)}</title>"
            parts.append(f'<rect x="{x(seg.start_ns):.1f}" y="{y + 2 + (lane_h - 4) - h:.1f}" width="{w:.1f}" '
                         f'height="{h:.1f}" fill="{_color(seg.state)}">{title}</rect>')
        parts.append(f'<text x="{width - right + 6}" y="{y + 12}">{esc(ln.detail)}</text>')
    bottom = top + lane_h * len(lay.lanes)
    row_end = [0.0, 0.0, 0.0]  # marker labels go in the first of three rows where they fit
    for t, kind, detail in lay.markers:
        dash = ' stroke-dasharray="2,3"' if kind == "attempt" else ""
        parts.append(f'<line x1="{x(t):.1f}" y1="{top - 4}" x2="{x(t):.1f}" y2="{bottom}" '
                     f'stroke="{MARK_COLORS[kind]}"{dash}><title>{esc(kind)} {esc(detail)}</title></line>')
        if kind != "attempt":
            row = next((r for r, end in enumerate(row_end) if end <= x(t)), len(row_end) - 1)
            row_end[row] = x(t) + 2 + char_w * len(kind) + 4
            parts.append(f'<text x="{x(t) + 2:.1f}" y="{top - 6 - 12 * row}" fill="{MARK_COLORS[kind]}">'
                         f'{esc(kind)}</text>')
    seconds = span / NSEC_PER_SEC
    step = next(s for s in (0.001, 0.01, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 300, 600, 3600, 1e9) if seconds / s <= 12)
    k = 0
    while k * step <= seconds + 1e-9:
        tx = x(lay.start_ns + int(k * step * NSEC_PER_SEC))
        parts.append(f'<line x1="{tx:.1f}" y1="{bottom}" x2="{tx:.1f}" y2="{bottom + 4}" stroke="black"/>')
        parts.append(f'<text x="{tx:.1f}" y="{bottom + 16}" text-anchor="middle">{k * step:g} s</text>')
        k += 1
    legend = [(PENDING, "unswitched"), ("blocked", "blocked (a switch attempt failed)"),
              (SWITCHED, "switched"), ("unsafe", "switched inside changed code")]
    lx = float(left)
    for state, text in legend:
        parts.append(f'<rect x="{lx}" y="{bottom + 28}" width="12" height="10" fill="{COLORS[state]}"/>')
        parts.append(f'<text x="{lx + 16}" y="{bottom + 37}">{esc(text)}</text>')
        lx += 16 + char_w * len(text) + 20
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


# -- PNG -------------------------------------------------------------------------------------------------------

def render_png(lay: Layout, path: str) -> None:
    """The same picture through matplotlib (``pip install 'livefs[plot]'``)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("PNG output needs matplotlib (pip install 'livefs[plot]'); "
                           "SVG (-o FILE.svg) and text need nothing") from None
    fig, ax = plt.subplots(figsize=(11, 1.2 + 0.3 * len(lay.lanes)))
    base = lay.start_ns
    for i, ln in enumerate(lay.lanes):
        for seg in ln.segments:
            x0, w = (seg.start_ns - base) / NSEC_PER_SEC, max((seg.end_ns - seg.start_ns) / NSEC_PER_SEC, 1e-4)
            h = 0.8 * (seg.share if seg.state == SWITCHED else 1.0)
            if seg.state == SWITCHED and seg.share < 1.0:
                ax.broken_barh([(x0, w)], (i - 0.4, 0.8), color=COLORS[PENDING])
            ax.broken_barh([(x0, w)], (i - 0.4 + 0.8 - h, h), color=_color(seg.state))
    for t, kind, _ in lay.markers:
        ax.axvline((t - base) / NSEC_PER_SEC, color=MARK_COLORS[kind], lw=0.8,
                   ls=":" if kind == "attempt" else "-")
    ax.set_yticks(range(len(lay.lanes)), [ln.label for ln in lay.lanes], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    ax.set_title(lay.title + "\n" + "; ".join(lay.summary), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
