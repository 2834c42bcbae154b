"""The registry's modules import each other in one direction only (no import cycles)."""

from __future__ import annotations

import ast
from pathlib import Path

import ilvr_cli.registry

PACKAGE = "ilvr_cli.registry"


def registry_imports() -> dict[str, set[str]]:
    """module -> the registry modules it imports (anywhere in the file, lazy imports included)."""
    folder = Path(ilvr_cli.registry.__file__).parent
    modules = {p.stem for p in folder.glob("*.py") if p.stem != "__init__"}
    graph: dict[str, set[str]] = {}
    for name in modules:
        deps: set[str] = set()
        for node in ast.walk(ast.parse((folder / f"{name}.py").read_text(encoding="utf-8"))):
            module = (node.module or "") if isinstance(node, ast.ImportFrom) else ""
            if isinstance(node, ast.ImportFrom) and module == PACKAGE:
                deps |= {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.ImportFrom) and module.startswith(PACKAGE + "."):
                deps.add(module.removeprefix(PACKAGE + "."))
            elif isinstance(node, ast.Import):
                deps |= {
                    a.name.removeprefix(PACKAGE + ".") for a in node.names if a.name.startswith(PACKAGE + ".")
                }
        graph[name] = deps - {name}
    return graph


def test_no_module_imports_one_that_imports_it_back() -> None:
    graph = registry_imports()
    assert "catalog" in graph["resolve"] and "lock" in graph["cache"]  # the parser sees the imports

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(
            d == goal or (d not in seen and reaches(d, goal, seen | {d})) for d in graph.get(start, ())
        )

    cycles = sorted(m for m in graph if reaches(m, m, {m}))
    assert cycles == [], f"import cycles through {cycles}: {graph}"


#: The downloader, bottom up: each module imports only modules before it (docs/registry.md, "Code layout").
DOWNLOADER = ["progress", "hub", "transfer", "gdrive", "fetch", "cached", "download"]


def test_the_downloader_is_layered_and_used_through_download() -> None:
    graph = registry_imports()
    assert set(DOWNLOADER) <= set(graph), f"a downloader module is gone: {sorted(graph)}"
    for i, name in enumerate(DOWNLOADER):
        later = graph[name] & set(DOWNLOADER[i:])
        assert not later, f"{name} imports {sorted(later)}, which come after it in {DOWNLOADER}"
    for name in set(graph) - set(DOWNLOADER):
        inner = graph[name] & set(DOWNLOADER) - {"download"}
        assert not inner, f"{name} imports {sorted(inner)}: the rest of the registry goes through download"


def test_download_still_exports_its_public_names() -> None:
    from ilvr_cli.registry import download

    for name in ("DownloadOptions", "DownloadProgress", "FetchedFile", "NullProgress", "GDRIVE_DOWNLOAD_URL",
                 "cached_file", "ensure_file", "format_bytes"):  # fmt: skip
        assert name in download.__all__ and hasattr(download, name)
