// libFuzzer target: the native front end's request acceptance (serving/native/accept.cc) on
// arbitrary bytes parsed as a ModelInferRequest, against five model signatures. A request it
// accepts must be exactly what the model takes: every raw payload the size its shape claims
// (computed here in 128-bit integers), the batch within max_batch_size, the outputs known.
// Anything else traps. Built by `make fuzz` with clang (-fsanitize=fuzzer,address,undefined);
// `make test` replays the committed corpus through the same function (replay_main.cc, g++).
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include <google/protobuf/stubs/logging.h>

#include "accept.h"

namespace {

using seqserve::Policy;
using seqserve::Signature;
using seqserve::TensorSpec;

Policy Batching(int64_t max_batch_size) {
  Policy p;
  p.max_batch_size = max_batch_size;
  p.batching = max_batch_size > 0;
  return p;
}

const std::vector<Signature>& Signatures() {
  static const std::vector<Signature> kSignatures = {
      // affine: x FP32 [B, 4] -> y [B, 4], z [B, 1]
      {{{"x", "FP32", {4}, 4}}, {{"y", "FP32", {4}, 4}, {"z", "FP32", {1}, 4}}, Batching(8)},
      // fragile: a variable dimension
      {{{"x", "FP32", {-1}, 4}}, {{"y", "FP32", {4}, 4}}, Batching(4)},
      // unbatched
      {{{"x", "FP32", {4}, 4}}, {{"y", "FP32", {4}, 4}}, Batching(0)},
      // a forecaster: two inputs
      {{{"past", "FP32", {6, 3}, 4}, {"future", "FP32", {2, 3}, 4}},
       {{"forecast", "FP32", {2, 1}, 4}, {"quantiles", "FP32", {2, 1, 3}, 4}}, Batching(64)},
      // mixed types, variable dimensions
      {{{"a", "INT64", {-1, -1}, 8}, {"b", "FP64", {2}, 8}, {"c", "BOOL", {-1}, 1},
        {"d", "UINT8", {3}, 1}},
       {{"y", "INT32", {-1}, 4}}, Batching(2)},
  };
  return kSignatures;
}

void Check(bool ok) {
  if (!ok) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  google::protobuf::SetLogHandler(nullptr);  // invalid UTF-8 in a string field is logged
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  inference::ModelInferRequest message;
  if (!message.ParseFromArray(data, static_cast<int>(size))) return 0;
  if (!seqserve::Whole(message, size)) return 0;  // as the front end: left to Python
  for (const Signature& signature : Signatures()) {
    seqserve::Request request;
    if (!seqserve::Accept(signature, message, &request)) continue;
    const bool batched = signature.policy.max_batch_size > 0;
    Check(request.raw_index.size() == signature.inputs.size());
    for (size_t k = 0; k < signature.inputs.size(); ++k) {
      const int i = request.raw_index[k];
      Check(i >= 0 && i < message.inputs_size());
      const auto& tensor = message.inputs(i);
      Check(tensor.name() == signature.inputs[k].name);
      __int128 elements = 1, extent = 1;
      for (int64_t d : tensor.shape()) {
        Check(d >= 0);
        elements *= d;
        extent *= d != 0 ? d : 1;
      }
      Check(extent <= seqserve::kMaxElements);  // what numpy can hold, even when empty
      Check(static_cast<__int128>(message.raw_input_contents(i).size()) ==
            elements * static_cast<__int128>(signature.inputs[k].itemsize));
      if (batched) Check(tensor.shape(0) == request.size);
    }
    if (batched) Check(request.size >= 1 && request.size <= signature.policy.max_batch_size);
    for (size_t o : request.wanted) Check(o < signature.outputs.size());
  }
  return 0;
}
