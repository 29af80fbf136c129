"""Generated documentation sites with ground truth: Sphinx (alabaster, Read the Docs), MkDocs Material, Docusaurus.

Each page is the markup those generators emit around a body of headings, paragraphs, lists, tables and
highlighted code blocks (Pygments `<span>`s in `<pre>`, some with a `linenos` table; Prism token lines ended by
`<br>`), wrapped in the theme's chrome: sidebars with "Quick search" and "Navigation", heading permalinks (`¶`,
`#`), "Edit this page", previous/next bars, breadcrumbs, footers. A `DocPage` carries, besides its HTML, the exact
code examples, headings, list items and table cells of its body and the chrome strings it inserted (only those
that do not also occur in the body), so tests and the extraction benchmark check results against ground truth.

Deterministic: the same `seed` gives the same pages. Body words avoid the chrome's words, so a chrome string
found in extracted text came from the chrome.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html import escape

THEMES = ("sphinx_alabaster", "sphinx_rtd", "mkdocs_material", "docusaurus")
PAGES_PER_SITE = 24

# Words of the body text: technical prose without the chrome's words (search, navigation, next, previous, edit,
# page, source, copyright, index, contents, theme...).
WORDS = (  # noqa: SIM905 (a text's worth of words reads better as a string)
    "the a an of to in for with on by from as at and or but not is are was be can may must should will each "
    "every all any some this that these those it its when while after before until then if than so which "
    "cluster node replica shard partition leader follower quorum write read log segment offset commit flush "
    "buffer cache memory disk volume snapshot checkpoint backup restore schema table column row key value "
    "record batch stream queue topic consumer producer worker scheduler task job retry timeout deadline "
    "latency throughput request response client server connection socket port address certificate token "
    "secret credential role policy permission user group tenant namespace bucket object blob file folder "
    "path option setting flag parameter argument default limit threshold interval window rate budget quota "
    "metric counter gauge histogram trace span event alert handler hook plugin extension driver adapter "
    "codec format encoding compression checksum hash signature version release upgrade migration rollback "
    "deployment container image registry manifest service endpoint gateway proxy router balancer pool "
    "thread process signal lock mutex transaction isolation consistency durability availability failover "
    "startup shutdown restart reload configure enable disable install upgrade run start stop create delete "
    "update list watch export import validate compile build test deploy monitor inspect rotate compact merge "
    "split sort filter join group aggregate resolve encode decode encrypt decrypt serialize parse render "
    "fast slow large small local remote primary secondary internal external optional required automatic "
    "manual synchronous asynchronous durable transient global regional single multiple explicit implicit"
).split()
VERBS = ["writes", "reads", "stores", "sends", "keeps", "moves", "checks", "tracks", "returns", "rejects", "accepts"]
IDENT_PARTS = ["wal", "shard", "replica", "offset", "batch", "flush", "store", "index", "cache", "lease", "epoch"]
IDENT_PARTS += ["quorum", "segment", "bucket", "ttl", "max", "min", "num", "timeout", "retries", "path"]
LANGUAGES = ("python", "bash", "yaml", "json")
PY_KEYWORDS = {"def", "return", "import", "from", "for", "in", "if", "else", "with", "as", "class", "None", "True"}


@dataclass(frozen=True)
class DocPage:
    site: str  # the site's name, e.g. "fluxmesh"
    theme: str  # one of THEMES
    path: str  # relative path of the page on its site, e.g. "fluxmesh/guide/wal-shards.html"
    title: str
    html: str
    code_examples: tuple[str, ...]  # exact code of every block, indentation and blank lines included
    headings: tuple[str, ...]
    list_items: tuple[str, ...]
    table_cells: tuple[str, ...]
    chrome: tuple[str, ...]  # chrome strings inserted on this page that never occur in its body


# --------------------------------------------------------------------------- body text


@dataclass
class _Writer:
    """Seeded prose, identifiers and code."""

    rng: random.Random

    def words(self, low: int, high: int) -> str:
        return " ".join(self.rng.choice(WORDS) for _ in range(self.rng.randint(low, high)))

    def sentence(self) -> str:
        text = self.words(6, 20)
        return text[0].upper() + text[1:] + self.rng.choice(".....!?")

    def heading(self) -> str:
        text = self.words(2, 5)
        return text[0].upper() + text[1:]

    def identifier(self) -> str:
        return "_".join(self.rng.sample(IDENT_PARTS, self.rng.randint(1, 3)))

    def code(self, language: str) -> str:
        return {"python": self._python, "bash": self._bash, "yaml": self._yaml, "json": self._json}[language]()

    def _python(self) -> str:
        name, arg, other = self.identifier(), self.identifier(), self.identifier()
        lines = [f"from fluxmesh.{self.identifier()} import {self.identifier().title().replace('_', '')}", ""]
        lines += [f"def {name}({arg}, {other}=None):", f'    """{self.heading()}."""']
        for _ in range(self.rng.randint(1, 4)):
            lines.append(f"    {self.identifier()} = {arg}.get({self.identifier()!r}, {self.rng.randint(0, 512)})")
        if self.rng.random() < 0.5:
            lines += [f"    for item in {arg}:", f"        if item > {self.rng.randint(1, 9)}:  # {self.words(2, 5)}"]
            lines += ["            return item"]
        lines.append(f"    return {other}")
        if self.rng.random() < 0.4:
            lines += ["", "", f"print({name}([3, 7, 11], {other}={self.rng.randint(1, 99)}))"]
        return "\n".join(lines)

    def _bash(self) -> str:
        lines = [f"$ pip install fluxmesh[{self.identifier()}]=={self.rng.randint(1, 4)}.{self.rng.randint(0, 9)}"]
        for _ in range(self.rng.randint(1, 3)):
            flag, value = self.identifier().replace("_", "-"), self.rng.randint(1, 64)
            lines.append(f"$ fluxmesh {self.rng.choice(VERBS)[:-1]} --{flag} {value} \\\n    --config ./conf.yaml")
        return "\n".join(lines)

    def _yaml(self) -> str:
        lines = [f"{self.identifier()}:"]
        for _ in range(self.rng.randint(2, 5)):
            lines.append(f"  {self.identifier()}: {self.rng.randint(1, 4096)}")
        lines += [f"  {self.identifier()}:", f"    - {self.identifier()}", f"    - {self.identifier()}"]
        return "\n".join(lines)

    def _json(self) -> str:
        items = [f'    "{self.identifier()}": {self.rng.randint(0, 999)}' for _ in range(self.rng.randint(2, 5))]
        return "{\n" + ",\n".join(items) + f',\n    "{self.identifier()}": "<{self.identifier()}> & more"\n}}'


# A page body is a list of blocks; each theme renders them its way.
@dataclass(frozen=True)
class Heading:
    level: int
    text: str
    anchor: str


@dataclass(frozen=True)
class Paragraph:
    parts: tuple[tuple[str, str], ...]  # (kind, text): kind "text", "code" (inline literal) or "link"


@dataclass(frozen=True)
class ItemList:
    items: tuple[str, ...]
    ordered: bool


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Code:
    language: str
    code: str
    linenos: bool


@dataclass(frozen=True)
class Note:
    text: str


Block = Heading | Paragraph | ItemList | Table | Code | Note


def _anchor(text: str) -> str:
    return "-".join(text.lower().split())


def _paragraph(writer: _Writer) -> Paragraph:
    parts: list[tuple[str, str]] = []
    for _ in range(writer.rng.randint(2, 6)):
        parts.append(("text", writer.sentence()))
        roll = writer.rng.random()
        if roll < 0.3:
            parts.append(("text", " Set "))
            parts.append(("code", writer.identifier()))
            parts.append(("text", f" to {writer.words(2, 4)}."))
        elif roll < 0.4:
            parts.append(("text", " See "))
            parts.append(("link", writer.words(2, 3)))
            parts.append(("text", "."))
        parts.append(("text", " "))
    return Paragraph(tuple(parts[:-1]))


def _section_blocks(writer: _Writer, level: int) -> Iterator[Block]:
    rng = writer.rng
    yield _paragraph(writer)
    for _ in range(rng.randint(1, 4)):
        roll = rng.random()
        if roll < 0.35:
            yield Code(rng.choice(LANGUAGES), writer.code(rng.choice(LANGUAGES)), linenos=rng.random() < 0.2)
        elif roll < 0.55:
            yield ItemList(tuple(writer.sentence() for _ in range(rng.randint(2, 5))), ordered=rng.random() < 0.3)
        elif roll < 0.68:
            width = rng.randint(2, 4)
            header = tuple(writer.heading() for _ in range(width))
            rows = tuple(tuple(writer.words(1, 4) for _ in range(width)) for _ in range(rng.randint(2, 5)))
            yield Table(header, rows)
        elif roll < 0.76:
            yield Note(writer.sentence() + " " + writer.sentence())
        else:
            yield _paragraph(writer)
    if level < 3 and rng.random() < 0.35:
        text = writer.heading()
        yield Heading(level + 1, text, _anchor(text))
        yield from _section_blocks(writer, level + 1)


def page_body(writer: _Writer, title: str) -> list[Block]:
    blocks: list[Block] = [Heading(1, title, _anchor(title)), _paragraph(writer)]
    for _ in range(writer.rng.randint(2, 5)):
        text = writer.heading()
        blocks.append(Heading(2, text, _anchor(text)))
        blocks.extend(_section_blocks(writer, 2))
    return blocks


# --------------------------------------------------------------------------- code highlighting


def _tokens(line: str) -> Iterator[tuple[str, str]]:
    """(Pygments short class, text) for a line of code: enough variety for realistic markup."""
    word = ""
    for index, char in enumerate(line):
        if char == "#" and not word.endswith(("'", '"')) and (index == 0 or line[index - 1] == " "):
            if word:
                yield _classify(word)
            yield "c1", line[index:]
            return
        if char.isalnum() or char in "_.'\"-<>&":
            word += char
            continue
        if word:
            yield _classify(word)
            word = ""
        if char == " " and index and line[index - 1] == " ":
            continue
        if char == " ":
            yield "w", " " * (len(line[index:]) - len(line[index:].lstrip(" ")))
        else:
            yield "p", char
    if word:
        yield _classify(word)


def _classify(word: str) -> tuple[str, str]:
    if word in PY_KEYWORDS:
        return "k", word
    if word[0] in "'\"":
        return "s2", word
    if word.isdigit():
        return "mi", word
    return "n", word


def _pygments_line(line: str) -> str:
    spans = []
    for kind, text in _tokens(line):
        if kind == "w" and len(text) == 1:
            spans.append(" ")  # Pygments leaves single spaces bare and wraps runs (indentation) in <span class="w">
        else:
            spans.append(f'<span class="{kind}">{escape(text, quote=False)}</span>')
    return "".join(spans)


def pygments_pre(code: str, linenos: bool) -> str:
    """A Pygments `highlight` div; with `linenos`, the line-number table Sphinx and MkDocs emit."""
    body = "<pre><span></span>" + "\n".join(_pygments_line(line) for line in code.split("\n")) + "\n</pre>"
    if not linenos:
        return f'<div class="highlight">{body}</div>'
    numbers = "\n".join(f'<span class="normal">{n}</span>' for n in range(1, code.count("\n") + 2))
    return (
        '<div class="highlight"><table class="highlighttable"><tr><td class="linenos"><div class="linenodiv">'
        f'<pre>{numbers}</pre></div></td><td class="code"><div>{body}</div></td></tr></table></div>'
    )


def prism_pre(code: str, language: str) -> str:
    """Docusaurus's Prism block: one `token-line` span per line, ended by `<br>`, no newline characters."""
    lines = []
    for line in code.split("\n"):
        tokens = "".join(
            f'<span class="token {"plain" if kind in ("w", "n") else "keyword"}">{escape(text, quote=False)}</span>'
            for kind, text in _tokens(line)
        )
        lines.append(f'<span class="token-line" style="color:#393A34">{tokens or _EMPTY_PRISM}<br></span>')
    return (
        f'<div class="language-{language} codeBlockContainer_Ckt0 theme-code-block" style="--prism-color:#393A34">'
        f'<div class="codeBlockContent_biex"><pre tabindex="0" class="prism-code language-{language} '
        f'codeBlock_bY9V thin-scrollbar"><code class="codeBlockLines_e6Vv">{"".join(lines)}</code></pre>'
        '<div class="buttonGroup__atx"><button type="button" aria-label="Copy code to clipboard" title="Copy" '
        'class="clean-btn"><span class="copyButtonIcons_eSgA" aria-hidden="true"></span></button></div></div></div>'
    )


