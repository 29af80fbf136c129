"""Turning an HTML page into a title and text, in one of two modes (a per-source setting, `html_extraction`).

- `main_content` (the default): the page's main content, found by trafilatura, as markdown-like text: headings
  as `#` lines (h1-h6), list items as `- ` lines, table rows as `a | b` lines, code blocks verbatim between
  ``` fences, paragraphs separated by blank lines. Sidebars, search boxes, navigation, footers, "edit this page"
  and previous/next links are left out. Chosen over readability-lxml, jusText and resiliparse on generated
  Sphinx, MkDocs and Docusaurus pages (`benchmarks/bench_extraction.py`, RESULTS.md "Extraction").
- `reference`: the reference recipe's cleaning (drop `<nav>`, `<header>`, `div[role=list]`, scripts and styles,
  keep every other text), unchanged.

What trafilatura gets wrong on documentation sites is fixed on the DOM before it runs (`_prepare`), each in a
general way: heading permalinks (`¶`, `#` anchors) are removed; code blocks are normalised (line-number gutters
dropped, `<br>` line ends as Prism emits them turned into newlines, every <pre> given a <code>, without which it
reads as a quotation and loses its layout); the ids Sphinx gives sections after their headings are removed, since
trafilatura drops any section whose id starts like a layout word ("Sharding" as "share", "Related work"); the
reference's chrome (<nav>, the site's <header>, div[role=list]) is dropped and a page without an article or
main element gets one, since on short pages trafilatura otherwise falls back to the whole body. Its minimum size
is off for the same reason: a page that is all chrome must come out empty. Its text serializer is not used: it
escapes markdown characters in prose (`max\\_tokens`), drops blank lines inside code and unescapes entities a
second time (`&amp;region` becomes `®ion`); `_render` writes its XML tree instead.
"""

from __future__ import annotations

from configparser import ConfigParser
from dataclasses import dataclass

import lxml.html
import trafilatura
import trafilatura.settings
from bs4 import BeautifulSoup, UnicodeDammit
from lxml import etree

from raft_assets.contracts.sources import HtmlExtraction

# Site chrome the reference drops (nav, header, list widgets), plus what is not body text.
CHROME_TAGS = ["head", "nav", "header", "script", "style", "noscript", "template"]
# Elements that end a line of text even when the HTML has them on one line.
BLOCK_TAGS = ["p", "div", "section", "article", "h1", "h2", "h3", "h4", "h5", "h6", "li", "dt", "dd", "tr"]
BLOCK_TAGS += ["pre", "blockquote", "table", "ul", "ol", "br", "hr"]
# The reason recorded for a page that is all chrome (a file or a fetched page).
NO_TEXT_IN_PAGE = "no text in the page after removing scripts, styles, navigation and headers"

# What a heading's permalink shows: Sphinx and MkDocs "¶", Docusaurus "#" or a zero-width space, others "§", "🔗".
PERMALINK_MARKS = {"", "¶", "#", "§", "🔗", "\u200b"}
# Classes of the line-number gutters of Pygments (Sphinx, MkDocs), Prism and highlight.js.
LINE_NUMBER_CLASSES = {"linenos", "lineno", "linenodiv", "line-numbers-rows", "gutter"}
CODE_FENCE = "```"
# What the reference drops as chrome, except the <header> of an article (its title): trafilatura misses these
# on short pages, where it falls back to taking the whole body.
SITE_CHROME = "//nav | //header[not(ancestor::article or ancestor::main)] | //div[@role='list']"
# Without one of these, trafilatura reads a short page's body as one paragraph (headings and code flattened).
CONTENT_CONTAINERS = "//article | //main | //*[@role='main']"
# trafilatura's block elements: set apart by spaces when flattened into one line (an item's paragraphs).
BLOCK_ELEMENTS = {"p", "head", "list", "item", "quote", "table", "row", "cell", "code"}
HEADING_TAGS = {"h1", "h2", "h3", "h4", "h5", "h6"}


@dataclass(frozen=True)
class PageText:
    title: str
    text: str  # "" when nothing is left: the loader records NO_TEXT_IN_PAGE


def extract_page(data: str | bytes, mode: HtmlExtraction) -> PageText:
    """The page's title (its <title>, else its first <h1>) and its text in `mode`."""
    if mode == "reference":
        soup = BeautifulSoup(data, "lxml")
        return PageText(page_title(soup), page_text(soup))
    tree = _parse(data)
    if tree is None:
        return PageText("", "")
    _prepare(tree)
    return PageText(_tree_title(tree), main_content_text(tree))


