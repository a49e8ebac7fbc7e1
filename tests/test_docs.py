"""The docs point at what exists: every relative link in README.md, docs/, benchmarks/ and examples/ reaches a file
(and, for a Markdown file, its heading), and every test the docs cite by name is in the suite. A file renamed, a
heading reworded or a test renamed otherwise leaves the docs pointing at nothing, silently."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    *sorted((ROOT / "benchmarks").rglob("*.md")),
    *sorted((ROOT / "examples").rglob("*.md")),
]
LINK = re.compile(r"\]\(([^)\s]+)\)")
# A cited test: `test_` and at least three more words (tags such as `test_set_uses` are shorter).
CITED_TEST = re.compile(r"`(?:tests/[\w/]+\.py::)?(test(?:_[a-z0-9]+){4,})`")


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: its text (link targets and code marks dropped), lower case, punctuation
    other than '-' and '_' dropped, spaces as '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(markdown: Path) -> set[str]:
    """The anchors of ``markdown``'s headings (outside code fences); a repeated heading gets -1, -2, ... as on
    GitHub."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    fenced = False
    for line in markdown.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (heading := re.match(r"#+\s+(.*)", line)):
            anchor = github_anchor(heading.group(1))
            count = seen.get(anchor, 0)
            seen[anchor] = count + 1
            found.add(anchor if count == 0 else f"{anchor}-{count}")
    return found


def broken_links(doc: Path) -> list[str]:
    broken = []
    for target in LINK.findall(doc.read_text()):
        if re.match(r"[a-z]+:", target):  # https:, mailto:: not ours to check offline
            continue
        path, _, anchor = target.partition("#")
        linked = (doc.parent / path).resolve() if path else doc
        if not linked.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target} (no such heading)")
    return broken


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: str(doc.relative_to(ROOT)))
def test_every_relative_link_reaches_a_file_and_heading(doc):
    assert broken_links(doc) == []


def test_every_test_the_docs_cite_is_in_the_suite():
    suite = "\n".join(path.read_text() for path in (ROOT / "tests").glob("*.py"))
    defined = set(re.findall(r"^(?:async )?def (test_\w+)\(", suite, flags=re.MULTILINE))
    cited = {(str(doc.relative_to(ROOT)), name) for doc in DOCS for name in CITED_TEST.findall(doc.read_text())}
    assert cited, "the pattern finds no cited test: it no longer matches how the docs cite them"
    assert sorted((doc, name) for doc, name in cited if name not in defined) == []


def test_the_checks_find_a_broken_link_a_missing_heading_and_a_made_up_test(tmp_path):
    """The same functions on a page made to fail them: each kind of breakage is reported."""
    (tmp_path / "other.md").write_text("# Sealed runs: provenance with a `key`\n\n```\n# not a heading\n```\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md#sealed-runs-provenance-with-a-key) [gone](missing.md) [no heading](other.md#not-a-heading) "
        "[web](https://example.org/x) `test_that_nobody_ever_wrote_here`"
    )
    assert broken_links(page) == ["missing.md (no such file)", "other.md#not-a-heading (no such heading)"]
    assert CITED_TEST.findall(page.read_text()) == ["test_that_nobody_ever_wrote_here"]


def test_the_readme_shows_the_example_task_as_it_is():
    """README.md prints examples/cancer_task/cancer_task.py whole: the two are one text, so a fix to either shows."""
    example = (ROOT / "examples" / "cancer_task" / "cancer_task.py").read_text()
    assert f"```python\n{example}```" in (ROOT / "README.md").read_text()
