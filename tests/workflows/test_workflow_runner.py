"""The workflow runner: variables, stage skipping, optional stages, the bundled workflow files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from itmflow.errors import ConfigError
from pipeline.cli import app
from pipeline.commands.run import app_commands
from workflows.runner import load_workflow, parse_overrides, run_workflow

COMMANDS = app_commands(app)

BUNDLED = sorted((Path(__file__).resolve().parents[2] / "workflows").glob("*.yaml"))

FLOW = """
name: tiny
vars:
  workdir: {workdir}
  train: false
stages:
  - name: photos
    run: sample
    options: {{dest: "${{workdir}}/images"}}
    outputs: ["${{workdir}}/images"]
  - name: ingest
    run: ingest
    args: ["${{workdir}}/images"]
    options: {{format: folder, out: "${{workdir}}/collection.parquet", force: true}}
    outputs: ["${{workdir}}/collection.parquet"]
  - name: future
    run: no-such-command
    optional: true
  - name: train
    run: train
    args: [tern]
    options: {{regions: x, captions: y, out: z}}
    when: ${{train}}
"""


def _write(tmp_path: Path) -> Path:
    path = tmp_path / "flow.yaml"
    path.write_text(FLOW.format(workdir=tmp_path / "work"))
    return path


def test_stages_run_then_skip_until_an_input_changes(tmp_path):
    flow = load_workflow(_write(tmp_path))
    first = {o.name: o.status for o in run_workflow(flow, COMMANDS)}
    assert first == {"photos": "ran", "ingest": "ran", "future": "unavailable", "train": "off"}
    table = tmp_path / "work" / "collection.parquet"
    assert table.is_file()
    stamp = json.loads((tmp_path / "work" / ".itmflow-run" / "ingest.json").read_text())
    assert stamp["argv"][:2] == ["ingest", str(tmp_path / "work" / "images")]

    second = {o.name: o.status for o in run_workflow(load_workflow(_write(tmp_path)), COMMANDS)}
    assert second["photos"] == "skipped" and second["ingest"] == "skipped"

    # a changed input (a caption edited) makes the ingest stage run again
    captions = tmp_path / "work" / "images" / "captions.jsonl"
    captions.write_text(captions.read_text().replace("smiling woman", "smiling cosmonaut"))
    # --dry-run says so without running it
    before = table.read_bytes()
    res = CliRunner().invoke(app, ["run", str(_write(tmp_path)), "--dry-run", "--json"])
    assert res.exit_code == 0, res.output
    planned = {s["name"]: s["status"] for s in json.loads(res.stdout)["stages"]}
    assert planned == {"photos": "skipped", "ingest": "would run", "future": "unavailable",
                       "train": "off"}
    assert table.read_bytes() == before
    third = {o.name: o.status for o in run_workflow(load_workflow(_write(tmp_path)), COMMANDS)}
    assert third["photos"] == "skipped" and third["ingest"] == "ran"
    from pipeline.collections import read_collection

    texts = [c.raw for c in read_collection(table).captions]
    assert any("cosmonaut" in t for t in texts)


def test_variables_overrides_and_errors(tmp_path):
    path = _write(tmp_path)
    flow = load_workflow(path, parse_overrides(["train=true", "workdir=elsewhere"]))
    train = next(s for s in flow.stages if s.name == "train")
    assert train.when is True and flow.workdir == Path("elsewhere")
    assert flow.stages[1].argv() == ["ingest", "elsewhere/images", "--format", "folder",
                                     "--out", "elsewhere/collection.parquet", "--force"]
    with pytest.raises(ConfigError, match="no variable 'nope'"):
        load_workflow(path, {"nope": 1})
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["oops"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages:\n  - run: ingest\n    options: {out: \"${missing}\"}\n")
    with pytest.raises(ConfigError, match="unknown variable"):
        load_workflow(bad)
    required = tmp_path / "required.yaml"
    required.write_text("stages:\n  - run: no-such-command\n")
    with pytest.raises(ConfigError, match="not a command"):
        run_workflow(load_workflow(required), COMMANDS)


@pytest.mark.parametrize("path", BUNDLED, ids=[p.stem for p in BUNDLED])
def test_bundled_workflows_name_existing_commands(path):
    flow = load_workflow(path)
    commands = COMMANDS.names | {("sample",)}
    for stage in flow.stages:
        assert tuple(stage.run) in commands, (path.name, stage.name)
    assert {"ingest", "extract", "tokenize"} <= {s.run[0] for s in flow.stages}


def test_itmflow_run_command_prints_the_outcomes(tmp_path):
    res = CliRunner().invoke(app, ["run", str(_write(tmp_path)), "--set", "train=false"])
    assert res.exit_code == 0, res.output
    assert "ingest" in res.output and "unavailable" in res.output


@pytest.mark.parametrize("path", BUNDLED, ids=[p.stem for p in BUNDLED])
def test_bundled_workflows_use_existing_option_names(path):
    """Every option of every stage is an option of its command (renamed options included)."""
    import typer

    root = typer.main.get_command(app)
    for stage in load_workflow(path).stages:
        if stage.run == ["sample"]:
            continue
        cmd = root
        for word in stage.run:
            cmd = cmd.commands[word]
        opts = {o for p in cmd.params for o in [*getattr(p, "opts", []), *getattr(p, "secondary_opts", [])]
                if not getattr(p, "hidden", False)}
        for key in stage.options:
            assert "--" + key.replace("_", "-") in opts, (path.name, stage.name, key)


@pytest.mark.slow
@pytest.mark.ray
def test_bundled_folder_workflow_runs_without_weights_when_asked(tmp_path, photo_dir, ray_local):
    import shutil

    images = tmp_path / "photos"
    images.mkdir()
    names = ("chelsea.jpg",)  # one image: the folder workflow extracts at the full 600 px, 300 proposals
    for name in names:
        shutil.copy(photo_dir / name, images / name)
    lines = (photo_dir / "captions.jsonl").read_text().splitlines()
    (images / "captions.jsonl").write_text(
        "".join(line + "\n" for line in lines if json.loads(line)["file"] in names))
    work = tmp_path / "work"
    res = CliRunner().invoke(app, ["run", "folder", "--set", f"images={images}", "--set",
                                   f"workdir={work}", "--set", "random_init=true", "--json"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    doc = json.loads(res.stdout)
    assert {s["name"]: s["status"] for s in doc["stages"]} == {
        "ingest": "ran", "extract": "ran", "tokenize": "ran", "train": "off"}
    from stores import open_region_store

    with open_region_store(work / "regions") as store:
        assert list(store.ids()) == ["chelsea.jpg"]
    assert (work / "captions" / "manifest.json").is_file()
