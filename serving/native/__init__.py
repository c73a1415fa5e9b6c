"""seqserve's native gRPC front end (C++), and its Python side."""
