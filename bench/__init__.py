"""Benchmarks: `seqserve bench serving|translator|accuracy` (results under bench/results/)."""
