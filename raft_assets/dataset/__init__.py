"""The RAFT dataset and the eval set, assembled from the generated questions and answers."""
