// Which ModelInfer requests the fast path takes as they are: the one rule, free of Python and
// gRPC's server, so a fuzzer can drive it alone (serving/native/fuzz_accept.cc).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "inference/grpc_service.pb.h"

namespace seqserve {

using Clock = std::chrono::steady_clock;

class Call;

// As serving.tensors.MAX_ELEMENTS: the most elements one tensor may claim.
constexpr int64_t kMaxElements = (int64_t{1} << 31) - 1;

struct TensorSpec {
  std::string name;
  std::string datatype;       // V2 datatype
  std::vector<int64_t> dims;  // without the batch dimension; -1 = any
  size_t itemsize = 0;
};

// Mirrors serving.batcher.BatchPolicy.
struct Policy {
  int64_t max_batch_size = 0;  // 0: the model does not batch
  bool batching = false;
  int64_t max_queue_delay_us = 0;
  std::vector<int64_t> preferred_batch_sizes;
  size_t max_queue_size = 0;      // 0: unbounded
  int64_t default_timeout_us = 0;  // 0: none
  int instances = 1;
};


// A model version's tensors and batching policy.
struct Signature {
  std::vector<TensorSpec> inputs, outputs;
  Policy policy;
};

struct TypedForecast;

struct Request {
  Call* call;
  std::unique_ptr<inference::ModelInferRequest> message;
  std::vector<int> raw_index;     // per spec input: its index in raw_input_contents
  std::vector<int64_t> key;       // per-item shapes: only equal keys batch together
  std::vector<int64_t> item_shape;  // per spec input, concatenated dims (for the batch array)
  std::vector<size_t> wanted;     // spec outputs to return, in the request's order (all if none)
  int64_t size = 1;               // batch elements
  int64_t timeout_us = 0;         // the V2 `timeout` parameter, 0 if none
  Clock::time_point received, enqueued;
  std::optional<Clock::time_point> deadline;
  // A typed Forecast call's (forecast.h): its reply is turned into a ForecastResponse.
  std::shared_ptr<const TypedForecast> typed;
};

// Whether a message parsed from `size` bytes is all of them, encoded as protobuf encodes it,
// with no field its schema lacks at any depth. The fast path leaves anything else (a corrupt
// field C++ keeps as unknown where Python's parser refuses it, an unusual encoding) to the
// Python server, whose parser is the one rule of what parses.
bool Whole(const google::protobuf::Message& message, size_t size);

// Whether the fast path takes `message` as it is; if so, fill `request`. Anything unusual
// (parameters, typed contents, a shape or a value the model refuses, sizes past kMaxElements)
// is left to the Python server, which answers it with the dataplane's checks and messages.
// When it returns true, every input's raw size is exactly its shape's elements × itemsize.
bool Accept(const Signature& signature, const inference::ModelInferRequest& message,
            Request* request);

}  // namespace seqserve
