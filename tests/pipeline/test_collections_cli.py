"""`itmflow ingest` end to end through the typer app."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.collections import read_collection


def test_ingest_sample_folder(tmp_path, photo_dir):
    out = tmp_path / "out" / "sample.parquet"
    result = CliRunner().invoke(app, ["ingest", str(photo_dir), "--format", "folder", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "captions per image" in result.output
    coll = read_collection(out)
    assert coll.images_root == photo_dir.resolve()
    assert len(coll.images) == 12 and len(coll.captions) == 60
    meta = coll.meta
    assert meta["source_format"] == "folder"
    assert meta["sources"][0]["name"] == "captions.jsonl" and len(meta["sources"][0]["sha256"]) == 64
    report = json.loads((out.parent / "sample.report.json").read_text())
    assert report["problems"] == [] and report["summary"]["images"] == 12


def test_ingest_karpathy_reports_missing_files(tmp_path, karpathy_coco):
    images = tmp_path / "images"
    (images / "val2014").mkdir(parents=True)
    (images / "val2014" / "COCO_val2014_000000391895.jpg").write_bytes(b"not decoded without --check-images")
    out = tmp_path / "coco.parquet"
    report = tmp_path / "problems.jsonl"
    result = CliRunner().invoke(app, ["ingest", str(karpathy_coco), "--format", "karpathy", "--images",
                                      str(images), "--out", str(out), "--report", str(report)])
    assert result.exit_code == 0, result.output
    problems = [json.loads(l) for l in report.read_text().splitlines()]
    assert sorted(p["image_id"] for p in problems) == ["384029", "57870"]
    assert {p["kind"] for p in problems} == {"missing_file"}
    table = pq.read_table(out)
    assert table.column("split").to_pylist() == ["test", "restval", "train"]
    assert len(table.column("captions").to_pylist()[0]) == 6
    # --check-images also decodes: the fake JPEG is now counted as unreadable
    result = CliRunner().invoke(app, ["ingest", str(karpathy_coco), "--format", "karpathy", "--images",
                                      str(images), "--out", str(out), "--report", str(report),
                                      "--check-images", "--force"])
    assert result.exit_code == 0, result.output
    kinds = [json.loads(l)["kind"] for l in report.read_text().splitlines()]
    assert sorted(kinds) == ["missing_file", "missing_file", "unreadable_image"]


def test_ingest_errors_are_one_line_without_traceback(tmp_path, karpathy_coco):
    bad = tmp_path / "dataset_coco.json"
    bad.write_text('{"images": [1,]}')
    result = CliRunner().invoke(app, ["ingest", str(bad), "--format", "karpathy", "--out",
                                      str(tmp_path / "c.parquet")])
    assert result.exit_code == 1
    assert "line 1 column 15: malformed JSON" in str(result.exception)
    assert not (tmp_path / "c.parquet").exists()
    result = CliRunner().invoke(app, ["ingest", str(karpathy_coco), "--format", "karpathy", "--captions",
                                      str(bad), "--out", str(tmp_path / "c.parquet")])
    assert result.exit_code == 1 and "--captions applies to --format folder" in str(result.exception)
    result = CliRunner().invoke(app, ["ingest", str(karpathy_coco), "--format", "voc", "--out",
                                      str(tmp_path / "c.parquet")])
    assert result.exit_code == 2 and "'voc' is not one of" in result.output  # a usage error
    empty = tmp_path / "emptydir"
    empty.mkdir()
    result = CliRunner().invoke(app, ["ingest", str(empty), "--format", "folder", "--out",
                                      str(tmp_path / "c.parquet")])
    assert result.exit_code == 1 and "no images found" in str(result.exception)


def test_ingest_bad_input_from_the_shell_prints_no_traceback(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "captions.jsonl"
    (tmp_path / "a.png").write_bytes(b"")
    bad.write_text('{"file": "a.png", "captions": "not a list"}\n')
    proc = subprocess.run([sys.executable, "-m", "pipeline", "ingest", str(tmp_path), "--format", "folder",
                           "--out", str(tmp_path / "c.parquet")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "captions.jsonl line 1: field 'captions' must be a list" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_ingest_reports_a_caption_with_a_lone_surrogate_and_goes_on(tmp_path, photo_dir):
    """A caption holding "\\udcff" (bytes mis-decoded upstream, kept as a JSON escape) used to
    crash ingest when the table was written; now it is reported with its line and kept."""
    import shutil

    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(photo_dir / "astronaut.jpg", folder / "astronaut.jpg")
    shutil.copy(photo_dir / "chelsea.jpg", folder / "chelsea.jpg")
    lines = ['{"file": "astronaut.jpg", "captions": ["A woman in a space suit."]}',
             '{"file": "chelsea.jpg", "captions": ["A cat\\udcff on a mat.", "A tabby cat."]}']
    (folder / "captions.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "c.parquet"
    report = tmp_path / "problems.jsonl"
    result = CliRunner().invoke(app, ["ingest", str(folder), "--format", "folder", "--out", str(out),
                                      "--report", str(report)])
    assert result.exit_code == 0, result.output
    problems = [json.loads(l) for l in report.read_text(encoding="utf-8").splitlines()]
    assert len(problems) == 1
    assert problems[0]["kind"] == "non_utf8" and problems[0]["where"] == "captions.jsonl line 2"
    assert "A cat\\udcff on a mat." in problems[0]["message"]
    texts = sorted(c.raw for c in read_collection(out).captions)
    assert texts == ["A cat\ufffd on a mat.", "A tabby cat.", "A woman in a space suit."]
