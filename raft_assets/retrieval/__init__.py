"""The retrieval index: sentence-transformers embeddings of every chunk, searchable with FAISS."""
