"""`dagster dev` on the demo's run (conftest's `demo_run`), through GraphQL and in a browser: headless Chromium
(Debian's `chromium`, driven by Playwright). The server lives as long as this module's tests, not the session's.

Set RAFT_UPDATE_SCREENSHOTS=1 to write the lineage graph to docs/images/lineage.png for the README.
"""

from __future__ import annotations

import os
import re
import shutil

import pytest
from playwright.sync_api import Page, expect

from raft_assets.contracts.recipes import load_recipes
from raft_assets.definitions import defs
from raft_assets_tests.browser import NEEDS_CHROMIUM, TIMEOUT_MS, chromium_page
from raft_assets_tests.conftest import REPO, SOURCES, DemoRun
from raft_assets_tests.dagster_dev import DagsterDev, dagster_dev

# The UI's "Join the Dagster community" dialog stays away once dismissed in the browser's local storage.
DISMISS_COMMUNITY_DIALOG = "window.localStorage.setItem('communityNux', JSON.stringify('1'))"
SCREENSHOT = REPO / "docs" / "images" / "lineage.png"
pytestmark = pytest.mark.dagster_dev

ASSET_NODES = "{ assetNodes { assetKey { path } groupName isPartitioned } }"
INSTIGATORS = """{ repositoriesOrError { ... on RepositoryConnection { nodes {
    sensors { name sensorState { status } } schedules { name cronSchedule scheduleState { status } } } } } }"""
DOCUMENTS_PARTITIONS = """{ assetNodes(assetKeys: [{path: ["documents"]}]) {
  assetPartitionStatuses { ... on DefaultPartitionStatuses { materializedPartitions } } } }"""


@pytest.fixture(scope="module")
def dagster_dev_server(demo_run: DemoRun):
    """One `dagster dev` on the demo's DAGSTER_HOME: the whole graph materialized, for both sample sources and both
    shipped recipes."""
    with dagster_dev(demo_run.env) as server:
        yield server


def test_dagster_dev_serves_the_asset_graph(dagster_dev_server: DagsterDev):
    response = dagster_dev_server.graphql(ASSET_NODES)
    nodes = {tuple(node["assetKey"]["path"]): node for node in response["assetNodes"]}
    assert set(nodes) >= {("documents",), ("chunks",)}
    assert nodes[("documents",)]["isPartitioned"] and nodes[("chunks",)]["groupName"] == "ingestion"

    [repository] = dagster_dev_server.graphql(INSTIGATORS)["repositoriesOrError"]["nodes"]
    sensors = {sensor["name"]: sensor["sensorState"]["status"] for sensor in repository["sensors"]}
    names = ("doc_sources_sensor", "recipes_sensor", "local_folders_sensor", "automation_sensor")
    assert sensors == {name: "RUNNING" for name in names}
    schedules = {schedule["name"]: schedule for schedule in repository["schedules"]}
    assert schedules["crawl_schedule"]["scheduleState"]["status"] == "RUNNING"
    assert schedules["crawl_schedule"]["cronSchedule"] == "0 3 * * *"


@pytest.fixture
def page():
    with chromium_page(1600, 1000, DISMISS_COMMUNITY_DIALOG) as page:
        yield page


@NEEDS_CHROMIUM
@pytest.mark.browser
def test_ui_shows_the_asset_graph_the_partitions_and_the_plots(dagster_dev_server: DagsterDev, tmp_path, page: Page):
    """Over the demo's run: both sample sources, both shipped recipes."""
    asset_names = sorted(key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys())
    server = dagster_dev_server
    [node] = server.graphql(DOCUMENTS_PARTITIONS)["assetNodes"]
    assert sorted(node["assetPartitionStatuses"]["materializedPartitions"]) == SOURCES

    # The global lineage graph, with the navigation and the sidebar out of the way and every group expanded
    # (the UI fits the graph to the window after each change).
    page.goto(f"{server.url}/asset-groups")
    page.get_by_text("Hide navigation", exact=True).click()
    hide_buttons = page.get_by_role("button").filter(has=page.get_by_label("panel_show_right"))
    hide_buttons.filter(has_not_text="Hide navigation").click()  # the sidebar's, an icon without text
    graph = page.locator("svg foreignObject")
    expect(graph.first).to_be_visible()
    page.keyboard.press("Alt+KeyE")  # the graph's "Expand all groups"
    for name in asset_names:
        expect(graph.get_by_text(name, exact=True), f"asset {name} in the graph").to_be_visible()
    # Its partitions materialized, `documents` is green (zoomed out to fit, nodes are "minimal" boxes).
    documents_box = graph.get_by_text("documents", exact=True).locator("..")
    expect(documents_box).to_have_attribute("style", re.compile(r"--minimal-bg: var\(--color-background-green\)"))
    wait_until_still(documents_box)  # the zoom to fit is animated
    page.screenshot(path=tmp_path / "lineage.png")
    if os.environ.get("RAFT_UPDATE_SCREENSHOTS") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tmp_path / "lineage.png", SCREENSHOT)

    page.goto(f"{server.url}/assets/documents?view=partitions")
    expect(page.get_by_text(f"Materialized ({len(SOURCES)})", exact=True)).to_be_visible()
    expect(page.get_by_text("Missing (0)", exact=True)).to_be_visible()
    for name in SOURCES:
        expect(page.get_by_text(name, exact=True).first).to_be_visible()

    # The recipes of the experiments file are the partitions of the per-recipe assets.
    recipe_names = [recipe.name for recipe in load_recipes(REPO / "data" / "experiments.yaml")]
    page.goto(f"{server.url}/assets/raft_dataset?view=partitions")
    expect(page.get_by_text(f"Materialized ({len(recipe_names)})", exact=True)).to_be_visible()
    for name in recipe_names:
        expect(page.get_by_text(name, exact=True).first).to_be_visible()

    # The plots are on the asset pages themselves: PNGs inside markdown metadata, which the browser decodes.
    for asset, key in (
        ("experiment_report", "report"),
        ("eval_report", "scores_plot"),
        ("fsdp_checkpoint", "loss_plot"),
    ):
        page.goto(f"{server.url}/assets/{asset}")
        row = page.get_by_role("row").filter(has=page.get_by_text(key, exact=True))
        row.get_by_text("[Show Markdown]").click()
        plot = page.get_by_role("dialog").locator("img[src^='data:image/png;base64,']")
        expect(plot, f"{asset}'s {key}").to_be_visible()
        assert plot.evaluate("image => image.naturalWidth") > 0, (asset, key)
        page.keyboard.press("Escape")


def wait_until_still(locator, interval_ms: int = 250) -> None:
    """Wait until the element stops moving (two equal bounding boxes `interval_ms` apart)."""
    previous = None
    for _ in range(TIMEOUT_MS // interval_ms):
        box = locator.bounding_box()
        if box is not None and box == previous:
            return
        previous = box
        locator.page.wait_for_timeout(interval_ms)
    raise AssertionError(f"{locator} kept moving")
