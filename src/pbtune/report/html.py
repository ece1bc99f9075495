"""One self-contained HTML report of a run: figures inline, a sortable member table, the best
schedule, the lineage events and the config. It needs no network and no other file.

The member table sorts when a header is clicked, and at load from the address's fragment:
``report.html#sort=score:desc`` (columns: ``member``, ``state``, ``step``, ``score``,
``best_score``, ``exploits``, ``hp-<name>``), so a sorted view can be shared as a link.

Example::

    write_report(load_run(open_store("sqlite:///pbtune-runs/pbtune.db"), "exp"), "exp-report.html")
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from pbtune.config import budget_text
from pbtune.diversity import diversity
from pbtune.report._files import atomic_file
from pbtune.report.data import (
    RunData,
    best_member_id,
    member_rows,
    member_schedule,
    model_age,
)

__all__ = ["render_report", "write_report"]

_CAPTIONS = {
    "scores": "Score of every member over its steps. An x marks an exploit: the member copied a better "
              "member's model, and the dotted line shows the jump to the donor's score.",
    "hparams": "Each hyperparameter of every member over its steps (log axis for log-scaled domains).",
    "lineage": "Lineage: an arrow per exploit, from the donor's step to the member's step. The training "
               "behind the best member's model is drawn thick in red.",
    "schedule": "The best member's model over its age (inherited steps included): score and the "
                "hyperparameter schedule that produced it; replaying it retrains that model.",
}

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1100px;
  padding:1rem 1.5rem;color:#222}
h1{font-size:1.5rem;margin-bottom:.2rem}
h2{font-size:1.2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
.summary{color:#444}.summary b{color:#000}
figure{margin:1rem 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85rem;color:#555}
table{border-collapse:collapse;font-size:.85rem;width:100%}
th,td{border-bottom:1px solid #e5e5e5;padding:.25rem .5rem;text-align:left;vertical-align:top}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
table.sortable th{cursor:pointer;user-select:none;background:#f6f6f6;position:sticky;top:0}
table.sortable th[aria-sort=ascending]::after{content:" \\25B2"}
table.sortable th[aria-sort=descending]::after{content:" \\25BC"}
tr.best{background:#fff4e5;font-weight:600}tr.failed{color:#b00}
pre{background:#f6f6f6;padding:.75rem;overflow:auto;font-size:.8rem}
nav a{margin-right:1rem}
"""

