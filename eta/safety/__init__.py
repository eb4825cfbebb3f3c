"""The ETA algorithm: evaluators, the decision, shallow + deep alignment, and the pipeline chaining them."""
