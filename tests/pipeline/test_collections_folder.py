"""Folder collections: the sample photos, nested folders, CSV/JSONL captions, bad files."""

from __future__ import annotations

import io
import json
import shutil

import pytest
from PIL import Image

from itmflow.errors import CollectionError, InputFileError
from pipeline.collections.folder import read_folder
from pipeline.collections.validate import check_files, summarize, write_report


def test_sample_folder(photo_dir, photo_paths):
    result = read_folder(photo_dir)
    b = result.builder
    assert sorted(im.image_id for im in b.images) == sorted(p.name for p in photo_paths)
    lines = [json.loads(l) for l in (photo_dir / "captions.jsonl").read_text().splitlines()]
    expected = {(l["file"], l.get("split", "")) for l in lines}
    assert {(im.file, im.split) for im in b.images} == expected
    first = lines[0]
    caps = [c for c in b.captions if c.image_id == first["file"]]
    assert [c.raw for c in caps] == first["captions"]
    assert [c.caption_id for c in caps] == [f"{first['file']}#{i}" for i in range(5)]
    assert b.problems == []
    check_files(result, check_images=True, progress=False)
    assert b.problems == []  # all 12 real photos decode (JPEG, L, I;16, RGBA, P)
    s = summarize(result, checked_images=True)
    assert (s["images"], s["captions"], s["unreadable_images"]) == (12, 60, 0)
    assert s["captions_per_image"] == {"min": 5, "median": 5, "max": 5}


@pytest.fixture
def messy(tmp_path, photo_dir):
    root = tmp_path / "messy"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / ".hidden").mkdir()
    shutil.copy(photo_dir / "chelsea.jpg", root / "sub" / "deeper" / "Cat.JPEG")
    shutil.copy(photo_dir / "camera.png", root / "camera.png")
    shutil.copy(photo_dir / "camera.png", root / ".hidden" / "skip.png")
    Image.open(photo_dir / "coffee.jpg").save(root / "coffee.webp")
    Image.open(photo_dir / "camera.png").save(root / "sub" / "cam.bmp")
    data = (photo_dir / "rocket.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (root / "notes.txt").write_text("not an image")
    return root


def test_recursive_scan_csv_captions_and_unreadable(messy):
    captions = messy / "caps.csv"
    captions.write_text("file,caption,split\nsub/deeper/Cat.JPEG,A cat.,train\nsub/deeper/Cat.JPEG,"
                        "\"Cat, close up.\",test\ncamera.png,A cameraman.,dev\nghost.jpg,Nobody,train\n"
                        "../outside.jpg,Escape,train\ncoffee.webp,,val\n")
    result = read_folder(messy, captions)
    b = result.builder
    ids = [im.image_id for im in b.images]
    assert ids == ["camera.png", "coffee.webp", "sub/cam.bmp", "sub/deeper/Cat.JPEG", "truncated.jpg"]
    splits = {im.image_id: im.split for im in b.images}
    assert splits == {"camera.png": "val", "coffee.webp": "val", "sub/cam.bmp": "",
                      "sub/deeper/Cat.JPEG": "train", "truncated.jpg": ""}
    kinds = sorted(p.kind for p in b.problems)
    assert kinds == ["conflicting_split", "empty_caption", "unknown_image", "unsafe_path"]
    check_files(result, check_images=True, progress=False)
    bad = [p for p in b.problems if p.kind == "unreadable_image"]
    assert [p.image_id for p in bad] == ["truncated.jpg"]
    s = summarize(result, checked_images=True)
    assert s["images_without_captions"] == 2 and s["captions_per_image"]["max"] == 2
    assert s["unreadable_images"] == 1 and s["empty_captions"] == 1


def test_feature_only_folder_and_missing_file_after_scan(messy):
    result = read_folder(messy)
    assert result.builder.captions == [] and len(result.builder.images) == 5
    (messy / "camera.png").unlink()
    check_files(result)
    assert [(p.kind, p.image_id) for p in result.builder.problems] == [("missing_file", "camera.png")]
    assert summarize(result)["unreadable_images"] is None


def test_symlink_out_of_root_is_refused(messy, photo_dir):
    (messy / "link.jpg").symlink_to(photo_dir / "astronaut.jpg")
    b = read_folder(messy).builder
    assert "link.jpg" not in [im.image_id for im in b.images]
    assert [(p.kind, p.where) for p in b.problems] == [("unsafe_path", "link.jpg")]


def test_jsonl_errors_name_line_and_field(messy):
    path = messy / "captions.jsonl"
    path.write_text('{"file": "camera.png", "captions": ["ok"]}\n{"file": "camera.png", "captions": ["x"\n')
    with pytest.raises(InputFileError, match=r"captions.jsonl line 2 column \d+: malformed JSON"):
        read_folder(messy)
    path.write_text('{"file": "camera.png", "captions": ["ok", 7]}\n')
    with pytest.raises(CollectionError, match=r"line 1: field 'captions\[1\]' must be a string"):
        read_folder(messy)
    path.write_text('{"captions": ["ok"]}\n')
    with pytest.raises(CollectionError, match="line 1: field 'file' is missing"):
        read_folder(messy)
    path.write_bytes(b'{"file": "camera.png", "caption": "fine"}\n{"file": "camera.png", "caption": "caf\xe9"}\n')
    b = read_folder(messy).builder
    assert [c.raw for c in b.captions] == ["fine"]
    assert [(p.kind, p.where) for p in b.problems] == [("non_utf8", "captions.jsonl line 2")]
    with pytest.raises(InputFileError, match="does not exist"):
        read_folder(messy / "nope")


def test_report_formats(tmp_path, messy):
    result = read_folder(messy)
    (messy / "camera.png").unlink()
    check_files(result)
    summary = summarize(result)
    doc = json.loads(write_report(tmp_path / "r.json", summary, result.builder.problems).read_text())
    assert doc["summary"]["missing_files"] == 1 and doc["problems"][0]["kind"] == "missing_file"
    lines = write_report(tmp_path / "r.jsonl", summary, result.builder.problems).read_text().splitlines()
    assert [json.loads(l)["image_id"] for l in lines] == ["camera.png"]


def test_pillow_bomb_limit_is_kept(tmp_path, monkeypatch):
    # A small image over a lowered limit stands in for a real bomb: the check must refuse it.
    root = tmp_path / "bomb"
    root.mkdir()
    buf = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buf, format="PNG")
    (root / "big.png").write_bytes(buf.getvalue())
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64 // 4)
    result = read_folder(root)
    check_files(result, check_images=True, progress=False)
    assert [p.kind for p in result.builder.problems] == ["unreadable_image"]
    assert "decompression bomb" in result.builder.problems[0].message.lower()
