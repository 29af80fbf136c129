"""Generation: questions and chain-of-thought answers from a large model (or the extractive stand-in)."""
