"""The partitions of the per-source assets: one key per source in the sources file."""

import dagster as dg

doc_sources = dg.DynamicPartitionsDefinition(name="doc_sources")


def every_source(asset: dg.AssetsDefinition) -> dg.AssetDep:
    """A dependency of an unpartitioned asset on all source partitions of `asset`."""
    return dg.AssetDep(asset, partition_mapping=dg.AllPartitionMapping())
