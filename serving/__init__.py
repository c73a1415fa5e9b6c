"""seqserve's serving side: a KServe V2 / Triton-compatible gRPC server over onnxruntime.

Nothing in this package imports torch; `tests/test_no_torch.py` proves it.
"""
