#!/usr/bin/env python
"""Generate benchmarks/README.md (one page: every current figure, as tables and PNG charts) from
the benchmark records benchmarks/data/*.json.

    python scripts/bench/report.py            # writes benchmarks/README.md and benchmarks/charts/*.png
    python scripts/bench/report.py --check    # only validate the records (exit 2 if one is invalid)

Record schema (version 1; the full description and the writer are in scripts/bench/bench_record.py):
one JSON object per file, benchmarks/data/<id>.json, with
  schema   1
  id       the file's stem; letters, digits, '_', '-', '.'
  title    one line
  section  optional; the page groups records by section (see SECTION_ORDER; others follow)
  machine  a string, or an object of strings (gpu, cpu, torch, cuda, host, ...)
  date     ISO date (optionally with time) of the measurement
  command  the command that produced the figures
  tables   a list of {"title": str (optional), "columns": [str], "rows": [[str | number | null]],
           "notes": [str] (optional)}
  charts   optional list of {"title", "kind": "bar" | "line", "x": [labels], "series": {name:
           [number | null]}, "xlabel", "ylabel", "logy"} drawn as benchmarks/charts/<id>-<n>.png
  summary  optional Markdown paragraph(s) shown above the tables
  figures  optional machine-readable numbers (read by other tools, not shown)
  sources  optional list of where converted figures came from
A record needs at least one table or chart. Files that break the schema are left off the page
and listed on stderr (with --check, the exit status is 2). History: superseded records are
deleted; git keeps them.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import bench_record  # noqa: E402  (scripts/bench)

REPO = bench_record.REPO_ROOT
SECTION_ORDER = ["Whole network", "Time to train", "Compiling", "Equivalence", "Precision", "Selective scan, GPU",
                 "Selective scan, CPU", "Profiles", "Multi-GPU training", "Training", "Memory", "Export"]


def load_records(data_dir: Path) -> tuple[list, list]:
    """(valid records sorted by section then id, [(file, problems)] of the invalid ones)."""
    good, bad = [], []
    for path in sorted(data_dir.glob("*.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            bad.append((path, [f"not readable JSON ({e})"]))
            continue
        problems = bench_record.validate_record(rec)
        if not problems and rec["id"] != path.stem:
            problems = [f"id {rec['id']!r} differs from the file name {path.stem!r}"]
        if problems:
            bad.append((path, problems))
        else:
            good.append(rec)

    def key(rec):
        sec = rec.get("section") or "Other"
        return (SECTION_ORDER.index(sec) if sec in SECTION_ORDER else len(SECTION_ORDER), sec, rec["id"])
    return sorted(good, key=key), bad


def machine_text(m) -> str:
    if isinstance(m, str):
        return m
    order = ["gpu", "cpu", "torch", "cuda", "python", "host"]
    keys = [k for k in order if k in m] + sorted(k for k in m if k not in order)
    return "; ".join(f"{k} {m[k]}" for k in keys)


def cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def table_markdown(t: dict, n: int) -> list:
    out = [f"Table {n}" + (f": {t['title']}" if t.get("title") else "") + ".", ""]
    out.append("| " + " | ".join(cell(c) for c in t["columns"]) + " |")
    out.append("|" + "---|" * len(t["columns"]))
    out += ["| " + " | ".join(cell(c) for c in row) + " |" for row in t["rows"]]
    out += [""] + [f"- {note}" for note in t.get("notes", [])]
    return out + ([""] if t.get("notes") else [])


def draw_chart(chart: dict, path: Path) -> None:
    """One chart as a PNG: grouped bars (kind bar) or lines over x (kind line)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [str(v) for v in chart["x"]]
    series = chart["series"]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(x) * max(1, len(series)) ** 0.5 + 3), 3.6), dpi=100)
    if chart.get("kind", "bar") == "line":
        for name, ys in series.items():
            pts = [(i, y) for i, y in enumerate(ys) if y is not None]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        ax.set_xticks(range(len(x)), x)
    else:
        width = 0.8 / max(1, len(series))
        for k, (name, ys) in enumerate(series.items()):
            pos = [i - 0.4 + width * (k + 0.5) for i in range(len(x))]
            ax.bar([p for p, y in zip(pos, ys) if y is not None], [y for y in ys if y is not None], width, label=name)
        ax.set_xticks(range(len(x)), x, rotation=15 if max(len(s) for s in x) > 12 else 0, ha="right"
                      if max(len(s) for s in x) > 12 else "center")
    if chart.get("logy"):
        ax.set_yscale("log")
    ax.set_title(chart.get("title", ""), fontsize=9)
    ax.set_xlabel(chart.get("xlabel", ""))
    ax.set_ylabel(chart.get("ylabel", ""))
    ax.grid(axis="y", alpha=0.3)
    if len(series) > 1 or chart.get("kind") == "line":
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Software": None})  # no matplotlib version: same data, same bytes
    plt.close(fig)