_EMPTY_PRISM = '<span class="token plain" style="display:inline-block"></span>'


# --------------------------------------------------------------------------- rendering of the body


@dataclass
class _Style:
    """How a theme marks up the body's blocks."""

    permalink: Callable[[Heading], str]
    code: Callable[[Code], str]
    inline_code: Callable[[str], str]
    table_class: str
    note: Callable[[str], str]
    section_wrap: bool = False  # Sphinx wraps every heading's section in <section id=...>


def _sphinx_permalink(heading: Heading) -> str:
    return f'<a class="headerlink" href="#{heading.anchor}" title="Link to this heading">¶</a>'


def _mkdocs_permalink(heading: Heading) -> str:
    return f'<a class="headerlink" href="#{heading.anchor}" title="Permanent link">¶</a>'


def _docusaurus_permalink(mark: str) -> Callable[[Heading], str]:
    def permalink(heading: Heading) -> str:
        label = f"Direct link to {escape(heading.text)}"
        return f'<a href="#{heading.anchor}" class="hash-link" aria-label="{label}" title="{label}">{mark}</a>'

    return permalink


def _sphinx_code(block: Code) -> str:
    return f'<div class="highlight-{block.language} notranslate">{pygments_pre(block.code, block.linenos)}</div>'


def _mkdocs_code(block: Code) -> str:
    pre = pygments_pre(block.code, block.linenos).replace("<pre><span></span>", "<pre><span></span><code>", 1)
    return f'<div class="language-{block.language} highlight">{pre.replace("</pre>", "</code></pre>", 1)}</div>'


