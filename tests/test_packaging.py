"""What the wheel promises, checked from the sources (CI builds and runs the wheel itself, .ci/run):
the project URLs, the README's commands, and one copy of the example inputs (the package data)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: build (the test extra) depends on tomli there
    import tomli as tomllib  # type: ignore[no-redef]

from ilvr_cli.examples import example_sets

ROOT = Path(__file__).resolve().parents[1]
REPOSITORY = "https://github.com/ilvr-cli/ilvr-cli"


def _bash_blocks(page: Path) -> list[str]:
    return re.findall(r"```bash\n(.*?)\n```", page.read_text(encoding="utf-8"), flags=re.S)


def test_project_urls_name_the_repository() -> None:
    urls = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["urls"]
    assert set(urls) == {"Homepage", "Documentation", "Repository", "Issues", "Changelog"}
    assert all(url.startswith(REPOSITORY) for url in urls.values()), urls


def test_readme_first_command_copies_the_examples_then_runs_a_task_on_them() -> None:
    """The README's first command must work from the wheel alone: its input comes from `ilvr examples`."""
    first = _bash_blocks(ROOT / "README.md")[0]
    steps = [shlex.split(s) for s in first.split(" && ") if s.strip().startswith(".venv/bin/ilvr ")]
    assert len(steps) == 2, first
    (_, command, dest), (_, task, source, *_) = steps
    assert command == "examples" and task == "upscale"
    relative = Path(source).relative_to(dest).as_posix()  # the task reads what `ilvr examples` wrote
    shipped = {f"{s.name}/{f}" for s in example_sets() for f in s.files}
    assert any(f.startswith(relative + "/") and f.endswith(".png") for f in shipped), relative


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    test_command = _bash_blocks(ROOT / "README.md")[1]
    assert test_command in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_the_examples_have_one_copy_the_package_data() -> None:
    """No second copy of the example inputs outside the package, and no page pointing at one."""
    assert not (ROOT / "examples").exists()
    stale = re.compile(r"(?<![\w/.-])examples/digits")
    pages = [
        ROOT / "README.md",
        ROOT / "CONTRIBUTING.md",
        ROOT / "src" / "ilvr_cli" / "data" / "catalog.json",
    ]
    pages += [*ROOT.glob("docs/*.md"), *ROOT.glob("scripts/*"), *ROOT.glob("benchmarks/*.py")]
    found = [p.relative_to(ROOT).as_posix() for p in pages if p.is_file() and stale.search(p.read_text())]
    assert not found, f"these still point at examples/digits/ (now ilvr_cli/data/examples/digits): {found}"
