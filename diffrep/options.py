"""Settings, stated once: each field of a command's config dataclass carries its default, its help,
its range and its parser, and both the Python API and the command line read them from there.

    batch_size: int = option(250, "images per forward", min=1)

- `check(cfg)` (called from each config's `__post_init__`) refuses a value outside its range with
  one line naming the setting, so `Config(batch_size=0)` and `--batch-size 0` fail the same way.
- `add_options(parser, Config)` adds one flag per field (`--batch-size`; booleans `--name`, or
  `--no-name` when on by default; lists comma-separated), with the default in the help text.
- `from_args(Config, args)` builds the config from parsed arguments.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import re

from .errors import DiffrepError

MODEL_HELP = ("bundled name, local diffusers folder, hub id, or a guided-diffusion checkpoint FILE.pt (with --preset or "
              "--flags; converted once into a cached diffusers folder)")


def option(default, help: str = "", *, min=None, above=None, max=None, below=None, choices=None, parse=None, many: bool = False,
           flag: str | None = None, cli: bool = True, metavar: str | None = None, required: bool = False,
           aliases: dict | None = None):
    """A config field: default, help, range (min ≤ v ≤ max, above < v < below), choices, the parser of one
    command-line value, whether it is a comma-separated list (`many`; implied by a list default), the
    flag when not `--field-name` (for a boolean: the flag that flips the default), and whether the
    command line shows it at all (and whether it must be given there); `aliases`: short flags that set one
    value ({"--bf16": "bf16"})."""
    meta = dict(help=help, min=min, above=above, max=max, below=below, choices=choices, parse=parse, flag=flag, cli=cli,
                metavar=metavar, required=required, aliases=aliases or {}, many=many or isinstance(default, (list, tuple)))
    if isinstance(default, (list, dict, set)) or dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _problem(value, meta) -> str | None:
    if meta.get("choices") is not None and value not in meta["choices"]:
        return f"one of {', '.join(map(str, meta['choices']))}"
    if meta.get("min") is not None and not value >= meta["min"]:
        return f"at least {meta['min']}"
    if meta.get("above") is not None and not value > meta["above"]:
        return f"above {meta['above']}"
    if meta.get("max") is not None and not value <= meta["max"]:
        return f"at most {meta['max']}"
    if meta.get("below") is not None and not value < meta["below"]:
        return f"below {meta['below']}"
    return None


def check(cfg) -> None:
    """Every field of `cfg` within its declared range (lists item by item; None where it is the default)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if value is None or not f.metadata:
            continue
        for item in value if isinstance(value, (list, tuple)) else [value]:
            need = _problem(item, f.metadata)
            if need:
                raise DiffrepError(f"{flag_of(f)} must be {need}, not {item!r}")


# ----------------------------------------------------------------------------- value parsers

def named(name: str):
    """Give a parser the name argparse prints in "invalid <name> value: 'x'"."""
    def wrap(fn):
        fn.__name__ = name
        return fn
    return wrap


def csv_of(kind):
    """A comma-separated list, each item converted by `kind` ("a,b," → [kind(a), kind(b)])."""
    @named(f"comma-separated {getattr(kind, '__name__', 'value')}")
    def parse(text: str):
        return [kind(v.strip()) for v in text.split(",") if v.strip()]
    return parse


@named("noise level (an integer timestep, or σ for EDM models)")
def noise_level(text: str):
    """A noise level as given: an integer stays an integer (timestep), anything else is σ (EDM)."""
    value = float(text)
    return int(value) if value.is_integer() else value


@named("noise level(s) (one, or several comma-separated: 0,50)")
def noise_levels(text: str):
    """One noise level as `noise_level` gives it, or a list of them when several are given ("0,50")."""
    levels = [noise_level(v) for v in text.split(",") if v.strip()]
    return levels[0] if len(levels) == 1 else levels


NUMBER = re.compile(r"^-[\d.]")


class Parser(argparse.ArgumentParser):
    """argparse, except that a value starting with a minus and a digit ("-5,10", "-0.5") is a value,
    not an unknown option: `--points "-5,10"` works like `--points=-5,10`."""

    def _parse_optional(self, arg_string):
        if NUMBER.match(arg_string):
            return None
        return super()._parse_optional(arg_string)


# ----------------------------------------------------------------------------- command line

def _default_text(value) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def add_options(parser, cls, unset: bool = False, skip: tuple[str, ...] = ()) -> None:
    """One flag per field of the dataclass `cls` that has help text. `unset`: every default is None
    (the command tells what was given from what was not, e.g. to resume a run with its own settings)."""
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if not meta or not meta.get("cli") or f.name in skip:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        # argparse expands %-formats in help: a literal "%" (as in "99.8%") must reach it doubled
        text = meta["help"].replace("%", "%%")
        shown = text + ("" if default is None or isinstance(default, bool) else f" (default {_default_text(default)})")
        flag = flag_of(f)
        if isinstance(default, bool):   # a flag flips the default: --name (off by default) or --no-name
            if default and not meta.get("flag"):
                flag = "--no-" + f.name.replace("_", "-")
            parser.add_argument(flag, dest=f.name, action="store_const", const=not default,
                                default=None if unset else default, help=text)
            continue
        kind = _parser_of(default, meta)
        parser.add_argument(flag, dest=f.name, type=csv_of(kind) if meta["many"] else kind,
                            default=None if unset else copy.deepcopy(default), help=shown,
                            metavar=meta.get("metavar") or flag.lstrip("-").upper().replace("-", "_"),
                            required=meta.get("required", False))
        for alias, value in meta.get("aliases", {}).items():
            parser.add_argument(alias, dest=f.name, action="store_const", const=value, help=f"the same as {flag} {value}")


def _parser_of(default, meta):
    """What converts one command-line value: the field's own parser, else the type of its default
    (of a list default's items), else str."""
    if meta.get("parse") is not None:
        return meta["parse"]
    sample = (default[0] if default else None) if meta["many"] else default
    return str if sample is None else type(sample)


def from_args(cls, args, **extra):
    """`cls` built from the parsed arguments that name its fields (plus `extra`)."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in vars(args).items() if k in names}
    return cls(**{**values, **extra})
