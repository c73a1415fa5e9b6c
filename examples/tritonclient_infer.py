"""Plain `tritonclient` against seqserve's KServe V2 endpoint: no seqserve code at all.

Run it from the tool venv that `make tools` builds (tritonclient needs its own protobuf):

    .tools/tritonclient/bin/python examples/tritonclient_infer.py [-u 127.0.0.1:8001]
"""

from __future__ import annotations

import argparse

import numpy as np
import tritonclient.grpc as grpcclient

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("-u", "--url", default="127.0.0.1:8001", help="server host:port")
args = parser.parse_args()

client = grpcclient.InferenceServerClient(args.url)
print("server:", client.get_server_metadata().name, "live:", client.is_server_live())

# A forecaster: tensors in raw units, as its config declares them.
config = client.get_model_config("forecaster_gru").config
past_dims = list(config.input[0].dims)  # [L, F_in]
inputs = []
for spec in config.input:
    tensor = grpcclient.InferInput(spec.name, [1, *spec.dims], "FP32")
    tensor.set_data_from_numpy(np.zeros([1, *spec.dims], np.float32) + 100.0)
    inputs.append(tensor)
result = client.infer("forecaster_gru", inputs)
print("forecast shape:", result.as_numpy("forecast").shape, "past dims:", past_dims)

# The translator: BYTES in, BYTES out.
text = grpcclient.InferInput("text", [1, 1], "BYTES")
text.set_data_from_numpy(np.array([[b"dreihundertzweiundvierzig"]], dtype=object))
result = client.infer("translator", [text])
print("translation:", result.as_numpy("translation")[0, 0].decode())

stats = client.get_inference_statistics("forecaster_gru").model_stats[0]
print("forecaster_gru inferences:", stats.inference_count, "executions:", stats.execution_count)
