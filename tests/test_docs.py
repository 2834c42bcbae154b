"""The documentation's runnable examples run, so the docs stay true."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)


def test_api_page_example_runs() -> None:
    blocks = _python_blocks(DOCS / "api.md")
    runnable = [b for b in blocks if "sample(" in b]
    assert runnable, "docs/api.md lost its runnable ILVR example"
    import torch

    torch.manual_seed(0)
    exec(compile(runnable[0], "docs/api.md", "exec"), {})


def test_every_docs_page_is_linked_from_the_index() -> None:
    index = (DOCS / "index.md").read_text()
    pages = sorted(p.name for p in DOCS.glob("*.md") if p.name != "index.md")
    missing = [p for p in pages if f"({p})" not in index]
    assert not missing, f"docs/index.md does not link {missing}"