SPHINX_STYLE = _Style(
    permalink=_sphinx_permalink,
    code=_sphinx_code,
    inline_code=lambda text: (
        f'<code class="docutils literal notranslate"><span class="pre">{escape(text)}</span></code>'
    ),
    table_class="docutils align-default",
    note=lambda text: f'<div class="admonition note"><p class="admonition-title">Note</p><p>{text}</p></div>',
    section_wrap=True,
)
MKDOCS_STYLE = _Style(
    permalink=_mkdocs_permalink,
    code=_mkdocs_code,
    inline_code=lambda text: f"<code>{escape(text)}</code>",
    table_class="",
    note=lambda text: f'<div class="admonition note"><p class="admonition-title">Note</p><p>{text}</p></div>',
)


def _docusaurus_style(mark: str) -> _Style:
    return _Style(
        permalink=_docusaurus_permalink(mark),
        code=lambda block: prism_pre(block.code, block.language),
        inline_code=lambda text: f"<code>{escape(text)}</code>",
        table_class="",
        note=lambda text: (
            '<div class="theme-admonition theme-admonition-note admonition_xJq3 alert alert--secondary">'
            '<div class="admonitionHeading_Gvgb">note</div>'
            f'<div class="admonitionContent_BuS1"><p>{text}</p></div></div>'
        ),
    )


def _render_paragraph(paragraph: Paragraph, style: _Style) -> str:
    out = []
    for kind, text in paragraph.parts:
        if kind == "code":
            out.append(style.inline_code(text))
        elif kind == "link":
            out.append(f'<a class="reference internal" href="#{_anchor(text)}">{escape(text)}</a>')
        else:
            out.append(escape(text))
    return "<p>" + "".join(out) + "</p>"