def render(records: list, charts_dir: Path, page_dir: Path) -> tuple[str, list]:
    """The page's Markdown and the chart files written."""
    lines = ["# Benchmarks", "",
             "Generated by `python scripts/bench/report.py` from the records in `benchmarks/data/` "
             "(one JSON file per measurement, written by the tools in `scripts/bench/`); do not edit by hand. "
             "Each record names its machine, date and command. Ratios compare paths measured in one process on one "
             "machine; figures of different records (other cards, other days) are not compared. Superseded figures "
             "are removed from `benchmarks/data/`; git history keeps them.", ""]
    sections: dict = {}
    for rec in records:
        sections.setdefault(rec.get("section") or "Other", []).append(rec)
    lines += ["## Contents", ""]
    for sec, recs in sections.items():
        lines.append(f"- {sec}: " + ", ".join(f"[{r['title']}](#{r['id']})" for r in recs))
    lines.append("")
    written = []
    for sec, recs in sections.items():
        lines += [f"## {sec}", ""]
        for rec in recs:
            lines += [f'<a id="{rec["id"]}"></a>', "", f"### {rec['title']}", "",
                      f"- machine: {machine_text(rec['machine'])}",
                      f"- date: {rec['date']}",
                      f"- command: `{rec['command']}`",
                      f"- record: `benchmarks/data/{rec['id']}.json`", ""]
            if rec.get("summary"):
                lines += [rec["summary"], ""]
            for n, t in enumerate(rec["tables"], 1):
                lines += table_markdown(t, n)
            for n, ch in enumerate(rec.get("charts", []), 1):
                path = charts_dir / f"{rec['id']}-{n}.png"
                draw_chart(ch, path)
                written.append(path)
                rel = path.relative_to(page_dir) if path.is_relative_to(page_dir) else path
                lines += [f"![{ch.get('title', rec['title'])}]({rel.as_posix()})", ""]
    lines += ["## Adding figures", "",
              "A benchmark tool writes one record per run with `scripts/bench/bench_record.py` "
              "(`make_record` + `write_record`, or `write_markdown_record` for a tool that builds a Markdown page); "
              "then `python scripts/bench/report.py` rebuilds this page. Schema version 1, one JSON object per file "
              "`benchmarks/data/<id>.json`:", "",
              "| key | required | content |", "|---|---|---|",
              "| `schema` | yes | 1 |",
              "| `id` | yes | the file's stem (letters, digits, `_`, `-`, `.`) |",
              "| `title` | yes | one line |",
              "| `section` | no | the heading the record is listed under (default Other) |",
              "| `machine` | yes | a string, or an object of strings (gpu, cpu, torch, cuda, host, ...) |",
              "| `date` | yes | ISO date, optionally with time |",
              "| `command` | yes | the command that produced the figures |",
              "| `tables` | yes | list of `{title, columns: [str], rows: [[str, number or null]], notes: [str]}` |",
              "| `charts` | no | list of `{title, kind: bar or line, x: [labels], series: {name: [number or null]}, "
              "xlabel, ylabel, logy}`, drawn under `benchmarks/charts/` |",
              "| `summary` | no | Markdown shown above the tables |",
              "| `figures` | no | machine-readable numbers for other tools (not shown) |",
              "| `sources` | no | where converted figures came from |", "",
              "A record needs at least one table or chart; a file that breaks the schema is left off this page and "
              "named by `python scripts/bench/report.py --check`.", ""]
    return "\n".join(lines), written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO / "benchmarks" / "data"), help="folder of the JSON records")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "README.md"), help="page to write")
    p.add_argument("--charts", default=None, help="folder of the PNG charts (default: charts/ beside the page)")
    p.add_argument("--check", action="store_true", help="validate the records only; exit 2 if any is invalid")
    args = p.parse_args(argv)
    data = Path(args.data)
    if not data.is_dir():
        print(f"error: --data {data}: no such folder of benchmark records", file=sys.stderr)
        return 2
    records, bad = load_records(data)
    for path, problems in bad:
        print(f"skipped {path}: " + "; ".join(problems), file=sys.stderr)
    if args.check:
        print(f"{len(records)} valid record(s), {len(bad)} invalid")
        return 2 if bad else 0
    out = Path(args.out)
    charts_dir = Path(args.charts) if args.charts else out.parent / "charts"
    text, written = render(records, charts_dir, out.parent)
    for stale in charts_dir.glob("*.png") if charts_dir.is_dir() else []:
        if stale not in written:
            stale.unlink()  # a chart of a record that is gone
    from vmambair.utils.fileio import atomic_write_bytes
    atomic_write_bytes(text.encode(), out)
    print(f"wrote {out} ({len(records)} records, {len(written)} charts)" + (f"; {len(bad)} invalid record(s) "
                                                                              f"skipped" if bad else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
