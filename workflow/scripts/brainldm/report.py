"""Pages for Snakemake's HTML report: the run's configuration and its summary tables.

The schema's defaults are the paper's, so a run departs from the paper exactly where its
configuration differs from them; keys whose schema description calls them a departure are
marked as such, the rest (paths, sizes, toy settings) are run settings.
"""

from __future__ import annotations

import csv
import html
from pathlib import Path
from typing import Any, Mapping

import yaml

from brainldm.core.atomic import write_text

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; font-size: 0.9em; }}
th, td {{ border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: left; }}
th {{ background: #eee; }}
tr.departure td {{ background: #fde8e8; }}
pre {{ background: #f6f6f6; padding: 1em; }}
</style></head>
<body><h1>{title}</h1>
{body}
</body></html>
"""


def _schema_defaults(schema: Mapping, prefix: str = "") -> dict[str, tuple[Any, str]]:
    """``{dotted key: (default, description)}`` of every leaf of the schema."""
    leaves = {}
    for name, sub in schema.get("properties", {}).items():
        key = f"{prefix}{name}"
        if sub.get("type") == "object" and "properties" in sub:
            leaves.update(_schema_defaults(sub, key + "."))
        elif "default" in sub:  # keys without a default (the run's name) name a run, not a choice
            leaves[key] = (sub["default"], sub.get("description", ""))
    return leaves


def _flatten(config: Mapping, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for name, value in config.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, key + "."))
        else:
            flat[key] = value
    return flat


def config_departures(config: Mapping, schema: Mapping) -> list[dict[str, Any]]:
    """Every configuration value that differs from the schema's default (= the paper's).

    Required keys without a default (``dataset``) are left out; keys the schema does not know
    are listed as settings.

    Returns
    -------
    list of dict
        ``key``, ``value``, ``default`` and ``kind`` (``departure`` when the schema describes
        the key as a departure from the paper, else ``setting``), sorted by key.
    """
    defaults = _schema_defaults(schema)
    required = set(schema.get("required", ()))
    rows = []
    for key, value in sorted(_flatten(config).items()):
        default, description = defaults.get(key, (None, ""))
        if key in required or (key in defaults and value == default):
            continue
        kind = "departure" if "departure" in description.lower() else "setting"
        rows.append({"key": key, "value": value, "default": default, "kind": kind})
    return rows


def _table(header: list[str], rows: list[list[Any]], row_classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = []
    for index, row in enumerate(rows):
        css = f' class="{row_classes[index]}"' if row_classes and row_classes[index] else ""
        body.append(f"<tr{css}>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def write_config_page(path: str | Path, config: Mapping, schema: Mapping, *, dataset: str) -> list[dict]:
    """The configuration page: the table of departures and settings, then the whole YAML."""
    rows = config_departures(config, schema)
    departures = [row for row in rows if row["kind"] == "departure"]
    summary = (
        f"<p>{len(departures)} departure(s) from the paper and {len(rows) - len(departures)} other "
        "setting(s) that differ from the defaults (the defaults reproduce the paper).</p>"
    )
    table = (
        _table(
            ["key", "value", "paper / default", "kind"],
            [[r["key"], r["value"], r["default"], r["kind"]] for r in rows],
            [r["kind"] for r in rows],
        )
        if rows
        else "<p>The run uses the paper's configuration.</p>"
    )
    body = (
        summary
        + table
        + "<h2>Configuration</h2><pre>"
        + html.escape(yaml.safe_dump(dict(config), sort_keys=True))
        + "</pre>"
    )
    write_text(path, PAGE.format(title=html.escape(f"{dataset}: configuration"), body=body))
    return rows


def write_table_page(tsv_path: str | Path, path: str | Path, *, title: str) -> int:
    """A TSV summary table as an HTML page; returns its number of rows."""
    with open(tsv_path, newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))
    if not rows:
        raise ValueError(f"{tsv_path}: empty table; expected a header line")
    write_text(path, PAGE.format(title=html.escape(title), body=_table(rows[0], rows[1:])))
    return len(rows) - 1
