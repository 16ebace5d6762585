"""The web page's own protections (fv2es-web, issue 22), over raw HTTP against the real app served by
uvicorn, which talks gRPC to a real tritonserver whose size limit is LIMIT:

- the upload is read as a stream and stopped at the limit: a Content-Length over it is refused before
  the body is read; a chunked body is cut off once past it; the temporary files are gone whatever
  happens (analysed, refused by the server, over the limit, cut off by the client, malformed);
- a Host not in the allow-list is refused (DNS rebinding), and so is a POST from another origin
  (cross-site upload); every answer carries the security headers.

The uploads go to a folder of the test's own (create_app's upload_dir) and Python's temporary folder
is pointed at another one, so that whatever the app or Starlette spools shows up in the measurement.
About 15 s for the server, then a few seconds.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest
from conftest import SAMPLE, SMALL_LIMIT

from fv2es.tritonserver import free_port
from fv2es_client.client import mib
from fv2es_web.app import MULTIPART_OVERHEAD_BYTES, SECURITY_HEADERS, STATIC, create_app, page_hosts

pytestmark = pytest.mark.slow  # the small-limit server and the page's server

LIMIT = SMALL_LIMIT  # max_input_bytes of the server's repository (conftest.small_server); the sample (78 kB) fits
BOUNDARY = "fv2es-test-boundary"
OVERSIZE = 64 << 20  # a chunked upload this big is sent at the page: far more than the kernel buffers
PIECE = 64 << 10


@contextlib.contextmanager
def page_server(grpc_url: str, **app_options):
    """fv2es-web's app on a free loopback port, in a thread, for the FV2ES server at `grpc_url`;
    answering to the Host names fv2es-web --host 127.0.0.1 --port PORT would (create_app's options
    override)."""
    import uvicorn

    port = free_port()
    app_options.setdefault("allowed_hosts", page_hosts("127.0.0.1", port))
    web = uvicorn.Server(uvicorn.Config(create_app(grpc_url, **app_options), host="127.0.0.1", port=port,
                                        log_level="warning"))
    thread = threading.Thread(target=web.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not web.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert web.started, "the web page's server did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        web.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def limited(small_server):
    return small_server


class Folders:
    """The upload folder and Python's temporary folder, watched: the most bytes they held at once."""

    def __init__(self, *folders: Path):
        self.folders, self.peak, self.most_files, self.stop = folders, 0, 0, threading.Event()
        self.thread = threading.Thread(target=self.watch, daemon=True)

    def held(self) -> int:
        total = 0
        for folder in self.folders:
            for path in folder.rglob("*"):
                with contextlib.suppress(FileNotFoundError):
                    total += path.stat().st_size
        return total

    def files(self) -> list[Path]:
        return [path for folder in self.folders for path in folder.rglob("*")]

    def watch(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, self.held())
            self.most_files = max(self.most_files, len(self.files()))
            time.sleep(0.001)

    def wait_empty(self, timeout_s: float = 10.0) -> list[Path]:
        deadline = time.monotonic() + timeout_s
        while self.files() and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.files()


@pytest.fixture
def folders(tmp_path, monkeypatch):
    uploads, spooled = tmp_path / "uploads", tmp_path / "tmp"
    uploads.mkdir()
    spooled.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spooled))
    watched = Folders(uploads, spooled)
    watched.thread.start()
    try:
        yield watched
    finally:
        watched.stop.set()
        watched.thread.join(5)


@pytest.fixture
def page(limited, folders):
    with page_server(limited.grpc_url, upload_dir=folders.folders[0]) as url:
        yield url


class Reply:
    def __init__(self, status: int, headers: http.client.HTTPMessage, body: bytes, sent: int):
        self.status, self.headers, self.body, self.sent = status, headers, body, sent

    def error(self) -> dict:
        return json.loads(self.body)["error"]


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def exchange(url: str, head: str, body=(), *, close_after: float | None = None) -> Reply | None:
    """Sends the request head, then the pieces of `body` from a thread (until the server stops taking
    them), and reads the answer meanwhile, as a browser does. With `close_after`: closes the connection
    that many seconds after the body was sent, without reading an answer (a client going away)."""
    sock = socket.create_connection(("127.0.0.1", port_of(url)), timeout=30)
    sent = 0

    def pump():
        nonlocal sent
        with contextlib.suppress(OSError):
            for piece in body:
                sock.sendall(piece)
                sent += len(piece)

    with sock:
        sock.sendall(head.encode())
        pumping = threading.Thread(target=pump, daemon=True)
        pumping.start()
        if close_after is not None:
            pumping.join(30)
            time.sleep(close_after)
            return None
        answer = http.client.HTTPResponse(sock)
        answer.begin()
        data = answer.read()
        pumping.join(30)
        return Reply(answer.status, answer.headers, data, sent)


def form_head(name: str = "big.mp4", field: str = "file") -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{name}\"\r\n"
            f"Content-Type: video/mp4\r\n\r\n").encode()


