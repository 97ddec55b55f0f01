"""The README is a front door and docs/ holds the rest: every relative link in them resolves, the README stays short,
and the command line and the make targets are documented where a reader looks for them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.unit.cli_tree import leaf_commands

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 200

FENCE = re.compile(r"^(```|~~~).*?^\1\s*$", re.S | re.M)
CODE_SPAN = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.S)
INLINE_LINK = re.compile(r"!?\[(?P<text>(?:[^\[\]]|\[[^\]]*\])*)\]\(\s*<?(?P<target>[^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(?P<target>\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.M)
HEADING = re.compile(r"^ {0,3}#{1,6}\s+(?P<title>.+?)\s*#*\s*$", re.M)
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # http:, https:, mailto:, ...


def _prose(markdown: str) -> str:
    """The text links and headings live in: fenced code blocks and code spans removed."""
    return CODE_SPAN.sub("", FENCE.sub("", markdown))


def github_slug(title: str) -> str:
    """The anchor GitHub gives a heading: its rendered text, lower-cased, with everything but letters, digits,
    `_`, `-` and spaces dropped, and spaces made hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", title)  # a link renders as its text
    text = text.replace("`", "")
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    counts: dict[str, int] = {}
    for match in HEADING.finditer(FENCE.sub("", page.read_text())):
        slug = github_slug(match["title"])
        found.add(slug if slug not in counts else f"{slug}-{counts[slug]}")
        counts[slug] = counts.get(slug, 0) + 1
    return found


def relative_links(page: Path) -> list[str]:
    prose = _prose(page.read_text())
    targets = [m["target"] for m in INLINE_LINK.finditer(prose)]
    targets += [m["target"] for m in REFERENCE_DEFINITION.finditer(prose)]
    return [target for target in targets if target and not EXTERNAL.match(target)]


def broken(page: Path, target: str) -> str | None:
    """Why `target`, a link in `page`, does not resolve; None when it does."""
    path_part, _, anchor = target.partition("#")
    resolved = (page.parent / path_part).resolve() if path_part else page
    if not resolved.is_relative_to(ROOT):
        return "points outside the repository"
    if not resolved.exists():
        return "no such file"
    if anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
        return f"{resolved.relative_to(ROOT)} has no heading #{anchor}"
    return None


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    problems = [f"{target}: {why}" for target in relative_links(page) if (why := broken(page, target))]
    assert not problems, f"{page.relative_to(ROOT)}: " + "; ".join(problems)


def test_the_readme_is_a_front_door() -> None:
    readme = (ROOT / "README.md").read_text()
    lines = len(readme.splitlines())
    assert lines < README_MAX_LINES, f"README.md has {lines} lines; move detail into docs/"
    quick_start = readme[readme.index("## Quick start"):].split("\n## ")[0]
    assert re.findall(r"^make \w+$", quick_start, re.M) == ["make demo", "make test"]


def test_every_page_in_docs_is_reachable_from_the_index() -> None:
    index = relative_links(ROOT / "docs" / "README.md")
    linked = {(ROOT / "docs" / target.partition("#")[0]).resolve() for target in index}
    unlinked = [page.name for page in PAGES[1:] if page.name != "README.md" and page not in linked]
    assert not unlinked, f"docs/README.md does not link {unlinked}"


def test_slugs_follow_github() -> None:
    assert github_slug("O(1) control plane") == "o1-control-plane"
    assert github_slug("Variant menu (menu.json)") == "variant-menu-menujson"
    assert github_slug("The embedded stack and `kubectl`") == "the-embedded-stack-and-kubectl"
    assert github_slug("See [the agent](agent.md) – here") == "see-the-agent--here"


def test_a_broken_link_or_anchor_is_found(tmp_path: Path) -> None:
    page = ROOT / "docs" / "README.md"
    assert broken(page, "interfaces.md#naming") is None
    assert broken(page, "interfaces.md#no-such-heading") == "docs/interfaces.md has no heading #no-such-heading"
    assert broken(page, "no-such-page.md") == "no such file"
    assert broken(page, "../../outside.md") == "points outside the repository"
    sample = tmp_path / "sample.md"
    sample.write_text("[a](https://example.com) `[b](nowhere.md)`\n```\n[c](nowhere.md)\n```\n[d](x.md#y)\n")
    assert relative_links(sample) == ["x.md#y"]


def test_every_command_is_in_the_interfaces_page() -> None:
    page = (ROOT / "docs" / "interfaces.md").read_text()
    commands = [" ".join(["tinymlops", *path]) for path, _ in leaf_commands()]
    missing = [command for command in commands if f"`{command}" not in page]
    assert not missing, f"docs/interfaces.md does not document {missing}"


def test_every_make_target_is_in_the_development_page() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = re.search(r"^\.PHONY:(?P<targets>.*)$", makefile, re.M)
    assert targets is not None
    page = (ROOT / "docs" / "development.md").read_text()
    missing = [target for target in targets["targets"].split() if f"`make {target}`" not in page]
    assert not missing, f"docs/development.md does not document {missing}"
