"""Benchmark records: one JSON file per measurement under benchmarks/data/, rendered into
benchmarks/README.md by scripts/bench/report.py.

Schema (version 1). A record is one JSON object:

    {
      "schema": 1,                       # required, this version
      "id": "model_derain_h100",         # required, unique; the file is benchmarks/data/<id>.json
      "title": "Deraining network ...",  # required, one line
      "section": "Whole network",        # optional: the page groups records by section (default "Other")
      "machine": "1x NVIDIA H100 80GB HBM3; torch 2.11.0+cu130",   # required: a string, or an object
                                         #   of strings (gpu, cpu, torch, cuda, host, ...)
      "date": "2026-12-07",              # required, ISO date (or date and time) of the measurement
      "command": "python scripts/bench/bench_model.py ...",        # required: how to reproduce it
      "summary": "one paragraph",        # optional: what the figures show
      "tables": [                        # required (may be empty when charts are given)
        {"title": "optional caption",
         "columns": ["what", "authors' code", "ours", "speed-up"],
         "rows": [["train step b8 x 128", "406.6 ms", "103.2 ms", "3.94x"], ...],   # str / number / null
         "notes": ["optional lines printed under the table"]}
      ],
      "charts": [                        # optional, drawn as PNG under benchmarks/charts/
        {"title": "...", "kind": "bar" | "line", "x": ["256", "1024"], "xlabel": "...", "ylabel": "ms",
         "series": {"authors' code": [69.2, 539.7], "ours": [17.6, 211.5]},          # numbers or null
         "logy": false}
      ],
      "figures": {...},                  # optional: machine-readable numbers for other tools
      "sources": ["benchmarks/old.md"]   # optional: where converted figures came from (git history)
    }

Writers call ``write_record`` (atomic write, validated first); the page generator calls
``validate_record`` and skips, with the reason, any file that does not follow the schema.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import re
import shlex
import sys
from pathlib import Path
from typing import Any, Optional

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = REPO_ROOT / "benchmarks" / "data"
SCHEMA_VERSION = 1
REQUIRED = ("schema", "id", "title", "machine", "date", "command", "tables")
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _cell_ok(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float))


def validate_record(rec: Any) -> list[str]:
    """The ways ``rec`` breaks the schema (empty list: valid)."""
    if not isinstance(rec, dict):
        return ["a record must be a JSON object"]
    problems = [f"missing key {k!r}" for k in REQUIRED if k not in rec]
    if problems:
        return problems
    if rec["schema"] != SCHEMA_VERSION:
        problems.append(f"schema is {rec['schema']!r}, this generator reads {SCHEMA_VERSION}")
    if not isinstance(rec["id"], str) or not ID_PATTERN.match(rec["id"]):
        problems.append(f"id {rec['id']!r} must be letters, digits, '_', '-', '.'")
    for k in ("title", "date", "command"):
        if not isinstance(rec[k], str) or not rec[k].strip():
            problems.append(f"{k!r} must be a non-empty string")
    if isinstance(rec.get("date"), str):
        try:
            datetime.date.fromisoformat(rec["date"][:10])
        except ValueError:
            problems.append(f"date {rec['date']!r} must start with an ISO date YYYY-MM-DD")
    m = rec["machine"]
    if not (isinstance(m, str) and m.strip()) and not (isinstance(m, dict) and m and all(
            isinstance(v, str) for v in m.values())):
        problems.append("'machine' must be a non-empty string or an object of strings")
    tables = rec["tables"]
    if not isinstance(tables, list):
        problems.append("'tables' must be a list")
        tables = []
    for i, t in enumerate(tables):
        if not isinstance(t, dict) or not isinstance(t.get("columns"), list) or not isinstance(t.get("rows"), list):
            problems.append(f"tables[{i}] needs 'columns' and 'rows' lists")
            continue
        n = len(t["columns"])
        for j, row in enumerate(t["rows"]):
            if not isinstance(row, list) or len(row) != n or not all(_cell_ok(c) for c in row):
                problems.append(f"tables[{i}].rows[{j}] must be a list of {n} strings/numbers/null")
                break
    charts = rec.get("charts", [])
    if not isinstance(charts, list):
        problems.append("'charts' must be a list")
        charts = []
    for i, c in enumerate(charts):
        if not isinstance(c, dict) or not isinstance(c.get("x"), list) or not isinstance(c.get("series"), dict):
            problems.append(f"charts[{i}] needs an 'x' list and a 'series' object")
            continue
        if not c["x"]:
            problems.append(f"charts[{i}] has no x values (leave an empty chart out)")
            continue
        if c.get("kind", "bar") not in ("bar", "line"):
            problems.append(f"charts[{i}].kind must be 'bar' or 'line'")
        for name, ys in c["series"].items():
            if not isinstance(ys, list) or len(ys) != len(c["x"]) or not all(
                    y is None or isinstance(y, (int, float)) for y in ys):
                problems.append(f"charts[{i}].series[{name!r}] must be {len(c['x'])} numbers/null")
    if not tables and not charts:
        problems.append("a record needs at least one table or chart")
    return problems


def machine_info() -> dict:
    """The machine a measurement ran on: GPU (when CUDA is up), CPU, torch and CUDA versions, host."""
    info = {"host": platform.node(), "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version()}
    try:
        import torch
        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            n = torch.cuda.device_count()
            info["gpu"] = f"{n}x {torch.cuda.get_device_name(0)}"
            info["cuda"] = str(torch.version.cuda)
        info["cpu_threads"] = str(torch.get_num_threads())
    except ImportError:
        pass
    return info


def command_line(argv: Optional[list] = None) -> str:
    """This process's command line, as it could be typed again."""
    argv = sys.argv if argv is None else argv
    return "python " + " ".join(shlex.quote(a) for a in argv)


