"""Export: training checkpoints to ONNX graphs in a Triton-style model repository (needs torch)."""
