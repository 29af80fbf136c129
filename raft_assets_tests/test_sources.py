from pathlib import Path

import pytest

from raft_assets.contracts.sources import LocalSource, SitemapSource, SourcesError, load_sources
from raft_assets_tests.conftest import write_sources


def test_shipped_sources_file_lists_both_sample_sources():
    sources = load_sources(Path("data/sources.yaml"))
    assert [source.name for source in sources] == ["llama_docs", "pytorch_docs"]
    assert all(isinstance(source, LocalSource) and source.path.is_dir() for source in sources)


def test_relative_paths_resolve_against_the_sources_file(tmp_path):
    path = write_sources(
        tmp_path / "sources.yaml",
        [
            {"name": "docs", "kind": "local", "path": "docs"},
            {"name": "site", "kind": "sitemap", "sitemap": "maps/site.xml", "allowed_hosts": ["example.com"]},
            {"name": "web", "kind": "sitemap", "sitemap": "https://example.com/sitemap.xml"},
        ],
    )
    docs, site, web = load_sources(path)
    assert docs.path == tmp_path / "docs"
    assert site.sitemap == str(tmp_path / "maps/site.xml")
    assert isinstance(web, SitemapSource) and web.hosts == ["example.com"]


@pytest.mark.parametrize(
    ("sources", "message"),
    [
        ([{"name": "a", "kind": "ftp", "path": "x"}], "does not match any of the expected tags"),
        ([{"name": "../etc", "kind": "local", "path": "x"}], "should match pattern"),
        ([{"name": "a", "kind": "local", "path": "x"}, {"name": "a", "kind": "local", "path": "y"}], "repeated: a"),
        ([{"name": "a", "kind": "local"}], "path"),
        ([{"name": "a", "kind": "local", "path": "x", "colour": "red"}], "Extra inputs are not permitted"),
        ([{"name": "a", "kind": "sitemap", "sitemap": "local.xml"}], "allowed_hosts"),
    ],
)
def test_invalid_sources_are_rejected_with_the_reason(tmp_path, sources, message):
    path = write_sources(tmp_path / "sources.yaml", sources)
    with pytest.raises(SourcesError, match=message):
        load_sources(path)


def test_missing_and_malformed_files_say_so(tmp_path):
    with pytest.raises(SourcesError, match="not found"):
        load_sources(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources: [unclosed", encoding="utf-8")
    with pytest.raises(SourcesError, match="not valid YAML"):
        load_sources(bad)
