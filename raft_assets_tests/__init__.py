"""The raft_assets test suite; its servers (a web site, later an OpenAI-compatible API) serve the benchmarks too."""
