"""The partitions of the per-source assets: one key per source in the sources file."""

import dagster as dg

doc_sources = dg.DynamicPartitionsDefinition(name="doc_sources")
