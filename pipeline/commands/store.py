"""`itmflow store`: inspect, verify, convert, export and import region stores."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Literal, Optional

import typer

store_app = typer.Typer(help="Inspect, verify, convert, export and import region stores.",
                        no_args_is_help=True)

_FORMATS = "scan-precomp | tern | butd-tsv | milvlg-npz"
Format = Literal["scan-precomp", "tern", "butd-tsv", "milvlg-npz"]


@contextmanager
def _progress(label: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A rich progress bar; yields ``advance(n)``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def _human(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if nbytes < 1024 or unit == "TB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{int(nbytes)} B"
        nbytes /= 1024
    return f"{nbytes:.1f} TB"


def _write_json(out: Optional[Path], doc: dict) -> None:
    if out is not None:
        from itmflow.files import atomic_write_json

        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out, doc)


def store_summary(path: Path) -> dict:
    """What `inspect` shows, as a dict (region store or caption store)."""
    from stores.captions import FORMAT as CAPTIONS_FORMAT
    from stores.captions import read_caption_manifest
    from stores.manifest import load_manifest
    from stores.schema import FAILURES_NAME, MANIFEST_NAME

    mpath = path / MANIFEST_NAME
    try:
        kind = json.loads(mpath.read_text(encoding="utf-8")).get("format") if mpath.is_file() else None
    except (OSError, ValueError):
        kind = None
    if kind == CAPTIONS_FORMAT:
        m = read_caption_manifest(path)
        return {"kind": "captions", "store": str(path), "captions": m["counts"]["captions"],
                "images": m["counts"]["images"], "splits": m["counts"]["splits"],
                "split_counts_are": "captions (not images)",
                "tokenizer": m.get("tokenizer"), "vocab_sha256": m.get("vocab_sha256"), "bytes": m.get("bytes")}
    m = load_manifest(path)
    failures = path / FAILURES_NAME
    n_fail = sum(1 for line in failures.read_text(encoding="utf-8").splitlines() if line.strip()) \
        if failures.is_file() else 0
    det = m.get("detector") or {}
    return {"kind": "regions", "store": str(path), "storage": m["storage"], "rows": m.get("num_rows", 0),
            "regions": m.get("num_regions", 0), "feature_dim": m["feature_dim"], "feature_dtype": m["feature_dtype"],
            "region_policy": m["region_policy"], "detector": det.get("name"),
            "weights_file": det.get("weights_file"), "weights_sha256": det.get("weights_sha256"),
            **_random_init(m),
            "absent_fields": m.get("absent_fields", []), "parts": len(m["parts"]),
            "bytes": sum(int(p["bytes"]) for p in m["parts"]), "failures": n_fail,
            "schema_version": m["schema_version"], **_what_users_ask(path, m), **_worker_shapes(m["parts"]),
            "top_labels": _top_labels(path)}


def _top_labels(path: Path) -> list[dict] | str:
    """The most frequent region labels, as names (``white shirt``), for a first look."""
    from pipeline.labels import top_labels

    try:
        return top_labels(path) or "none recorded"
    except Exception:  # a damaged part is `store verify`'s business; inspect shows what it can
        return "unreadable (run `itmflow store verify`)"


def _what_users_ask(path: Path, m: dict) -> dict:
    """Detector scale and proposals, regions per image, per-split counts, provenance and the
    source collection: what a user asks of a store first (random init and seed: _random_init)."""
    import numpy as np

    det = m.get("detector") or {}
    settings = det.get("settings") or {}
    out: dict = {}  # random init and seed: _random_init (itmflow.marks reads the mark once)
    if "min_size" in settings or "max_size" in settings:
        out["detector_scale"] = (f"shorter side {settings.get('min_size')}, "
                                 f"longer side at most {settings.get('max_size')}")
    if "post_nms_topk" in settings:
        out["proposals"] = (f"{settings.get('pre_nms_topk', '?')} before RPN NMS, {settings['post_nms_topk']} after "
                            f"(NMS {settings.get('rpn_nms_thresh', '?')})")
    counts = _region_counts(path, m)
    if counts.size:
        out["regions_per_image"] = {"min": int(counts.min()), "median": float(np.median(counts)),
                                    "max": int(counts.max())}
    extract = (m.get("extra") or {}).get("extract") or {}
    out["collection"] = {"file": extract.get("collection_file") or extract.get("collection") or "not recorded",
                         "sha256": extract.get("collection_sha256") or "not recorded"}
    out["split_counts"] = _split_counts(path, extract)
    prov = m.get("provenance") or {}
    out["made"] = {"created": prov.get("created"), "by": f"{prov.get('tool', '?')} {prov.get('version', '?')}",
                   "versions": prov.get("versions")}
    return out


def _region_counts(path: Path, m: dict):
    """num_regions of every committed image (fixed K: from the policy, nothing is read)."""
    import numpy as np

    from stores.schema import RegionPolicy

    k = RegionPolicy.from_manifest(m["region_policy"]).fixed_k
    if k is not None:
        return np.full(int(m.get("num_rows", 0)), k, dtype=np.int64)
    counts = []
    for part in m["parts"]:
        file = path / part["file"]
        try:
            if m["storage"] == "parquet":
                import pyarrow.parquet as pq
                counts.append(pq.read_table(file, columns=["num_regions"]).column(0).to_numpy())
            else:
                import h5py
                with h5py.File(file, "r") as fid:
                    counts.append(fid["num_regions"][()])
        except Exception:  # a damaged part is `store verify`'s business; inspect shows what it can
            continue
    return np.concatenate(counts).astype(np.int64) if counts else np.zeros(0, np.int64)


def _split_counts(path: Path, extract: dict):
    """Images per split, from the collection table the manifest names (when it is still there)."""
    from collections import Counter

    name = extract.get("collection_file")
    if not name:
        return "unknown (the manifest does not name its collection table)"
    table = Path(name)
    if not table.is_file():
        return f"unknown (collection table {name} is not found)"
    try:
        from pipeline.collections.table import read_collection
        from stores.reader import open_region_store

        split_of = {im.image_id: im.split for im in read_collection(table).images}
        with open_region_store(path) as reader:
            return dict(sorted(Counter(split_of.get(i, "?") for i in reader.ids()).items()))
    except Exception as exc:  # inspect is a summary: say why instead of failing
        return f"unknown ({type(exc).__name__}: {exc})"


def _random_init(manifest: dict) -> dict:
    from itmflow.marks import random_init_of_manifest

    mark = random_init_of_manifest(manifest)
    return {"random_init": True, "seed": mark["seed"]} if mark else {"random_init": False}


def _worker_shapes(parts: list[dict]) -> dict:
    """Which worker shapes (device, threads, host) wrote the parts, with a part count each; parts
    written before ``extract`` recorded it (or by ``store import``) are counted apart."""
    shapes: dict[str, dict] = {}
    unrecorded = 0
    for part in parts:
        workers = part.get("workers")
        if not isinstance(workers, list) or not workers:
            unrecorded += 1
            continue
        for shape in workers:
            if isinstance(shape, dict):
                key = json.dumps(shape, sort_keys=True)
                shapes.setdefault(key, {**shape, "parts": 0})["parts"] += 1
    out: dict = {"worker_shapes": list(shapes.values())}
    if unrecorded:
        out["parts_without_worker_shape"] = unrecorded
    return out


def _shape_text(summary: dict) -> str:
    lines = [f"{s.get('device')} × {s.get('threads')} threads @ {s.get('host')} ({s['parts']} parts)"
             for s in summary.get("worker_shapes", [])]
    if summary.get("parts_without_worker_shape"):
        lines.append(f"not recorded ({summary['parts_without_worker_shape']} parts)")
    return "\n".join(lines)


@store_app.command("inspect")
def inspect_cmd(
    store: Path = typer.Argument(..., metavar="STORE", help="Store directory (region store or caption store)."),
    out: Optional[Path] = typer.Option(None, "--out", metavar="FILE", help="Also write the summary as JSON to this file."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON document on stdout instead of a table."),
) -> None:
    """Summarise a store: storage, rows, regions, dtype, detector, parts, size."""
    from rich.console import Console
    from rich.table import Table

    from pipeline.commands._common import print_json

    summary = store_summary(store)
    if as_json:
        _write_json(out, summary)
        print_json(summary)
        return
    table = Table(title=f"{summary['kind']} store {store}", show_header=False)
    for key, value in summary.items():
        if key in ("kind", "store", "parts_without_worker_shape"):
            continue
        if key == "worker_shapes":
            table.add_row("written by", _shape_text(summary))
            continue
        if key == "top_labels" and isinstance(value, list):
            from pipeline.labels import top_labels_text

            table.add_row("most frequent regions", top_labels_text(value))
            continue
        if key == "bytes" and value is not None:
            value = f"{_human(value)} ({value} B)"
        elif isinstance(value, (dict, list, bool)):
            value = json.dumps(value, sort_keys=True)
        if key == "random_init" and value == "true":
            value = "[bold red]true[/] (features from a RANDOM-WEIGHT detector: meaningless)"
        table.add_row(key, "" if value is None else str(value))
    Console().print(table)
    _write_json(out, summary)


@store_app.command("verify")
def verify_cmd(
    store: Path = typer.Argument(..., metavar="STORE", help="Region store directory."),
    no_hash: bool = typer.Option(False, "--no-hash", help="Skip the sha256 of every part (faster)."),
    out: Optional[Path] = typer.Option(None, "--out", metavar="FILE", help="Write the report as JSON to this file."),
) -> None:
    """Check every part (sha256, schema, rows, duplicate ids, non-finite features). Exit 0 when sound,
    1 with a message naming each bad part otherwise."""
    from rich.console import Console

    from stores.manifest import load_manifest
    from stores.verify import verify_store

    try:
        total = int(load_manifest(store).get("num_rows", 0))
    except Exception:  # verify_store reports a broken manifest itself
        total = None
    with _progress("verifying", total) as advance:
        report = verify_store(store, check_hashes=not no_hash, progress=advance)
    _write_json(out, report.to_dict())
    console = Console(stderr=not report.ok)
    for file, message in report.warnings:
        console.print(f"[yellow]warning[/yellow] {store / file}: {message}")
    if report.ok:
        console.print(f"[green]ok[/green] {store}: {report.parts_checked} parts, {report.rows_checked} rows sound"
                      + (f"; {report.failures_recorded} image(s) listed in failures.jsonl"
                         if report.failures_recorded else ""))
        return
    for file, message in report.problems:
        console.print(f"[red]bad[/red] {store / file}: {message}", soft_wrap=True)
    console.print(f"{len(report.problems)} problem(s) in {store}; re-extract the images of the bad parts "
                  "(delete them from the manifest) or restore them from a backup")
    raise typer.Exit(1)


@store_app.command("convert")
def convert_cmd(
    src: Path = typer.Argument(..., metavar="SRC", help="Source region store."),
    dst: Path = typer.Argument(..., metavar="DST", help="Destination directory (new, or a partial conversion to resume)."),
    to: Optional[Literal["parquet", "hdf5"]] = typer.Option(None, "--to", help="Target storage (default: "
                                                            "the source's, e.g. to upgrade a schema-1 "
                                                            "store to schema 2)."),
) -> None:
    """Copy a store into the other storage, or upgrade a schema-1 store to the current layout
    (schema 2); every value is kept bit for bit."""
    from itmflow.errors import StoreError
    from stores.convert import convert_store
    from stores.manifest import load_manifest

    if to is None:
        to = str(load_manifest(src)["storage"])
    if to not in ("parquet", "hdf5"):
        raise StoreError(f"--to {to!r}: use parquet or hdf5")
    with _progress(f"converting to {to}", int(load_manifest(src).get("num_rows", 0))) as advance:
        convert_store(src, dst, to=to, progress=advance)
    typer.echo(f"wrote {dst} ({to}, schema version {load_manifest(dst)['schema_version']})")


@store_app.command("export")
def export_cmd(
    store: Path = typer.Argument(..., metavar="STORE", help="Region store to export."),
    fmt: Format = typer.Option(..., "--format", help="Output format."),
    out: Path = typer.Option(..., "--out", metavar="DIR", help="Output directory."),
    captions: Optional[Path] = typer.Option(None, "--captions", metavar="DIR", help="Caption store: writes {split}_caps.txt "
                                            "(scan-precomp) and selects the images of --split."),
    split: str = typer.Option("train", "--split", metavar="SPLIT", help="Split name used in file names (scan-precomp, "
                              "butd-tsv) and, with --captions, to select images (train = train+restval, "
                              "dev = val, test/testall = test)."),
    force: bool = typer.Option(False, "--force", help="Write into --out even when it already holds files."),
) -> None:
    """Export features for the original tools (SCAN/SGRAF, TERN/TERAN, Caffe TSV, MILVLG npz)."""
    from pipeline.commands._common import refuse_existing
    from stores.exports import export_store
    from stores.manifest import load_manifest

    refuse_existing(out, force, what="files")

    with _progress(f"exporting {fmt}", int(load_manifest(store).get("num_rows", 0))) as advance:
        summary = export_store(store, fmt, out, captions=captions, split=split, progress=advance)
    typer.echo(f"exported {summary['rows']} images as {fmt} to {out} ({summary['files']} file(s))")


@store_app.command("import")
def import_cmd(
    src: Path = typer.Argument(..., metavar="SRC", help="Source file or folder in the given format."),
    fmt: Format = typer.Option(..., "--format", help="Input format."),
    out: Path = typer.Option(..., "--out", metavar="DIR", help="Region store to create (or resume)."),
    split: str = typer.Option("train", "--split", metavar="SPLIT", help="Split to read (SCAN {split}_ims.npy) and to record."),
    storage: Literal["parquet", "hdf5"] = typer.Option("parquet", "--storage", help="Store storage."),
    feature_dtype: Literal["float32", "float16"] = typer.Option("float32", "--feature-dtype", help="float32 keeps the source values "
                                      "exactly; float16 halves the size."),
    rows_per_part: int = typer.Option(512, "--rows-per-part", metavar="N", help="Images per committed part."),
    collection_out: Optional[Path] = typer.Option(None, "--collection-out", metavar="FILE", help="Also write the collection "
                                                  "table (images + captions, FILE.parquet) for `itmflow "
                                                  "tokenize`."),
    images: Optional[Path] = typer.Option(None, "--images", metavar="DIR", help="tern: images root; the image sizes "
                                          "(for box geometry) are read from the files."),
    captions_json: Optional[Path] = typer.Option(None, "--captions-json", metavar="FILE", help="tern: COCO annotation "
                                                 "JSON holding images[].width/height (Karpathy / Flickr30k "
                                                 "json has none: use --images)."),
) -> None:
    """Import features from the original tools' formats into a region store."""
    from stores.imports import import_store

    with _progress(f"importing {fmt}", None) as advance:
        source = import_store(src, fmt, out, storage=storage, feature_dtype=feature_dtype, split=split,
                              rows_per_part=rows_per_part, progress=advance, images=images,
                              captions_json=captions_json)
    typer.echo(f"imported {len(source.counts)} images ({fmt}) into {out}")
    if collection_out is not None:
        from pipeline.collections import CaptionRecord, ImageRecord, write_collection

        images = [ImageRecord(image_id, file, split_name) for image_id, file, split_name in source.images]
        caps = [CaptionRecord(cid, image_id, raw) for cid, image_id, raw in (source.captions or [])]
        root = src if src.is_dir() else src.parent
        write_collection(collection_out, images, caps, source_format=fmt, images_root=root)
        typer.echo(f"wrote collection table {collection_out} ({len(images)} images, {len(caps)} captions)")


def register(app: typer.Typer) -> None:
    """Add the `store` sub-app to `app`."""
    app.add_typer(store_app, name="store")
