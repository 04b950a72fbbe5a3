"""Flickr30k captions: ``results_20130124.token`` (``1000092795.jpg#0<TAB>caption``) and the CSV
variant (header ``image,caption``; also ``image_name|comment_number|comment`` as on Kaggle).

Image id = file stem, caption id = ``<stem>#<n>`` (``n`` from the token file or the CSV's comment
number, else the caption's position). Splits come from an optional Karpathy JSON
(``dataset_flickr30k.json``). Lines that are not UTF-8 or lack a field are reported and skipped.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from itmflow.errors import CollectionError
from pipeline.collections.builder import AdapterResult, CollectionBuilder
from pipeline.collections.karpathy import karpathy_entries, karpathy_image_id
from pipeline.collections.sources import column_index, csv_rows, field, iter_lines

_IMAGE_COLUMNS = ("image", "image_name", "file", "filename")
_CAPTION_COLUMNS = ("caption", "comment", "sentence", "raw")
_NUMBER_COLUMNS = ("comment_number", "caption_number", "n")


def _token_rows(path: Path, builder: CollectionBuilder) -> list[tuple[str, str | None, str, str]]:
    """(file, n, caption, where) of a ``.token`` file."""
    rows = []
    for number, text in iter_lines(path, what="Flickr30k token file"):
        where = f"{path.name} line {number}"
        if text is None:
            builder.problem("non_utf8", where, "line is not valid UTF-8", "caption dropped")
            continue
        key, tab, caption = text.partition("\t")
        if not tab:
            builder.problem("malformed_line", where, "expected '<file>#<n><TAB><caption>'", "line dropped")
            continue
        file, _, n = key.strip().partition("#")
        rows.append((file, n or None, caption.strip(), where))
    return rows


def _csv_rows(path: Path, builder: CollectionBuilder) -> list[tuple[str, str | None, str, str]]:
    """(file, n, caption, where) of a CSV / pipe-separated caption file."""
    columns, header_no, lines = csv_rows(path, what="Flickr30k caption CSV", report=builder.problem)
    i_image, i_caption = column_index(columns, _IMAGE_COLUMNS), column_index(columns, _CAPTION_COLUMNS)
    if i_image is None or i_caption is None:
        raise CollectionError(f"{path} line {header_no}: header {columns} has none of the columns "
                              f"{list(_IMAGE_COLUMNS if i_image is None else _CAPTION_COLUMNS)}")
    i_number = column_index(columns, _NUMBER_COLUMNS)
    rows = []
    for where, cells in lines:
        if len(cells) <= max(i_image, i_caption):
            builder.problem("malformed_line", where, f"expected {len(columns)} fields, found {len(cells)}",
                            "line dropped")
            continue
        n = cells[i_number].strip() if i_number is not None and i_number < len(cells) else None
        rows.append((cells[i_image].strip(), n or None, cells[i_caption].strip(), where))
    return rows


def read_flickr30k(path: str | Path, images_root: str | Path | None = None,
                   karpathy: str | Path | None = None) -> AdapterResult:
    """Read a Flickr30k caption file (token or CSV). ``images_root`` defaults to
    ``flickr30k-images/`` beside the file when that exists, else the file's directory."""
    source = Path(path)
    builder = CollectionBuilder()
    rows = _csv_rows(source, builder) if source.suffix.lower() == ".csv" else _token_rows(source, builder)
    splits: dict[str, str] = {}
    notes: list[str] = []
    if karpathy is not None:
        entries, dataset = karpathy_entries(Path(karpathy))
        for i, entry in enumerate(entries):
            where = f"{Path(karpathy).name} images[{i}]"
            splits[karpathy_image_id(entry, dataset, where)] = field(entry, "split", str, where)
        notes.append(f"splits from {Path(karpathy).name} ({len(splits)} images)")
    counts: dict[str, int] = {}
    refused: set[str] = set()  # images already reported as dropped (with their captions)
    for file, n, caption, where in rows:
        stem = PurePosixPath(file).stem
        if stem in refused:
            continue
        if not builder.has_image(stem):
            split = builder.normalize_split(splits[stem], where) if stem in splits else ""
            if not builder.add_image(stem, file, split, where):
                refused.add(stem)
                continue
            if karpathy is not None and stem not in splits:
                builder.problem("no_split", where, f"image {stem} is not in the Karpathy file",
                                "image kept with no split", image_id=stem)
        index = counts.get(stem, 0)
        counts[stem] = index + 1
        builder.add_caption(f"{stem}#{n if n is not None else index}", stem, caption, where)
    root = Path(images_root) if images_root is not None else source.parent
    if images_root is None and (source.parent / "flickr30k-images").is_dir():
        root = source.parent / "flickr30k-images"
    return AdapterResult("flickr30k", root, builder, [source], notes)
