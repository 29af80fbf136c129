import pytest

from raft_assets.contracts.sources import SitemapSource
from raft_assets.ingestion.sitemap import load_sitemap
from raft_assets_tests.web_server import Route, WebServer


def page(title: str, body: str) -> bytes:
    return (
        f"<html><head><title>{title}</title></head><body>"
        f"<header>Site chrome</header><nav><a href='/'>Home</a></nav>"
        f"<h1>{title}</h1><p>{body}</p></body></html>"
    ).encode()


def sitemap(*urls: str) -> Route:
    entries = "".join(f"<url><loc>{url}</loc></url>" for url in urls)
    body = f'<?xml version="1.0" encoding="UTF-8"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{entries}</urlset>'
    return Route(body.encode(), content_type="application/xml")


def source(server: WebServer, **options) -> SitemapSource:
    settings = {"timeout_s": 2.0, "retries": 0, "requests_per_second": 50.0} | options
    return SitemapSource(name="site", kind="sitemap", sitemap=server.url("/sitemap.xml"), **settings)


@pytest.fixture
def server():
    with WebServer() as server:
        yield server


def test_sitemap_pages_load_and_every_failure_is_a_row_with_its_reason(server):
    other_host = server.url("/secret.html", host="localhost")
    server.routes.update(
        {
            "/guide.html": Route(page("Guide", "FSDP shards parameters across ranks.")),
            "/old": Route(status=301, headers={"Location": "/guide-v2.html"}),
            "/guide-v2.html": Route(page("Guide v2", "torchrun sets RANK and WORLD_SIZE.")),
            "/away": Route(status=302, headers={"Location": other_host}),
            "/secret.html": Route(page("Secret", "must never be fetched")),
            "/image.png": Route(b"\x89PNG", content_type="image/png"),
            "/sitemap.xml": sitemap(
                server.url("/guide.html"),
                server.url("/old"),
                server.url("/missing.html"),
                server.url("/image.png"),
                server.url("/away"),
                other_host,
            ),
        }
    )
    load = load_sitemap(source(server))
    docs = {doc.uri: doc for doc in load.documents}

    assert docs[server.url("/guide.html")].title == "Guide"
    assert docs[server.url("/guide.html")].text == "# Guide\n\nFSDP shards parameters across ranks."
    assert "torchrun sets RANK" in docs[server.url("/old")].text
    assert docs[server.url("/missing.html")].error == "HTTP 404 Not Found"
    assert docs[server.url("/image.png")].error == "not an HTML page (Content-Type image/png)"
    assert "redirected to http://localhost" in docs[server.url("/away")].error
    assert load.off_host == [other_host]
    assert other_host not in docs
    assert "/secret.html" not in server.paths_requested()
    assert all(request.host.startswith("127.0.0.1") for request in server.requests)


def test_page_limit_and_url_patterns_bound_what_is_fetched(server):
    urls = [server.url(f"/docs/{i}.html") for i in range(5)] + [server.url("/blog/1.html")]
    server.routes["/sitemap.xml"] = sitemap(*urls)
    for url in urls:
        server.routes[url.removeprefix(server.url(""))] = Route(page("P", "Some page text."))

    load = load_sitemap(source(server, max_pages=2, url_patterns=[r".*/docs/.*"]))
    assert [doc.uri for doc in load.documents] == urls[:2]
    assert load.over_limit == 3
    assert sorted(server.paths_requested()) == ["/docs/0.html", "/docs/1.html", "/sitemap.xml"]


def test_requests_are_spaced_by_the_rate_limit(server):
    urls = [server.url(f"/{i}.html") for i in range(6)]
    server.routes["/sitemap.xml"] = sitemap(*urls)
    for url in urls:
        server.routes[url.removeprefix(server.url(""))] = Route(page("P", "Some page text."))

    load_sitemap(source(server, requests_per_second=10.0))
    starts = sorted(request.at for request in server.requests if request.path != "/sitemap.xml")
    assert len(starts) == 6
    # At most 10 request starts per second: 6 requests span at least 0.5 s. (Arrival times on a loaded machine
    # jitter, so one gap alone can look shorter than the client's spacing; the span cannot.)
    assert starts[-1] - starts[0] >= 0.45


def test_transient_errors_are_retried_and_timeouts_reported(server):
    server.routes.update(
        {
            "/flaky.html": Route(page("Flaky", "Answers after one 503."), fail_first=1),
            "/slow.html": Route(page("Slow", "Too slow."), delay_s=1.5),
            "/sitemap.xml": sitemap(server.url("/flaky.html"), server.url("/slow.html")),
        }
    )
    docs = {doc.uri: doc for doc in load_sitemap(source(server, retries=1, timeout_s=0.3)).documents}
    assert docs[server.url("/flaky.html")].error is None
    assert docs[server.url("/slow.html")].error == "timed out after 0.3 s (gave up after 2 attempts)"
    assert server.paths_requested().count("/flaky.html") == 2


def test_a_sitemap_index_is_followed(server):
    server.routes.update(
        {
            "/sitemap.xml": Route(
                f"<sitemapindex><sitemap><loc>{server.url('/child.xml')}</loc></sitemap></sitemapindex>".encode(),
                content_type="application/xml",
            ),
            "/child.xml": sitemap(server.url("/a.html")),
            "/a.html": Route(page("A", "From the child sitemap.")),
        }
    )
    [doc] = load_sitemap(source(server)).documents
    assert doc.title == "A" and doc.error is None


@pytest.mark.parametrize(
    ("route", "reason"),
    [
        (Route(b"<html><body>Welcome</body></html>"), "not a sitemap: no <urlset> or <sitemapindex> element"),
        (Route(b"gone", status=404), "cannot read the sitemap: 404 Client Error"),
    ],
)
def test_a_bad_sitemap_is_one_row_with_the_reason(server, route, reason):
    server.routes["/sitemap.xml"] = route
    [doc] = load_sitemap(source(server)).documents
    assert doc.uri == server.url("/sitemap.xml")
    assert reason in doc.error


def test_a_local_sitemap_file_fetches_only_allowed_hosts(server, tmp_path):
    server.routes["/a.html"] = Route(page("A", "Local sitemap page."))
    (tmp_path / "sitemap.xml").write_bytes(sitemap(server.url("/a.html"), "http://example.invalid/b.html").body)
    spec = SitemapSource(
        name="site", kind="sitemap", sitemap=str(tmp_path / "sitemap.xml"), allowed_hosts=[f"127.0.0.1:{server.port}"]
    )
    load = load_sitemap(spec)
    assert [doc.title for doc in load.documents] == ["A"]
    assert load.off_host == ["http://example.invalid/b.html"]
