"""The documentation holds together: README.md stays short, and README.md and docs/ link only to files that
exist (anchors to headings that exist), name only Makefile targets that exist, and docs/index.md reaches every
page. Standard library and pytest only."""

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
INDEX = DOCS / "index.md"
README_MAX_LINES = 150

PAGES = [README, *sorted(DOCS.rglob("*.md"))]

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.S)
#: [text](target "title") and ![alt](target); the text may hold one level of brackets (an image inside a link)
INLINE_LINK = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^()\s]*(?:\([^()\s]*\)[^()\s]*)*)(?:\s+[\"'(].*?[\"')])?\s*\)"
)
REFERENCE_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)", re.M)
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
MAKE = re.compile(r"(?<![\w./-])make\b(?![\w.-])")
MAKE_TARGET_LINE = re.compile(r"^([A-Za-z0-9_][A-Za-z0-9_.-]*)\s*:(?!=)", re.M)


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def split_code(text: str) -> tuple[str, list[str]]:
    """The text outside code (fenced blocks and code spans blanked, line numbers kept) and the code pieces."""
    prose, code, block, fence = [], [], [], None
    for line in text.splitlines():
        m = FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)
            prose.append("")
        elif fence is not None:
            if line.strip().startswith(fence[0] * len(fence)) and not line.strip().strip(fence[0]):
                code.append("\n".join(block))
                block, fence = [], None
            else:
                block.append(line)
            prose.append("")
        else:
            prose.append(line)
    if block:
        code.append("\n".join(block))
    joined = "\n".join(prose)
    code += [m.group(2) for m in CODE_SPAN.finditer(joined)]
    return CODE_SPAN.sub(lambda m: " " * len(m.group(0)), joined), code


def links(text: str) -> list[str]:
    prose, _ = split_code(text)
    found = [m.group(1) for m in INLINE_LINK.finditer(prose)] + [
        m.group(1) for m in REFERENCE_DEF.finditer(prose)
    ]
    return [t[1:-1] if t.startswith("<") and t.endswith(">") else t for t in found]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text, lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    prose, _ = split_code(path.read_text())
    seen: dict[str, int] = {}
    out = set()
    for line in prose.splitlines():
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def resolve(page: Path, target: str) -> tuple[Path | None, str]:
    """(file, anchor) a relative link points at; file None for an external link."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:, ...
        return None, ""
    path, _, anchor = target.partition("#")
    path = unquote(path)
    if not path:
        return page, anchor
    base = ROOT if path.startswith("/") else page.parent
    return (base / path.lstrip("/")).resolve(), anchor


def broken_links(page: Path) -> list[str]:
    problems = []
    for target in links(page.read_text()):
        if not target:
            problems.append("an empty link target ()")
            continue
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) and not target.lower().startswith(
            ("http:", "https:", "mailto:")
        ):
            problems.append(f"{target}: a link with scheme other than http(s) or mailto")
            continue
        file, anchor = resolve(page, target)
        if file is None:
            continue
        if not file.is_relative_to(ROOT):
            problems.append(f"{target}: points outside the repository")
        elif not file.exists():
            problems.append(f"{target}: no such file ({rel(file)})")
        elif anchor and file.suffix == ".md" and anchor.lower() not in anchors(file):
            problems.append(f"{target}: no heading with anchor #{anchor} in {rel(file)}")
    return problems


def make_targets_named(text: str) -> set[str]:
    """The target after each `make` in code spans and code blocks: `make test`, `make pipeline PROFILE=nsd`,
    `make -n fetch`. Only the first word that is not an option or a variable counts, so that prose after it (in
    a comment or an error message: "make help lists them") is not read as more targets."""
    _, code = split_code(text)
    named = set()
    for piece in code:
        for m in MAKE.finditer(piece):
            for token in piece[m.end() :].split("\n", 1)[0].split():
                if token.startswith("-") or re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=\S*", token):
                    continue
                if re.fullmatch(r"[a-z][a-z0-9_-]*", token):
                    named.add(token)
                break  # the target, or a shell separator, a comment, a path: `make` alone
    return named


def makefile_targets() -> set[str]:
    return {t for t in MAKE_TARGET_LINE.findall((ROOT / "Makefile").read_text()) if not t.startswith(".")}


def test_docs_exist():
    assert README.is_file(), "README.md is missing"
    assert INDEX.is_file(), "docs/index.md is missing"


def test_readme_is_short():
    n = len(README.read_text().splitlines())
    assert n <= README_MAX_LINES, (
        f"README.md has {n} lines; at most {README_MAX_LINES} (move detail into docs/)"
    )


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_links_resolve(page):
    problems = broken_links(page)
    assert not problems, f"{rel(page)}: broken links:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_make_targets_exist(page):
    missing = sorted(make_targets_named(page.read_text()) - makefile_targets())
    assert not missing, f"{rel(page)}: names make targets the Makefile lacks: {', '.join(missing)}"


def test_index_links_every_page_and_readme_links_index():
    def linked(page: Path) -> set[Path]:
        return {f for f, _ in (resolve(page, t) for t in links(page.read_text())) if f is not None}

    unlinked = [rel(p) for p in sorted(DOCS.rglob("*.md")) if p != INDEX and p.resolve() not in linked(INDEX)]
    assert not unlinked, f"docs/index.md does not link: {', '.join(unlinked)}"
    assert INDEX.resolve() in linked(README), "README.md does not link docs/index.md"


def test_checks_find_what_they_should():
    """The parsers themselves, on hand-written text: links in code are not links, anchors are GitHub's slugs."""
    text = '[a](x.md) ![b](fig/y.png "t") `[c](z.md)` [d](https://e.org) [e](#Two-commands)\n```\n[f](g.md)\nmake test\n```\n'
    assert links(text) == ["x.md", "fig/y.png", "https://e.org", "#Two-commands"]
    assert make_targets_named(text) == {"test"}
    assert make_targets_named("`make pipeline PROFILE=nsd NPROC=8`, `make -n fetch`; `make` alone") == {
        "pipeline",
        "fetch",
    }
    assert make_targets_named("```\nmake test   # the whole suite\nmake figures\n```") == {"test", "figures"}
    assert make_targets_named(
        "`(make fetch SUBJECT=1 NSD_ROOT=... downloads it)`, `make help lists them`"
    ) == {"fetch", "help"}
    assert make_targets_named("`make PROFILE=quick docs`") == {"docs"}
    assert (
        slug("Two pathways: where in the image (notebooks 02-05)")
        == "two-pathways-where-in-the-image-notebooks-02-05"
    )
    assert slug("Pretrained models (`models/`, `make pretrain`)") == "pretrained-models-models-make-pretrain"
