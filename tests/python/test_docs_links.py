"""Every relative link in README.md and docs/*.md names a file that exists and, with #anchor,
a heading of that file (GitHub's anchors: lower case, punctuation dropped, spaces -> '-')."""
import glob
import os
import re

import pytest
from conftest import ROOT

PAGES = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def anchors(path):
    """GitHub's heading anchors of a Markdown file (code blocks skipped; duplicates get -1, -2)."""
    out, seen, fence = set(), {}, False
    for line in open(path, encoding="utf-8"):
        if line.lstrip().startswith("```"):
            fence = not fence
            continue
        m = None if fence else re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def links(path):
    text, fence, out = open(path, encoding="utf-8").read(), False, []
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fence = not fence
        elif not fence:
            out += LINK.findall(line)
    return [u for u in out if not re.match(r"[a-z]+:", u)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: os.path.relpath(p, ROOT))
def test_relative_links_resolve(page):
    bad = []
    for url in links(page):
        target, _, anchor = url.partition("#")
        path = os.path.normpath(os.path.join(os.path.dirname(page), target)) if target else page
        if not os.path.exists(path):
            bad.append(f"{url}: no file {os.path.relpath(path, ROOT)}")
        elif anchor and path.endswith(".md") and anchor not in anchors(path):
            bad.append(f"{url}: no heading #{anchor} in {os.path.relpath(path, ROOT)}")
    assert not bad, bad


def test_the_checker_catches_a_broken_link(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# A title, with punctuation!\n[x](p.md#a-title-with-punctuation) [y](nope.md) [z](#missing)\n")
    assert anchors(str(page)) == {"a-title-with-punctuation"}
    assert links(str(page)) == ["p.md#a-title-with-punctuation", "nope.md", "#missing"]
