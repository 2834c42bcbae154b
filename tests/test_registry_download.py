"""Downloads against a real HTTP server on 127.0.0.1 (no internet): resume, verification, mirrors, stalls,
locking, offline mode, trust on first use, and Google Drive's confirm step."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from ilvr_cli.errors import DownloadError, OfflineError
from ilvr_cli.registry.cache import KnownHashes, Manifest
from ilvr_cli.registry.catalog import FileSpec, Source
from ilvr_cli.registry.download import DownloadOptions, FetchedFile, ensure_file

#: No test waits for a guessed duration. A healthy response never comes near ``FAST.timeout``, so load on the
#: machine cannot turn it into a spurious retry; a stalled or held response blocks on an event that only the
#: test (or the server's teardown) sets. The one timeout that does elapse is the client's, in the stall tests,
#: and it must be generous too: the same attempts also carry the healthy headers and first half.
FAST = DownloadOptions(timeout=10, retries=3, backoff=0.01, max_backoff=0.05, chunk_size=4096)
STALL = DownloadOptions(timeout=2, retries=2, backoff=0.01)
#: How long a blocked handler or a test waits for an event before giving up: only a broken run gets there.
SAFETY = 60.0


# ----------------------------------------------------------------------------------------- the server


@dataclass
class Served:
    """What the fake server does for one path: its bytes, and one action per request (then "ok")."""

    data: bytes
    actions: list[str] = field(default_factory=list)
    content_type: str = "application/octet-stream"
    ranges: bool = True


class FakeServer:
    """A threaded HTTP server with scripted misbehaviour; records every request.

    "stall" sends half the body, then blocks until ``release`` is set (by :meth:`close`), so only the
    client's read timeout can end it; ``stalls_held`` counts the stalled handlers still blocked. "hold"
    sends half the body, sets ``streaming``, and sends the rest once the test sets ``proceed``.
    """

    def __init__(self) -> None:
        self.routes: dict[str, Served] = {}
        self.custom: dict[str, Callable[[BaseHTTPRequestHandler, dict[str, list[str]]], None]] = {}
        self.requests: list[tuple[str, dict[str, str], dict[str, list[str]]]] = []
        self.release = threading.Event()
        self.stalls_held = 0
        self.streaming = threading.Event()
        self.proceed = threading.Event()
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                server.handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def gets(self, path: str) -> list[dict[str, str]]:
        return [headers for p, headers, _ in self.requests if p == path]

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        query = parse_qs(parts.query)
        with self.lock:
            self.requests.append((parts.path, dict(h.headers), query))
            route = self.routes.get(parts.path)
            action = route.actions.pop(0) if route and route.actions else "ok"
        if parts.path in self.custom:
            self.custom[parts.path](h, query)
            return
        if route is None or action == "404":
            self.send(h, 404, b"not found", "text/plain")
            return
        if action == "503":
            self.send(h, 503, b"busy", "text/plain")
            return
        if action.startswith("redirect:"):
            h.send_response(302)
            h.send_header("Location", action.split(":", 1)[1])
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        self.send_file(h, route, action)

    @staticmethod
    def send(h: BaseHTTPRequestHandler, status: int, body: bytes, content_type: str) -> None:
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def send_file(self, h: BaseHTTPRequestHandler, route: Served, action: str) -> None:
        data, start = route.data, 0
        range_header = h.headers.get("Range")
        if range_header and route.ranges:
            start = int(range_header.removeprefix("bytes=").split("-")[0])
            h.send_response(206)
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            h.send_response(200)
        body = data[start:]
        h.send_header("Content-Type", route.content_type)
        h.send_header("Content-Length", str(len(body)))
        h.send_header("ETag", '"' + hashlib.md5(data).hexdigest() + '"')
        h.end_headers()
        half = len(body) // 2
        if action == "stall":
            with self.lock:  # counted before the client can see a byte, uncounted only when released
                self.stalls_held += 1
            h.wfile.write(body[:half])
            h.wfile.flush()
            self.release.wait(SAFETY)
            with self.lock:
                self.stalls_held -= 1
            h.close_connection = True
            return
        if action == "cut":
            h.wfile.write(body[:half])
            h.wfile.flush()
            h.close_connection = True
            return
        if action == "hold":
            h.wfile.write(body[:half])
            h.wfile.flush()
            self.streaming.set()
            self.proceed.wait(SAFETY)
            h.wfile.write(body[half:])
            return
        h.wfile.write(body)

    def close(self) -> None:
        self.release.set()
        self.proceed.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(autouse=True)
def no_hub_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine's Hugging Face settings (an offline switch, a token, a cache) play no part here."""
    for variable in ("HF_HUB_OFFLINE", "HF_ENDPOINT", "HF_TOKEN"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-hub"))


@pytest.fixture
def server() -> Iterator[FakeServer]:
    fake = FakeServer()
    yield fake
    fake.close()


@pytest.fixture
def payload() -> bytes:
    return bytes(range(256)) * 400 + b"tail"  # 102,404 bytes


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def spec_for(
    server: FakeServer, paths: list[str], data: bytes | None, *, size: bool = True, name: str = "w.pt"
):
    return FileSpec(
        name=name,
        sources=tuple(Source(url=server.url(p)) for p in paths),
        sha256=None if data is None else sha(data),
        size=len(data) if data is not None and size else None,
    )


def edit_in_place(path: Path, data: bytes) -> None:
    """Overwrite ``path`` as a later edit would, with a later mtime: set explicitly, since a coarse
    filesystem clock need not have ticked since the file was written and its stamp recorded."""
    before = path.stat().st_mtime_ns
    path.write_bytes(data)
    os.utime(path, ns=(before + 1_000_000_000, before + 1_000_000_000))


def get(spec: FileSpec, tmp_path: Path, **kwargs) -> FetchedFile:
    kwargs.setdefault("options", FAST)
    kwargs.setdefault("allow_local", True)
    return ensure_file(spec, tmp_path / "models" / "m", model="m", root=tmp_path, **kwargs)


class Recorder:
    """A DownloadProgress that remembers what it was told."""

    def __init__(self) -> None:
        self.notes: list[str] = []
        self.starts: list[tuple[int | None, int]] = []
        self.bytes = 0

    def start(self, label: str, total: int | None, completed: int = 0) -> None:
        self.starts.append((total, completed))

    def advance(self, nbytes: int) -> None:
        self.bytes += nbytes

    def finish(self) -> None:
        pass

    def note(self, message: str) -> None:
        self.notes.append(message)


# ----------------------------------------------------------------------------------------------- tests


def test_happy_path_verifies_records_and_reuses(server: FakeServer, payload: bytes, tmp_path: Path) -> None:
    server.routes["/w.pt"] = Served(payload)
    progress = Recorder()
    got = get(spec_for(server, ["/w.pt"], payload), tmp_path, progress=progress)
    assert got.path.read_bytes() == payload
    assert got.sha256 == sha(payload) and got.trust == "published"
    assert progress.bytes == len(payload) and progress.starts == [(len(payload), 0)]
    record = Manifest(got.path.parent).get("w.pt")
    assert record is not None and record.sha256 == sha(payload) and record.source == server.url("/w.pt")
    assert not list(got.path.parent.glob("*.part*"))
    again = get(spec_for(server, ["/w.pt"], payload), tmp_path)
    assert again.path == got.path and len(server.gets("/w.pt")) == 1  # served from the cache


def test_cut_connection_is_resumed_with_range(server: FakeServer, payload: bytes, tmp_path: Path) -> None:
    server.routes["/w.pt"] = Served(payload, actions=["cut"])
    progress = Recorder()
    got = get(spec_for(server, ["/w.pt"], payload), tmp_path, progress=progress)
    assert got.path.read_bytes() == payload
    first, second = server.gets("/w.pt")
    assert "Range" not in first
    assert second["Range"] == f"bytes={len(payload) // 2}-"
    assert second["If-Range"].startswith('"')  # resumed only if the file did not change
    assert progress.starts[-1] == (len(payload), len(payload) // 2)
    assert any("retrying" in n for n in progress.notes)


def test_interrupted_download_resumes_on_the_next_run(
    server: FakeServer, payload: bytes, tmp_path: Path
) -> None:
    server.routes["/w.pt"] = Served(payload, actions=["cut"])
    spec = spec_for(server, ["/w.pt"], payload)
    with pytest.raises(DownloadError, match="connection closed after"):
        get(spec, tmp_path, options=dataclasses.replace(FAST, retries=0))
    part = tmp_path / "models" / "m" / "w.pt.part"
    assert part.stat().st_size == len(payload) // 2
    got = get(spec, tmp_path)  # a new "process": picks up the .part
    assert got.path.read_bytes() == payload
    assert server.gets("/w.pt")[-1]["Range"] == f"bytes={len(payload) // 2}-"


def test_server_ignoring_range_restarts_cleanly(server: FakeServer, payload: bytes, tmp_path: Path) -> None:
    server.routes["/w.pt"] = Served(payload, actions=["cut"], ranges=False)
    got = get(spec_for(server, ["/w.pt"], payload), tmp_path)
    assert got.path.read_bytes() == payload  # not half + whole


def test_wrong_hash_deletes_file_names_source_and_tries_next(
    server: FakeServer, payload: bytes, tmp_path: Path
) -> None:
    corrupt = bytearray(payload)
    corrupt[1000] ^= 0xFF
    server.routes["/bad.pt"] = Served(bytes(corrupt))
    server.routes["/good.pt"] = Served(payload)
    progress = Recorder()
    got = get(spec_for(server, ["/bad.pt", "/good.pt"], payload), tmp_path, progress=progress)
    assert got.path.read_bytes() == payload and got.source == server.url("/good.pt")
    assert any(server.url("/bad.pt") in n and "sha256 mismatch" in n for n in progress.notes)


def test_wrong_hash_everywhere_fails_naming_the_source(
    server: FakeServer, payload: bytes, tmp_path: Path
) -> None:
    server.routes["/bad.pt"] = Served(payload[::-1])
    with pytest.raises(DownloadError) as info:
        get(spec_for(server, ["/bad.pt"], payload), tmp_path)
    message = str(info.value)
    assert server.url("/bad.pt") in message and "sha256 mismatch" in message and sha(payload) in message
    assert not list((tmp_path / "models" / "m").glob("w.pt*"))  # nothing corrupt left behind


def test_wrong_size_is_caught_without_a_hash(server: FakeServer, payload: bytes, tmp_path: Path) -> None:
    server.routes["/short.pt"] = Served(payload[:-10])
    spec = FileSpec("w.pt", (Source(url=server.url("/short.pt")),), size=len(payload))
    with pytest.raises(DownloadError, match=f"expected {len(payload)}"):
        get(spec, tmp_path)


def test_404_then_next_mirror(server: FakeServer, payload: bytes, tmp_path: Path) -> None:
    server.routes["/ok.pt"] = Served(payload)
    got = get(spec_for(server, ["/missing.pt", "/ok.pt"], payload), tmp_path)
    assert got.source == server.url("/ok.pt") and got.path.read_bytes() == payload
    assert len(server.gets("/missing.pt")) == 1  # a 404 is not retried


def test_transient_503_is_retried(server: FakeServer, payload: bytes, tmp_path: Path) -> None:
    server.routes["/w.pt"] = Served(payload, actions=["503", "503"])
    assert get(spec_for(server, ["/w.pt"], payload), tmp_path).path.read_bytes() == payload
    assert len(server.gets("/w.pt")) == 3


def test_stall_times_out_and_resumes(server: FakeServer, payload: bytes, tmp_path: Path) -> None:
    server.routes["/w.pt"] = Served(payload, actions=["stall"])
    got = get(spec_for(server, ["/w.pt"], payload), tmp_path, options=STALL)
    assert server.stalls_held == 1  # the stall was cut short by the client's timeout, not waited out
    assert got.path.read_bytes() == payload
    assert server.gets("/w.pt")[1]["Range"] == f"bytes={len(payload) // 2}-"


def test_endless_stalls_give_up_after_bounded_retries(
    server: FakeServer, payload: bytes, tmp_path: Path
) -> None:
    server.routes["/w.pt"] = Served(payload, actions=["stall"] * 10, ranges=False)
    with pytest.raises(DownloadError, match="stalled.*gave up after 2 retries"):
        get(spec_for(server, ["/w.pt"], payload), tmp_path, options=STALL)
    assert server.stalls_held == 3  # each attempt was abandoned by the client while the server still stalled
    assert len(server.gets("/w.pt")) == 3


class LockWaitRecorder(Recorder):
    """A Recorder that sets ``waiting`` when told it waits for another downloader's lock."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = threading.Event()

    def note(self, message: str) -> None:
        super().note(message)
        if "waiting for another process" in message:
            self.waiting.set()


def test_two_concurrent_downloaders_download_once(server: FakeServer, payload: bytes, tmp_path: Path) -> None:
    server.routes["/w.pt"] = Served(payload, actions=["hold"])
    spec = spec_for(server, ["/w.pt"], payload)
    results: list[FetchedFile] = []
    notes = [Recorder(), LockWaitRecorder()]

    def worker(i: int) -> None:
        results.append(get(spec, tmp_path, progress=notes[i]))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    threads[0].start()
    try:
        assert server.streaming.wait(SAFETY)  # the first one holds the lock and is streaming
        threads[1].start()
        assert notes[1].waiting.wait(SAFETY)  # the second one is queued on the lock
    finally:
        server.proceed.set()
        for t in threads:
            if t.ident is not None:  # started
                t.join(SAFETY)
    assert len(results) == 2 and results[0].path == results[1].path
    assert results[0].path.read_bytes() == payload
    assert len(server.gets("/w.pt")) == 1
    assert any("waiting for another process" in n for n in notes[1].notes)


def test_offline_never_touches_the_network(
    server: FakeServer, payload: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.routes["/w.pt"] = Served(payload)
    monkeypatch.setenv("ILVR_OFFLINE", "1")
    with pytest.raises(OfflineError) as info:
        get(spec_for(server, ["/w.pt"], payload), tmp_path)
    message = str(info.value)
    assert "w.pt" in message and str(tmp_path / "models" / "m" / "w.pt") in message
    assert server.url("/w.pt") in message and "ILVR_OFFLINE=1" in message
    assert server.requests == []
    # a file put there by hand is checked and used
    (tmp_path / "models" / "m").mkdir(parents=True)
    (tmp_path / "models" / "m" / "w.pt").write_bytes(payload)
    assert get(spec_for(server, ["/w.pt"], payload), tmp_path).trust == "published"


def test_file_placed_by_hand_is_checked(server: FakeServer, payload: bytes, tmp_path: Path) -> None:
    server.routes["/w.pt"] = Served(payload)
    target = tmp_path / "models" / "m" / "w.pt"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"garbage")
    got = get(spec_for(server, ["/w.pt"], payload), tmp_path)
    assert got.path.read_bytes() == payload and len(server.gets("/w.pt")) == 1  # replaced by a download


def test_trust_on_first_use(server: FakeServer, payload: bytes, tmp_path: Path) -> None:
    server.routes["/w.pt"] = Served(payload)
    spec = spec_for(server, ["/w.pt"], None)
    got = get(spec, tmp_path)
    assert got.trust == "first-use"
    known = KnownHashes(tmp_path).get("m", "w.pt")
    assert known is not None and known["sha256"] == sha(payload) and known["source"] == server.url("/w.pt")
    # the cached file is edited: caught by its changed stamp, rehashed, deleted, downloaded again
    edit_in_place(got.path, payload[:-1] + b"X")
    assert get(spec, tmp_path).path.read_bytes() == payload
    # the publisher's file changes: the next download no longer matches what was first seen
    got.path.unlink()
    server.routes["/w.pt"] = Served(payload + b"changed")
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        get(spec, tmp_path)


def test_fallback_file_when_primary_is_not_found(server: FakeServer, payload: bytes, tmp_path: Path) -> None:
    server.routes["/m.bin"] = Served(payload)
    spec = FileSpec(
        "m.safetensors",
        (Source(url=server.url("/m.safetensors")),),
        fallback=FileSpec("m.bin", (Source(url=server.url("/m.bin")),)),
    )
    got = get(spec, tmp_path)
    assert got.path.name == "m.bin" and got.path.read_bytes() == payload
    assert get(spec, tmp_path).path == got.path and len(server.gets("/m.bin")) == 1


def test_https_only_for_builtin_entries(server: FakeServer, payload: bytes, tmp_path: Path) -> None:
    server.routes["/w.pt"] = Served(payload)
    with pytest.raises(DownloadError, match="only in entries you added"):
        get(spec_for(server, ["/w.pt"], payload), tmp_path, allow_local=False)
    assert server.requests == []


def test_redirect_to_plain_http_is_refused(server: FakeServer, payload: bytes, tmp_path: Path) -> None:
    server.routes["/w.pt"] = Served(payload, actions=["redirect:http://example.com/w.pt"])
    with pytest.raises(DownloadError, match="insecure URL http://example.com/w.pt"):
        get(spec_for(server, ["/w.pt"], payload), tmp_path)


def test_web_page_instead_of_file_is_rejected(server: FakeServer, tmp_path: Path) -> None:
    server.routes["/w.pt"] = Served(b"<html>captive portal</html>", content_type="text/html; charset=utf-8")
    with pytest.raises(DownloadError, match="web page"):
        get(FileSpec("w.pt", (Source(url=server.url("/w.pt")),)), tmp_path)
    assert KnownHashes(tmp_path).get("m", "w.pt") is None  # never trusted


def test_local_path_source(tmp_path: Path, payload: bytes) -> None:
    src = tmp_path / "by-hand.pt"
    src.write_bytes(payload)
    spec = FileSpec(
        "w.pt", (Source(path=str(tmp_path / "nope.pt")), Source(path=str(src))), sha256=sha(payload)
    )
    assert get(spec, tmp_path, offline=False).path.read_bytes() == payload


# ------------------------------------------------------------------------------------- Google Drive


DRIVE_CONFIRM_PAGE = """<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head>
<body><div class="uc-main"><p class="uc-warning-caption">Google Drive can't scan this file for viruses.</p>
<form id="download-form" action="{action}" method="get">
<input type="submit" id="uc-download-link" class="goog-inline-block jfk-button" value="Download anyway"/>
<input type="hidden" name="id" value="{id}"><input type="hidden" name="export" value="download">
<input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="5f0c-uuid">
</form></div></body></html>"""


def fake_drive(server: FakeServer, files: dict[str, bytes], *, quota: bool = False) -> None:
    """Mimic drive.usercontent.google.com/download: an HTML confirm form first, the file after confirm."""

    def handler(h: BaseHTTPRequestHandler, query: dict[str, list[str]]) -> None:
        file_id = query.get("id", [""])[0]
        if file_id not in files:
            server.send(h, 404, b"<html>Not Found</html>", "text/html")
        elif quota:
            server.send(
                h, 200, b"<html>Too many users have viewed or downloaded this file</html>", "text/html"
            )
        elif query.get("confirm") != ["t"] or query.get("uuid") != ["5f0c-uuid"]:
            page = DRIVE_CONFIRM_PAGE.format(action=server.url("/download"), id=file_id)
            server.send(h, 200, page.encode(), "text/html; charset=utf-8")
        else:
            server.send_file(h, Served(files[file_id]), "ok")

    server.custom["/download"] = handler


def test_drive_confirm_step(server: FakeServer, payload: bytes, tmp_path: Path) -> None:
    fake_drive(server, {"1AbCdEfGhIjKlMnOp": payload})
    options = dataclasses.replace(FAST, retries=1, gdrive_url=server.url("/download"))
    spec = FileSpec("p2.pt", (Source(gdrive="1AbCdEfGhIjKlMnOp"),))
    got = get(spec, tmp_path, options=options, allow_local=False)
    assert got.path.read_bytes() == payload and got.trust == "first-use"
    (_, _, first), (_, _, second) = server.requests
    assert first == {"id": ["1AbCdEfGhIjKlMnOp"], "export": ["download"]}
    assert second["confirm"] == ["t"] and second["uuid"] == ["5f0c-uuid"]


def test_drive_quota_and_missing_file(server: FakeServer, payload: bytes, tmp_path: Path) -> None:
    fake_drive(server, {"1AbCdEfGhIjKlMnOp": payload}, quota=True)
    options = dataclasses.replace(FAST, retries=1, gdrive_url=server.url("/download"))
    spec = FileSpec("p2.pt", (Source(gdrive="1AbCdEfGhIjKlMnOp"), Source(gdrive="1ZzZzZzZzZzZzZzZz")))
    with pytest.raises(DownloadError) as info:
        get(spec, tmp_path, options=options, allow_local=False)
    message = str(info.value)
    assert "https://drive.google.com/file/d/1AbCdEfGhIjKlMnOp/view: Google Drive refuses" in message
    assert "1ZzZzZzZzZzZzZzZz/view: HTTP 404" in message
    assert "ilvr models add m FILE" in message


def test_two_processes_download_once(server: FakeServer, payload: bytes, tmp_path: Path) -> None:
    """The same with two real processes (the lock is an OS file lock, released if a holder dies)."""
    import subprocess
    import sys

    server.routes["/w.pt"] = Served(payload, actions=["hold"])
    script = (
        "import sys; from pathlib import Path\n"
        "from ilvr_cli.registry.catalog import FileSpec, Source\n"
        "from ilvr_cli.registry.download import DownloadOptions, NullProgress, ensure_file\n"
        "class Notes(NullProgress):\n"
        "    def note(self, message): print(message, file=sys.stderr, flush=True)\n"
        "root = Path(sys.argv[1])\n"
        "spec = FileSpec('w.pt', (Source(url=sys.argv[2]),), sha256=sys.argv[3])\n"
        "options = DownloadOptions(timeout=float(sys.argv[4]))  # the first one's read waits out the hold\n"
        "got = ensure_file(spec, root / 'models' / 'm', model='m', root=root, allow_local=True,\n"
        "                  options=options, progress=Notes())\n"
        "print(got.path)\n"
    )
    args = [sys.executable, "-c", script, str(tmp_path), server.url("/w.pt"), sha(payload), str(SAFETY)]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    procs = [subprocess.Popen(args, **pipes)]
    try:
        assert server.streaming.wait(SAFETY)  # the first process holds the lock and is streaming
        procs.append(subprocess.Popen(args, **pipes))
        # the second one says it waits for the lock (a note on stderr) before the first may finish
        notes = []
        for line in iter(procs[1].stderr.readline, ""):
            notes.append(line)
            if "waiting for another process" in line:
                break
        assert "waiting for another process" in "".join(notes), "".join(notes)
    finally:
        server.proceed.set()
    outputs = [p.communicate(timeout=SAFETY)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outputs[0] == outputs[1] == str(tmp_path / "models" / "m" / "w.pt")
    assert len(server.gets("/w.pt")) == 1
