"""The web page: upload a video, watch it with its emotion timeline under it, download the result.

A FastAPI app that talks gRPC to the FV2ES server through the client library (`fv2es_client`), the
same calls as `fv2es-client`; it holds no model. Bound to 127.0.0.1 by default.

    fv2es-web [--url 127.0.0.1:8001] [--host 127.0.0.1] [--port 8080]   # next to a running server
    fv2es-web --embedded                                               # starts the embedded tritonserver too (make web)
    fv2es-web --host 0.0.0.0 --allowed-host video.lan:8080             # on the network, under that name

API (the page's JavaScript uses it; so can scripts):
    GET  /api/limits                 the server's size and duration limits
    POST /api/analyze                multipart field `file`: the result as fv2es-client --json writes it, plus an `id`
    GET  /api/results/<id>.json|csv|png   downloads of an analysed video (the last RESULTS_KEPT are kept)

Protections (Guard, Upload): the upload is parsed as it arrives and cut off at the server's size
limit (plus MULTIPART_OVERHEAD_BYTES for the form); only the `file` field is kept, in a temporary
file that is removed whatever happens. Requests must name an allowed Host (DNS rebinding); a POST
from a browser must come from the page's own origin (cross-site uploads); every answer carries
SECURITY_HEADERS (no framing, no inline or foreign scripts, no sniffing).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import ipaddress
import os
import re
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect

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
# An upload's body may be this much over the server's limit: the form's boundaries and part headers.
MULTIPART_OVERHEAD_BYTES = 64 << 10
# The Host names a page bound to a loopback (or every) address answers to, with its port; any port
# when create_app is given no list.
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})  # no Origin check; everything else is state-changing
DEFAULT_PORTS = {"http": 80, "https": 443}
# On every answer. The page has no inline script or style attribute (app.js sets styles through the
# DOM, which CSP allows); the video plays from a blob: URL of the chosen file.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; media-src 'self' blob:; object-src 'none'; base-uri 'none'; "
                               "form-action 'self'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
CLOSE = {"Connection": "close"}  # on answers sent before the request's body was read: not read after them


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


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def parse_host(value: str, scheme: str | None = None) -> tuple[str, int | None] | None:
    """A Host header (or an allow-list entry) as (lower-case name, port): the scheme's default port
    when it names none (None without a scheme); None when it is not a plain host[:port]."""
    if not value or not re.fullmatch(r"[A-Za-z0-9._~-]+(:\d+)?|\[[0-9A-Fa-f:.]+\](:\d+)?", value):
        return None
    try:
        split = urlsplit(f"//{value}")
        return split.hostname, split.port or DEFAULT_PORTS.get(scheme)
    except ValueError:
        return None


def page_hosts(host: str, port: int, extra: Iterable[str] = ()) -> list[str]:
    """The Host values the page bound to host:port answers to: that address and port; on a loopback
    or an every-address bind the loopback names with that port too; and `extra` (--allowed-host)."""
    wildcard = host in ("", "0.0.0.0", "::")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name
        loopback = False
    names = [] if wildcard else [f"[{host}]" if ":" in host else host]
    if wildcard or loopback:
        names += [name for name in LOOPBACK_NAMES if name not in names]
    return [f"{name}:{port}" for name in names] + list(extra)


class Guard:
    """ASGI middleware, outside the app's routes: refuses a Host not in `allowed_hosts` (400: a page
    bound to 127.0.0.1 reached under another name is DNS rebinding) and a state-changing request whose
    Origin, or Referer without one, is not the page's own (403: a cross-site upload); puts
    SECURITY_HEADERS on every answer, errors included.

    A POST with neither Origin nor Referer (curl, scripts) passes: browsers send Origin on every
    cross-origin POST (and Referer, which a page may suppress, only when Origin is absent), so a
    request without both does not come from another site's page."""

    def __init__(self, app, allowed_hosts: Iterable[str]):
        self.app = app
        self.allowed = [parsed for parsed in map(parse_host, allowed_hosts) if parsed]
        self.headers = [(name.lower().encode(), value.encode()) for name, value in SECURITY_HEADERS.items()]

    def refusal(self, scope) -> JSONResponse | None:
        headers, scheme = Headers(scope=scope), scope.get("scheme", "http")
        host = headers.get("host", "")
        own = parse_host(host, scheme)
        if own is None or not any(name == own[0] and port in (None, own[1]) for name, port in self.allowed):
            return error(400, "HOST_NOT_ALLOWED", f"this page does not answer to Host {host!r} (a protection "
                         f"against DNS rebinding): start fv2es-web with --allowed-host {host or 'NAME'} to allow it",
                         CLOSE)
        source = headers.get("origin") or headers.get("referer")
        if scope["method"] in SAFE_METHODS or source is None:
            return None
        with contextlib.suppress(ValueError):  # not a URL ("null": a sandboxed frame, a file: page)
            split = urlsplit(source)
            if (split.scheme, split.hostname, split.port or DEFAULT_PORTS.get(split.scheme)) == (scheme, *own):
                return None
        return error(403, "CROSS_ORIGIN", f"refused a {scope['method']} from {source!r}: only this page "
                     f"({scheme}://{host}) may post here", CLOSE)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_with_headers(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = {**message, "headers": [*message.get("headers", []), *self.headers]}
            await send(message)

        refusal = self.refusal(scope)
        if refusal is not None:
            await refusal(scope, receive, send_with_headers)
            return
        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            if not started:  # the 500 with the headers; Starlette's error middleware logs the exception
                await error(500, "INTERNAL", "the page's server failed (see its log)", CLOSE)(
                    scope, receive, send_with_headers)
            raise


class Refused(Exception):
    """An upload refused: the HTTP status, the error code and the message."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class Upload:
    """The `file` field of a multipart/form-data request, parsed as the body arrives (python-multipart's
    streaming parser) into a temporary file in `directory`; the rest of the form is dropped. Stops
    with 413 as soon as the file passes `max_bytes` or the body `max_bytes` + MULTIPART_OVERHEAD_BYTES
    (a Content-Length over that: before reading). `discard()` removes the file; call it in a finally."""

    def __init__(self, max_bytes: int, directory: str | Path | None = None):
        self.max_bytes, self.directory = max_bytes, directory
        self.cap = max_bytes + MULTIPART_OVERHEAD_BYTES
        self.name, self.path, self.out, self.size = "the upload", None, None, 0
        self.pending: list[bytes] = []  # file data parsed, not yet written
        self.part: dict[bytes, bytes] = {}
        self.field = self.value = b""
        self.in_file = self.ended = False

    def too_large(self, what: str, verb: str, overhead: str = "") -> Refused:
        return Refused(413, "INPUT_TOO_LARGE", f"{what} over the server's limit of {mib(self.max_bytes)} "
                       f"({self.max_bytes} bytes{overhead}): {verb}")

    async def receive(self, request: Request) -> None:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.cap:
            raise self.too_large(f"the upload ({length} bytes) is", "not read")
        kind, options = parse_options_header(request.headers.get("content-type"))
        if kind != b"multipart/form-data" or not options.get(b"boundary"):
            raise Refused(400, "BAD_UPLOAD", "send the video as multipart/form-data, in the field `file`")
        try:
            parser = MultipartParser(options[b"boundary"], {
                "on_part_begin": self.on_part_begin, "on_header_field": self.on_header_field,
                "on_header_value": self.on_header_value, "on_header_end": self.on_header_end,
                "on_headers_finished": self.on_headers_finished, "on_part_data": self.on_part_data,
                "on_part_end": self.on_part_end, "on_end": self.on_end})
            received = 0
            async for chunk in request.stream():
                parser.write(chunk[:self.cap - received])  # up to the cap: a file over the limit says so first
                received += len(chunk)
                if received > self.cap:
                    raise self.too_large("the upload is", "cut off", f", plus {MULTIPART_OVERHEAD_BYTES} for the form")
                if sum(map(len, self.pending)) >= UPLOAD_CHUNK_BYTES:
                    await run_in_threadpool(self.flush)
        except FormParserError as exc:
            raise Refused(400, "BAD_UPLOAD", f"the form is not valid multipart/form-data: {exc}") from None
        await run_in_threadpool(self.flush)
        if not self.ended:
            raise Refused(400, "BAD_UPLOAD", "the form ends before its closing boundary")
        if self.path is None:
            raise Refused(422, "NO_FILE", "the form has no `file` field with a file in it")

    def on_part_begin(self) -> None:
        self.part = {}

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.value += data[start:end]

    def on_header_end(self) -> None:
        self.part[self.field.lower()] = self.value
        self.field = self.value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.part.get(b"content-disposition"))
        self.in_file = options.get(b"name") == b"file" and b"filename" in options and self.path is None
        if self.in_file:  # the first file in the field `file`
            self.name = Path(options[b"filename"].decode("utf-8", "replace")).name or "upload"
            fd, self.path = tempfile.mkstemp(prefix="fv2es-web-", suffix=Path(self.name).suffix[:16],
                                             dir=self.directory)
            self.out = os.fdopen(fd, "wb")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.in_file:
            self.size += end - start
            if self.size > self.max_bytes:
                raise self.too_large(f"{self.name} is", "not sent")
            self.pending.append(data[start:end])

    def on_part_end(self) -> None:
        self.in_file = False

    def on_end(self) -> None:
        self.ended = True

    def flush(self) -> None:
        if self.out is not None:
            self.out.writelines(self.pending)
            self.out.flush()
        self.pending.clear()

    def discard(self) -> None:
        if self.out is not None:
            self.out.close()
        if self.path is not None:
            Path(self.path).unlink(missing_ok=True)


def attachment(outcome: Outcome, extension: str) -> dict[str, str]:
    """The download's file name, from the uploaded one (only safe characters: it is a header value)."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(outcome.video).stem)[:80] or "result"
    return {"Content-Disposition": f'attachment; filename="{stem}.fv2es.{extension}"'}


def create_app(url: str = DEFAULT_URL, timeout_s: float | None = None, *, allowed_hosts: Iterable[str] | None = None,
               upload_dir: str | Path | None = None) -> FastAPI:
    """The page for the FV2ES server at `url`. `allowed_hosts`: the Host values it answers to (see
    page_hosts; default: the loopback names, any port); `upload_dir`: where uploads are kept while
    they are analysed (default: the system's temporary folder)."""
    app = FastAPI(title="FV2ES", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(Guard, allowed_hosts=LOOPBACK_NAMES if allowed_hosts is None else allowed_hosts)
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
    async def analyze(request: Request):
        try:
            max_bytes = (await run_in_threadpool(analyzer.client().connect)).max_input_bytes
        except Exception as exc:  # noqa: BLE001
            code, message = describe_error(exc, url)
            return error(HTTP_STATUS.get(code, 502), code, message, CLOSE)
        upload = Upload(max_bytes, upload_dir)
        try:
            try:
                await upload.receive(request)
            except Refused as refused:
                return error(refused.status, refused.code, refused.message, CLOSE)
            except ClientDisconnect:
                return error(400, "DISCONNECTED", "the upload was cut off by the browser", CLOSE)  # read by no one
            name, path = upload.name, upload.path
            if upload.size == 0:
                return error(422, "EMPTY_FILE", f"{name} is empty")
            outcome = await run_in_threadpool(analyzer, path)
        finally:
            upload.discard()
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
    parser.add_argument("--allowed-host", action="append", default=[], metavar="NAME[:PORT]",
                        help="also answer requests for this Host (repeatable; without a port: any port). By default "
                             "the page answers only to --host:--port, and to localhost, 127.0.0.1 and [::1] on a "
                             "loopback or 0.0.0.0 bind: other names are refused (DNS rebinding)")
    parser.add_argument("--upload-dir", help="where uploads are kept while analysed (default: the temporary folder)")
    args = parser.parse_args()
    allowed = page_hosts(args.host, args.port, args.allowed_host)
    with contextlib.ExitStack() as stack:
        url = args.url
        if args.embedded:
            from fv2es.tritonserver import EmbeddedServer  # noqa: PLC0415 - only with --embedded

            started = time.monotonic()
            url = stack.enter_context(EmbeddedServer()).grpc_url
            print(f"tritonserver ready in {time.monotonic() - started:.1f} s (gRPC {url})", flush=True)
        print(f"FV2ES web page on http://{args.host}:{args.port}/ (server {url}; answers to {', '.join(allowed)}; "
              f"Ctrl-C stops)", flush=True)
        uvicorn.run(create_app(url, allowed_hosts=allowed, upload_dir=args.upload_dir),
                    host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
