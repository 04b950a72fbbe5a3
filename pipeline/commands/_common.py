"""What every ``itmflow`` command shares: help that reads like a CLI (no Python type names),
``--json`` output, refusing to replace output without ``--force``, deprecated option spellings.

:func:`polish` is applied to the app once (``pipeline/cli.py``): every command and group gets
:class:`Command` / :class:`Group`, whose parameters show a metavar (``DIR``, ``FILE``, ``INTEGER``,
``[a|b|c]`` for choices, nothing for flags) instead of typer's ``<list[Path]>`` / ``<bool>``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from itmflow.errors import ConfigError

_TYPE_WORDS = {"int": "INTEGER", "float": "FLOAT", "str": "TEXT", "path": "PATH", "file": "FILE",
               "directory": "DIR", "dir": "DIR"}


def _word(label: str) -> str:
    label = label.strip("<>")
    if label.startswith("list[") and label.endswith("]"):
        label = label[5:-1]
    if "|" in label:
        return f"[{label}]"
    return _TYPE_WORDS.get(label.lower(), label.upper())


class _Option(TyperOption):
    def display_type_rich(self, ctx: Any) -> Optional[str]:
        if self.metavar is not None:
            return self.metavar or None
        if self.is_flag or getattr(self, "is_bool_flag", False) or self.count:
            return None
        return _word(self.display_type(ctx))


class _Argument(TyperArgument):
    def display_type_rich(self, ctx: Any) -> Optional[str]:
        return None  # the name column already shows the metavar

    def _usage_display_name(self) -> str:
        name = self.display_name_raw
        if not self.required:
            name = f"[{name}]"
        return name + ("..." if self.nargs != 1 else "")


def _fix(params: list) -> list:
    for p in params:
        if type(p) is TyperOption:
            p.__class__ = _Option
        elif type(p) is TyperArgument:
            p.__class__ = _Argument
            if p.metavar is None:
                p.metavar = (p.name or "arg").upper()
    return params


class Command(TyperCommand):
    """A typer command whose help shows metavars, not Python types."""

    def get_params(self, ctx: Any) -> list:
        return _fix(super().get_params(ctx))


class Group(TyperGroup):
    """A typer group whose help shows metavars, not Python types."""

    def get_params(self, ctx: Any) -> list:
        return _fix(super().get_params(ctx))


def polish(app: typer.Typer) -> typer.Typer:
    """Give every command and group of ``app`` (recursively) the classes above."""
    from typer.models import DefaultPlaceholder

    def plain(cls: Any, base: type) -> bool:
        return cls is None or isinstance(cls, DefaultPlaceholder) or cls is base

    if plain(app.info.cls, TyperGroup):
        app.info.cls = Group
    for info in app.registered_commands:
        if plain(info.cls, TyperCommand):
            info.cls = Command
    for group in app.registered_groups:
        if group.typer_instance is not None:
            polish(group.typer_instance)
        if plain(group.cls, TyperGroup):
            group.cls = Group
    return app


# -- output ---------------------------------------------------------------------------------


def print_json(doc: Any) -> None:
    """The one JSON document of ``--json`` on stdout (paths as strings)."""
    sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")
    sys.stdout.flush()


def people_console(as_json: bool):
    """Where tables for people go: stdout, or stderr when stdout carries ``--json``."""
    from rich.console import Console

    return Console(stderr=as_json)


def refuse_existing(path: Path, force: bool, option: str = "--out", what: str = "output") -> None:
    """Refuse to replace ``path`` (a file, or a non-empty directory) unless ``--force``."""
    path = Path(path)
    exists = path.is_file() or (path.is_dir() and any(path.iterdir()))
    if exists and not force:
        raise ConfigError(f"{option} {path} already holds {what}; pass --force to replace it "
                          "(or choose another path)")


def deprecated(old: str, new: str) -> None:
    """One line on stderr for an old option spelling that still works for one release."""
    typer.echo(f"note: {old} is deprecated and will be removed in the next release; use {new}",
               err=True)


def pick(new: Any, old: Any, old_name: str, new_name: str) -> Any:
    """The value of an option given under its new name or (deprecated) its old one."""
    if old is None or old == [] or old == ():
        return new
    deprecated(old_name, new_name)
    if new is not None and new != [] and new != old:
        raise ConfigError(f"give {new_name} only (not also the deprecated {old_name})")
    return old


# -- early checks (before heavy imports) ---------------------------------------------------

#: Split names that stand for several stored splits (trainers.data.SPLITS).
_SPLIT_ALIASES = {"train": ("train", "restval")}


def check_store_dir(path: Path, option: str, what: str, hint: str) -> None:
    """A store directory must exist (checked before torch is imported)."""
    if not Path(path).is_dir():
        raise ConfigError(f"{option} {path}: no {what} there; {hint}")


def check_splits(captions: Path, splits: list[str], option: str = "--split") -> None:
    """Every name of ``splits`` is a split of the caption store (its manifest's counts), checked
    in milliseconds, before any model is loaded; the message lists the splits that exist."""
    mpath = Path(captions) / "manifest.json"
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
        have = manifest["counts"]["splits"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # the library reports a missing or broken store in its own words
    if not isinstance(have, dict):
        return
    for split in splits:
        if not any(name in have for name in _SPLIT_ALIASES.get(split, (split,))):
            listed = ", ".join(f"{name} ({count} captions)" for name, count in sorted(have.items()))
            raise ConfigError(f"{option} {split!r}: caption store {captions} has no such split; "
                              f"its splits are {listed or 'none'}")