# --------------------------------------------------------------------------- reference mode


def page_title(soup: BeautifulSoup) -> str:
    if soup.title and soup.title.get_text(strip=True):
        return soup.title.get_text(strip=True)
    heading = soup.find("h1")
    return heading.get_text(" ", strip=True) if heading else ""


def page_text(soup: BeautifulSoup) -> str:
    """The page's text without chrome: one line per block or source line, spaces collapsed.

    The reference joins all lines with spaces; keeping the line breaks lets the splitter cut at
    block boundaries.  Mutates `soup`.
    """
    for tag in soup.find_all(CHROME_TAGS):
        tag.decompose()
    for tag in soup.find_all("div", attrs={"role": "list"}):
        tag.decompose()
    for tag in soup.find_all(BLOCK_TAGS):
        tag.insert_before("\n")
        tag.insert_after("\n")
    lines = (" ".join(line.split()) for line in soup.get_text().splitlines())
    return "\n".join(line for line in lines if line)


# --------------------------------------------------------------------------- main-content mode


def _parse(data: str | bytes) -> lxml.html.HtmlElement | None:
    """The page as an lxml tree, decoded as BeautifulSoup decodes it (declared charset, BOM, then guesses)."""
    text = UnicodeDammit(data, is_html=True).unicode_markup if isinstance(data, bytes) else data
    if not text or not text.strip():
        return None
    parser = lxml.html.HTMLParser(encoding="utf-8", remove_comments=True)
    try:
        return lxml.html.document_fromstring(text.encode("utf-8", "replace"), parser=parser)
    except etree.ParserError:  # nothing but whitespace or comments
        return None


def _tree_title(tree: lxml.html.HtmlElement) -> str:
    """As `page_title`: the <title>'s text, else the first <h1>'s words."""
    title = tree.find(".//title")
    if title is not None and title.text_content().strip():
        return title.text_content().strip()
    heading = tree.find(".//h1")
    return " ".join(heading.text_content().split()) if heading is not None else ""


def _prepare(tree: lxml.html.HtmlElement) -> None:
    """Fix, on the DOM, what documentation generators emit and trafilatura mishandles."""
    for chrome in tree.xpath(SITE_CHROME):
        chrome.drop_tree()
    for anchor in tree.xpath("//a[starts-with(@href, '#')]"):
        if anchor.text_content().replace("\u200b", "").strip() in PERMALINK_MARKS and not anchor.xpath(".//img"):
            anchor.drop_tree()  # keeps the tail
    for section in tree.xpath("//section[@id] | //div[@id][contains(concat(' ', @class, ' '), ' section ')]"):
        if len(section) and section[0].tag in HEADING_TAGS:
            del section.attrib["id"]  # a heading's slug, not a layout role: "Sharding" must not read as "share"
    _drop_line_numbers(tree)
    for pre in tree.iter("pre"):
        for line_break in pre.xpath(".//br"):
            line_break.tail = "\n" + (line_break.tail or "")
            line_break.drop_tree()
        _wrap_in_code(pre)
    body = tree.find("body")
    if body is not None and not tree.xpath(CONTENT_CONTAINERS):
        main = body.makeelement("main")
        main.text, body.text = body.text, None
        main.extend(list(body))
        body.append(main)


def _drop_line_numbers(tree: lxml.html.HtmlElement) -> None:
    """A table of line numbers beside code (Pygments, highlight.js) becomes the code's <pre>; numbers inside a
    <pre> (Pygments inline, Prism) are dropped. Only next to code: "gutter" is a layout class elsewhere."""
    for table in tree.xpath("//table[.//pre]"):
        code = [pre for pre in table.iter("pre") if not any(map(_is_gutter, pre.iterancestors()))]
        if code and table.getparent() is not None and any(_is_gutter(cell) for cell in table.iter("td")):
            code[0].tail = table.tail
            table.getparent().replace(table, code[0])
    for pre in tree.iter("pre"):
        for number in [element for element in pre.iterdescendants() if _is_gutter(element)]:
            number.drop_tree()


