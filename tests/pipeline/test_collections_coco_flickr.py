"""Official COCO caption files and Flickr30k token / CSV files, with and without Karpathy splits."""

from __future__ import annotations

import json

import pytest

from itmflow.errors import CollectionError, InputFileError
from pipeline.collections.coco import read_coco
from pipeline.collections.flickr30k import read_flickr30k


def _coco_file(folder, subset, images, annotations):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"captions_{subset}.json"
    path.write_text(json.dumps({"info": {}, "licenses": [], "images": images, "annotations": annotations}))
    return path


@pytest.fixture
def coco_root(tmp_path):
    root = tmp_path / "coco"
    (root / "val2014").mkdir(parents=True)
    ann = root / "annotations"
    _coco_file(ann, "val2014", [{"id": 391895, "file_name": "COCO_val2014_000000391895.jpg"}],
               # file order differs from Karpathy's sentid order on purpose
               [{"id": 790001, "image_id": 391895, "caption": "An extra sixth caption."},
                {"id": 771687, "image_id": 391895, "caption": "A surfer rides a big wave."},
                {"id": 770337, "image_id": 391895, "caption": "A man riding a wave on top of a surfboard."},
                {"id": 772707, "image_id": 391895, "caption": "Person on a surfboard in the ocean."},
                {"id": 776154, "image_id": 391895, "caption": "A man surfing a large wave."},
                {"id": 781998, "image_id": 391895, "caption": "Someone surfing in the sea."}])
    _coco_file(ann, "train2014", [{"id": 57870, "file_name": "COCO_train2014_000000057870.jpg"},
                                  {"id": 999, "file_name": "COCO_train2014_000000000999.jpg"}],
               [{"id": 1, "image_id": 57870, "caption": "A restaurant table number 0."},
                {"id": 2, "image_id": 424242, "caption": "Caption of an image that is not listed."}])
    return root


def test_coco_folder_with_karpathy_splits_and_order(coco_root, karpathy_coco):
    result = read_coco(coco_root, karpathy=karpathy_coco)
    b = result.builder
    assert result.images_root == coco_root  # <root>/annotations → <root>
    files = {im.image_id: (im.file, im.split) for im in b.images}
    # val2014/ exists under the root, train2014/ does not: the file name is used as is there
    assert files["391895"] == ("val2014/COCO_val2014_000000391895.jpg", "test")
    assert files["57870"] == ("COCO_train2014_000000057870.jpg", "restval")
    assert files["999"][1] == ""
    caps = [c.caption_id for c in b.captions if c.image_id == "391895"]
    assert caps == ["770337", "771687", "772707", "776154", "781998", "790001"]  # Karpathy order
    kinds = {p.kind: p for p in b.problems}
    assert set(kinds) == {"no_split", "unknown_image"}
    assert kinds["unknown_image"].where == "captions_train2014.json annotations[1]"
    assert kinds["no_split"].image_id == "999"


def test_coco_single_file_without_splits_keeps_file_order(coco_root):
    result = read_coco(coco_root / "annotations" / "captions_val2014.json", images_root=coco_root)
    caps = [c.caption_id for c in result.builder.captions]
    assert caps[:2] == ["790001", "771687"]
    assert result.builder.images[0].split == ""


def test_coco_bad_inputs(tmp_path):
    with pytest.raises(InputFileError, match="no captions_"):
        read_coco(tmp_path)
    path = _coco_file(tmp_path, "val2014", [{"id": 1}], [])
    with pytest.raises(CollectionError, match=r"images\[0\]: required field 'file_name'"):
        read_coco(path)
    path.write_text('{"images": [], "annotations": [}')
    with pytest.raises(InputFileError, match="line 1 column 32"):
        read_coco(path)


TOKEN_LINES = [
    "1000092795.jpg#0\tTwo young guys with shaggy hair look at their hands while hanging out in the yard .",
    "1000092795.jpg#1\tTwo young , White males are outside near many bushes .",
    "10002456.jpg#0\tSeveral men in hard hats are operating a giant pulley system .",
    "10002456.jpg#1\tWorkers look down from up above on a piece of equipment .",
]


def test_flickr_token_file_with_bad_lines_and_splits(tmp_path, karpathy_f30k):
    (tmp_path / "flickr30k-images").mkdir()
    path = tmp_path / "results_20130124.token"
    raw = "\n".join(TOKEN_LINES).encode("utf-8") + b"\n10002456.jpg#2\tA caf\xe9 line\nno tab here\n" + \
        "../x.jpg#0\tescape\n10002456.jpg#1\tduplicate id\n".encode()
    path.write_bytes(raw)
    result = read_flickr30k(path, karpathy=karpathy_f30k)
    b = result.builder
    assert result.images_root == tmp_path / "flickr30k-images"
    assert [(im.image_id, im.file, im.split) for im in b.images] == [
        ("1000092795", "1000092795.jpg", "train"), ("10002456", "10002456.jpg", "val")]
    assert [c.caption_id for c in b.captions] == ["1000092795#0", "1000092795#1", "10002456#0", "10002456#1"]
    kinds = {p.kind: p.where for p in b.problems}
    assert kinds == {"non_utf8": "results_20130124.token line 5",
                     "malformed_line": "results_20130124.token line 6",
                     "unsafe_path": "results_20130124.token line 7",
                     "duplicate_caption_id": "results_20130124.token line 8"}


def test_flickr_csv_and_pipe_variants(tmp_path):
    csv_path = tmp_path / "captions.csv"
    csv_path.write_text('image,caption\n1000092795.jpg,"Two guys, talking."\n1000092795.jpg,Yard scene\n'
                        "10002456.jpg,Workers\nonly-one-field\n")
    b = read_flickr30k(csv_path).builder
    assert [(c.caption_id, c.raw) for c in b.captions] == [
        ("1000092795#0", "Two guys, talking."), ("1000092795#1", "Yard scene"), ("10002456#0", "Workers")]
    assert [p.kind for p in b.problems] == ["malformed_line"]
    pipe = tmp_path / "results.csv"
    pipe.write_text("image_name| comment_number| comment\n1000092795.jpg| 0| Two young guys .\n"
                    "1000092795.jpg| 4| Last one .\n")
    b = read_flickr30k(pipe).builder
    assert [(c.caption_id, c.raw) for c in b.captions] == [("1000092795#0", "Two young guys ."),
                                                           ("1000092795#4", "Last one .")]
    bad = tmp_path / "bad.csv"
    bad.write_text("photo,text\na.jpg,x\n")
    with pytest.raises(CollectionError, match="has none of the columns"):
        read_flickr30k(bad)
    empty = tmp_path / "empty.token"
    empty.write_text("")
    with pytest.raises(InputFileError, match="is empty"):
        read_flickr30k(empty)
