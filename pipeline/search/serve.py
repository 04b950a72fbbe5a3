"""``serve``: one process that keeps the model and the vector indexes loaded and answers queries over
HTTP (a JSON API and a web page). ``itmflow serve`` wraps it.

    from pipeline.search.serve import ServeConfig, serve

    serve(ServeConfig(embeddings="emb/coco", regions="stores/coco-regions", images="coco/"))

:func:`build_app` returns the FastAPI application without starting a server: run it with any ASGI
server, or hand it to Ray Serve (``@serve.ingress(build_app(config))``, see the guide). Given no
loaded :class:`SearchService`, the app loads one when it starts (its lifespan), so building it is
cheap and it pickles small.

Safety: the default host is 127.0.0.1; image files are read only through the store's ``file`` field
joined under the images root with :func:`itmflow.files.safe_join` (no ``..``, no absolute paths, no
symlink leaving the root); nothing lists a directory; every bad request gets a 4xx JSON body
``{"error": ..., "field": ..., "status": ...}`` naming the field.
"""

import contextlib
import mimetypes
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from itmflow.errors import ConfigError, ItmflowError

if TYPE_CHECKING:
    from fastapi import FastAPI

    from pipeline.search.embeddings import EmbeddingDir, SideIndex

PathLike = str | os.PathLike[str]
STATIC_DIR = Path(__file__).resolve().parent / "static"

MAX_QUERY_CHARS = 500
"""Longest text query accepted (captions are a sentence; BERT sees 512 tokens at most)."""
MAX_ID_CHARS = 512
MAX_K = 1000
"""Most results one query ranks (``k``); pages (``offset``/``limit``) are cut from them."""
MAX_LIMIT = 100
MAX_BODY_BYTES = 64 * 1024
FILES_CHECKED_AT_START = 16


