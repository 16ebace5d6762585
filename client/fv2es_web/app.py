"""The web page: upload a video, watch it with its emotion timeline under it, download the result.

A FastAPI app that talks gRPC to the FV2ES server through the client library (`fv2es_client`), the
same calls as `fv2es-client`; it holds no model. Bound to 127.0.0.1 by default.

    fv2es-web [--url 127.0.0.1:8001] [--host 127.0.0.1] [--port 8080]   # next to a running server
    fv2es-web --embedded                                               # starts the embedded tritonserver too (make web)

API (the page's JavaScript uses it; so can scripts):
    GET  /api/limits                 the server's size and duration limits
    POST /api/analyze                multipart field `file`: the result as fv2es-client --json writes it, plus an `id`
    GET  /api/results/<id>.json|csv|png   downloads of an analysed video (the last RESULTS_KEPT are kept)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path

from fastapi import FastAPI, File, HTTPException, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from fv2es_client.cli import Analyzer, describe_error
from fv2es_client.client import DEFAULT_URL, mib
from fv2es_client.output import Outcome, json_document, outcome_to_dict, plot_timelines, write_csv

STATIC = Path(__file__).resolve().parent / "static"
RESULTS_KEPT = 32
UPLOAD_CHUNK_BYTES = 1 << 20
DEFAULT_PORT = 8080
# HTTP status for the client's and the server's error codes; anything else is a bad gateway.
HTTP_STATUS = {"INVALID_ARGUMENT": 422, "INPUT_TOO_LARGE": 413, "UNAVAILABLE": 503, "MODEL_NOT_READY": 503,
               "MODEL_NOT_FOUND": 503, "DEADLINE_EXCEEDED": 504}


class Results:
    """The last RESULTS_KEPT outcomes by id, for the downloads."""

    def __init__(self, kept: int = RESULTS_KEPT):
        self.kept, self.items, self.lock = kept, OrderedDict(), threading.Lock()

    def add(self, outcome: Outcome) -> str:
        key = uuid.uuid4().hex
        with self.lock:
            self.items[key] = outcome
            while len(self.items) > self.kept:
                self.items.popitem(last=False)
        return key

    def get(self, key: str) -> Outcome:
        with self.lock:
            if key not in self.items:
                raise HTTPException(404, f"no result {key!r} (the last {self.kept} are kept)")
            return self.items[key]


def error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def attachment(outcome: Outcome, extension: str) -> dict[str, str]:
    """The download's file name, from the uploaded one (only safe characters: it is a header value)."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(outcome.video).stem)[:80] or "result"
    return {"Content-Disposition": f'attachment; filename="{stem}.fv2es.{extension}"'}


def create_app(url: str = DEFAULT_URL, timeout_s: float | None = None) -> FastAPI:
    app = FastAPI(title="FV2ES", docs_url=None, redoc_url=None, openapi_url=None)
    options = {} if timeout_s is None else {"timeout_s": timeout_s}
    analyzer = Analyzer(url, options)
    results = Results()
    app.state.analyzer = analyzer

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/limits")
    def limits():
        try:
            found = analyzer.client().connect()
        except Exception as exc:  # noqa: BLE001 - the server's own message, for the page to show
            code, message = describe_error(exc, url)
            return error(HTTP_STATUS.get(code, 502), code, message)
        return {"server": url, "max_input_bytes": found.max_input_bytes, "max_duration_s": found.max_duration_s}

    @app.post("/api/analyze")
    async def analyze(file: UploadFile = File(...)):
        try:
            max_bytes = (await run_in_threadpool(analyzer.client().connect)).max_input_bytes
        except Exception as exc:  # noqa: BLE001
            code, message = describe_error(exc, url)
            return error(HTTP_STATUS.get(code, 502), code, message)
        name = Path(file.filename or "upload").name
        fd, path = tempfile.mkstemp(prefix="fv2es-web-", suffix=Path(name).suffix[:16])
        try:
            size = 0
            with os.fdopen(fd, "wb") as out:  # streamed to disk, never more than the limit
                while chunk := await file.read(UPLOAD_CHUNK_BYTES):
                    size += len(chunk)
                    if size > max_bytes:
                        return error(413, "INPUT_TOO_LARGE", f"{name} is over the server's limit of "
                                     f"{mib(max_bytes)} ({max_bytes} bytes): not sent")
                    out.write(chunk)
            if size == 0:
                return error(422, "EMPTY_FILE", f"{name} is empty")
            outcome = await run_in_threadpool(analyzer, path)
        finally:
            Path(path).unlink(missing_ok=True)
        outcome.video = name
        if not outcome.ok:
            return error(HTTP_STATUS.get(outcome.error_code, 502), outcome.error_code,
                         outcome.error_message.replace(path, name))
        return {"id": results.add(outcome), **outcome_to_dict(outcome)}

    @app.get("/api/results/{key}.json")
    def download_json(key: str):
        outcome = results.get(key)
        return JSONResponse(json_document([outcome], {"url": url}), headers=attachment(outcome, "json"))

    @app.get("/api/results/{key}.csv")
    def download_csv(key: str):
        outcome, out = results.get(key), io.StringIO()
        write_csv([outcome], out)
        return Response(out.getvalue(), media_type="text/csv", headers=attachment(outcome, "csv"))

    @app.get("/api/results/{key}.png")
    def download_png(key: str):
        outcome = results.get(key)
        with tempfile.TemporaryDirectory(prefix="fv2es-web-") as tmp:
            target = Path(tmp) / "timeline.png"
            if not plot_timelines([outcome], target):
                raise HTTPException(404, "the result has no segments to plot")
            return Response(target.read_bytes(), media_type="image/png", headers=attachment(outcome, "png"))

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="FV2ES web page: upload a video, see its emotion timeline.")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"gRPC address of the FV2ES server (default {DEFAULT_URL})")
    parser.add_argument("--embedded", action="store_true",
                        help="start the embedded tritonserver on this checkout's model repository and use it (--url is ignored)")
    parser.add_argument("--host", default="127.0.0.1", help="address the page is served on (default %(default)s)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        url = args.url
        if args.embedded:
            from fv2es.tritonserver import EmbeddedServer  # noqa: PLC0415 - only with --embedded

            started = time.monotonic()
            url = stack.enter_context(EmbeddedServer()).grpc_url
            print(f"tritonserver ready in {time.monotonic() - started:.1f} s (gRPC {url})", flush=True)
        print(f"FV2ES web page on http://{args.host}:{args.port}/ (server {url}; Ctrl-C stops)", flush=True)
        uvicorn.run(create_app(url), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
