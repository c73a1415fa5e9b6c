"""Protocol definitions and their generated Python modules (run `make protos`)."""