def today() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes")


def make_record(id: str, title: str, tables: list, *, section: str = "Other", charts: Optional[list] = None,
                figures: Optional[dict] = None, summary: Optional[str] = None, command: Optional[str] = None,
                machine: Any = None, date: Optional[str] = None) -> dict:
    """A schema-1 record with this machine, the current UTC time and this command line filled in."""
    rec = {"schema": SCHEMA_VERSION, "id": id, "title": title, "section": section,
           "machine": machine if machine is not None else machine_info(),
           "date": date or today(), "command": command or command_line(), "tables": tables}
    if summary:
        rec["summary"] = summary
    if charts:
        rec["charts"] = charts
    if figures is not None:
        rec["figures"] = figures
    return rec


def write_record(rec: dict, path: Optional[str | os.PathLike] = None) -> Path:
    """Validate ``rec`` and write it atomically to ``path`` (default benchmarks/data/<id>.json; a
    folder, or a path ending in "/": <folder>/<id>.json).

    Raises ValueError naming the schema problems; nothing is written then."""
    problems = validate_record(rec)
    if problems:
        raise ValueError(f"benchmark record {rec.get('id')!r} breaks the schema: " + "; ".join(problems))
    from vmambair.utils.fileio import atomic_write_bytes

    if path and (str(path).endswith("/") or os.path.isdir(path)):
        path = Path(path) / f"{rec['id']}.json"
    out = Path(path) if path else DATA_DIR / f"{rec['id']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes((json.dumps(rec, indent=1, ensure_ascii=False) + "\n").encode(), out)
    return out


# ----------------------------------------------------------------------------- Markdown -> record
_META_LINE = re.compile(r"^-?\s*(GPU|Machine|machine|date|Date|command|Command)\s*:\s*(.*)$")


def _table_cells(line: str) -> list:
    """The cells of a Markdown table row; a '|' inside `backticks` stays in its cell."""
    s = line.strip()
    s = s[1:] if s.startswith("|") else s
    s = s[:-1] if s.endswith("|") else s
    out, cur, tick = [], "", False
    for ch in s:
        if ch == "`":
            tick = not tick
        if ch == "|" and not tick:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    return out


def _profiler_rows(body: list) -> list:
    """[kernel, GPU us, share, launches] of the kernel rows of a printed torch.profiler table."""
    rows = []
    for b in body:
        f = re.split(r"\s{2,}", b.strip())
        if len(f) == 11 and f[6].endswith("us") and not f[6].startswith("0.000"):
            rows.append([f[0], f[6][:-2], f[7], f[10]])
    return rows


