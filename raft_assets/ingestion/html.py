"""Turning an HTML page into text, the way the reference recipe cleans pages."""

from __future__ import annotations

from bs4 import BeautifulSoup

# Site chrome the reference drops (nav, header, list widgets), plus what is not body text.
CHROME_TAGS = ["head", "nav", "header", "script", "style", "noscript", "template"]
# Elements that end a line of text even when the HTML has them on one line.
BLOCK_TAGS = ["p", "div", "section", "article", "h1", "h2", "h3", "h4", "h5", "h6", "li", "dt", "dd", "tr"]
BLOCK_TAGS += ["pre", "blockquote", "table", "ul", "ol", "br", "hr"]
# The reason recorded for a page that is all chrome (a file or a fetched page).
NO_TEXT_IN_PAGE = "no text in the page after removing scripts, styles, navigation and headers"


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
