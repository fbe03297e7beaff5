"""The README and docs/ point at things that exist: every relative link and image resolves, every
``#anchor`` is a heading of its page, every ``docs/x.md, "Section"`` names a section of that page,
and every repository path they mention is in the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"```.*?```", re.S)


def _prose(page: Path) -> str:
    """The page without its code blocks (whose brackets and quotes are code, not links)."""
    return FENCE.sub("", page.read_text())


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _sections(page: Path) -> tuple[set[str], set[str]]:
    """A page's heading anchors, and the titles of its sections: headings and bold paragraph leads
    (``**Action guidance**``, ``- **Ranked moves: ...**``), which the docs cite by name."""
    text = _prose(page)
    headings = [h.replace("`", "") for h in re.findall(r"^#{1,6}\s+(.+?)\s*$", text, re.M)]
    leads = re.findall(r"^(?:- )?\*\*([^*]+)\*\*", text, re.M)
    return {_anchor(h) for h in headings}, {*headings, *leads}


def _cited(title: str, sections: set[str]) -> bool:
    """Whether a cited section title is a heading or a bold lead, or how one of them starts."""
    return any(
        s == title or s.startswith((f"{title}:", f"{title}.", f"{title},", f"{title} ("))
        for s in sections
    )


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_and_images_resolve(page: Path) -> None:
    bad = []
    for target in re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", _prose(page)):
        if re.match(r"[a-z]+:", target):  # https:, mailto:: not ours to check offline
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and anchor not in _sections(dest)[0]:
            bad.append(f"{target}: {dest.name} has no heading with that anchor")
    assert not bad, f"{page.name}: " + "; ".join(bad)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_cited_sections_exist(page: Path) -> None:
    text = " ".join(_prose(page).split())
    cites = re.findall(r"\b(?:docs/)?([a-z]+\.md),? \(?\"([^\"]+)\"", text)
    assert page.name != "README.md" or cites  # the README cites docs/model.md's sections by name
    bad = [
        f'{doc}, "{title}"'
        for doc, title in cites
        if not _cited(title, _sections(ROOT / "docs" / doc)[1])
    ]
    assert not bad, f"{page.name} cites sections that do not exist: {bad}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_repository_paths_exist(page: Path) -> None:
    text = page.read_text()
    paths = re.findall(
        r"(?<![\w/.-])((?:worldsim|envs|agents|export|tests|docs)/[\w./*?-]*[\w*?])", text
    )
    # worldsim/BlockWorld-v0 and worldsim/Dream-v0 are env ids, not paths; a __pycache__
    # folder is made by running the code (absent in a fresh checkout, or with
    # PYTHONDONTWRITEBYTECODE), so the docs may name it without its being in the repository
    missing = sorted(
        {
            p
            for p in paths
            if not re.fullmatch(r"worldsim/[A-Z]\w*-v\d+", p)
            and "__pycache__" not in p.split("/")
            and not any(ROOT.glob(p))
        }
    )
    assert not missing, f"{page.name} names files that are not in the repository: {missing}"
