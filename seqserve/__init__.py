"""seqserve: sequence models from PyTorch to production (the `seqserve` command lives here)."""
