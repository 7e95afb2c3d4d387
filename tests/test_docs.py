"""The API reference: every page's examples run, the nav documents every public module, and the
site builds with warnings as errors (so a broken cross-reference or docstring fails)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CONFIG = ROOT / "mkdocs.yml"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
DIRECTIVE = re.compile(r"^::: ([\w.]+)((?:\n    .*)*)", re.M)
# A block that only one TransformerLens line can run starts with one of these comments.
ONLY = {"# TransformerLens 2.x only": "hooked", "# TransformerLens 4.x only": "bridge-only"}


def nav_pages() -> list[str]:
    """The Markdown files named in mkdocs.yml's nav, in order."""
    text = CONFIG.read_text()
    nav = text[text.index("\nnav:\n") + len("\nnav:\n") :]
    pages = []
    for line in nav.splitlines():
        if not line.startswith("  - "):
            break
        pages.append(line.rsplit(":", 1)[1].strip())
    return pages


def runs_here(code: str) -> bool:
    """Whether a TransformerLens-specific block applies to the installed TransformerLens."""
    from belief_lens import tl_compat

    first = code.splitlines()[0] if code else ""
    if ONLY.get(first) == "hooked":
        return tl_compat.is_hooked_transformer_available()
    if ONLY.get(first) == "bridge-only":
        return not tl_compat.is_hooked_transformer_available()
    return True


def public_modules() -> list[str]:
    """Every module of belief_lens whose dotted name has no part starting with ``_``."""
    names = []
    for path in sorted((ROOT / "belief_lens").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        if not any(p.startswith("_") for p in parts):
            names.append(".".join(parts))
    return names


def documented(pages: list[str]) -> tuple[set[str], set[str]]:
    """Modules rendered by ``:::`` directives: ``(exact, with_submodules)``."""
    exact, recursive = set(), set()
    for page in pages:
        for name, options in DIRECTIVE.findall((DOCS / page).read_text()):
            exact.add(name)
            if "show_submodules: false" not in options:
                recursive.add(name)
    return exact, recursive


def test_nav_lists_every_page():
    pages = nav_pages()
    assert len(pages) >= 8 and pages[0] == "index.md"
    assert sorted(pages) == sorted(p.name for p in DOCS.glob("*.md"))


def test_nav_covers_every_public_module():
    """A new module fails here until a page renders it (itself, or a package above it)."""
    assert "show_submodules: true" in CONFIG.read_text()
    exact, recursive = documented(nav_pages())
    missing = [
        name
        for name in public_modules()
        if name not in exact and not any(name.startswith(package + ".") for package in recursive)
    ]
    assert not missing, f"modules with no page in the API reference: {missing}"
    unknown = exact - set(public_modules())
    assert not unknown, f"directives naming no public module: {sorted(unknown)}"


def test_every_page_has_an_example():
    for page in nav_pages():
        assert BLOCK.findall((DOCS / page).read_text()), f"{page} has no python example"


@pytest.mark.slow
@pytest.mark.parametrize("page", nav_pages())
def test_page_examples_run(page, capsys):
    """A page's python blocks run in order in one namespace, as a reader would paste them."""
    namespace: dict = {"__name__": f"docs_{page[:-3].replace('-', '_')}"}
    ran = 0
    for i, code in enumerate(BLOCK.findall((DOCS / page).read_text())):
        if runs_here(code):
            exec(compile(code, f"{DOCS / page}[block {i}]", "exec"), namespace)
            ran += 1
    assert ran


def test_byo_model_page_shows_both_transformerlens_lines():
    text = (DOCS / "models.md").read_text()
    blocks = BLOCK.findall(text)
    firsts = [code.splitlines()[0] for code in blocks]
    for marker in ONLY:
        assert marker in firsts
    assert "HookedTransformer(cfg)" in text and "TransformerBridge.boot_native(cfg)" in text


def build(config: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        cwd=config.parent,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_site_builds_strict(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    result = build(CONFIG, tmp_path / "site")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "WARNING" not in result.stderr
    html = (tmp_path / "site" / "probing.html").read_text()
    assert "fit_probes" in html  # the docstrings were rendered, not just the prose


@pytest.mark.slow
def test_broken_reference_fails_the_build(tmp_path):
    """Warnings are errors: a cross-reference to nothing stops the build."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    shutil.copytree(DOCS, tmp_path / "docs")
    config = CONFIG.read_text().replace("paths: [.]", f"paths: [{ROOT}]")
    assert config != CONFIG.read_text()
    (tmp_path / "mkdocs.yml").write_text(config)
    with open(tmp_path / "docs" / "probing.md", "a") as page:
        page.write("\nSee [the missing function][belief_lens.probes.no_such_function].\n")
    result = build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0
    assert "no_such_function" in result.stderr
