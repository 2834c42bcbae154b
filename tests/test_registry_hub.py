"""The Hugging Face Hub's conventions against servers on 127.0.0.1 (no internet): ``HF_ENDPOINT``,
``HF_TOKEN`` (sent to the Hub endpoint only, never after a redirect elsewhere), ``HF_HUB_OFFLINE``, the reuse
of a file in the user's Hugging Face cache (a fake one, with its snapshots/blobs/refs layout), and the
announcement of a first download."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from ilvr_cli.errors import DownloadError, OfflineError
from ilvr_cli.registry.cache import KnownHashes, Manifest, is_offline
from ilvr_cli.registry.catalog import FileSpec, Source
from ilvr_cli.registry.download import FetchedFile, NullProgress, ensure_file
from ilvr_cli.registry.hub import HubFile, find_in_hub_cache, parse_hub_url
from test_registry_download import FAST, FakeServer, Served, fake_drive, sha

REPO_PATH = "/org/tiny/resolve/main/w.pt"
HUB_URL = "https://huggingface.co" + REPO_PATH
COMMIT = "0123456789abcdef0123456789abcdef01234567"
HF_VARIABLES = (
    "HF_ENDPOINT",
    "HF_TOKEN",
    "HF_HUB_OFFLINE",
    "HF_HOME",
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
)


@pytest.fixture(autouse=True)
def hub_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing from the machine's environment: no endpoint, token or offline flag; an empty HF cache."""
    for variable in (*HF_VARIABLES, "ILVR_OFFLINE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-empty"))


@pytest.fixture
def server() -> Iterator[FakeServer]:
    fake = FakeServer()
    yield fake
    fake.close()


@pytest.fixture
def payload() -> bytes:
    return bytes(range(256)) * 40 + b"tail"


class Recorder(NullProgress):
    """A DownloadProgress that remembers its announcements, transfer starts and notes."""

    def __init__(self) -> None:
        self.announced: list[tuple[str, str, int | None, str, Path]] = []
        self.starts: list[tuple[int | None, int]] = []
        self.notes: list[str] = []

    def announce(self, model: str, file_name: str, size: int | None, source: str, target: Path) -> None:
        self.announced.append((model, file_name, size, source, target))

    def start(self, label: str, total: int | None, completed: int = 0) -> None:
        self.starts.append((total, completed))

    def note(self, message: str) -> None:
        self.notes.append(message)


def hub_spec(data: bytes | None, url: str = HUB_URL, *, size: bool = True) -> FileSpec:
    """A built-in entry's file (https only, no local sources) published on the Hub."""
    sha256 = None if data is None else sha(data)
    return FileSpec("w.pt", (Source(url=url),), sha256=sha256, size=len(data) if data and size else None)


def get(spec: FileSpec, tmp_path: Path, **kwargs) -> FetchedFile:
    kwargs.setdefault("options", FAST)
    root = tmp_path / "cache"
    return ensure_file(spec, root / "models" / "m", model="m", root=root, **kwargs)


def target(tmp_path: Path) -> Path:
    return tmp_path / "cache" / "models" / "m" / "w.pt"


def fake_hf_cache(
    hub: Path,
    files: dict[str, bytes],
    *,
    repo: str = "org/tiny",
    revision: str | None = "main",
    repo_type: str = "model",
) -> Path:
    """Write ``files`` as huggingface_hub does: ``blobs/<hash>``, ``snapshots/<commit>/<path>`` a relative
    symlink to its blob, and ``refs/<revision>`` holding the commit. Returns the repository's folder."""
    folder = hub / "--".join([f"{repo_type}s", *repo.split("/")])
    for path, data in files.items():
        blob = folder / "blobs" / sha(data)
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = folder / "snapshots" / COMMIT / path
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    if revision is not None:
        ref = folder / "refs" / revision
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(COMMIT)  # no newline, as huggingface_hub writes it
    return folder


