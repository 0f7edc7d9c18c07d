"""What every `lrtune` command does at the terminal: read a spec file, fail with one line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NoReturn

import typer
import yaml
from rich.console import Console
from rich.markup import escape

err = Console(stderr=True, highlight=False, soft_wrap=True)  # an error stays one line


def fail(message: str, *, code: int) -> NoReturn:
    """`error: <message>` as one red line on stderr (the message printed as it is, brackets
    included), then exit with `code`."""
    err.print(f"[red]error: {escape(message)}[/red]")
    raise typer.Exit(code)


def read_spec_file(path: Path, *, code: int) -> Any:
    """What a JSON (`.json`) or YAML (any other name) file holds; a file that cannot be read or
    parsed fails with one line and `code`."""
    try:
        text = path.read_text()
    except OSError as error:
        fail(f"cannot read {path}: {error.strerror}", code=code)
    kind = "JSON" if path.suffix == ".json" else "YAML"
    try:
        return json.loads(text) if kind == "JSON" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        first = str(error).strip().splitlines()[0]
        fail(f"{path} is not valid {kind}: {first}", code=code)