class RequestError(ItmflowError):
    """A request the service cannot answer: names the ``field`` and carries the HTTP ``status``."""

    def __init__(self, message: str, *, field: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.field = field
        self.status = status


@dataclass
class ServeConfig:
    """What to serve and where (defaults: ``itmflow serve``'s)."""

    embeddings: PathLike
    """Embedding directory written by ``itmflow embed``."""
    regions: PathLike | None = None
    """Region store (boxes, labels); default: the one recorded by ``embed``."""
    images: PathLike | None = None
    """Images root the store's ``file`` paths are relative to; default: the one recorded by ``embed``."""
    host: str = "127.0.0.1"
    port: int = 8000
    model: PathLike | None = None
    """Model that encodes text queries; default: the one recorded by ``embed``."""
    tokenizer: str | None = None
    """BERT tokenizer directory or id; default: the model's."""
    device: str = "auto"
    threads: int | None = 1
    """torch intra-op threads (process-wide; None: torch's default). One thread per query, with
    concurrent queries encoded in parallel, keeps latency steady on a busy machine: with 2 threads
    per query on a loaded 2-core box a query took 0.4-0.9 s instead of 0.1 s."""

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ServeConfig":
        """A config from a mapping (Ray Serve application arguments, YAML); unknown keys refused."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown serve option(s) {unknown}; known: {sorted(known)}")
        return cls(**values)


def _resolve(path: PathLike | None, recorded: str | None, base: Path) -> tuple[Path | None, bool]:
    """``(path, explicit)``: the given path, else the recorded one relative to ``base``."""
    if path is not None:
        return Path(path), True
    if recorded:
        return base / recorded, False
    return None, False


@dataclass
class SearchService:
    """The loaded embeddings, text encoder, region store and label lists; answers queries.

    Thread-safe: tokenizing and store reads are serialised with locks; model forwards, faiss
    searches and numpy reads of concurrent requests run in parallel.
    """

    config: ServeConfig
    emb: "EmbeddingDir"
    encoder: Any
    store: Any | None = None
    root: Path | None = None
    vocab: Any | None = None
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        img = self.emb.side("images")
        self.image_ids: list[str] = img.table.column("image_id").to_pylist()
        self.image_files: list[str] = img.table.column("file").to_pylist()
        self.image_pos = {i: n for n, i in enumerate(self.image_ids)}
        self.cap: "SideIndex | None" = self.emb.sides.get("captions")
        self.caption_ids: list[str] = []
        self.caption_images: list[str] = []
        self.caption_texts: list[str] = []
        self.captions_of: dict[str, list[int]] = {}
        if self.cap is not None:
            self.caption_ids = self.cap.table.column("caption_id").to_pylist()
            self.caption_images = self.cap.table.column("image_id").to_pylist()
            self.caption_texts = self.cap.table.column("raw").to_pylist()
            for n, image_id in enumerate(self.caption_images):
                self.captions_of.setdefault(image_id, []).append(n)
        self.caption_pos = {c: n for n, c in enumerate(self.caption_ids)}
        self._store_lock = threading.Lock()
        detector = (self.store.manifest.get("detector") or {}) if self.store is not None else {}
        self.detector_name = detector.get("name")
        self.random_weights = bool((detector.get("settings") or {}).get("random_init"))

    # ----------------------------------------------------------------------------- loading

    @classmethod
    def load(cls, config: ServeConfig) -> "SearchService":
        """Open everything once and check that embeddings, store and images belong together."""
        from pipeline.search.embeddings import EmbeddingDir
        from pipeline.search.query import TextEncoder

        if config.threads:
            import torch

            torch.set_num_threads(int(config.threads))
        emb = EmbeddingDir.open(config.embeddings)
        emb.side("images")
        notes: list[str] = []
        store_path, explicit = _resolve(config.regions, emb.manifest.get("regions"), emb.path)
        store = None
        if store_path is not None and (explicit or (store_path / "manifest.json").is_file()):
            from stores import open_region_store

            store = open_region_store(store_path)
        elif store_path is not None:
            notes.append(f"region store {store_path} recorded by embed is not there: serving "
                         "without regions (pass --regions)")
        root, explicit_root = _resolve(config.images, emb.manifest.get("images_root"), emb.path)
        if root is not None and not root.is_dir():
            if explicit_root:
                raise ConfigError(f"--images {root} is not a folder; pass the images root the "
                                  "store's file paths are relative to")
            notes.append(f"images root {root} recorded by embed is not there: serving without "
                         "pictures (pass --images)")
            root = None
        encoder = TextEncoder(emb, config.model, config.tokenizer, config.device)
        vocab = None
        if store is not None:
            from detectors.base import VGVocab

            vocab = VGVocab.shipped()
        service = cls(config, emb, encoder, store, root, vocab, notes)
        service.check()
        return service

    def check(self) -> None:
        """Raise a one-line :class:`ConfigError` when the embeddings, store and images disagree."""
        where = self.emb.path
        if self.store is not None:
            missing = [i for i in self.image_ids if i not in self.store]
            if missing:
                raise ConfigError(
                    f"{len(missing)} of {len(self.image_ids)} image ids of the embeddings {where} "
                    f"are not in the region store {self.store.path} (first: {missing[0]!r}); pass "
                    "the --regions store the embeddings were made from")
        if self.cap is not None and self.caption_images and not any(
                i in self.image_pos for i in self.captions_of):
            raise ConfigError(f"none of the captions in {where} belongs to an embedded image; "
                              "re-run itmflow embed with the caption store of these images")
        if self.root is not None:
            n = len(self.image_files)
            step = max(1, n // FILES_CHECKED_AT_START)
            sample = [f for f in self.image_files[::step][:FILES_CHECKED_AT_START] if f]
            if sample and not any(self._exists(f) for f in sample):
                raise ConfigError(
                    f"none of {len(sample)} image files checked (e.g. {sample[0]!r}) is under the "
                    f"images root {self.root}; pass --images with the root the store's file paths "
                    "are relative to")

    def _exists(self, rel: str) -> bool:
        from itmflow.files import safe_join

        try:
            return safe_join(self.root, rel, what="image file").is_file()  # type: ignore[arg-type]
        except ItmflowError:
            return False

    # ---------------------------------------------------------------------------- answers

    def info(self) -> dict[str, Any]:
        """What is served: model, counts, whether regions and pictures are available, limits."""
        return {
            "embeddings": self.emb.path.name,
            "model": self.emb.manifest.get("model", {}).get("kind"),
            "images": len(self.image_ids),
            "captions": len(self.caption_ids),
            "regions": self.store is not None,
            "pictures": self.root is not None,
            "detector": self.detector_name,
            "random_weights": self.random_weights,
            "index": {s: e.get("index") for s, e in self.emb.manifest.get("sides", {}).items()},
            "limits": {"max_query_chars": MAX_QUERY_CHARS, "max_k": MAX_K, "max_limit": MAX_LIMIT},
            "notes": list(self.notes),
        }

    def _image_index(self, image_id: str, field_name: str = "image_id") -> int:
        try:
            return self.image_pos[image_id]
        except KeyError:
            raise RequestError(f"unknown image id {image_id[:80]!r}", field=field_name,
                               status=404) from None

    def _caption_index(self, caption_id: str, field_name: str = "caption_id") -> int:
        try:
            return self.caption_pos[caption_id]
        except KeyError:
            raise RequestError(f"unknown caption id {caption_id[:80]!r}", field=field_name,
                               status=404) from None

    def query_vector(self, *, text: str | None = None, image_id: str | None = None,
                     caption_id: str | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """The query's vector ``[1, D]`` and a description of it (exactly one query is given)."""
        given = [n for n, v in (("text", text), ("image_id", image_id), ("caption_id", caption_id))
                 if v is not None]
        if len(given) != 1:
            raise RequestError("give exactly one query: text, image_id or caption_id",
                               field=given[1] if len(given) > 1 else "text", status=422)
        if text is not None:
            if not text.strip():
                raise RequestError("the text query is empty", field="text", status=422)
            if len(text) > MAX_QUERY_CHARS:
                raise RequestError(f"the text query has {len(text)} characters, at most "
                                   f"{MAX_QUERY_CHARS} are accepted", field="text", status=422)
            return self.encoder(text), {"kind": "text", "text": text}
        if image_id is not None:
            n = self._image_index(image_id)
            return (self.emb.side("images").vectors[n][None],
                    {"kind": "image", "image_id": image_id})
        if self.cap is None:
            raise RequestError("no captions were embedded: caption queries are not available",
                               field="caption_id", status=404)
        n = self._caption_index(caption_id or "")
        return self.cap.vectors[n][None], {"kind": "caption", "caption_id": caption_id,
                                            "text": self.caption_texts[n],
                                            "image_id": self.caption_images[n]}

    def best_caption(self, image_id: str, q: np.ndarray) -> dict[str, Any] | None:
        """The image's caption closest to the query vector (the page highlights it)."""
        rows = self.captions_of.get(image_id)
        if not rows or self.cap is None:
            return None
        scores = self.cap.vectors[rows] @ q.reshape(-1)
        best = int(np.argmax(scores))
        n = rows[best]
        return {"caption_id": self.caption_ids[n], "text": self.caption_texts[n],
                "score": round(float(scores[best]), 6)}

    def search(self, *, text: str | None = None, image_id: str | None = None,
               caption_id: str | None = None, target: str | None = None, k: int = 100,
               offset: int = 0, limit: int = 20) -> dict[str, Any]:
        """Rank the target side for the query: the top ``k``, page ``[offset, offset + limit)``."""
        if not 1 <= k <= MAX_K:
            raise RequestError(f"k must be between 1 and {MAX_K}, got {k}", field="k", status=422)
        if offset < 0:
            raise RequestError(f"offset must be >= 0, got {offset}", field="offset", status=422)
        if not 1 <= limit <= MAX_LIMIT:
            raise RequestError(f"limit must be between 1 and {MAX_LIMIT}, got {limit}",
                               field="limit", status=422)
        q, query = self.query_vector(text=text, image_id=image_id, caption_id=caption_id)
        if target is None:
            target = "captions" if image_id is not None and self.cap is not None else "images"
        if target not in ("images", "captions"):
            raise RequestError(f"target must be images or captions, got {target!r}",
                               field="target", status=422)
        if target == "captions" and self.cap is None:
            raise RequestError("no captions were embedded (pass --captions to itmflow embed)",
                               field="target", status=404)
        side = self.emb.side(target)
        scores, idx = side.search(q, k)
        ranked = [(float(s), int(i)) for s, i in zip(scores[0], idx[0]) if i >= 0]
        page = ranked[offset:offset + limit]
        results: list[dict[str, Any]] = []
        for rank, (score, i) in enumerate(page, start=offset + 1):
            if target == "images":
                img = self.image_ids[i]
                hit: dict[str, Any] = {"rank": rank, "score": round(score, 6), "image_id": img,
                                       "file": self.image_files[i]}
                match = self.best_caption(img, q)
                if match is not None:
                    hit["match"] = match
            else:
                img = self.caption_images[i]
                hit = {"rank": rank, "score": round(score, 6), "caption_id": self.caption_ids[i],
                       "text": self.caption_texts[i], "image_id": img,
                       "image_embedded": img in self.image_pos}
                if image_id is not None:
                    hit["of_query_image"] = img == image_id
            results.append(hit)
        return {"query": query, "target": target, "k": k, "total": len(ranked), "offset": offset,
                "limit": limit, "results": results}

    def image(self, image_id: str) -> dict[str, Any]:
        """An image's file, size, regions (boxes, labels, confidences) and captions."""
        n = self._image_index(image_id)
        out: dict[str, Any] = {"image_id": image_id, "file": self.image_files[n],
                               "random_weights": self.random_weights,
                               "captions": [{"caption_id": self.caption_ids[c],
                                             "text": self.caption_texts[c]}
                                            for c in self.captions_of.get(image_id, [])],
                               "regions": None, "width": None, "height": None}
        if self.store is not None:
            with self._store_lock:
                row = self.store.get(image_id)
            out.update(width=_int(row.get("width")), height=_int(row.get("height")),
                       regions=self._regions(row))
        return out

    def _regions(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        boxes = np.asarray(row.get("boxes") if row.get("boxes") is not None else np.zeros((0, 4)))
        n = len(boxes)

        def col(key: str, fill: float) -> np.ndarray:
            value = row.get(key)
            return np.asarray(value) if value is not None else np.full(n, fill)

        obj_ids, obj_conf = col("object_ids", -1), col("object_conf", np.nan)
        attr_ids, attr_conf = col("attr_ids", -1), col("attr_conf", np.nan)
        objects = self.vocab.objects if self.vocab is not None else ()
        attributes = self.vocab.attributes if self.vocab is not None else ()
        regions = []
        for r in range(n):
            oid, aid = int(obj_ids[r]), int(attr_ids[r])
            regions.append({
                "box": [round(float(v), 2) for v in boxes[r][:4]],
                "object_id": oid, "object": _label(objects, oid),
                "object_conf": _num(obj_conf[r]),
                "attribute_id": aid, "attribute": _label(attributes, aid),
                "attribute_conf": _num(attr_conf[r])})
        return regions

    def image_path(self, image_id: str) -> Path:
        """The image file, confined to the images root (raises a 403/404 :class:`RequestError`)."""
        from itmflow.files import safe_join

        n = self._image_index(image_id)
        if self.root is None:
            raise RequestError("no images root: start the server with --images", field="image_id",
                               status=404)
        rel = self.image_files[n]
        if not rel:
            raise RequestError(f"image {image_id!r} has no file in the store", field="image_id",
                               status=404)
        try:
            path = safe_join(self.root, rel, what=f"file of image {image_id!r}")
        except ItmflowError as exc:
            raise RequestError(str(exc).replace(str(self.root), "the images root"),
                               field="image_id", status=403) from None
        if not path.is_file():
            raise RequestError(f"file {rel!r} of image {image_id!r} is not under the images root",
                               field="image_id", status=404)
        return path

    def caption(self, caption_id: str) -> dict[str, Any]:
        n = self._caption_index(caption_id)
        return {"caption_id": caption_id, "text": self.caption_texts[n],
                "image_id": self.caption_images[n]}


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _num(value: Any) -> float | None:
    v = float(value)
    return None if not np.isfinite(v) else round(v, 4)


def _label(names: tuple[str, ...], i: int) -> str | None:
    if 0 <= i < len(names):
        return names[i].split(",")[0]
    return None if i < 0 else f"#{i}"


# ------------------------------------------------------------------------------------ the app

def _error_body(message: str, field_name: str | None, status: int) -> dict[str, Any]:
    return {"error": message, "field": field_name, "status": status}


def _validation_field(err: dict[str, Any]) -> str | None:
    loc = [str(p) for p in err.get("loc", ()) if not isinstance(p, int)]
    names = [p for p in loc if p not in ("body", "query", "path")]
    return names[-1] if names else (loc[0] if loc else None)


def build_app(config: ServeConfig | dict[str, Any], service: "SearchService | None" = None
              ) -> "FastAPI":
    """The FastAPI application (JSON API under ``/api``, the page at ``/``, ``/openapi.json``).

    Without ``service`` the app loads one at start-up (ASGI lifespan) — the form Ray Serve and
    other ASGI servers use; :func:`serve` loads it first so start-up errors are one line.
    """
    from typing import Annotated, Literal

    from fastapi import FastAPI, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles
    from pydantic import BaseModel, ConfigDict, Field
    from starlette.exceptions import HTTPException as StarletteHTTPException

    cfg = ServeConfig.from_dict(config) if isinstance(config, dict) else config
    holder: dict[str, SearchService] = {}
    lock = threading.Lock()
    if service is not None:
        holder["service"] = service

    def svc() -> SearchService:
        if "service" not in holder:
            with lock:
                if "service" not in holder:
                    holder["service"] = SearchService.load(cfg)
        return holder["service"]

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        import anyio

        if "service" not in holder:
            await anyio.to_thread.run_sync(svc)
        yield

    from itmflow import __version__

    app = FastAPI(title="itmflow search", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None,   # their pages load scripts from a CDN
                  redirect_slashes=False,
                  description="Query an embedding directory (text → images, image → captions, "
                              "image → images, caption → images), and see images with their "
                              "regions and captions.")

    class SearchRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        text: str | None = Field(None, max_length=MAX_QUERY_CHARS,
                                 description="Text query (encoded by the model).")
        image_id: str | None = Field(None, max_length=MAX_ID_CHARS,
                                     description="Image query: its stored vector.")
        caption_id: str | None = Field(None, max_length=MAX_ID_CHARS,
                                       description="Caption query: its stored vector.")
        target: Literal["images", "captions"] | None = Field(
            None, description="What to rank (default: captions for an image query, else images).")
        k: int = Field(100, ge=1, le=MAX_K, description="How many results to rank.")
        offset: int = Field(0, ge=0, le=MAX_K, description="First result of the page (0-based).")
        limit: int = Field(20, ge=1, le=MAX_LIMIT, description="Results in the page.")

    def _answer(req: SearchRequest) -> dict[str, Any]:
        return svc().search(text=req.text, image_id=req.image_id, caption_id=req.caption_id,
                            target=req.target, k=req.k, offset=req.offset, limit=req.limit)

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse(_error_body(str(exc), exc.field, exc.status), status_code=exc.status)

    @app.exception_handler(ItmflowError)
    async def _itmflow_error(request: Request, exc: ItmflowError) -> JSONResponse:
        return JSONResponse(_error_body(str(exc), None, 400), status_code=400)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        if first.get("type") == "json_invalid":
            msg = f"malformed JSON body: {first.get('ctx', {}).get('error', 'cannot parse')}"
            return JSONResponse(_error_body(msg, "body", 400), status_code=400)
        name = _validation_field(first)
        msg = f"{name}: {first.get('msg', 'invalid value')}"
        return JSONResponse(_error_body(msg, name, 422), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(_error_body(str(exc.detail), None, exc.status_code),
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        import logging

        logging.getLogger("itmflow.serve").exception("unexpected error on %s", request.url.path)
        return JSONResponse(_error_body(f"internal error: {exc.__class__.__name__}", None, 500),
                            status_code=500)

    @app.middleware("http")
    async def _guard(request: Request, call_next):  # noqa: ANN001, ANN202
        length = request.headers.get("content-length")
        if length is not None:
            try:
                too_big = int(length) > MAX_BODY_BYTES
            except ValueError:
                return JSONResponse(_error_body("bad Content-Length", "body", 400), status_code=400)
            if too_big:
                return JSONResponse(_error_body(f"request body over {MAX_BODY_BYTES} bytes",
                                                "body", 413), status_code=413)
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; object-src 'none'; frame-ancestors 'none'")
        return response

    @app.get("/api/info", summary="What is served")
    def info() -> dict[str, Any]:
        return svc().info()

    @app.get("/api/health", summary="Liveness")
    def health() -> dict[str, Any]:
        return {"ok": True, "loaded": "service" in holder}

    @app.get("/api/search", summary="Search (query parameters)")
    def search_get(req: Annotated[SearchRequest, Query()]) -> dict[str, Any]:
        """text → images, image → captions / images, caption → images / captions; ranked by
        cosine, ``k`` best, paged with ``offset``/``limit``."""
        return _answer(req)

    @app.post("/api/search", summary="Search (JSON body)")
    def search_post(req: SearchRequest) -> dict[str, Any]:
        """The same as ``GET /api/search`` with a JSON body."""
        return _answer(req)

    @app.get("/api/images/{image_id:path}/file", summary="The image file",
             response_class=FileResponse)
    def image_file(image_id: str) -> FileResponse:
        path = svc().image_path(image_id)
        media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if not media.startswith("image/") or media == "image/svg+xml":
            media = "application/octet-stream"
        return FileResponse(path, media_type=media, headers={
            "Content-Security-Policy": "default-src 'none'; sandbox",
            "Cache-Control": "private, max-age=3600"})

    @app.get("/api/images/{image_id:path}", summary="An image: regions and captions")
    def image(image_id: str) -> dict[str, Any]:
        return svc().image(image_id)

    @app.get("/api/captions/{caption_id:path}", summary="A caption")
    def caption(caption_id: str) -> dict[str, Any]:
        return svc().caption(caption_id)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR, html=False), name="static")
    app.state.config = cfg
    app.state.service = svc
    return app


# ---------------------------------------------------------------------------------- running

def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@contextlib.contextmanager
def running(app: Any, host: str = "127.0.0.1", port: int = 0, *, log_level: str = "warning"
            ) -> Iterator[str]:
    """Run ``app`` with uvicorn in a background thread; yields its base URL (``port=0``: a free
    port). For tests, benchmarks and notebooks; :func:`serve` runs in the foreground."""
    import time

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, name="itmflow-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive():
            raise ConfigError("the search server stopped while starting (see the log above)")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise ConfigError("the search server did not start within 120 s")
        time.sleep(0.02)
    sock = server.servers[0].sockets[0].getsockname()
    try:
        yield f"http://{host}:{sock[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def serve(config: ServeConfig, *, console: Any | None = None) -> None:
    """Load everything (errors are one line), then serve until interrupted."""
    import uvicorn
    from rich.console import Console

    console = console or Console(stderr=True)
    service = SearchService.load(config)
    info = service.info()
    for note in service.notes:
        console.print(f"[yellow]note:[/] {note}")
    if service.random_weights:
        console.print("[bold red]the region store was made with a random-weights detector: its "
                      "regions and labels are meaningless[/]")
    if not _is_loopback(config.host):
        console.print(f"[bold yellow]listening on {config.host}: anyone who can reach this "
                      "address can query the collection and read its images (no authentication)[/]")
    console.print(f"serving {info['images']} images, {info['captions']} captions "
                  f"({info['model']}) at http://{config.host}:{config.port}/")
    app = build_app(config, service=service)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning")


__all__ = ["MAX_K", "MAX_LIMIT", "MAX_QUERY_CHARS", "RequestError", "SearchService", "ServeConfig",
           "build_app", "running", "serve"]

