"""What the Dagster UI shows of every asset: owners, group, kinds, description, columns, pool, automation."""

import dagster as dg

from raft_assets.definitions import OWNERS, defs

TABLES = ["documents", "chunks", "questions", "cot_answers", "curated_answers", "eval_set"]
GPU_ASSETS = {"fsdp_checkpoint", "eval_report"}


def specs() -> dict[str, dg.AssetSpec]:
    return {spec.key.to_user_string(): spec for spec in defs.resolve_all_asset_specs()}


def test_every_asset_has_owners_group_kinds_and_description():
    for name, spec in specs().items():
        assert spec.owners == OWNERS, name
        assert spec.group_name and spec.group_name != "default", name
        assert spec.kinds, name
        assert spec.description and len(spec.description) > 30, name


def test_tables_declare_every_column_with_its_meaning():
    for name in TABLES:
        schema = specs()[name].metadata["dagster/column_schema"]
        assert schema.columns, name
        undocumented = [column.name for column in schema.columns if not column.description]
        assert not undocumented, (name, undocumented)


def test_gpu_assets_share_the_gpu_pool_and_request_gpus_on_kubernetes():
    pools = {asset.key.to_user_string(): asset.op.pool for asset in defs.assets}
    assert {name for name, pool in pools.items() if pool == "gpu"} == GPU_ASSETS
    for name in GPU_ASSETS:
        assert "nvidia.com/gpu" in defs.resolve_assets_def(name).op.tags["dagster-k8s/config"]


def test_only_the_crawled_documents_lack_an_automation_condition():
    automated = {name for name, spec in specs().items() if spec.automation_condition is not None}
    assert set(specs()) - automated == {"documents"}