def _render_table(table: Table, style: _Style) -> str:
    head = "".join(f'<th class="head"><p>{escape(cell)}</p></th>' for cell in table.header)
    rows = "".join(
        f'<tr class="row-{"odd" if i % 2 else "even"}">'
        + "".join(f"<td><p>{escape(c)}</p></td>" for c in row)
        + "</tr>"
        for i, row in enumerate(table.rows)
    )
    cls = f' class="{style.table_class}"' if style.table_class else ""
    return f"<table{cls}>\n<thead><tr>{head}</tr></thead>\n<tbody>{rows}</tbody>\n</table>"


def render_body(blocks: list[Block], style: _Style) -> str:
    html: list[str] = []
    open_sections: list[int] = []
    for block in blocks:
        if isinstance(block, Heading):
            if style.section_wrap:
                while open_sections and open_sections[-1] >= block.level:
                    html.append("</section>")
                    open_sections.pop()
                html.append(f'<section id="{block.anchor}">')
                open_sections.append(block.level)
                attrs = ""
            else:
                attrs = f' id="{block.anchor}"'
            html.append(f"<h{block.level}{attrs}>{escape(block.text)}{style.permalink(block)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            html.append(_render_paragraph(block, style))
        elif isinstance(block, ItemList):
            tag = "ol" if block.ordered else "ul"
            items = "\n".join(f"<li><p>{escape(item)}</p></li>" for item in block.items)
            html.append(f'<{tag} class="simple">\n{items}\n</{tag}>')
        elif isinstance(block, Table):
            html.append(_render_table(block, style))
        elif isinstance(block, Code):
            html.append(style.code(block))
        else:
            html.append(style.note(escape(block.text)))
    html.extend("</section>" for _ in open_sections)
    return "\n".join(html)


# --------------------------------------------------------------------------- the themes' chrome


@dataclass(frozen=True)
class Site:
    name: str
    project: str
    version: str
    year: int
    theme: str
    titles: tuple[str, ...]  # every page's title, in the site's order

    def slug(self, title: str) -> str:
        return _anchor(title)


@dataclass
class _Chrome:
    """Chrome markup and the strings it shows, collected while it is written."""

    strings: list[str] = field(default_factory=list)

    def text(self, value: str) -> str:
        self.strings.append(value)
        return escape(value)


def _neighbours(site: Site, index: int) -> tuple[str | None, str | None]:
    previous = site.titles[index - 1] if index > 0 else None
    following = site.titles[index + 1] if index + 1 < len(site.titles) else None
    return previous, following


def _sphinx_toctree(site: Site, index: int, chrome: _Chrome) -> str:
    """The site's pages as Sphinx's `toctree` lists them, the current one marked."""
    return "".join(
        f'<li class="toctree-l1{" current" if i == index else ""}"><a class="reference internal" '
        f'href="{site.slug(t)}.html">{chrome.text(t)}</a></li>'
        for i, t in enumerate(site.titles)
    )


def _sphinx_alabaster(site: Site, index: int, title: str, body: str, chrome: _Chrome) -> str:
    previous, following = _neighbours(site, index)
    toc = _sphinx_toctree(site, index, chrome)
    relations = ""
    if previous:
        relations += f'<li>Previous: <a href="{site.slug(previous)}.html">{chrome.text(previous)}</a></li>'
    if following:
        relations += f'<li>Next: <a href="{site.slug(following)}.html">{chrome.text(following)}</a></li>'
    related_bar = (
        '<div class="related" role="navigation" aria-label="Related">'
        f"<h3>{chrome.text('Navigation')}</h3><ul>"
        f'<li class="right" style="margin-right: 10px"><a href="genindex.html" accesskey="I">{chrome.text("index")}</a></li>'
        f'<li class="right"><a href="py-modindex.html">{chrome.text("modules")}</a> |</li>'
        + (f'<li class="right"><a href="#" accesskey="N">{chrome.text("next")}</a> |</li>' if following else "")
        + (f'<li class="right"><a href="#" accesskey="P">{chrome.text("previous")}</a> |</li>' if previous else "")
        + f'<li class="nav-item nav-item-0"><a href="index.html">{chrome.text(f"{site.project} {site.version} documentation")}</a> &#187;</li>'
        "</ul></div>"
    )
    sidebar = (
        '<div class="sphinxsidebar" role="navigation" aria-label="Main">'
        '<div class="sphinxsidebarwrapper">'
        f'<h1 class="logo"><a href="index.html">{chrome.text(site.project)}</a></h1>'
        f"<h3>{chrome.text('Navigation')}</h3><ul>{toc}</ul>"
        f'<div class="relations"><h3>{chrome.text("Related Topics")}</h3><ul><li><a href="index.html">'
        f"{chrome.text('Documentation overview')}</a><ul>{relations}</ul></li></ul></div>"
        f'<div role="note" aria-label="source link"><h3>{chrome.text("This Page")}</h3><ul class="this-page-menu">'
        f'<li><a href="_sources/{site.slug(title)}.rst.txt" rel="nofollow">{chrome.text("Show Source")}</a></li></ul></div>'
        '<search id="searchbox" style="display: none" role="search">'
        f'<h3 id="searchlabel">{chrome.text("Quick search")}</h3><div class="searchformwrapper">'
        '<form class="search" action="search.html" method="get"><input type="text" name="q" '
        'aria-labelledby="searchlabel" autocomplete="off" autocorrect="off" autocapitalize="off" spellcheck="false"/>'
        '<input type="submit" value="Go" /></form></div></search>'
        "<script>document.getElementById('searchbox').style.display = \"block\"</script>"
        "</div></div>"
    )
    footer = (
        f'<div class="footer">{chrome.text(f"©{site.year}, {site.project} developers")}. | '
        f'{chrome.text("Powered by")} <a href="https://www.sphinx-doc.org/">{chrome.text("Sphinx 7.2.6")}</a> &amp; '
        f'<a href="https://alabaster.readthedocs.io">{chrome.text("Alabaster 0.7.16")}</a> | '
        f'<a href="_sources/{site.slug(title)}.rst.txt" rel="nofollow">{chrome.text("Page source")}</a></div>'
    )
    return (
        f"{related_bar}\n"
        '<div class="document"><div class="documentwrapper"><div class="bodywrapper">'
        f'<div class="body" role="main">\n{body}\n</div></div></div>\n{sidebar}\n'
        '<div class="clearer"></div></div>\n'
        f"{related_bar}\n{footer}"
    )


def _sphinx_rtd(site: Site, index: int, title: str, body: str, chrome: _Chrome) -> str:
    previous, following = _neighbours(site, index)
    toc = _sphinx_toctree(site, index, chrome)
    buttons = ""
    if previous:
        buttons += (
            f'<a href="{site.slug(previous)}.html" class="btn btn-neutral float-left" title="{escape(previous)}" '
            f'accesskey="p" rel="prev"><span class="fa fa-arrow-circle-left" aria-hidden="true"></span> '
            f"{chrome.text('Previous')}</a>"
        )
    if following:
        buttons += (
            f'<a href="{site.slug(following)}.html" class="btn btn-neutral float-right" title="{escape(following)}" '
            f'accesskey="n" rel="next">{chrome.text("Next")} '
            '<span class="fa fa-arrow-circle-right" aria-hidden="true"></span></a>'
        )
    return (
        '<div class="wy-grid-for-nav"><nav data-toggle="wy-nav-shift" class="wy-nav-side">'
        '<div class="wy-side-scroll"><div class="wy-side-nav-search">'
        f'<a href="index.html" class="icon icon-home">{chrome.text(site.project)}</a>'
        f'<div class="version">{chrome.text(site.version)}</div>'
        '<div role="search"><form id="rtd-search-form" class="wy-form" action="search.html" method="get">'
        '<input type="text" name="q" placeholder="Search docs" aria-label="Search docs" />'
        '<input type="hidden" name="check_keywords" value="yes" /></form></div></div>'
        '<div class="wy-menu wy-menu-vertical" data-spy="affix" role="navigation" aria-label="Navigation menu">'
        f'<p class="caption" role="heading"><span class="caption-text">{chrome.text("User Guide")}</span></p>'
        f"<ul>{toc}</ul></div></div></nav>\n"
        '<section data-toggle="wy-nav-shift" class="wy-nav-content-wrap">'
        '<nav class="wy-nav-top" aria-label="Mobile navigation menu"><i data-toggle="wy-nav-top" class="fa fa-bars"></i>'
        f'<a href="index.html">{chrome.text(site.project)}</a></nav>'
        '<div class="wy-nav-content"><div class="rst-content">'
        '<div role="navigation" aria-label="Page navigation"><ul class="wy-breadcrumbs">'
        '<li><a href="index.html" class="icon icon-home" aria-label="Home"></a></li>'
        f'<li class="breadcrumb-item active">{escape(title)}</li>'
        f'<li class="wy-breadcrumbs-aside"><a href="_sources/{site.slug(title)}.rst.txt" rel="nofollow"> '
        f"{chrome.text('View page source')}</a></li></ul><hr/></div>"
        '<div role="main" class="document" itemscope="itemscope" itemtype="http://schema.org/Article">'
        f'<div itemprop="articleBody">\n{body}\n</div></div>'
        f'<footer><div class="rst-footer-buttons" role="navigation" aria-label="Footer">{buttons}</div><hr/>'
        f'<div role="contentinfo"><p>{chrome.text(f"© Copyright {site.year}, {site.project} Authors.")}</p></div>'
        f'{chrome.text("Built with")} <a href="https://www.sphinx-doc.org/">Sphinx</a> using a '
        f'<a href="https://github.com/readthedocs/sphinx_rtd_theme">{chrome.text("theme")}</a> '
        f'{chrome.text("provided by")} <a href="https://readthedocs.org">{chrome.text("Read the Docs")}</a>.'
        "</footer></div></div></section></div>"
    )


def _mkdocs_material(site: Site, index: int, title: str, body: str, chrome: _Chrome, headings: list[Heading]) -> str:
    previous, following = _neighbours(site, index)
    nav = "".join(
        f'<li class="md-nav__item{" md-nav__item--active" if i == index else ""}"><a href="../{site.slug(t)}/" '
        f'class="md-nav__link"><span class="md-ellipsis">{chrome.text(t)}</span></a></li>'
        for i, t in enumerate(site.titles)
    )
    toc = "".join(
        f'<li class="md-nav__item"><a href="#{h.anchor}" class="md-nav__link"><span class="md-ellipsis">'
        f"{escape(h.text)}</span></a></li>"
        for h in headings
        if h.level == 2
    )
    footer_links = ""
    if previous:
        footer_links += (
            f'<a href="../{site.slug(previous)}/" class="md-footer__link md-footer__link--prev" '
            f'aria-label="Previous: {escape(previous)}"><div class="md-footer__title">'
            f'<span class="md-footer__direction">{chrome.text("Previous")}</span>'
            f'<div class="md-ellipsis">{chrome.text(previous)}</div></div></a>'
        )
    if following:
        footer_links += (
            f'<a href="../{site.slug(following)}/" class="md-footer__link md-footer__link--next" '
            f'aria-label="Next: {escape(following)}"><div class="md-footer__title">'
            f'<span class="md-footer__direction">{chrome.text("Next")}</span>'
            f'<div class="md-ellipsis">{chrome.text(following)}</div></div></a>'
        )
    return (
        '<div data-md-component="skip"><a href="#main" class="md-skip">'
        f"{chrome.text('Skip to content')}</a></div>"
        '<header class="md-header md-header--shadow" data-md-component="header">'
        '<nav class="md-header__inner md-grid" aria-label="Header">'
        f'<a href="../" title="{escape(site.project)}" class="md-header__button md-logo" aria-label="{escape(site.project)}"></a>'
        f'<div class="md-header__title"><div class="md-header__ellipsis"><div class="md-header__topic">'
        f'<span class="md-ellipsis">{chrome.text(site.project)}</span></div></div></div>'
        '<div class="md-search" data-md-component="search" role="dialog"><div class="md-search__inner" role="search">'
        '<form class="md-search__form" name="search"><input type="text" class="md-search__input" name="query" '
        'aria-label="Search" placeholder="Search" autocapitalize="off" autocorrect="off" autocomplete="off" '
        'spellcheck="false" data-md-component="search-query" required></form>'
        '<div class="md-search__output"><div class="md-search-result" data-md-component="search-result">'
        f'<div class="md-search-result__meta">{chrome.text("Initializing search")}</div></div></div></div></div>'
        "</nav></header>"
        '<div class="md-container" data-md-component="container"><main class="md-main" data-md-component="main">'
        '<div class="md-main__inner md-grid">'
        '<div class="md-sidebar md-sidebar--primary" data-md-component="sidebar" data-md-type="navigation">'
        '<div class="md-sidebar__scrollwrap"><div class="md-sidebar__inner">'
        '<nav class="md-nav md-nav--primary" aria-label="Navigation" data-md-level="0">'
        f'<label class="md-nav__title" for="__drawer">{chrome.text(site.project)}</label>'
        f'<ul class="md-nav__list" data-md-scrollfix>{nav}</ul></nav></div></div></div>'
        '<div class="md-sidebar md-sidebar--secondary" data-md-component="sidebar" data-md-type="toc">'
        '<div class="md-sidebar__scrollwrap"><div class="md-sidebar__inner">'
        '<nav class="md-nav md-nav--secondary" aria-label="Table of contents">'
        '<label class="md-nav__title" for="__toc"><span class="md-nav__icon md-icon"></span>'
        f'{chrome.text("Table of contents")}</label><ul class="md-nav__list" data-md-component="toc">{toc}</ul>'
        "</nav></div></div></div>"
        '<div class="md-content" data-md-component="content"><article class="md-content__inner md-typeset">'
        f'<a href="https://github.com/{site.name}/{site.name}/edit/main/docs/{site.slug(title)}.md" '
        f'title="{chrome.text("Edit this page")}" class="md-content__button md-icon">'
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24"><path d="M10 20H6V4h7v5h5v3.1l2-2V8l-6-6H6c-1.1 '
        '0-2 .9-2 2v16c0 1.1.9 2 2 2h4v-2Z"/></svg></a>\n'
        f"{body}\n"
        '<aside class="md-source-file"><span class="md-source-file__fact">'
        f"{chrome.text('Last update')}: "
        f'<span class="git-revision-date-localized-plugin">{chrome.text(f"March {index % 28 + 1}, {site.year}")}</span>'
        "</span></aside></article></div></div>"
        '<button type="button" class="md-top md-icon" data-md-component="top" hidden>'
        f"{chrome.text('Back to top')}</button></main>"
        '<footer class="md-footer"><nav class="md-footer__inner md-grid" aria-label="Footer">'
        f"{footer_links}</nav>"
        '<div class="md-footer-meta md-typeset"><div class="md-footer-meta__inner md-grid"><div class="md-copyright">'
        f'<div class="md-copyright__highlight">{chrome.text(f"Copyright © {site.year} {site.project} maintainers")}</div>'
        f'{chrome.text("Made with")} <a href="https://squidfunk.github.io/mkdocs-material/" target="_blank" '
        f'rel="noopener">{chrome.text("Material for MkDocs")}</a></div></div></div></footer></div>'
    )


def _docusaurus(site: Site, index: int, title: str, body: str, chrome: _Chrome, headings: list[Heading]) -> str:
    previous, following = _neighbours(site, index)
    menu = "".join(
        f'<li class="theme-doc-sidebar-item-link menu__list-item"><a class="menu__link'
        f'{" menu__link--active" if i == index else ""}" href="/docs/{site.slug(t)}">{chrome.text(t)}</a></li>'
        for i, t in enumerate(site.titles)
    )
    toc = "".join(
        f'<li><a href="#{h.anchor}" class="table-of-contents__link toc-highlight">{escape(h.text)}</a></li>'
        for h in headings
        if h.level in (2, 3)
    )
    pagination = ""
    if previous:
        pagination += (
            f'<a class="pagination-nav__link pagination-nav__link--prev" href="/docs/{site.slug(previous)}">'
            f'<div class="pagination-nav__sublabel">{chrome.text("Previous")}</div>'
            f'<div class="pagination-nav__label">{chrome.text(previous)}</div></a>'
        )
    if following:
        pagination += (
            f'<a class="pagination-nav__link pagination-nav__link--next" href="/docs/{site.slug(following)}">'
            f'<div class="pagination-nav__sublabel">{chrome.text("Next")}</div>'
            f'<div class="pagination-nav__label">{chrome.text(following)}</div></a>'
        )
    return (
        '<div id="__docusaurus"><div role="region" aria-label="Skip to main content">'
        f'<a class="skipToContent_fXgn" href="#__docusaurus_skipToContent_fallback">{chrome.text("Skip to main content")}</a></div>'
        '<nav aria-label="Main" class="navbar navbar--fixed-top"><div class="navbar__inner"><div class="navbar__items">'
        '<button aria-label="Toggle navigation bar" aria-expanded="false" class="navbar__toggle clean-btn" type="button">'
        "</button>"
        f'<a class="navbar__brand" href="/"><b class="navbar__title text--truncate">{chrome.text(site.project)}</b></a>'
        f'<a aria-current="page" class="navbar__item navbar__link navbar__link--active" href="/docs/intro">{chrome.text("Docs")}</a>'
        f'<a class="navbar__item navbar__link" href="/blog">{chrome.text("Blog")}</a></div>'
        '<div class="navbar__items navbar__items--right">'
        f'<a href="https://github.com/{site.name}" target="_blank" class="navbar__item navbar__link">{chrome.text("GitHub")}</a>'
        '<div class="navbarSearchContainer_Bca1"><button type="button" class="DocSearch DocSearch-Button" aria-label="Search">'
        f'<span class="DocSearch-Button-Container"><span class="DocSearch-Button-Placeholder">{chrome.text("Search")}</span></span>'
        '<span class="DocSearch-Button-Keys"><kbd class="DocSearch-Button-Key">⌘</kbd><kbd class="DocSearch-Button-Key">K</kbd>'
        "</span></button></div></div></div></nav>"
        '<div id="__docusaurus_skipToContent_fallback" class="main-wrapper mainWrapper_z2l0"><div class="docsWrapper_hBAB">'
        '<button aria-label="Scroll back to top" class="clean-btn theme-back-to-top-button backToTopButton_sjWU" type="button"></button>'
        '<div class="docRoot_UBD9"><aside class="theme-doc-sidebar-container docSidebarContainer_YfHR">'
        '<div class="sidebarViewport_aRkj"><div class="sidebar_njMd">'
        f'<nav aria-label="Docs sidebar" class="menu thin-scrollbar menu_SIkG"><ul class="theme-doc-sidebar-menu menu__list">{menu}'
        "</ul></nav></div></div></aside>"
        '<main class="docMainContainer_TBSr"><div class="container padding-top--md padding-bottom--lg"><div class="row">'
        '<div class="col docItemCol_VOVn"><div class="docItemContainer_Djhp"><article>'
        '<nav class="theme-doc-breadcrumbs breadcrumbsContainer_Z_bl" aria-label="Breadcrumbs"><ul class="breadcrumbs">'
        '<li class="breadcrumbs__item"><a aria-label="Home page" class="breadcrumbs__link" href="/"></a></li>'
        f'<li class="breadcrumbs__item"><span class="breadcrumbs__link">{chrome.text("Guides")}</span></li>'
        f'<li class="breadcrumbs__item breadcrumbs__item--active"><span class="breadcrumbs__link">{escape(title)}</span></li>'
        "</ul></nav>"
        '<div class="tocCollapsible_ETCw theme-doc-toc-mobile tocMobile_ITEo">'
        f'<button type="button" class="clean-btn tocCollapsibleButton_TO0P">{chrome.text("On this page")}</button></div>'
        f'<div class="theme-doc-markdown markdown">\n{body}\n</div>'
        '<footer class="theme-doc-footer docusaurus-mt-lg"><div class="theme-doc-footer-edit-meta-row row"><div class="col">'
        f'<a href="https://github.com/{site.name}/docs/edit/main/docs/{site.slug(title)}.md" target="_blank" '
        f'rel="noopener noreferrer" class="theme-edit-this-page">{chrome.text("Edit this page")}</a></div>'
        '<div class="col lastUpdated_JAkA"></div></div></footer></article>'
        f'<nav class="pagination-nav docusaurus-mt-lg" aria-label="Docs pages">{pagination}</nav></div></div>'
        '<div class="col col--3"><div class="tableOfContents_bqdL thin-scrollbar theme-doc-toc-desktop">'
        f'<ul class="table-of-contents table-of-contents__left-border">{toc}</ul></div></div></div></div></main>'
        "</div></div></div>"
        '<footer class="footer footer--dark"><div class="container container-fluid"><div class="row footer__links">'
        f'<div class="col footer__col"><div class="footer__title">{chrome.text("Learn")}</div><ul class="footer__items clean-list">'
        f'<li class="footer__item"><a class="footer__link-item" href="/docs/intro">{chrome.text("Tutorial")}</a></li></ul></div>'
        f'<div class="col footer__col"><div class="footer__title">{chrome.text("Community")}</div><ul class="footer__items clean-list">'
        f'<li class="footer__item"><a href="https://stackoverflow.com/questions/tagged/{site.name}" target="_blank" '
        f'rel="noopener noreferrer" class="footer__link-item">{chrome.text("Stack Overflow")}</a></li>'
        f'<li class="footer__item"><a href="https://discord.gg/{site.name}" class="footer__link-item">{chrome.text("Discord")}</a></li>'
        "</ul></div></div>"
        '<div class="footer__bottom text--center"><div class="footer__copyright">'
        f"{chrome.text(f'Copyright © {site.year} {site.project}, Inc. Built with Docusaurus.')}</div></div></div></footer></div>"
    )


_HEAD_SUFFIX = {
    "sphinx_alabaster": " — {project} {version} documentation",
    "sphinx_rtd": " — {project} {version} documentation",
    "mkdocs_material": " - {project}",
    "docusaurus": " | {project}",
}


def _document(site: Site, title: str, content: str) -> str:
    head_title = escape(title + _HEAD_SUFFIX[site.theme].format(project=site.project, version=site.version))
    return (
        '<!DOCTYPE html>\n<html lang="en" data-content_root="./">\n<head>\n<meta charset="utf-8" />\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1.0" />\n'
        f"<title>{head_title}</title>\n"
        '<link rel="stylesheet" type="text/css" href="_static/pygments.css?v=d1102ebc" />\n'
        '<script src="_static/documentation_options.js?v=5929fcd5"></script>\n'
        "<style>.highlight .hll { background-color: #ffffcc }</style>\n"
        f"</head>\n<body>\n{content}\n"
        "<script>window.dataLayer = window.dataLayer || []; function gtag(){dataLayer.push(arguments);}</script>\n"
        "</body>\n</html>\n"
    )


# --------------------------------------------------------------------------- sites and pages

PROJECT_SYLLABLES = ("flux", "mesh", "quill", "tide", "vault", "spark", "orbit", "ember", "lumen", "grid", "kite")


def _site(rng: random.Random, number: int, theme: str, pages: int) -> Site:
    project = "".join(rng.sample(PROJECT_SYLLABLES, 2)).capitalize() + str(number)
    writer = _Writer(rng)
    titles: list[str] = []
    while len(titles) < pages:
        candidate = writer.heading()
        if candidate not in titles:
            titles.append(candidate)
    version = f"{rng.randint(0, 5)}.{rng.randint(0, 20)}"
    return Site(project.lower(), project, version, rng.randint(2018, 2025), theme, tuple(titles))


def _page(site: Site, index: int, rng: random.Random) -> DocPage:
    title = site.titles[index]
    blocks = page_body(_Writer(rng), title)
    headings = [block for block in blocks if isinstance(block, Heading)]
    chrome = _Chrome()
    if site.theme == "sphinx_alabaster":
        content = _sphinx_alabaster(site, index, title, render_body(blocks, SPHINX_STYLE), chrome)
    elif site.theme == "sphinx_rtd":
        content = _sphinx_rtd(site, index, title, render_body(blocks, SPHINX_STYLE), chrome)
    elif site.theme == "mkdocs_material":
        content = _mkdocs_material(site, index, title, render_body(blocks, MKDOCS_STYLE), chrome, headings)
    else:
        mark = "#" if index % 2 else "\u200b"  # Docusaurus 1 and 2+ mark heading links differently
        content = _docusaurus(site, index, title, render_body(blocks, _docusaurus_style(mark)), chrome, headings)
    body_text = _body_text(blocks)
    chrome_strings = set(chrome.strings) | _permalink_marks(site.theme, headings, index)
    return DocPage(
        site=site.name,
        theme=site.theme,
        path=f"{site.name}/{site.slug(title)}.html",
        title=title,
        html=_document(site, title, content),
        code_examples=tuple(block.code for block in blocks if isinstance(block, Code)),
        headings=tuple(heading.text for heading in headings),
        list_items=tuple(item for block in blocks if isinstance(block, ItemList) for item in block.items),
        table_cells=tuple(
            cell for block in blocks if isinstance(block, Table) for row in (block.header, *block.rows) for cell in row
        ),
        chrome=tuple(sorted(s for s in chrome_strings if s.strip() and s not in body_text)),
    )


def _permalink_marks(theme: str, headings: list[Heading], index: int) -> set[str]:
    """The heading anchors as they would read glued to (or set after) their heading."""
    if theme != "docusaurus":
        return {"¶"}
    if index % 2 == 0:
        return {"\u200b"}
    return {f"{heading.text}{gap}#" for heading in headings for gap in ("", " ", "\n")}


def _body_text(blocks: list[Block]) -> str:
    parts: list[str] = []
    for block in blocks:
        if isinstance(block, Heading | Note):
            parts.append(block.text)
        elif isinstance(block, Paragraph):
            parts.append("".join(text for _, text in block.parts))
        elif isinstance(block, ItemList):
            parts.extend(block.items)
        elif isinstance(block, Table):
            parts.extend(cell for row in (block.header, *block.rows) for cell in row)
        else:
            parts.append(block.code)
    return "\n".join(parts)


def generate_pages(count: int, seed: int = 0, themes: tuple[str, ...] = THEMES) -> list[DocPage]:
    """`count` pages on sites of PAGES_PER_SITE pages, the themes taking turns site by site."""
    pages: list[DocPage] = []
    number = 0
    while len(pages) < count:
        rng = random.Random(f"site:{seed}:{number}")
        size = min(PAGES_PER_SITE, count - len(pages))
        site = _site(rng, number, themes[number % len(themes)], size)
        pages.extend(_page(site, index, random.Random(f"page:{seed}:{number}:{index}")) for index in range(size))
        number += 1
    return pages
