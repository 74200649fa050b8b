"""Flags-or-YAML configuration shared by the stages.

Every stage takes `--config FILE.yaml` whose keys are the stage's flag names (dashes or
underscores). A flag given on the command line wins over the file; the file wins over the
flag's default. The resolved configuration is written as `config.yaml` beside the outputs so
a run can be repeated with `--config OUT/config.yaml`.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

_PARSER_KEY = "_parser"


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """Adds --config and remembers the parser so `resolve` can tell flags from defaults."""
    parser.add_argument("--config", type=Path, default=None,
                        help="YAML file of flag values (command-line flags take precedence)")
    parser.set_defaults(**{_PARSER_KEY: parser})


def resolve(args: argparse.Namespace, required: tuple[str, ...] = ()) -> argparse.Namespace:
    """Applies the YAML config under the command-line flags and checks required values."""
    parser: argparse.ArgumentParser = getattr(args, _PARSER_KEY)
    if args.config is not None:
        with open(args.config, encoding="utf-8") as f:
            values = yaml.safe_load(f) or {}
        if not isinstance(values, dict):
            raise SystemExit(f"{args.config}: expected a mapping of flag names to values")
        actions = {a.dest: a for a in parser._actions}
        for key, value in values.items():
            dest = key.replace("-", "_")
            if dest not in actions or dest == "config":
                raise SystemExit(f"{args.config}: unknown setting {key!r} for this stage")
            convert = actions[dest].type
            if isinstance(value, str) and callable(convert):
                value = convert(value)  # e.g. paths given as YAML strings
            # A flag left at its default was not given on the command line: the file decides.
            if getattr(args, dest) == parser.get_default(dest):
                setattr(args, dest, value)
    missing = [name for name in required if getattr(args, name) in (None, "")]
    if missing:
        flags = ", ".join("--" + m.replace("_", "-") for m in missing)
        raise SystemExit(f"missing required setting(s): {flags} (flag or --config key)")
    return args


def as_dict(args: argparse.Namespace) -> dict[str, Any]:
    """The settings of a run, as plain YAML-serialisable values."""
    out = {}
    for key, value in vars(args).items():
        if key.startswith("_") or key in ("config", "stage"):
            continue
        out[key] = str(value) if isinstance(value, Path) else value
    return out


def save(args: argparse.Namespace, out_dir: str | Path) -> Path:
    """Writes the resolved settings to OUT/config.yaml."""
    path = Path(out_dir) / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(as_dict(args), f, sort_keys=True)
    return path
