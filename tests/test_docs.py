"""Every Python example of README.md and docs/*.md runs, so the docs stay true.

Each ```python block runs on its own (fresh globals) in a temporary working folder holding the files the
examples name (``photo.png``, ``faces/``, ``real/``, ``out/``, ``cats/``: :func:`sandbox`), offline
(``ILVR_OFFLINE=1``) with an empty model cache: the built-in ``demo`` model is the only one they can use.
A block of ``>>>`` lines runs as a doctest. The few blocks that cannot run here are listed below with why.
"""

from __future__ import annotations

import doctest
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
PAGES = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@dataclass(frozen=True)
class Block:
    """One ```python block: its page (relative to the repository), the line of its first code line."""

    page: str
    line: int
    code: str

    def __str__(self) -> str:
        return f"{self.page}:{self.line}"

    def has(self, marker: str) -> bool:
        return marker in self.code


def collect() -> list[Block]:
    blocks = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for match in re.finditer(r"^```python[^\n]*\n(.*?)^```", text, flags=re.S | re.M):
            line = text.count("\n", 0, match.start(1)) + 1
            blocks.append(Block(page.relative_to(REPO).as_posix(), line, match.group(1)))
    return blocks


#: Blocks that are not run, matched by (page, a line they contain): only those that need a real download
#: or a GPU. Prefer rewriting an example with the ``demo`` model.
SKIP: dict[tuple[str, str], str] = {
    ("docs/models.md", 'load_checkpoint("ffhq_10m.pt")'): (
        "download: ilvr_adm's ffhq_10m.pt and a diffusers snapshot (the formats themselves are tested in "
        "test_checkpoints.py and test_diffusers_parity.py), and a GPU"
    ),
}

#: Blocks known to fail until their page (outside this test's scope) is fixed: run as strict xfails, so
#: the entry must go once the page is fixed (an XPASS fails), and a stale entry fails test_lists_are_current.
PENDING: dict[tuple[str, str], str] = {}

#: Blocks over a few seconds on a loaded 2-core CPU (marked slow).
SLOW = {("docs/metrics.md", "load_fid_inception(None")}


def _entry(block: Block, table: dict[tuple[str, str], str] | set[tuple[str, str]]) -> tuple[str, str] | None:
    for page, marker in table:
        if block.page == page and block.has(marker):
            return page, marker
    return None


def _params() -> list:
    params = []
    for block in collect():
        if _entry(block, SKIP):
            continue
        marks = []
        pending = _entry(block, PENDING)
        if pending:
            marks.append(pytest.mark.xfail(reason=PENDING[pending], strict=True))
        if _entry(block, SLOW):
            marks.append(pytest.mark.slow)
        if _entry(block, STUBS):  # FID of the sandbox's four images: a singular covariance, as it warns
            marks.append(pytest.mark.filterwarnings("ignore::ilvr_cli.metrics.fid.SingularCovarianceWarning"))
        params.append(pytest.param(block, id=str(block), marks=marks))
    return params


# ---------------------------------------------------------------------------------------------- the sandbox
def _smooth(seed: int, size: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray((rng.uniform(0.1, 0.9, (6, 6, 3)) * 255).astype(np.uint8))
    smooth = np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float64)
    return np.clip(smooth + rng.normal(0, 6, smooth.shape), 0, 255).astype(np.uint8)


def sandbox(folder: Path) -> Path:
    """The files the examples name, as a user would have them: a photo, folders of 32x32 images, and
    ``cats/`` of 48x40 JPEGs."""
    Image.fromarray(_smooth(0, 256)).save(folder / "photo.png")
    for name, count, seed in (("faces", 8, 100), ("real", 4, 200), ("out", 4, 300)):
        (folder / name).mkdir()
        for i in range(count):
            Image.fromarray(_smooth(seed + i, 32)).save(folder / name / f"{i:03d}.png")
    (folder / "cats").mkdir()  # photos of another size (for fit="crop")
    for i in range(3):
        Image.fromarray(_smooth(400 + i, 48)[:40]).save(folder / "cats" / f"{i:03d}.jpg", quality=90)
    return folder


def _stub_fid_inception(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The published FID Inception weights are a 92 MB download: random weights in their layout stand in
    (``ilvr_cli.metrics.inception.random_state_dict``), served where the registry would serve the file."""
    import torch

    import ilvr_cli.registry
    from ilvr_cli.metrics.inception import REGISTRY_NAME, random_state_dict

    weights = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(random_state_dict(), weights)

    def fetch(name: str, *args: object, **kwargs: object) -> Path:
        assert name == REGISTRY_NAME
        return weights

    monkeypatch.setattr(ilvr_cli.registry, "fetch", fetch)


#: Downloads replaced by a local stand-in for the blocks that contain the marker.
STUBS: dict[tuple[str, str], Callable[[Path, pytest.MonkeyPatch], None]] = {
    ("docs/metrics.md", "load_fid_inception(None"): _stub_fid_inception,
}


# ---------------------------------------------------------------------------------------------- the tests
@pytest.mark.parametrize("block", _params())
def test_example_runs(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ILVR_OFFLINE", "1")
    monkeypatch.setenv("ILVR_CACHE_DIR", str(tmp_path / "cache"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(sandbox(work))
    stub = _entry(block, STUBS)
    if stub:
        STUBS[stub](tmp_path, monkeypatch)
    import torch

    torch.manual_seed(0)
    if block.code.lstrip().startswith(">>>"):
        parser, runner = (
            doctest.DocTestParser(),
            doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE),
        )
        test = parser.get_doctest(block.code, {}, str(block), block.page, block.line - 1)
        result = runner.run(test)
        assert result.failed == 0, f"{block}: {result.failed} of {result.attempted} doctest lines failed"
        return
    exec(compile(block.code, str(block), "exec"), {"__name__": "__docs__"})


def test_lists_are_current() -> None:
    """Every skip, pending, slow and stub entry matches exactly one block; skips are downloads or GPUs."""
    blocks = collect()
    for table in (SKIP, PENDING, SLOW, STUBS):
        for page, marker in table:
            found = [b for b in blocks if b.page == page and b.has(marker)]
            assert len(found) == 1, f"{page}: {len(found)} python blocks contain {marker!r}"
    for reason in SKIP.values():
        assert reason.startswith(("download:", "GPU:")), reason


def test_the_api_page_keeps_runnable_one_call_examples() -> None:
    runnable = [b for b in collect() if b.page == "docs/api.md" and not _entry(b, SKIP)]
    assert any(b.has("ilvr_cli.upscale(") and b.has('model="demo"') for b in runnable)
    assert any(b.has("ILVRHook(") and b.has("sample(") for b in runnable), "the tensor-level example is gone"


def test_every_docs_page_is_linked_from_the_index() -> None:
    index = (DOCS / "index.md").read_text()
    pages = sorted(p.name for p in DOCS.glob("*.md") if p.name != "index.md")
    missing = [p for p in pages if f"({p})" not in index]
    assert not missing, f"docs/index.md does not link {missing}"
