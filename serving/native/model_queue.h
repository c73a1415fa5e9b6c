// The fast path of one model version: which ModelInfer requests it takes, its queue, dynamic
// batching, and the instance threads that run batches through the Python model's runner.
#pragma once

#include <pybind11/pybind11.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "inference/grpc_service.pb.h"

namespace seqserve {

namespace py = pybind11;
using Clock = std::chrono::steady_clock;

class Call;

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

// What the Python side provides for one model version (see serving/native/frontend.py).
struct Callbacks {
  py::object run;      // run(instance, {name: array}) -> {name: array}; None: answer zeros
  py::object account;  // account(queue_ns, elements, input_ns, infer_ns, output_ns, durations)
  py::object fail;     // fail(kind, elapsed_ns, detail) -> (grpc status code, message)
};

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
};

class ModelQueue {
 public:
  ModelQueue(std::string name, int64_t version, std::vector<TensorSpec> inputs,
             std::vector<TensorSpec> outputs, Policy policy, Callbacks callbacks);
  ~ModelQueue();

  // Whether the fast path takes this request as it is; if so, fill `request`. A request it does
  // not take goes to the Python server, which answers it (and every malformed request).
  bool Accepts(const inference::ModelInferRequest& message, Request* request) const;
  void Submit(std::unique_ptr<Request> request);
  // Refuse new requests, run the queued ones, stop the threads. Blocks; call without the GIL.
  void Close();

  size_t queue_size();
  int64_t pending() const { return pending_.load(); }
  int64_t requests() const { return requests_.load(); }  // taken by the fast path, ever

 private:
  void Work(int instance);
  bool TakeBatch(std::unique_lock<std::mutex>& lock, std::vector<std::unique_ptr<Request>>* batch,
                 std::vector<std::unique_ptr<Request>>* dropped);
  void RunBatch(int instance, std::vector<std::unique_ptr<Request>>& batch);
  void Zeros(const std::vector<std::unique_ptr<Request>>& batch,
             std::vector<inference::ModelInferResponse>* replies) const;
  void FailAll(std::vector<std::unique_ptr<Request>>& requests, const char* kind,
               const std::string& detail);

  const std::string name_;
  const int64_t version_;
  const std::vector<TensorSpec> inputs_, outputs_;
  const Policy policy_;
  Callbacks callbacks_;
  bool zeros_ = false;  // no runner: the C++ floor (bench/floor_server.py --native --bare)
  std::vector<py::object> dtypes_;  // numpy dtype per input

  std::mutex mu_;
  std::condition_variable wake_;
  std::deque<std::unique_ptr<Request>> queue_;
  bool closing_ = false;
  std::atomic<int64_t> pending_{0}, requests_{0};
  std::vector<std::thread> threads_;
};

}  // namespace seqserve
