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
#include <tuple>
#include <vector>

#include <grpcpp/support/status.h>

#include "accept.h"
#include "forecast.h"
#include "inference/grpc_service.pb.h"

namespace seqserve {

namespace py = pybind11;

// What the Python side provides for one model version (see serving/native/frontend.py).
struct Callbacks {
  py::object run;      // run(instance, {name: array}) -> {name: array}; None: answer zeros
  py::object account;  // account(queue_ns, elements, input_ns, infer_ns, output_ns, durations)
  py::object fail;     // fail(kind, elapsed_ns, detail) -> (grpc status code, message)
};

// Refusals at admission (queue full, unloading) are answered without the interpreter: the
// status is fixed when the model is attached, and the count is kept here until Python folds
// it into the model's statistics (`TakeRefusals`), so shedding load costs no GIL.
struct Refusal {
  grpc::StatusCode code;
  std::string message;
  std::atomic<int64_t> count{0}, ns{0};
};


class ModelQueue {
 public:
  ModelQueue(std::string name, int64_t version, std::vector<TensorSpec> inputs,
             std::vector<TensorSpec> outputs, Policy policy, Callbacks callbacks,
             std::string queue_full_message, std::string unloading_message,
             std::shared_ptr<const ForecastSpec> forecast = nullptr);
  ~ModelQueue();

  // Whether the fast path takes this request as it is (see accept.h); if so, fill `request`.
  bool Accepts(const inference::ModelInferRequest& message, Request* request) const {
    return Accept(signature_, message, request);
  }
  // Whether the fast path takes this typed Forecast as it is (a forecaster with a fixed step
  // only; see forecast.h); if so, fill `request` with the model's V2 request.
  bool AcceptsForecast(const fpb::ForecastRequest& message, Request* request) const;
  void Submit(std::unique_ptr<Request> request);
  // Refuse new requests, run the queued ones, stop the threads. Blocks; call without the GIL.
  void Close();

  size_t queue_size();
  int64_t pending() const { return pending_.load(); }
  int64_t requests() const { return requests_.load(); }  // run by the fast path, ever
  // Refusals since the last call, by kind ("queue_full", "unloading"): (count, total ns).
  std::vector<std::tuple<std::string, int64_t, int64_t>> TakeRefusals();

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
  const Signature signature_;
  const std::vector<TensorSpec>& inputs_ = signature_.inputs;
  const std::vector<TensorSpec>& outputs_ = signature_.outputs;
  const Policy& policy_ = signature_.policy;
  Callbacks callbacks_;
  const std::shared_ptr<const ForecastSpec> forecast_;  // a forecaster's, on a fixed step
  bool zeros_ = false;  // no runner: the C++ floor (bench/floor_server.py --native --bare)
  std::vector<py::object> dtypes_;  // numpy dtype per input

  std::mutex mu_;
  std::condition_variable wake_;
  std::deque<std::unique_ptr<Request>> queue_;
  bool closing_ = false;
  std::atomic<int64_t> pending_{0}, requests_{0};
  Refusal queue_full_, unloading_;
  std::vector<std::thread> threads_;
};

}  // namespace seqserve