def _wrap_in_code(pre: lxml.html.HtmlElement) -> None:
    """`<pre><code>...</code></pre>`: trafilatura takes a <pre> without a lone <code> for a quotation."""
    if len(pre) == 1 and pre[0].tag == "code" and not (pre.text or "").strip() and not (pre[0].tail or "").strip():
        return
    code = pre.makeelement("code")
    code.text, pre.text = pre.text, None
    code.extend(list(pre))
    pre.append(code)


def _trafilatura_config() -> ConfigParser:
    """trafilatura's settings, but no minimum size: below it (250 characters) it takes the whole body instead, and a
    page that is all chrome (or a short page) comes back as its sidebar and footer."""
    config = trafilatura.settings.use_config()
    config.set("DEFAULT", "MIN_EXTRACTED_SIZE", "0")
    return config


_TRAFILATURA_CONFIG = _trafilatura_config()


def _is_gutter(element: lxml.html.HtmlElement) -> bool:
    return isinstance(element.tag, str) and not LINE_NUMBER_CLASSES.isdisjoint(element.classes)


def main_content_text(tree: lxml.html.HtmlElement) -> str:
    """trafilatura's main content of a prepared tree, written by `_render`."""
    document = trafilatura.bare_extraction(
        tree,
        favor_recall=True,  # documentation pages are short and structured: keep lists, tables and code
        include_comments=False,
        include_tables=True,
        include_formatting=True,
        include_links=False,
        include_images=False,
        deduplicate=False,  # its cache is global: one page's text must not depend on the pages before it
        with_metadata=False,
        config=_TRAFILATURA_CONFIG,
    )
    return _render(document.body) if document is not None else ""


def _render(body: etree._Element) -> str:
    return "\n\n".join(block for block in _blocks(body) if block.strip())


def _blocks(container: etree._Element) -> list[str]:
    blocks = [_inline(container.text)] if container.text and container.text.strip() else []
    for element in container:
        blocks.extend(_block(element))
        if element.tail and element.tail.strip():
            blocks.append(_inline(element.tail))
    return blocks


def _block(element: etree._Element) -> list[str]:
    tag = element.tag
    if tag == "head":
        level = int((element.get("rend") or "h2").removeprefix("h") or 2)
        return [f"{'#' * min(max(level, 1), 6)} {_inline_text(element)}"]
    if tag == "list":
        return ["\n".join(_list_lines(element, depth=0))]
    if tag == "table":
        return ["\n".join(" | ".join(_inline_text(cell) for cell in row.iter("cell")) for row in element.iter("row"))]
    if tag == "code":
        return [_fenced(element)]
    if tag == "quote" and any(child.tag in ("p", "list", "code", "table", "head") for child in element):
        return _blocks(element)
    return [_inline_text(element)]


def _list_lines(element: etree._Element, depth: int) -> list[str]:
    """`- item` lines, nested lists indented; a code block in an item follows its line, fenced."""
    lines = []
    for item in element.iterchildren("item"):
        text, blocks = [item.text or ""], []
        for child in item:
            if child.tag == "list":
                blocks.extend(_list_lines(child, depth + 1))
            elif child.tag == "code" and "\n" in "".join(child.itertext()):
                blocks.append(_fenced(child))
            else:
                text.append(_inline_piece(child))
            text.append(child.tail or "")
        lines.append(f"{'  ' * depth}- {_inline(''.join(text))}")
        lines.extend(blocks)
    return lines


def _fenced(code: etree._Element) -> str:
    text = "".join("\n" if part is None else part for part in _code_text(code)).strip("\n")
    return f"{CODE_FENCE}\n{text}\n{CODE_FENCE}"


def _code_text(element: etree._Element) -> list[str | None]:
    """The code's characters as written; None for each line break element."""
    parts: list[str | None] = [element.text or ""]
    for child in element:
        parts.extend([None] if child.tag == "lb" else _code_text(child))
        parts.append(child.tail or "")
    return parts


def _inline_text(element: etree._Element) -> str:
    """An element's text on one line; inline code in backticks."""
    parts = [element.text or ""]
    for child in element:
        parts += [_inline_piece(child), child.tail or ""]
    return _inline("".join(parts))


def _inline_piece(child: etree._Element) -> str:
    if child.tag == "code":
        return f"`{_inline(''.join(child.itertext()))}`"
    if child.tag == "lb":
        return " "
    text = _inline_text(child)
    return f" {text} " if child.tag in BLOCK_ELEMENTS else text


def _inline(text: str) -> str:
    return " ".join(text.split())
