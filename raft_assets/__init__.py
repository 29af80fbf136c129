"""raft_assets: a Dagster project that turns your documents into a RAFT-fine-tuned domain chatbot."""
