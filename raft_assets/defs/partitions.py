"""The partitions: one key per source in the sources file, one key per recipe in the experiments file."""

import dagster as dg

from raft_assets.contracts.recipes import DEFAULT_RECIPE

doc_sources = dg.DynamicPartitionsDefinition(name="doc_sources")
recipes = dg.DynamicPartitionsDefinition(name="recipes")


def every_partition(asset: dg.AssetsDefinition) -> dg.AssetDep:
    """A dependency on all partitions of `asset` (every source, or every recipe), from an asset not partitioned
    the same way."""
    return dg.AssetDep(asset, partition_mapping=dg.AllPartitionMapping())


def default_recipe(asset: dg.AssetsDefinition) -> dg.AssetDep:
    """A dependency on the `default` recipe's partition of `asset` only: what every recipe shares (the split)."""
    return dg.AssetDep(asset, partition_mapping=dg.SpecificPartitionsPartitionMapping([DEFAULT_RECIPE]))
