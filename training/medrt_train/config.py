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
# The words typed after the stage name, kept by cli.main for `resolve`.
ARGV_KEY = "_argv"


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """Adds --config and remembers the parser so `resolve` can tell flags from defaults."""
    parser.add_argument("--config", type=Path, default=None,
                        help="YAML file of flag values (command-line flags take precedence)")
    parser.set_defaults(**{_PARSER_KEY: parser})


def given_flags(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The dests of the options typed in `argv`: `argv` parsed again with every default
    suppressed, so a flag typed with its default value still counts as given."""
    saved = {action: action.default for action in parser._actions}
    saved_defaults = dict(parser._defaults)
    try:
        for action in parser._actions:
            action.default = argparse.SUPPRESS
        parser._defaults.clear()
        typed, _ = parser.parse_known_args(argv)
    finally:
        for action, default in saved.items():
            action.default = default
        parser._defaults.update(saved_defaults)
    return set(vars(typed))


def _bool_action(action: argparse.Action) -> bool:
    return isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction,
                               argparse.BooleanOptionalAction))


def _check_value(action: argparse.Action, key: str, value: Any, path: Path) -> Any:
    """`value` put through what argparse does to a typed flag: its `type` and `choices`, so a
    YAML value can never reach a stage that the command line would have refused."""
    if value is None:  # as `config.yaml` writes an option left unset
        return None
    where = f"{path}: setting {key!r}"
    if _bool_action(action):
        if not isinstance(value, bool):
            raise SystemExit(f"{where}: expected true or false, got {value!r}")
        return value
    if isinstance(value, (dict, list)):
        raise SystemExit(f"{where}: expected a single value, got {value!r}")
    if isinstance(value, bool) and action.type is not None:
        # int(True) is 1: a YAML `yes` must not pass for a number or a path.
        raise SystemExit(f"{where}: expected a {getattr(action.type, '__name__', 'value')}, "
                         f"got {value!r}")
    # Through str(), as argparse sees it: int("1.5") fails where int(1.5) would truncate.
    text = str(value)
    if callable(action.type):
        try:
            value = action.type(text)
        except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
            raise SystemExit(f"{where}: invalid {getattr(action.type, '__name__', 'value')} "
                             f"value {text!r} ({exc})") from None
    else:
        value = text
    if action.choices is not None and value not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise SystemExit(f"{where}: invalid choice {value!r} (choose from {choices})")
    return value


def resolve(args: argparse.Namespace, required: tuple[str, ...] = ()) -> argparse.Namespace:
    """Applies the YAML config under the command-line flags and checks required values.

    The flags typed on the command line are found by parsing its words again (`args._argv`,
    set by `cli.main`); without them (a namespace built in code) a flag still at its default
    counts as not given."""
    parser: argparse.ArgumentParser = getattr(args, _PARSER_KEY)
    if args.config is not None:
        with open(args.config, encoding="utf-8") as f:
            values = yaml.safe_load(f) or {}
        if not isinstance(values, dict):
            raise SystemExit(f"{args.config}: expected a mapping of flag names to values")
        actions = {a.dest: a for a in parser._actions}
        argv = getattr(args, ARGV_KEY, None)
        typed = given_flags(parser, argv) if argv is not None else None
        for key, value in values.items():
            dest = str(key).replace("-", "_")
            if dest not in actions or dest in ("config", "help"):
                raise SystemExit(f"{args.config}: unknown setting {key!r} for this stage")
            value = _check_value(actions[dest], str(key), value, args.config)
            given = dest in typed if typed is not None else \
                getattr(args, dest) != parser.get_default(dest)
            if not given:
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
    if path.parent.exists() and not path.parent.is_dir():
        raise NotADirectoryError(f"--out {out_dir}: exists and is not a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(as_dict(args), f, sort_keys=True)
    return path
