"""Ingestion: document sources, loading them into documents, and splitting documents into chunks."""
