"""Where weights come from: a catalog of the checkpoints users actually use, downloads, the cache.

* :data:`CATALOG` lists the detector checkpoints (the Hugging Face ``unc-nlp/frcnn-vg-finetuned``
  directory, MILVLG's ``bua-caffe-frcn-r101-*.pth``, airsplay's ``faster_rcnn_from_caffe_attr*.pkl``),
  the authors' TERN / TERAN / SGRAF releases and the BERT TERN/TERAN start from. Each entry says
  where its files live and whether :func:`download` can fetch them. Hashes and sizes are given only
  where they are known (never guessed); most releases sit on OneDrive / Google Drive folders or
  behind dead links, and those entries say where to get the file by hand.
* :func:`download_url` fetches one URL over HTTP(S) into a ``.part`` file, resumes an interrupted
  transfer with a ``Range`` request and checks a sha256 before the file takes its final name; a
  wrong hash keeps nothing.
* :func:`resolve` turns what a user typed after ``--weights`` / ``--checkpoint`` (a path, a catalog
  NAME, a URL or a hub id) into a local path, downloading where the entry allows it.
* :func:`resolve_bert` finds a BERT directory (``--bert DIR`` or a hub id in the Hugging Face cache)
  and fails at once, in one line, where none can be had offline.

Caches: ``$ITMFLOW_CACHE/weights`` (default ``~/.cache/itmflow/weights``) for URLs and hand-placed
files; Hugging Face's own cache (``$HF_HUB_CACHE``, ``$HF_HOME/hub``, ``~/.cache/huggingface/hub``)
for hub ids. This module depends on nothing of ours but :mod:`itmflow`.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from itmflow.errors import ConfigError, InputFileError
from itmflow.files import commit_temp, sha256_file

#: ``progress(done_bytes, total_bytes_or_None)`` during a download
Progress = Callable[[int, "int | None"], None]

_CHUNK = 1 << 20
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_URL = re.compile(r"^https?://", re.IGNORECASE)
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class DownloadError(InputFileError):
    """A download failed, was refused (wrong sha256) or is not possible for this entry."""


# ----------------------------------------------------------------------------------- catalog


@dataclass(frozen=True)
class WeightsEntry:
    """One release in the catalog."""

    name: str
    """What to type after ``--weights`` / ``--checkpoint`` / ``download``."""
    title: str
    family: str
    """``detector``, ``matcher`` or ``text``."""
    files: tuple[str, ...]
    """File names of the release (the first is the one a command reads; a hub entry is a directory)."""
    page: str
    """Project page that documents the release (where to get it by hand)."""
    used_by: str
    """The command (option) that reads it."""
    hub_repo: str | None = None
    """Hugging Face hub id: downloadable through ``huggingface_hub``."""
    url: str | None = None
    """A stable direct URL: downloadable over HTTP."""
    size: str | None = None
    """Size as the source states it (``None``: unknown)."""
    sha256: str | None = None
    """sha256 of ``files[0]`` where known (``None``: unknown, not checked)."""
    host: str = ""
    """Where the files are hosted when they cannot be fetched directly."""
    note: str = ""
    archive: bool = False
    """The release is an archive: extract it and pass the file inside."""
    allow_patterns: tuple[str, ...] = ()
    """Hub entries: which files of the repository to fetch (default: ``files``)."""

    @property
    def downloadable(self) -> bool:
        return bool(self.hub_repo or self.url)

    @property
    def source(self) -> str:
        if self.hub_repo:
            return f"hf://{self.hub_repo}"
        if self.url:
            return self.url
        return self.host or self.page

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(source=self.source, downloadable=self.downloadable,
                   sha256=self.sha256 or "unknown", size=self.size or "unknown")
        out["files"] = list(self.files)
        out["allow_patterns"] = list(self.allow_patterns)
        return out


_MILVLG = "https://github.com/MILVLG/bottom-up-attention.pytorch"
_AIRSPLAY = "https://github.com/airsplay/py-bottom-up-attention"
_DETECT = "detect --weights, extract --weights"

CATALOG: dict[str, WeightsEntry] = {e.name: e for e in (
    WeightsEntry(
        "frcnn-vg-finetuned", "BUTD ResNet-101 (VG), HF conversion of airsplay's attr model",
        "detector", ("pytorch_model.bin", "config.yaml"),
        "https://huggingface.co/unc-nlp/frcnn-vg-finetuned", _DETECT,
        hub_repo="unc-nlp/frcnn-vg-finetuned",
        size="262 MB (pytorch_model.bin) + 2.13 kB (config.yaml)",
        note="converted from faster_rcnn_from_caffe_attr.pkl (36-box model); detectron2 layout"),
    WeightsEntry(
        "bua-caffe-frcn-r101-k36", "BUTD ResNet-101 (VG), MILVLG port of the Caffe 36-box model",
        "detector", ("bua-caffe-frcn-r101-k36.pth",), _MILVLG, _DETECT,
        host="OneDrive/SharePoint link in the MILVLG README",
        note="Caffe layout; MILVLG mAP 9.3 / weighted 14.0"),
    WeightsEntry(
        "bua-caffe-frcn-r101-k10-100", "BUTD ResNet-101 (VG), MILVLG port of the Caffe 10-100 model",
        "detector", ("bua-caffe-frcn-r101-k10-100.pth",), _MILVLG, _DETECT,
        host="OneDrive/SharePoint link in the MILVLG README",
        note="Caffe layout; MILVLG mAP 10.2 / weighted 15.1"),
    WeightsEntry(
        "faster-rcnn-from-caffe-attr", "BUTD ResNet-101 (VG), airsplay's 36-box (iter 320000) model",
        "detector", ("faster_rcnn_from_caffe_attr.pkl",), _AIRSPLAY, _DETECT,
        host="http://nlp.cs.unc.edu/models/ (dead: the README says the links no longer work)",
        note="the same weights as frcnn-vg-finetuned, which the hub still serves"),
    WeightsEntry(
        "faster-rcnn-from-caffe-attr-original", "BUTD ResNet-101 (VG), airsplay's 10-100 model",
        "detector", ("faster_rcnn_from_caffe_attr_original.pkl",), _AIRSPLAY, _DETECT,
        host="http://nlp.cs.unc.edu/models/ (dead: the README says the links no longer work)"),
    WeightsEntry(
        "tern-coco", "TERN trained on COCO (authors' release, best val SPICE-NDCG)",
        "matcher", ("model_best_ndcg.pth",), "https://github.com/mesnico/TERN",
        "evaluate --checkpoint",
        host="OneDrive folder linked from the TERN README (the old datino.isti.cnr.it links are dead)"),
    WeightsEntry(
        "teran-pretrained", "TERAN COCO / Flickr30k models (authors' archive)",
        "matcher", ("TERAN_pretrained_models.tgz",), "https://github.com/mesnico/TERAN",
        "evaluate --checkpoint (a .pth inside the archive)",
        host="link in the TERAN README", archive=True,
        note="holds pretrained_models/<model>.pth; the exact file names are not known here"),
    *(WeightsEntry(
        f"sgraf-{data}-{module.lower()}",
        f"SGRAF {module} trained on {'COCO' if data == 'coco' else 'Flickr30k'} (authors' release)",
        "matcher", ("model_best.pth.tar",), "https://github.com/Paranioar/SGRAF",
        "evaluate --checkpoint (SGR + SAF together = SGRAF)",
        host=f"Google Drive zip {zipname} linked from the SGRAF README",
        note=f"the {module} model's model_best.pth.tar inside {zipname} (python3.6-branch models)")
      for data, zipname in (("coco", "MSCOCO_SGRAF"), ("f30k", "Flickr30K_SGRAF"))
      for module in ("SGR", "SAF")),
    WeightsEntry(
        "bert-base-uncased", "BERT base uncased (TERN / TERAN text branch; first 6 layers used)",
        "text", ("config.json", "model.safetensors", "vocab.txt"),
        "https://huggingface.co/google-bert/bert-base-uncased", "train tern|teran --bert",
        hub_repo="bert-base-uncased",
        allow_patterns=("config.json", "*.safetensors", "vocab.txt", "tokenizer.json",
                        "tokenizer_config.json"),
        note="the WordPiece vocabulary itself ships with itmflow; only training needs the weights"),
)}


def get_entry(name: str) -> WeightsEntry | None:
    """The catalog entry called ``name``, or whose hub id is ``name`` (``None`` if there is none)."""
    if name in CATALOG:
        return CATALOG[name]
    return next((e for e in CATALOG.values() if e.hub_repo and e.hub_repo == name), None)


# ----------------------------------------------------------------------------------- caches


def cache_dir() -> Path:
    """``$ITMFLOW_CACHE/weights`` or ``~/.cache/itmflow/weights`` (URL downloads, hand-placed files)."""
    base = os.environ.get("ITMFLOW_CACHE") or os.path.join(Path.home(), ".cache", "itmflow")
    return Path(base).expanduser() / "weights"


def hub_cache_dir() -> Path:
    """Hugging Face's hub cache, read from the environment now (not when huggingface_hub loaded)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    try:
        from huggingface_hub import constants

        return Path(constants.HF_HUB_CACHE)
    except ImportError:
        return Path.home() / ".cache" / "huggingface" / "hub"


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) as set now."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def entry_dir(entry: WeightsEntry) -> Path:
    """Where a non-hub entry's files live in the cache (download or by hand)."""
    return cache_dir() / entry.name


