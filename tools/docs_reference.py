"""MkDocs hook: the reference tables of the docs, generated from the code so they cannot
drift. A page asks for one with a marker line:

* ``<!-- reference: settings -->``: every ``INFERENCE_*`` setting, from ``Settings``;
* ``<!-- reference: http -->``: every route of the bridge, its statuses and what each
  means, from the OpenAPI schema the bridge serves at ``/openapi.json``;
* ``<!-- reference: cli -->``: every command and its options, from the argument parser.

And ``benchmarks.md`` is the repository's ``BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pydantic_core import PydanticUndefined


def _cell(text: object) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def settings_table() -> str:
    from inference_allocator.config import Settings

    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default
        if default is None or default is PydanticUndefined:
            shown = "unset"
        elif hasattr(default, "get_secret_value"):
            shown = "(secret)"
        else:
            shown = f"`{default}`"
        rows.append(f"| `INFERENCE_{name.upper()}` | {shown} | {_cell(field.description)} |")
    return "\n".join(rows)


def http_table() -> str:
    from inference_allocator.bridge.app import create_app
    from inference_allocator.config import Settings

    schema = create_app(Settings()).openapi()
    parts = []
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            summary = (operation.get("description") or operation.get("summary") or "").strip()
            parts.append(f"### `{method.upper()} {path}`\n")
            if summary:
                parts.append(" ".join(summary.split()) + "\n")
            parts.append("| status | when |\n|---|---|")
            for status, answer in sorted(operation.get("responses", {}).items()):
                parts.append(f"| {status} | {_cell(answer.get('description', ''))} |")
            parts.append("")
    return "\n".join(parts)


def cli_table() -> str:
    from inference_allocator.cli import build_parser

    parser = build_parser()
    rows = ["| command | options | what it does |", "|---|---|---|"]
    commands = next(
        a for a in parser._actions if isinstance(a, argparse._SubParsersAction)  # noqa: SLF001
    )
    helps = {choice.dest: choice.help for choice in commands._choices_actions}  # noqa: SLF001
    for name, sub in commands.choices.items():
        options = []
        for action in sub._actions:  # noqa: SLF001
            if isinstance(action, argparse._HelpAction):  # noqa: SLF001
                continue
            flag = action.option_strings[0] if action.option_strings else action.dest.upper()
            options.append(f"`{flag}`: {_cell(action.help or '')}")
        rows.append(f"| `{name}` | {'<br>'.join(options)} | {_cell(helps.get(name, ''))} |")
    return "\n".join(rows)


_TABLES = {"settings": settings_table, "http": http_table, "cli": cli_table}


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    if page.file.src_uri == "benchmarks.md":
        # The report is BENCHMARKS.md at the repository's root (one text, two places); its
        # links into docs/ are written from there.
        report = Path(page.file.abs_src_path).parents[1] / "BENCHMARKS.md"
        markdown = report.read_text(encoding="utf-8").replace("](docs/", "](")
    for name, make in _TABLES.items():
        marker = f"<!-- reference: {name} -->"
        if marker in markdown:
            markdown = markdown.replace(marker, make())
    return markdown
