"""The documentation holds to the code and to itself: every option has an
entry in the manual page and a mention in the README or a guide, the manual
documents no option the parser does not know, every relative link in the
README and in docs/ leads to a file (and a heading) that exists, every
guide is reachable from the README, and the module map names every module."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

from tests.helpers import ROOT

DOCS = ROOT / "docs"

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
INLINE_CODE = re.compile(r"`+[^`\n]*`+")
LINK = re.compile(r"(?<!!)\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)
MANUAL_ENTRY = re.compile(r"^\.TP\n\.B[IR]? (\\-\\-[a-z\\-]+)", re.M)


def markdown_files() -> List[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def prose(text: str) -> str:
    """The text without code blocks and inline code, where brackets are no links."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped,
    spaces turned into hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> Set[str]:
    seen: Dict[str, int] = {}
    found = set()
    for match in HEADING.finditer(FENCE.sub("", path.read_text())):
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def relative_links(path: Path) -> Iterator[Tuple[str, Path, str]]:
    """(link as written, the file it names, the anchor or '') for each link
    that is not a URL."""
    for match in LINK.finditer(prose(path.read_text())):
        target = match.group(1)
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, man:
            continue
        file_part, _, anchor = target.partition("#")
        yield target, (path.parent / file_part).resolve() if file_part else path, anchor


def test_the_markdown_files_exist() -> None:
    names = {path.name for path in DOCS.glob("*.md")}
    assert {"architecture.md", "service.md", "mail-clients.md", "users.md", "tls.md", "queue.md",
            "containers.md", "migrating.md", "performance.md", "reliability.md"} <= names


def test_every_relative_link_resolves() -> None:
    broken = []
    for path in markdown_files():
        for target, file, anchor in relative_links(path):
            where = f"{path.relative_to(ROOT)}: ({target})"
            if not file.exists():
                broken.append(f"{where}: no such file")
            elif anchor and (file.suffix != ".md" or anchor not in anchors(file)):
                broken.append(f"{where}: no heading #{anchor}")
    assert not broken, "\n".join(broken)


def test_the_link_check_sees_a_broken_link(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# A page\n\n[here](page.md#a-page), [gone](gone.md), [no](page.md#nowhere),"
                    " `[code](gone.md)`, [web](https://example.org/x)\n")
    links = [(target, file.exists(), not anchor or anchor in anchors(file))
             for target, file, anchor in relative_links(page)]
    assert links == [("page.md#a-page", True, True), ("gone.md", False, True),
                     ("page.md#nowhere", True, False)]


def test_every_guide_is_linked_from_the_readme() -> None:
    linked = {file for _, file, _ in relative_links(ROOT / "README.md")}
    for guide in DOCS.glob("*.md"):
        assert guide.resolve() in linked, guide.name


def test_the_manual_and_the_docs_document_every_option() -> None:
    """Each option of the option table has an entry in msmtpd.1 (the
    complete reference) and is named in the README or a guide; the manual
    has no entry for an option the table does not hold."""
    from msmtpd.base.options import OPTIONS

    names = {option.name for option in OPTIONS}
    page = (ROOT / "msmtpd.1").read_text()
    docs = "\n".join(path.read_text() for path in markdown_files())
    for option in OPTIONS:
        roff = option.name.replace("-", "\\-")
        if option.value is None:  # a flag
            assert f"\n.TP\n.B {roff}\n" in page, option.name
        else:  # the manual names the value as --help does: --port=NUMBER
            word = re.match(r"[A-Z]*", option.value).group()
            assert f"\n.TP\n.BI {roff}= {word}" in page or f"\n.TP\n.BR {roff}=" in page, option.name
        assert f"`{option.name}" in docs, option.name
    in_manual = {entry.replace("\\-", "-") for entry in MANUAL_ENTRY.findall(page)}
    assert in_manual == names


def test_the_module_map_names_every_module() -> None:
    """docs/architecture.md maps every module of the package, between its markers."""
    text = (DOCS / "architecture.md").read_text()
    start, end = text.index("<!-- module map: begin"), text.index("<!-- module map: end -->")
    section = text[start:end]
    package = ROOT / "msmtpd"
    for module in sorted(package.rglob("*.py")):
        name = module.relative_to(package).as_posix()
        if module.name != "__init__.py":
            assert f"`{name}`" in section, name
