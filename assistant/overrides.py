"""`a.b.c=value` settings onto nested frozen dataclass configs (the `--set` of the app, the worker and the
benchmarks), and back: the settings in which one config differs from another, to hand it to another process."""

from __future__ import annotations

import argparse
from dataclasses import fields, is_dataclass, replace
from pathlib import Path

from storage.errors import InvalidInput

SET_HELP = ("a setting, as a dotted path into the config dataclasses (assistant/config/), e.g. learning.blend.k=8, "
            "learning.train.learning_rate=2e-3 or explore.rate=0.5; repeat for more")


def with_overrides(config, assignments: list[str]):
    """`a.b.c=value` → a copy of the (nested, frozen) dataclass config with that field replaced.

    Values are parsed by the field's current type: a tuple takes `x,y` (a tuple of named items, such as the
    exploration probes, takes a subset of their names), a bool or None field takes true/false/none or a number;
    any field that may be None takes none.
    An unknown key, a value of the wrong kind or one the config's validation refuses raises ValueError."""
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        if not sep:
            raise ValueError(f"--set takes KEY=VALUE, got {assignment!r}")
        config = _replace_path(config, key.strip().split("."), raw.strip())
    return config


def _replace_path(obj, path: list[str], raw: str):
    name = path[0]
    if not hasattr(obj, name):
        raise ValueError(f"{type(obj).__name__} has no setting {name!r}")
    current = getattr(obj, name)
    if len(path) > 1:
        return replace(obj, **{name: _replace_path(current, path[1:], raw)})
    annotation = str(next(f.type for f in fields(obj) if f.name == name))
    if raw.lower() == "none" and "None" in annotation:  # e.g. max_drift=none: a setting that may be switched off
        value = None
    elif current is None and "Path" in annotation:  # e.g. model.cache_dir: None or a folder
        value = Path(raw)
    elif current is None and "tuple" in annotation:  # e.g. lora.target_modules: None or names
        value = None if raw.lower() == "none" else tuple(v.strip() for v in raw.split(",") if v.strip())
    elif isinstance(current, bool) or current is None:
        value = {"true": True, "false": False, "none": None}.get(raw.lower(), raw)
        if value == raw:
            value = float(raw) if "." in raw or "e" in raw.lower() else int(raw)
    elif isinstance(current, tuple) and current and all(hasattr(v, "name") for v in current):
        named = {v.name: v for v in current}  # e.g. explore.probes=list,direct: a subset of the probes, by name
        items = [v.strip() for v in raw.split(",") if v.strip()]
        unknown = [v for v in items if v not in named]
        if unknown or not items:
            raise ValueError(f"{name} takes names among {sorted(named)}, got {raw!r}")
        value = tuple(named[v] for v in items)
    elif isinstance(current, tuple):
        items = [v.strip() for v in raw.split(",") if v.strip()]
        value = tuple(int(v) if v.lstrip("-").isdigit() else v for v in items)
    else:
        value = type(current)(raw)
    return replace(obj, **{name: value})


def settings_diff(config, default) -> list[str]:
    """The `a.b.c=value` settings that turn `default` into `config` (same dataclass type): what `with_overrides`
    needs to rebuild `config` in another process, e.g. the worker the app starts."""
    changed = []
    for f in fields(config):
        mine, theirs = getattr(config, f.name), getattr(default, f.name)
        if mine == theirs:
            continue
        if is_dataclass(mine) and is_dataclass(theirs) and type(mine) is type(theirs):
            changed += [f"{f.name}.{setting}" for setting in settings_diff(mine, theirs)]
        else:
            changed.append(f"{f.name}={_text(mine)}")
    return changed


def _text(value) -> str:
    if value is None or isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(str(getattr(v, "name", v)) for v in value)  # named items (probes) by name
    return repr(value) if isinstance(value, float) else str(value)


class _Alias(argparse.Action):
    """A short flag that stands for one `--set` setting (`--port 8000` is `--set port=8000`), kept in the same list
    so that the last of the two wins."""

    def __init__(self, option_strings, dest, key: str, const: str | None = None, **kwargs):
        super().__init__(option_strings, dest, nargs=0 if const is not None else None, const=const, **kwargs)
        self.key = key

    def __call__(self, parser, namespace, values, option_string=None):
        value = self.const if self.const is not None else values
        namespace.settings = [*(getattr(namespace, "settings", None) or []), f"{self.key}={value}"]


def add_settings_arguments(parser: argparse.ArgumentParser, aliases: dict[str, tuple[str, str | None]]) -> None:
    """`--set KEY=VALUE` and the entry point's short flags, each `flag: (key, const)`: a flag with a const takes no
    value (`--no-worker`: ("worker", "false"))."""
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    for flag, (key, const) in aliases.items():
        parser.add_argument(flag, dest="settings", action=_Alias, key=key, const=const,
                            metavar=None if const is not None else "VALUE",
                            help=f"the same as --set {key}={const if const is not None else 'VALUE'}")


def config_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace, config):
    """`config` with the command line's settings; a bad one ends the program with one line saying which."""
    try:
        return with_overrides(config, args.settings)
    except (ValueError, TypeError, InvalidInput) as exc:
        parser.error(f"Bad --set: {exc}")
