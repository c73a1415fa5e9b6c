"""What more than one layer needs, importing no torch, onnx, onnxruntime or grpc: training,
export and serving import it, and it imports none of them (issue 28 grows it)."""