def markdown_metadata(text: str) -> dict:
    """machine / date / command of a benchmark Markdown file: its '- GPU:', '- date:', '- command:'
    lines, or a 'Generated by `cmd` on DATE, device: X.' sentence."""
    m = {}
    g = re.search(r"Generated by `([^`]*)` on (\d{4}-\d{2}-\d{2}), device: ([^\n]*?)\.?\n", text)
    if g:
        m["command"], m["date"], m["machine"] = g.group(1), g.group(2), g.group(3)
    for line in text.splitlines():
        mm = _META_LINE.match(line.strip())
        if mm:
            key = {"gpu": "machine"}.get(mm.group(1).lower(), mm.group(1).lower())
            if key not in m:
                value = mm.group(2).strip()
                if key == "command":
                    tick = re.search(r"`([^`]*)`", value)
                    value = tick.group(1) if tick else value
                m[key] = value
    d = re.search(r"\d{4}-\d{2}-\d{2}", m.get("date", "") or text)
    if d:
        m["date"] = d.group(0)
    if "command" not in m:
        c = re.search(r"```\n(.*?python[^\n]*)\n", text) or re.search(r"`((?:time )?python [^`]*)`", text)
        if c:
            m["command"] = c.group(1).strip()
    return m


def record_from_markdown(text: str, id: str, section: str = "Other", **overrides) -> dict:
    """A record from a benchmark Markdown page: its '# title', machine/date/command lines, its
    tables (each titled by the heading above it; a printed torch.profiler table becomes a kernel
    table) and the rest of its text as the summary (Markdown). ``overrides`` replace fields."""
    lines = text.splitlines()
    title = next((ln[2:].strip() for ln in lines if ln.startswith("# ")), id)
    meta = markdown_metadata(text)
    tables, summary, heading, i = [], [], "", 0
    while i < len(lines):
        ln = lines[i]
        if ln.startswith("# "):
            i += 1
        elif ln.startswith("#"):
            heading = ln.lstrip("#").strip()
            summary.append(ln)
            i += 1
        elif ln.strip().startswith("|"):
            block = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                block.append(lines[i])
                i += 1
            head = _table_cells(block[0])
            body = block[2:] if len(block) > 1 and re.match(r"^\|?\s*:?-", block[1].strip()) else block[1:]
            rows = [(_table_cells(b) + [""] * len(head))[:len(head)] for b in body]
            tables.append({"title": heading, "columns": head, "rows": rows})
            summary.append(f"(table {len(tables)})")
        elif ln.strip().startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith("```"):
                j += 1
            prof = _profiler_rows(lines[i + 1:j])
            if prof:
                tables.append({"title": heading, "columns": ["kernel", "GPU time (us)", "share", "launches"],
                               "rows": prof})
                summary.append(f"(table {len(tables)}: the kernel rows torch.profiler printed)")
            else:
                summary.extend(lines[i:j + 1])
            i = j + 1
        elif _META_LINE.match(ln.strip()) or ln.startswith("Generated by"):
            i += 1
        else:
            summary.append(ln)
            i += 1
    text_summary = re.sub(r"\n{3,}", "\n\n", "\n".join(summary)).strip()
    fields = dict(section=section, summary=text_summary or None, command=meta.get("command") or command_line(),
                  machine=meta.get("machine") or machine_info(), date=meta.get("date") or today())
    fields.update(overrides)
    return make_record(id, title, tables, **fields)


def write_markdown_record(text: str, md_path: Optional[str], section: str, json_path: Optional[str] = None,
                          **overrides) -> Path:
    """What a Markdown-writing benchmark tool calls after building its page ``text``: the page as a
    record in benchmarks/data/<stem of md_path>.json (or ``json_path``); returns the path."""
    stem = Path(md_path).stem if md_path else "benchmark"
    rec = record_from_markdown(text, stem, section, command=command_line(), **overrides)
    return write_record(rec, json_path)


def add_output_args(parser, default_id: str) -> None:
    """The output options every Markdown-building benchmark tool shares: --id, --json, --out."""
    parser.add_argument("--id", default=default_id,
                        help=f"record id: the record is benchmarks/data/<id>.json (default {default_id})")
    parser.add_argument("--json", default=None, help="write the record here instead (a file, or a folder for "
                                                     "<folder>/<id>.json)")
    parser.add_argument("--out", default=None, help="also write the Markdown page to this file ('-': print only)")


def write_outputs(args, text: str, section: str, **overrides) -> Optional[Path]:
    """Write the tool's page ``text`` as the record ``args.id`` (under benchmarks/data, or
    ``args.json``) and, with ``args.out``, as Markdown; nothing but printing with --out -."""
    if args.out == "-":
        return None
    rec = record_from_markdown(text, args.id, section, **{"command": command_line(), **overrides})
    path = write_record(rec, args.json)
    print(f"wrote {path}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        from vmambair.utils.fileio import atomic_write_bytes
        atomic_write_bytes(text.encode(), args.out)
        print(f"wrote {args.out}")
    return path