def is_url(text: str) -> bool:
    return bool(_URL.match(text))


def is_hub_id(text: str) -> bool:
    return bool(_HUB_ID.match(text)) and not text.startswith((".", "~"))


def _url_target(url: str, to: Path | None) -> Path:
    name = urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1]
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name) or "weights"
    if to is not None:
        return Path(to) / name
    return cache_dir() / "url" / hashlib.sha256(url.encode()).hexdigest()[:16] / name


def cached_path(entry: WeightsEntry) -> Path | None:
    """The local copy of ``entry`` if one is in the cache (no network)."""
    if entry.hub_repo:
        return _hub_cached(entry.hub_repo, list(entry.allow_patterns or entry.files),
                           _hub_required(entry))
    for base in (entry_dir(entry), *([_url_target(entry.url, None).parent] if entry.url else [])):
        path = base / entry.files[0]
        if path.is_file():
            return path
    return None


# ----------------------------------------------------------------------------------- HTTP


def _check_sha256(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    value = sha256.strip().lower()
    if not _HEX64.match(value):
        raise ConfigError(f"--sha256 {sha256!r} is not 64 hexadecimal digits")
    return value


def _remove_empty_dirs(path: Path, stop: Path) -> None:
    """Remove ``path`` and its parents while empty, up to (not including) ``stop``."""
    try:
        path.relative_to(stop)
    except ValueError:
        return
    while path != stop:
        try:
            path.rmdir()
        except OSError:
            return
        path = path.parent


def download_url(url: str, dest: str | os.PathLike[str], *, sha256: str | None = None,
                 progress: Progress | None = None, retries: int = 3,
                 timeout: float = 30.0) -> Path:
    """Fetch ``url`` to ``dest``; resume from ``dest.part`` with ``Range``; check ``sha256``.

    An existing ``dest`` is kept (checked against ``sha256`` when given). A transfer that stops
    early is resumed up to ``retries`` times in this call (and in a later call: the ``.part`` file
    stays). A wrong sha256 raises :class:`DownloadError` and deletes the download (``.part``
    included), keeping nothing.
    """
    want = _check_sha256(sha256)
    target = Path(dest)
    part = target.with_name(target.name + ".part")
    created = not target.parent.exists()
    if target.is_file():
        if want and sha256_file(target) != want:
            raise DownloadError(f"{target} is already there but its sha256 is not {want}; delete "
                                "it to download again")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    attempts = 0
    try:
        while True:
            try:
                _fetch_once(url, part, progress=progress, timeout=timeout)
                break
            except _Interrupted as exc:
                attempts += 1
                if attempts > retries:
                    raise DownloadError(f"download of {url} stopped at {exc.done} bytes "
                                        f"({exc.reason}); run the command again to resume from "
                                        f"{part}") from None
        got = sha256_file(part)
        if want and got != want:
            part.unlink(missing_ok=True)
            if created:
                _remove_empty_dirs(target.parent, cache_dir())
            raise DownloadError(f"sha256 mismatch for {url}: expected {want}, got {got}; the "
                                "download was deleted")
        commit_temp(part, target)  # the .part file is resumable, so it is not atomic_path's temp
    except (DownloadError, KeyboardInterrupt):
        raise
    except urllib.error.HTTPError as exc:
        part.unlink(missing_ok=True)
        if created:
            _remove_empty_dirs(target.parent, cache_dir())
        raise DownloadError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", None) or exc
        if created and not part.exists():
            _remove_empty_dirs(target.parent, cache_dir())
        raise DownloadError(f"cannot download {url}: {reason}") from None
    return target


class _Interrupted(Exception):
    def __init__(self, done: int, reason: str):
        super().__init__(reason)
        self.done = done
        self.reason = reason


def _fetch_once(url: str, part: Path, *, progress: Progress | None, timeout: float) -> None:
    """One request: append to ``part`` from its current size; raise :class:`_Interrupted` if the
    server sent less than it announced."""
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "itmflow",
                                                   "Accept-Encoding": "identity"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - user's URL
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:
            return  # the .part is already complete: the sha256 check decides
        raise
    with response:
        status = response.status
        length = response.headers.get("Content-Length")
        expected = int(length) if length is not None and length.isdigit() else None
        if have and status == 206:
            match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != have:
                raise DownloadError(f"{url}: the server answered bytes={have}- with "
                                    f"Content-Range {response.headers.get('Content-Range')!r}")
            mode, done = "ab", have
        else:  # 200: no range support (or a fresh start): begin again
            mode, done = "wb", 0
        total = done + expected if expected is not None else None
        received = 0
        with open(part, mode) as handle:
            if progress:
                progress(done, total)
            while True:
                try:
                    block = response.read(_CHUNK)
                except (OSError, http.client.HTTPException) as exc:
                    handle.flush()
                    raise _Interrupted(done + received, f"{type(exc).__name__}: {exc}") from None
                if not block:
                    break
                handle.write(block)
                received += len(block)
                if progress:
                    progress(done + received, total)
        if expected is not None and received < expected:
            raise _Interrupted(done + received, f"connection closed after {received} of "
                                                f"{expected} bytes")


# ----------------------------------------------------------------------------------- hub


def _hub_required(entry: WeightsEntry) -> list[list[str]]:
    if entry.name == "bert-base-uncased":
        return BERT_REQUIRED
    return [[f] for f in entry.files]


def _complete(directory: Path, required: list[list[str]]) -> bool:
    return all(any((directory / name).is_file() for name in alternatives)
               for alternatives in required)


def _hub_cached(repo: str, patterns: list[str], required: list[list[str]]) -> Path | None:
    """The snapshot directory of ``repo`` in the hub cache if it holds ``required`` (offline)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return None
    try:
        path = Path(snapshot_download(repo, allow_patterns=patterns, cache_dir=hub_cache_dir(),
                                      local_files_only=True))
    except Exception:  # not cached (LocalEntryNotFoundError and friends)
        return None
    return path if _complete(path, required) else None


def _hub_reachable(timeout: float = 2.0) -> bool:
    """Can a TCP connection to the hub endpoint be opened within ``timeout`` (DNS included)?"""
    parts = urllib.parse.urlsplit(hub_endpoint())
    host = parts.hostname or "huggingface.co"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.2)  # a hanging DNS lookup must not hold the command
    return bool(result and result[0])


def hub_download(repo: str, patterns: list[str], *, to: str | os.PathLike[str] | None = None,
                 required: list[list[str]] | None = None) -> Path:
    """Fetch the files of hub ``repo`` matching ``patterns`` (huggingface_hub shows progress);
    returns the snapshot directory (or ``to``)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise DownloadError(f"{repo!r} is a Hugging Face hub id; install huggingface_hub "
                            "(pip install 'itmflow[hub]') to fetch it") from None
    if hub_offline():
        cached = None if to is not None else _hub_cached(repo, patterns, required or [])
        if cached is not None:
            return cached
        raise DownloadError(f"{repo!r} is not in the Hugging Face cache ({hub_cache_dir()}) and "
                            "HF_HUB_OFFLINE is set; fetch it on a machine with network "
                            f"(itmflow weights download {repo}) and copy the cache over")
    kwargs: dict[str, Any] = {"allow_patterns": patterns, "endpoint": hub_endpoint()}
    if to is not None:
        kwargs["local_dir"] = str(to)
    else:
        kwargs["cache_dir"] = str(hub_cache_dir())
    try:
        path = Path(snapshot_download(repo, **kwargs))
    except Exception as exc:  # network, auth, missing repo: say which, in one line
        text = str(exc).strip().splitlines()
        raise DownloadError(f"cannot download {repo!r} from the Hugging Face hub: "
                            f"{type(exc).__name__}: {text[0] if text else ''}") from None
    if required and not _complete(path, required):
        names = " + ".join("/".join(a) for a in required)
        raise DownloadError(f"{repo!r} was fetched to {path} but lacks some of {names}")
    return path


# ----------------------------------------------------------------------------------- API


def _manual_message(entry: WeightsEntry) -> str:
    where = entry_dir(entry) / entry.files[0]
    return (f"{entry.name} cannot be downloaded by itmflow: {entry.files[0]} is on "
            f"{entry.host or 'the project page'}; get it from {entry.page}, then pass its path "
            f"(or put it at {where})")


def download(spec: str, *, to: str | os.PathLike[str] | None = None, sha256: str | None = None,
             progress: Progress | None = None) -> Path:
    """``itmflow weights download``: a catalog NAME, an ``http(s)://`` URL or a hub id → local path.

    URLs and catalog URL entries land in :func:`cache_dir` (or ``to``); hub ids in Hugging Face's
    cache (or ``to``). A catalog entry's known sha256 is checked; ``sha256`` overrides it.
    """
    want = _check_sha256(sha256)
    entry = get_entry(spec)
    if entry is not None:
        if entry.hub_repo:
            path = hub_download(entry.hub_repo, list(entry.allow_patterns or entry.files), to=to,
                                required=_hub_required(entry))
            _verify_hub_file(path / entry.files[0], want or entry.sha256)
            return path
        if entry.url:
            dest = Path(to) if to is not None else entry_dir(entry)
            return download_url(entry.url, dest / entry.files[0], sha256=want or entry.sha256,
                                progress=progress)
        have = cached_path(entry)
        if have is not None and to is None:
            _verify_hub_file(have, want or entry.sha256)
            return have
        raise DownloadError(_manual_message(entry))
    if is_url(spec):
        return download_url(spec, _url_target(spec, Path(to) if to is not None else None),
                            sha256=want, progress=progress)
    if is_hub_id(spec):
        return hub_download(spec, ["*"], to=to)
    raise DownloadError(f"{spec!r} is not a catalog name (itmflow weights list), an http(s) URL "
                        "or a Hugging Face hub id (owner/name)")


def _verify_hub_file(path: Path, want: str | None) -> None:
    if want and path.is_file():
        got = sha256_file(path)
        if got != want:
            raise DownloadError(f"sha256 mismatch for {path}: expected {want}, got {got}")


def resolve(spec: str | os.PathLike[str], *, fetch: bool = True,
            progress: Progress | None = None) -> Path | None:
    """A weights argument as a local path: an existing path as is; a catalog NAME from the cache
    (downloaded first where the entry allows it and ``fetch``); a URL through :func:`download_url`;
    a hub id through the hub cache (downloaded unless offline). ``None`` if ``spec`` is none of
    these (the caller reports it in its own words)."""
    text = str(spec)
    path = Path(text).expanduser()
    if path.exists():
        return path
    entry = get_entry(text)
    if entry is not None:
        have = cached_path(entry)
        if have is not None and entry.archive:
            raise DownloadError(f"{entry.name} is an archive ({have}): extract it and pass the "
                                f"file inside ({entry.note})")
        if have is not None:
            return have
        if not entry.downloadable:
            raise DownloadError(_manual_message(entry))
        if not fetch:
            raise DownloadError(f"{entry.name} is not in the cache; run `itmflow weights "
                                f"download {entry.name}` first")
        return download(entry.name, progress=progress)
    if is_url(text):
        return download_url(text, _url_target(text, None), progress=progress)
    if is_hub_id(text) and not text.startswith("/"):
        patterns = ["*"]
        cached = _hub_cached(text, patterns, [])
        if cached is not None:
            return cached
        return hub_download(text, patterns)
    return None


def check_checkpoint_source(source: str | os.PathLike[str]) -> None:
    """Refuse a checkpoint argument that is no existing path, no catalog name and no URL (what
    ``trainers.checkpoints.load_model`` accepts), before anything is imported, fetched or loaded."""
    text = str(source)
    if Path(text).exists() or get_entry(text) is not None or is_url(text):
        return
    raise InputFileError(f"checkpoint {Path(text)} does not exist")


def resolve_hub_dir(spec: str, patterns: list[str], required: list[list[str]]) -> Path:
    """A hub id's snapshot directory holding ``required`` (cache first, then the hub)."""
    cached = _hub_cached(spec, patterns, required)
    if cached is not None:
        return cached
    return hub_download(spec, patterns, required=required)


# ----------------------------------------------------------------------------------- BERT

#: what a BERT directory must hold: each inner list is a set of alternatives
BERT_REQUIRED = [["config.json"], ["model.safetensors", "pytorch_model.bin"],
                 ["vocab.txt", "tokenizer.json"]]
BERT_PATTERNS = ["config.json", "*.safetensors", "pytorch_model.bin", "vocab.txt",
                 "tokenizer.json", "tokenizer_config.json"]
BERT_HOLDS = ("config.json + model.safetensors (or pytorch_model.bin) + vocab.txt "
              "(or tokenizer.json)")


def _bert_help() -> str:
    return (f"pass --bert DIR, a local BERT directory holding {BERT_HOLDS} (get one on a machine "
            "with network: itmflow weights download bert-base-uncased --to DIR)")


def _looks_like_path(text: str) -> bool:
    """``./x``, ``/x``, ``~/x``, ``a/b/c`` or a Windows path: meant as a directory, not a hub id."""
    return text.startswith(("/", ".", "~")) or text.count("/") > 1 or "\\" in text


def resolve_bert(spec: str | os.PathLike[str]) -> Path:
    """A local BERT directory for ``spec`` (``--bert DIR`` or a hub id such as bert-base-uncased).

    A directory is checked for :data:`BERT_REQUIRED`; a hub id is looked up in the Hugging Face
    cache and fetched only when the hub answers. Offline (``HF_HUB_OFFLINE``) or unreachable, it
    fails at once with one line naming ``--bert DIR``; no retries.
    """
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        missing = [" or ".join(alts) for alts in BERT_REQUIRED
                   if not any((path / a).is_file() for a in alts)]
        if missing:
            raise ConfigError(f"BERT directory {path} lacks {', '.join(missing)}; a valid --bert "
                              f"DIR holds {BERT_HOLDS}")
        return path
    if path.exists():
        raise ConfigError(f"--bert {path} is a file; give a directory holding {BERT_HOLDS}")
    entry = get_entry(text)
    repo = entry.hub_repo if entry is not None and entry.hub_repo else text
    if _looks_like_path(text) or not (is_hub_id(repo) or re.match(r"^[\w.-]+$", repo)):
        raise ConfigError(f"--bert {text}: directory does not exist; {_bert_help()}")
    cached = _hub_cached(repo, BERT_PATTERNS, BERT_REQUIRED)
    if cached is not None:
        return cached
    what = f"BERT weights {text!r} are not in the Hugging Face cache ({hub_cache_dir()})"
    if "/" in text:
        what = (f"--bert {text}: no such directory, and the BERT weights of hub id {text!r} are "
                f"not in the Hugging Face cache ({hub_cache_dir()})")
    if hub_offline():
        raise ConfigError(f"{what} and HF_HUB_OFFLINE is set; {_bert_help()}")
    if not _hub_reachable():
        raise ConfigError(f"{what} and the hub ({hub_endpoint()}) cannot be reached; {_bert_help()}")
    try:
        return hub_download(repo, BERT_PATTERNS, required=BERT_REQUIRED)
    except DownloadError as exc:
        raise ConfigError(f"{exc}; {_bert_help()}") from None


__all__ = ["BERT_REQUIRED", "CATALOG", "DownloadError", "WeightsEntry", "cache_dir", "cached_path",
           "check_checkpoint_source", "download", "download_url", "get_entry", "hub_cache_dir", "hub_download", "hub_offline",
           "resolve", "resolve_bert"]
