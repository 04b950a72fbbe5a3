"""Write docs/reference/cli.md from the typer app itself (never edit that file by hand).

Walks the click command tree of ``pipeline.cli.app`` (``typer.main.get_command``) and writes, for
every command and sub-command, its usage line, its help text and a table of its arguments and
options (names, type, default, required, environment variable, help). Run by the mkdocs hook
(docs/hooks.py) on every ``make docs``; ``python docs/gen_cli.py [OUT]`` runs it alone.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "docs" / "reference" / "cli.md"


def _cell(text: str) -> str:
    """Text safe inside one Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _param_type(ctx, param) -> str:
    """The type as `--help` shows it: typer's own display type, else click's type name."""
    if getattr(param, "is_flag", False) and not getattr(param, "count", False):
        return "flag"
    rich = getattr(param, "display_type_rich", None)
    if callable(rich) and getattr(param, "param_type_name", "") == "option":
        shown = rich(ctx)  # the metavar `--help` shows (pipeline/commands/_common.py)
        if shown:
            return _cell(shown.replace("|", " | "))
    display = getattr(param, "display_type", None)
    if callable(display):  # typer >= 0.2x (its vendored click)
        text = str(display(ctx)).strip("<>")
        if text.startswith("list[") and text.endswith("]"):
            text = text[5:-1]
        # click's words, as `--help` shows them (pipeline/commands/_common.py), not Python's
        text = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "path": "PATH",
                "Path": "PATH"}.get(text, text)
        return _cell(text.replace("|", " | ")) if "|" in text else f"`{text}`"
    t = getattr(param, "type", None)
    choices = getattr(t, "choices", None)
    if choices:
        return " \\| ".join(f"`{c}`" for c in choices)
    return f"`{(getattr(t, 'name', None) or type(t).__name__).lower()}`"


def _default(ctx, param) -> str:
    if getattr(param, "show_default", None) is False:
        return ""
    try:
        value = param.get_default(ctx, call=False)
    except TypeError:  # click < 8.1 has no call=
        value = param.get_default(ctx)
    if callable(value):
        return "(computed)"
    if value is None or value == () or value == []:
        return ""
    if getattr(param, "is_flag", False):
        if param.secondary_opts:
            return f"`{param.opts[0] if value else param.secondary_opts[0]}`"
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return ", ".join(f"`{v}`" for v in value)
    return f"`{value}`"


def _param_row(ctx, param) -> str:
    if getattr(param, "param_type_name", "") == "argument":
        label = getattr(param, "human_readable_name", None) or param.metavar or param.name.upper()
        names = f"`{label}`"
        kind = "argument"
    else:
        opts = list(param.opts) + list(param.secondary_opts)
        names = " / ".join(f"`{o}`" for o in opts)
        kind = "option"
    required = "yes" if param.required else ""
    envvar = param.envvar if isinstance(param.envvar, str) else ", ".join(param.envvar or [])
    help_text = getattr(param, "help", None) or ""
    if envvar:
        help_text = f"{help_text} (environment variable `{envvar}`)".strip()
    return (f"| {names} | {kind} | {_param_type(ctx, param)} | {_default(ctx, param)} | {required} | "
            f"{_cell(help_text)} |")


def _usage(cmd, ctx) -> str:
    import re

    pieces = cmd.collect_usage_pieces(ctx)
    # typer's vendored click writes arguments as {name}; show them as `--help` of click does.
    pieces = [re.sub(r"\{(\w+)\}", lambda m: m.group(1).upper(), p) for p in pieces]
    pieces = [re.sub(r"^\[([a-z_]+)\]$", lambda m: f"[{m.group(1).upper()}]", p) for p in pieces]
    return " ".join([ctx.command_path, *pieces])


def _command_section(cmd, ctx, depth: int, lines: list[str]) -> None:
    hashes = "#" * min(depth + 2, 6)
    lines += [f"{hashes} {ctx.command_path}", ""]
    lines += ["```", _usage(cmd, ctx), "```", ""]
    help_text = (cmd.help or "").strip()
    if help_text:
        # click's \b markers (no re-wrapping) mean nothing in Markdown.
        lines += [help_text.replace("\b\n", "").replace("\b", ""), ""]
    params = [p for p in cmd.get_params(ctx) if not getattr(p, "hidden", False)]
    if params:
        lines += ["| name | kind | type | default | required | help |",
                  "|---|---|---|---|---|---|"]
        lines += [_param_row(ctx, p) for p in params]
        lines.append("")
    if hasattr(cmd, "list_commands"):
        subs = cmd.list_commands(ctx)
        if subs:
            lines += ["Sub-commands: " + ", ".join(
                f"[`{name}`](#{_slug(ctx.command_path + ' ' + name)})" for name in subs), ""]
        for name in subs:
            sub = cmd.get_command(ctx, name)
            if sub is None or getattr(sub, "hidden", False):
                continue
            sub_ctx = type(ctx)(sub, info_name=name, parent=ctx)
            _command_section(sub, sub_ctx, depth + 1, lines)


def _slug(title: str) -> str:
    """The anchor Python-Markdown's toc extension gives a heading made of plain words."""
    return "-".join(title.lower().split())


def render() -> str:
    """The whole page as Markdown."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import typer

    from pipeline.cli import app

    root = typer.main.get_command(app)
    # typer >= 0.2x vendors its own click: take the Context class from the command itself.
    ctx = getattr(root, "context_class")(root, info_name="itmflow")
    lines = [
        "# Command-line reference",
        "",
        "<!-- Generated by docs/gen_cli.py from the typer app pipeline.cli.app on every "
        "`make docs`. Do not edit: change the commands' help texts instead. -->",
        "",
        "Generated from the `itmflow` typer app on every documentation build, so it always "
        "matches `itmflow COMMAND --help` of this checkout. The user guide explains what the "
        "commands are for; this page lists every argument and option.",
        "",
    ]
    _command_section(root, ctx, 0, lines)
    return "\n".join(lines).rstrip() + "\n"


def write(out: Path = DEFAULT_OUT) -> bool:
    """Write the page if its content changed; returns whether it was written."""
    text = render()
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.is_file() and out.read_text(encoding="utf-8") == text:
        return False
    out.write_text(text, encoding="utf-8")
    return True


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    write(target)
    print(f"wrote {target}")