_SCRIPT = r"""
(function () {
  function key(cell, type) {
    var raw = cell.getAttribute("data-value");
    if (raw === null) raw = cell.textContent;
    if (raw === "") return null;
    if (type === "number") { var n = parseFloat(raw); return isNaN(n) ? null : n; }
    return raw.toLowerCase();
  }
  function sortTable(table, index, descending) {
    var th = table.tHead.rows[0].cells[index], type = th.getAttribute("data-type") || "text";
    var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
    var keyed = rows.map(function (row, i) { return {row: row, i: i, k: key(row.cells[index], type)}; });
    keyed.sort(function (a, b) {
      if (a.k === null && b.k === null) return a.i - b.i;
      if (a.k === null) return 1;             // empty cells last in either direction
      if (b.k === null) return -1;
      if (a.k < b.k) return descending ? 1 : -1;
      if (a.k > b.k) return descending ? -1 : 1;
      return a.i - b.i;
    });
    keyed.forEach(function (x) { body.appendChild(x.row); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (c) { c.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", descending ? "descending" : "ascending");
    table.setAttribute("data-sorted-by", th.getAttribute("data-key") + ":" + (descending ? "desc" : "asc"));
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, index) {
      th.addEventListener("click", function () {
        sortTable(table, index, th.getAttribute("aria-sort") === "ascending");
      });
    });
  });
  function sortFromHash() {
    var m = /sort=([\w.-]+)(?::(asc|desc))?/.exec(decodeURIComponent(location.hash));
    var table = document.getElementById("members-table");
    if (!m || !table) return;
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, index) {
      if (th.getAttribute("data-key") === m[1]) sortTable(table, index, m[2] === "desc");
    });
  }
  sortFromHash();
  window.addEventListener("hashchange", sortFromHash);
  window.addEventListener("load", function () {
    var ok = 0;
    Array.prototype.forEach.call(document.images, function (img) { if (img.complete && img.naturalWidth > 0) ok++; });
    document.body.setAttribute("data-images-loaded", ok + "/" + document.images.length);
  });
})();
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else str(value)
    return str(value)


def _sort_value(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return repr(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def _figure_images(data: RunData, dpi: int) -> dict[str, str]:
    from pbtune.report.plots import figures

    images = {}
    for name, fig in figures(data).items():
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=dpi)
        images[name] = base64.b64encode(buffer.getvalue()).decode("ascii")
    return images


def _members_table(data: RunData) -> str:
    rows = member_rows(data)
    names: list[str] = list(data.space) if data.space is not None else []
    for row in rows:
        names += [n for n in row["hparams"] if n not in names]
    columns: list[tuple[str, str, str]] = [  # (key, label, type)
        ("member", "member", "number"), ("state", "state", "text"), ("step", "step", "number"),
        ("score", f"{data.metric} (last)", "number"), ("best_score", f"{data.metric} (best seen)", "number"),
        ("exploits", "exploits", "number"),
        *[(f"hp-{n}", n, "number" if _all_numeric(rows, n) else "text") for n in names],
        ("last_event", "last event", "text"),
    ]
    head = "".join(
        f'<th data-key="{_esc(k)}" data-type="{t}"{" class=num" if t == "number" else ""}>{_esc(label)}</th>'
        for k, label, t in columns
    )
    body = []
    for row in rows:
        cells = []
        for k, _, t in columns:
            value = row["hparams"].get(k[3:]) if k.startswith("hp-") else row[k]
            text = f"{row['member']} ★" if k == "member" and row["best"] else _fmt(value)
            css = ' class="num"' if t == "number" else ""
            cells.append(f'<td data-value="{_esc(_sort_value(value))}"{css}>{_esc(text)}</td>')
        classes = " ".join(c for c, on in (("best", row["best"]), ("failed", row["state"] == "failed")) if on)
        body.append(f'<tr data-member="{row["member"]}"{f" class={chr(34)}{classes}{chr(34)}" if classes else ""}>'
                    f'{"".join(cells)}</tr>')
    return (
        '<table id="members-table" class="sortable"><thead><tr>' + head + "</tr></thead><tbody>"
        + "".join(body) + "</tbody></table>"
    )


def _all_numeric(rows: Sequence[Mapping[str, Any]], name: str) -> bool:
    values = [r["hparams"].get(name) for r in rows]
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values if v is not None)


def _schedule_table(data: RunData, member_id: int) -> str:
    entries = member_schedule(data, member_id)
    names: list[str] = []
    for entry in entries:
        names += [n for n in entry.hparams if n not in names]
    head = "".join(f'<th class="num">{h}</th>' for h in ("from age", "as member")) + "".join(
        f"<th>{_esc(h)}</th>" for h in ("via", *names)
    )
    body = "".join(
        "<tr>" + f'<td class="num">{e.step}</td><td class="num">{e.member_id}</td><td>{_esc(e.kind)}</td>'
        + "".join(f"<td>{_esc(_fmt(e.hparams.get(n)))}</td>" for n in names) + "</tr>"
        for e in entries
    )
    return f'<table id="schedule-table"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _events_list(data: RunData) -> str:
    items = [
        f"<tr><td class=num>{e.member_id}</td><td class=num>{e.step}</td><td>{_esc(e.kind)}</td>"
        f"<td>{_esc(e.summary)}</td></tr>"
        for e in data.events if e.kind in ("exploit", "explore", "resume", "fail")
    ]
    if not items:
        return "<p>No exploits yet.</p>"
    return ('<table id="events-table"><thead><tr><th>member</th><th>step</th><th>event</th><th>what happened</th>'
            "</tr></thead><tbody>" + "".join(items) + "</tbody></table>")


def render_report(data: RunData, *, dpi: int = 90) -> str:
    """The report as one HTML string (figures as base64 PNG ``img`` elements)."""
    best = best_member_id(data)
    images = _figure_images(data, dpi)
    exploits = sum(e.kind == "exploit" for e in data.events)
    finished = sum(m.state.is_final for m in data.members)
    if best is not None:
        record = data.member(best)
        headline = (
            f"Best member <b>{best}</b>: {_esc(data.metric)} <b>{_esc(_fmt(record.score))}</b> "
            f"({'higher' if data.mode == 'max' else 'lower'} is better) after {record.step} steps "
            f"(model age {model_age(data.events, best, record.step)}), hyperparameters "
            + _esc(", ".join(f"{k}={_fmt(v)}" for k, v in record.hparams.items()))
        )
        schedule_html = _schedule_table(data, best)
    else:
        headline, schedule_html = "No member has reported a score yet.", "<p>-</p>"
    figures_html = "".join(
        f'<figure id="figure-{name}"><img id="img-{name}" alt="{_esc(_CAPTIONS[name])}" '
        f'src="data:image/png;base64,{encoded}"><figcaption>{_esc(_CAPTIONS[name])}</figcaption></figure>'
        for name, encoded in images.items()
    )
    generated = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    spread = diversity(data.members, data.events, data.space).summary()
    config_json = json.dumps(dict(data.config), indent=2, default=str, sort_keys=True)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>pbtune report: {_esc(data.run)}</title><style>{_STYLE}</style></head>
<body>
<header><h1>PBT run <code>{_esc(data.run)}</code></h1>
<p class="summary" id="summary">{headline}.</p>
<p class="summary">{len(data.members)} members, {finished} done; {_esc(budget_text(data.budget))};
{exploits} exploits. Diversity: <span id="diversity">{_esc(spread)}</span>.
Generated {generated} by pbtune.</p>
<nav><a href="#figures">figures</a><a href="#members">members</a><a href="#schedule">best schedule</a>
<a href="#events">lineage events</a><a href="#config">config</a></nav></header>
<section id="figures"><h2>Figures</h2>{figures_html}</section>
<section id="members"><h2>Members</h2><p>Click a column header to sort (★ marks the best member).</p>
{_members_table(data)}</section>
<section id="schedule"><h2>Schedule of the best member</h2>
<p>From each model age on, the model trained with these hyperparameters (steps inherited from donors come
first). <code>pbtune replay {_esc(data.run)} --member best</code> retrains it from scratch.</p>{schedule_html}</section>
<section id="events"><h2>Lineage events</h2>{_events_list(data)}</section>
<section id="config"><h2>Config</h2><pre id="config-json">{_esc(config_json)}</pre></section>
<script>{_SCRIPT}</script>
</body></html>
"""


def write_report(data: RunData, path: str, *, dpi: int = 90) -> str:
    """Write the report to ``path`` atomically and return the path."""
    text = render_report(data, dpi=dpi)
    with atomic_file(path, "w", encoding="utf-8") as out:
        out.write(text)
    return path