def form(data: bytes, name: str = "clip.mp4", field: str = "file") -> bytes:
    return form_head(name, field) + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def post_head(url: str, *, length: int | None = None, extra: str = "") -> str:
    framing = "Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}"
    return (f"POST /api/analyze HTTP/1.1\r\nHost: 127.0.0.1:{port_of(url)}\r\n{extra}"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n{framing}\r\n\r\n")


def chunked(*parts: bytes, total: int = 0, end: bool = True):
    """Chunked transfer coding of `parts`, then `total` zero bytes in PIECE pieces, then the end."""
    for part in parts:
        yield b"%x\r\n%s\r\n" % (len(part), part)
    for _ in range(total // PIECE):
        yield b"%x\r\n%s\r\n" % (PIECE, bytes(PIECE))
    if end:
        yield b"0\r\n\r\n"


def post(url: str, body: bytes, headers: dict[str, str] | None = None,
         content_type: str = f"multipart/form-data; boundary={BOUNDARY}") -> Reply:
    connection = http.client.HTTPConnection("127.0.0.1", port_of(url), timeout=120)
    try:
        connection.request("POST", "/api/analyze", body, {"Content-Type": content_type, **(headers or {})})
        answer = connection.getresponse()
        return Reply(answer.status, answer.headers, answer.read(), len(body))
    finally:
        connection.close()


def get(url: str, path: str, headers: dict[str, str] | None = None) -> Reply:
    connection = http.client.HTTPConnection("127.0.0.1", port_of(url), timeout=60)
    try:
        connection.request("GET", path, headers=headers or {})
        answer = connection.getresponse()
        return Reply(answer.status, answer.headers, answer.read(), 0)
    finally:
        connection.close()


def assert_protected(reply: Reply) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert reply.headers.get(name) == value, (name, reply.headers.get(name))


# -- the upload cap --------------------------------------------------------------------------------


def test_a_chunked_upload_is_cut_off_at_the_limit(page, folders):
    """64 MiB sent without a Content-Length: 413 once past the limit, the connection closed, never
    more than the limit on disk, nothing left."""
    started = time.monotonic()
    reply = exchange(page, post_head(page), chunked(form_head(), total=OVERSIZE))
    assert reply.status == 413, reply.body
    assert reply.error()["code"] == "INPUT_TOO_LARGE"
    assert f"big.mp4 is over the server's limit of {mib(LIMIT)} ({LIMIT} bytes): not sent" in reply.error()["message"]
    assert reply.headers["Connection"] == "close"
    assert_protected(reply)
    # The page stopped reading: what the client got out is what the kernel buffers take, not 64 MiB.
    assert reply.sent < OVERSIZE / 2, reply.sent
    assert folders.wait_empty() == []
    assert folders.peak <= LIMIT, folders.peak
    print(f"413 after {time.monotonic() - started:.2f} s, {reply.sent} bytes sent, at most {folders.peak} bytes held")


def test_a_body_past_the_cap_outside_the_file_is_cut_off_too(page, folders):
    """A form that stays under the limit in its `file` but sends more in other fields: stopped once the
    body passes the limit plus MULTIPART_OVERHEAD_BYTES."""
    other = f"\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\n".encode()
    reply = exchange(page, post_head(page), chunked(form_head() + b"x" * 1000 + other, total=OVERSIZE))
    assert reply.status == 413 and reply.error()["code"] == "INPUT_TOO_LARGE", reply.body
    assert reply.error()["message"].startswith("the upload is over") and "cut off" in reply.error()["message"]
    assert reply.sent < OVERSIZE / 2
    assert folders.wait_empty() == [] and folders.peak <= LIMIT


def test_a_content_length_over_the_cap_is_refused_before_the_body(page, folders):
    """Content-Length over the limit with Expect: 100-continue: 413 straight away, no 100 Continue
    (the body is never asked for), no file."""
    length = LIMIT + MULTIPART_OVERHEAD_BYTES + 1
    reply = exchange(page, post_head(page, length=length, extra="Expect: 100-continue\r\n"))
    assert reply.status == 413, reply.body  # http.client skips no 100: a 100 first would show here
    assert reply.error()["code"] == "INPUT_TOO_LARGE"
    assert f"the upload ({length} bytes) is over the server's limit" in reply.error()["message"]
    assert "not read" in reply.error()["message"]
    assert_protected(reply)
    assert folders.files() == [] and folders.peak == 0


def test_a_client_going_away_mid_upload_leaves_no_file(page, folders):
    """Half the limit sent, then the connection closed: the part-written upload is removed."""
    exchange(page, post_head(page), chunked(form_head(), bytes(LIMIT // 2), end=False), close_after=0.5)
    assert folders.most_files == 1, "the upload never reached the page's folder"
    assert folders.wait_empty() == []


@pytest.mark.parametrize("body, content_type, status, code", [
    (form(b"video bytes")[:-10], None, 400, "BAD_UPLOAD"),  # no closing boundary
    (b"--other-boundary\r\nnot a form\r\n", None, 400, "BAD_UPLOAD"),
    (form(b"video bytes"), "application/octet-stream", 400, "BAD_UPLOAD"),
    (form(b"video bytes", field="video"), None, 422, "NO_FILE"),
    (form(b""), None, 422, "EMPTY_FILE"),
], ids=["truncated", "wrong-boundary", "not-multipart", "no-file-field", "empty-file"])
def test_a_malformed_upload_is_refused_and_leaves_no_file(page, folders, body, content_type, status, code):
    reply = post(page, body, content_type=content_type or f"multipart/form-data; boundary={BOUNDARY}")
    assert (reply.status, reply.error()["code"]) == (status, code), reply.body
    assert_protected(reply)
    assert folders.wait_empty() == []


def test_analysed_and_refused_uploads_leave_no_file(page, folders):
    """The sample, analysed (200), and a file the server refuses (422): the upload folder held them
    while they were analysed and is empty after."""
    reply = post(page, form(SAMPLE.read_bytes(), "talking head.mp4"))
    assert reply.status == 200, reply.body
    assert json.loads(reply.body)["video"] == "talking head.mp4"
    assert folders.wait_empty() == []
    reply = post(page, form(b"these are notes, not a video\n" * 40, "notes.mp4"))
    assert reply.status == 422 and reply.error()["code"] == "INVALID_ARGUMENT", reply.body
    assert str(folders.folders[0]) not in reply.error()["message"]
    assert folders.wait_empty() == []
    assert SAMPLE.stat().st_size <= folders.peak <= LIMIT


# -- Host, Origin and the headers ------------------------------------------------------------------


@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "127.0.0.1:1", "localhost.evil.example:{port}",
                                  "127.0.0.1:{port}@evil.example", ""])
def test_an_unknown_host_is_refused(page, host):
    """DNS rebinding: the page's address under another name (or another port) gets 400, on every path."""
    host = host.format(port=port_of(page))
    for path in ("/", "/api/limits", "/static/app.js"):
        reply = get(page, path, {"Host": host})
        assert reply.status == 400, (path, host, reply.body)
        assert reply.error()["code"] == "HOST_NOT_ALLOWED" and "--allowed-host" in reply.error()["message"]
        assert_protected(reply)
    reply = post(page, form(b"video bytes"), {"Host": host})
    assert reply.status == 400 and reply.error()["code"] == "HOST_NOT_ALLOWED"


def test_the_loopback_names_and_allowed_hosts_are_answered(limited):
    with page_server(limited.grpc_url) as url:
        port = port_of(url)
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}", f"[::1]:{port}"):
            assert get(url, "/", {"Host": host}).status == 200, host
    with page_server(limited.grpc_url, allowed_hosts=page_hosts("127.0.0.1", 1, ["video.lan", "box:8443"])) as url:
        assert get(url, "/", {"Host": "video.lan"}).status == 200
        assert get(url, "/", {"Host": f"video.lan:{port_of(url)}"}).status == 200  # no port given: any port
        assert get(url, "/", {"Host": "box:8443"}).status == 200
        assert get(url, "/", {"Host": "box:8444"}).status == 400
        assert get(url, "/", {"Host": f"127.0.0.1:{port_of(url)}"}).status == 400  # bound elsewhere (port 1)


@pytest.mark.parametrize("header, value", [
    ("Origin", "http://evil.example"),
    ("Origin", "null"),  # a sandboxed frame, a file:// page
    ("Origin", "http://localhost:{port}"),  # another origin, though the same server
    ("Origin", "https://127.0.0.1:{port}"),
    ("Referer", "http://evil.example/page.html"),
    ("Origin", "http://[not-a-host"),
])
def test_a_cross_origin_post_is_refused(page, folders, header, value):
    value = value.format(port=port_of(page))
    reply = post(page, form(SAMPLE.read_bytes()), {header: value})
    assert reply.status == 403, reply.body
    assert reply.error()["code"] == "CROSS_ORIGIN" and value in reply.error()["message"]
    assert_protected(reply)
    assert folders.files() == [] and folders.peak == 0  # refused before the body was read


@pytest.mark.parametrize("headers", [
    {"Origin": "http://127.0.0.1:{port}"},
    {"Referer": "http://127.0.0.1:{port}/"},
    {},  # curl and scripts send neither
], ids=["origin", "referer", "neither"])
def test_a_same_origin_post_passes(page, headers):
    """Past the guard (the empty file is the analysis' own 422). The browser test uploads for real."""
    headers = {name: value.format(port=port_of(page)) for name, value in headers.items()}
    reply = post(page, form(b""), headers)
    assert reply.status == 422 and reply.error()["code"] == "EMPTY_FILE", reply.body


def test_every_answer_carries_the_security_headers(page):
    for path, status in (("/", 200), ("/static/app.js", 200), ("/static/app.css", 200), ("/api/limits", 200),
                         ("/api/results/nothing.json", 404), ("/no/such/page", 404)):
        reply = get(page, path)
        assert reply.status == status, (path, reply.body)
        assert_protected(reply)
    policy = SECURITY_HEADERS["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy and "unsafe" not in policy


def test_the_page_needs_no_inline_script_or_style():
    """What the policy allows: scripts and styles from files only."""
    html = (STATIC / "index.html").read_text()
    assert not re.search(r"<script>|\sstyle=|\son[a-z]+=", html)
    assert html.count("<script") == html.count('<script src="/static/')