def lower_keys(headers: dict[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


# --------------------------------------------------------------------------------------- HF_ENDPOINT


def test_hf_endpoint_moves_hub_urls_to_the_mirror(
    server: FakeServer, payload: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.routes[REPO_PATH] = Served(payload)
    monkeypatch.setenv("HF_ENDPOINT", server.url("/"))  # a trailing slash is ignored
    got = get(hub_spec(payload), tmp_path)  # a built-in entry: a localhost mirror is the user's choice
    assert got.path.read_bytes() == payload and got.source == server.url(REPO_PATH)
    assert len(server.gets(REPO_PATH)) == 1
    record = Manifest(got.path.parent).get("w.pt")
    assert record is not None and record.source == server.url(REPO_PATH)


def test_hf_endpoint_must_be_https_unless_on_localhost(
    server: FakeServer, payload: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://mirror.invalid")
    with pytest.raises(
        DownloadError, match=r"HF_ENDPOINT=http://mirror.invalid is neither https nor localhost"
    ):
        get(hub_spec(payload), tmp_path)
    # other localhost URLs in a built-in entry stay refused: only the endpoint the user named is allowed
    monkeypatch.setenv("HF_ENDPOINT", server.url(""))
    with pytest.raises(DownloadError, match="only in entries you added"):
        get(hub_spec(payload, "http://127.0.0.1:1/w.pt"), tmp_path)
    assert server.requests == []


# ------------------------------------------------------------------------------------------ HF_TOKEN


def test_hf_token_goes_to_the_hub_endpoint_and_not_after_a_redirect_elsewhere(
    server: FakeServer, payload: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cdn = FakeServer()  # another origin (another port), as the Hub's CDN is another host
    try:
        cdn.routes["/blob/w.pt"] = Served(payload)
        # the Hub first redirects on its own host (kept: same origin), then to the CDN (dropped)
        server.routes[REPO_PATH] = Served(b"", actions=["redirect:" + server.url("/api/resolved/w.pt")])
        server.routes["/api/resolved/w.pt"] = Served(b"", actions=["redirect:" + cdn.url("/blob/w.pt")])
        monkeypatch.setenv("HF_ENDPOINT", server.url(""))
        monkeypatch.setenv("HF_TOKEN", "hf_secret")
        got = get(hub_spec(payload), tmp_path)
        assert got.path.read_bytes() == payload
        hub_requests = server.gets(REPO_PATH) + server.gets("/api/resolved/w.pt")
        assert [lower_keys(h).get("authorization") for h in hub_requests] == ["Bearer hf_secret"] * 2
        (cdn_request,) = cdn.gets("/blob/w.pt")
        assert "authorization" not in lower_keys(cdn_request)
    finally:
        cdn.close()


def test_hf_token_is_not_sent_to_other_sources(
    server: FakeServer, payload: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.routes["/w.pt"] = Served(payload)
    monkeypatch.setenv("HF_TOKEN", "hf_secret")  # the endpoint is huggingface.co: not this server
    get(hub_spec(payload, server.url("/w.pt")), tmp_path, allow_local=True)
    (request,) = server.gets("/w.pt")
    assert "authorization" not in lower_keys(request)


# ------------------------------------------------------------------------------------ HF_HUB_OFFLINE


def test_hf_hub_offline_closes_the_network(
    server: FakeServer, payload: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.routes["/w.pt"] = Served(payload)
    server.routes[REPO_PATH] = Served(payload)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", server.url(""))
    assert is_offline() and not is_offline(False)
    cases = [  # a Hub source (named on the endpoint), and a user's localhost source
        (hub_spec(payload), False, server.url(REPO_PATH)),
        (hub_spec(payload, server.url("/w.pt")), True, server.url("/w.pt")),
    ]
    for spec, allow_local, url in cases:
        with pytest.raises(OfflineError) as info:
            get(spec, tmp_path, allow_local=allow_local)
        message = str(info.value)
        assert "HF_HUB_OFFLINE=1 forbids downloading it" in message
        assert f"fetch it from {url} and put it at {target(tmp_path)}" in message
    assert server.requests == []


# ------------------------------------------------------------------------------- the Hugging Face cache


#: Where the Hugging Face cache is, by the variable that says so: (the variable's value, the hub cache).
LOCATIONS = {
    "HF_HUB_CACHE": ("hub", "hub"),
    "HF_HOME": ("hf", "hf/hub"),
    "XDG_CACHE_HOME": ("xdg", "xdg/huggingface/hub"),
}


@pytest.mark.parametrize("variable", sorted(LOCATIONS))
def test_file_in_the_hf_cache_is_reused_without_a_request(
    variable: str, server: FakeServer, payload: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    value, hub = (tmp_path / part for part in LOCATIONS[variable])
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv(variable, str(value))
    folder = fake_hf_cache(hub, {"w.pt": payload})
    blob, link = folder / "blobs" / sha(payload), folder / "snapshots" / COMMIT / "w.pt"
    server.routes[REPO_PATH] = Served(payload)
    monkeypatch.setenv("HF_ENDPOINT", server.url(""))  # a download would succeed: it must not happen
    progress = Recorder()
    got = get(hub_spec(payload), tmp_path, progress=progress)
    assert got.path == target(tmp_path) and got.path.read_bytes() == payload and got.trust == "published"
    assert server.requests == [] and progress.announced == [] and progress.starts == []
    assert any("Hugging Face cache" in n and str(link) in n for n in progress.notes)
    record = Manifest(got.path.parent).get("w.pt")
    assert record is not None and str(link) in record.source and "Hugging Face cache" in record.source
    # the Hugging Face cache is as it was: blob bytes, symlink, ref
    assert blob.read_bytes() == payload and link.is_symlink() and link.resolve() == blob.resolve()
    assert (folder / "refs" / "main").read_text() == COMMIT
    assert not [p for p in got.path.parent.iterdir() if p.name.endswith((".tmp", ".part", ".part.json"))]
    assert get(hub_spec(payload), tmp_path).path == got.path and server.requests == []  # now a cache hit


def test_offline_still_uses_the_hf_cache(
    payload: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_hf_cache(tmp_path / "hub", {"w.pt": payload})
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert get(hub_spec(payload), tmp_path).path.read_bytes() == payload


def test_hf_cache_file_is_copied_where_it_cannot_be_linked(
    payload: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another file system, or a shared cache the user does not own: a copy, and the blob stays as it is."""
    folder = fake_hf_cache(tmp_path / "hub", {"w.pt": payload})
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))

    def no_link(src: object, dst: object) -> None:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    got = get(hub_spec(payload), tmp_path)
    blob = folder / "blobs" / sha(payload)
    assert got.path.read_bytes() == payload and got.path.stat().st_ino != blob.stat().st_ino
    assert blob.read_bytes() == payload and (folder / "snapshots" / COMMIT / "w.pt").is_symlink()


def test_wrong_file_in_the_hf_cache_is_ignored_and_downloaded(
    server: FakeServer, payload: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = fake_hf_cache(tmp_path / "hub", {"w.pt": b"not the weights" * 100})
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    server.routes[REPO_PATH] = Served(payload)
    monkeypatch.setenv("HF_ENDPOINT", server.url(""))
    progress = Recorder()
    got = get(hub_spec(payload, size=False), tmp_path, progress=progress)
    assert got.path.read_bytes() == payload and len(server.gets(REPO_PATH)) == 1
    assert any("ignoring" in n and "sha256 mismatch" in n for n in progress.notes)
    assert len(progress.announced) == 1  # the download that followed
    assert (folder / "snapshots" / COMMIT / "w.pt").read_bytes() == b"not the weights" * 100  # untouched
    assert not list(got.path.parent.glob("*.tmp"))


def test_first_use_from_the_hf_cache(
    server: FakeServer, payload: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No published hash: a web page in the HF cache is refused; the real file is recorded on first use."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    folder = fake_hf_cache(tmp_path / "hub", {"w.pt": b"<!DOCTYPE html><html>sign in</html>"})
    server.routes[REPO_PATH] = Served(payload)
    monkeypatch.setenv("HF_ENDPOINT", server.url(""))
    progress = Recorder()
    assert get(hub_spec(None), tmp_path, progress=progress).path.read_bytes() == payload
    assert any("ignoring" in n and "web page" in n for n in progress.notes)
    known = KnownHashes(tmp_path / "cache").get("m", "w.pt")
    assert known is not None and known["source"] == server.url(REPO_PATH)
    # another model's file, good this time: taken from the HF cache and recorded with that origin
    fake_hf_cache(tmp_path / "hub", {"x.pt": payload})
    spec = FileSpec("x.pt", (Source(url=HUB_URL.replace("w.pt", "x.pt")),))
    got = ensure_file(spec, tmp_path / "cache" / "models" / "n", model="n", root=tmp_path / "cache")
    assert got.trust == "first-use" and got.path.read_bytes() == payload
    known = KnownHashes(tmp_path / "cache").get("n", "x.pt")
    assert known is not None and "Hugging Face cache" in known["source"]
    assert str(folder / "snapshots" / COMMIT / "x.pt") in known["source"]


CASES = [
    # url, repo_id, repo_type, revision, filename
    (HUB_URL, "org/tiny", "model", "main", "w.pt"),
    (
        f"https://huggingface.co/org/tiny/resolve/{COMMIT}/unet/w.bin",
        "org/tiny",
        "model",
        COMMIT,
        "unet/w.bin",
    ),
    ("https://huggingface.co/datasets/org/data/resolve/main/x.json", "org/data", "dataset", "main", "x.json"),
    ("https://huggingface.co/org/tiny/resolve/refs%2Fpr%2F1/w.pt", "org/tiny", "model", "refs/pr/1", "w.pt"),
    ("https://huggingface.co/org/tiny/resolve/v2/w.pt", "org/tiny", "model", "v2", "w.pt"),  # no such ref
    ("https://huggingface.co/org/tiny/resolve/main/missing.pt", "org/tiny", "model", "main", "missing.pt"),
]


@pytest.mark.parametrize(("url", "repo_id", "repo_type", "revision", "filename"), CASES)
def test_cache_lookup_agrees_with_huggingface_hub(
    url: str,
    repo_id: str,
    repo_type: str,
    revision: str,
    filename: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    huggingface_hub = pytest.importorskip("huggingface_hub")  # in the test extras, through diffusers
    hub = tmp_path / "hub"
    fake_hf_cache(hub, {"w.pt": b"w", "unet/w.bin": b"u"})
    fake_hf_cache(hub, {}, revision="refs/pr/1")
    fake_hf_cache(hub, {"x.json": b"{}"}, repo="org/data", repo_type="dataset")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    assert parse_hub_url(url) == HubFile(repo_type, repo_id, revision, filename)
    theirs = huggingface_hub.try_to_load_from_cache(
        repo_id, filename, cache_dir=hub, revision=revision, repo_type=repo_type
    )
    ours = find_in_hub_cache(url)
    assert (str(ours) if ours else None) == (theirs if isinstance(theirs, str) else None)
    assert (ours is not None) == (filename in ("w.pt", "unet/w.bin", "x.json") and revision != "v2")


@pytest.mark.parametrize(
    "url",
    [
        "https://huggingface.co/org/tiny/resolve/main/../../../../etc/passwd",
        "https://huggingface.co/org/tiny/resolve/main/%2e%2e/%2e%2e/x",
        "https://huggingface.co/org/tiny/resolve/..%2F..%2Fx/w.pt",
        "https://huggingface.co/org/tiny/blob/main/w.pt",
        "https://huggingface.co/org/tiny/resolve/main",
        "https://example.com/org/tiny/resolve/main/w.pt",
    ],
)
def test_urls_that_are_not_plain_hub_files_are_not_looked_up(url: str) -> None:
    assert parse_hub_url(url) is None and find_in_hub_cache(url) is None


def test_urls_on_the_endpoint_are_hub_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "https://mirror.example/hf/")
    assert parse_hub_url("https://mirror.example/hf" + REPO_PATH) == HubFile(
        "model", "org/tiny", "main", "w.pt"
    )
    assert parse_hub_url(HUB_URL) == HubFile("model", "org/tiny", "main", "w.pt")


# --------------------------------------------------------------------------------- the announcement


def test_a_download_is_announced_once_before_its_first_byte(
    server: FakeServer, payload: bytes, tmp_path: Path
) -> None:
    server.routes["/w.pt"] = Served(payload, actions=["cut"])  # cut halfway: resumed, not announced again
    spec = FileSpec(
        "w.pt", (Source(url=server.url("/gone.pt")), Source(url=server.url("/w.pt"))), sha(payload)
    )
    progress = Recorder()
    got = get(spec, tmp_path, progress=progress, allow_local=True)
    assert got.path.read_bytes() == payload and len(server.gets("/w.pt")) == 2
    # the 404 source delivered nothing, so only the source that did is announced
    assert progress.announced == [("m", "w.pt", len(payload), server.url("/w.pt"), target(tmp_path))]
    assert progress.starts == [(len(payload), 0), (len(payload), len(payload) // 2)]
    get(spec, tmp_path, progress=progress, allow_local=True)  # a cache hit: nothing announced
    assert len(progress.announced) == 1


def test_announced_size_is_the_published_one_or_unknown(
    server: FakeServer, payload: bytes, tmp_path: Path
) -> None:
    def no_length(h: BaseHTTPRequestHandler, query: dict[str, list[str]]) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Connection", "close")
        h.end_headers()
        h.wfile.write(payload)
        h.close_connection = True

    server.custom["/w.pt"] = no_length
    progress = Recorder()
    spec = FileSpec("w.pt", (Source(url=server.url("/w.pt")),))
    get(spec, tmp_path, progress=progress, allow_local=True)
    get(
        dataclasses.replace(spec, name="v.pt", size=len(payload)),
        tmp_path,
        progress=progress,
        allow_local=True,
    )
    assert [a[2] for a in progress.announced] == [None, len(payload)]


def test_drive_is_announced_for_the_file_not_the_confirm_page(
    server: FakeServer, payload: bytes, tmp_path: Path
) -> None:
    fake_drive(server, {"1AbCdEfGhIjKlMnOp": payload})
    options = dataclasses.replace(FAST, gdrive_url=server.url("/download"))
    progress = Recorder()
    get(
        FileSpec("p2.pt", (Source(gdrive="1AbCdEfGhIjKlMnOp"),)), tmp_path, options=options, progress=progress
    )
    page = "https://drive.google.com/file/d/1AbCdEfGhIjKlMnOp/view"
    assert progress.announced == [("m", "p2.pt", len(payload), page, target(tmp_path).with_name("p2.pt"))]


def test_a_progress_without_announce_gets_a_note(server: FakeServer, payload: bytes, tmp_path: Path) -> None:
    class Older:  # written against the protocol before announce existed
        def __init__(self) -> None:
            self.notes: list[str] = []

        def start(self, label: str, total: int | None, completed: int = 0) -> None: ...
        def advance(self, nbytes: int) -> None: ...
        def finish(self) -> None: ...
        def note(self, message: str) -> None:
            self.notes.append(message)

    server.routes["/w.pt"] = Served(payload)
    progress = Older()
    get(FileSpec("w.pt", (Source(url=server.url("/w.pt")),)), tmp_path, progress=progress, allow_local=True)  # type: ignore[arg-type]
    assert progress.notes == [
        f"downloading m: w.pt (10.2 kB) from {server.url('/w.pt')} to {target(tmp_path)}"
    ]
