#include "model_queue.h"

#include <grpcpp/impl/codegen/proto_utils.h>
#include <pybind11/numpy.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "call.h"

namespace seqserve {

namespace {

int64_t Nanos(Clock::duration d) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(d).count();
}

const char* NumpyDtype(const std::string& datatype) {
  static const std::pair<const char*, const char*> kTypes[] = {
      {"BOOL", "bool"},      {"UINT8", "uint8"},    {"UINT16", "uint16"}, {"UINT32", "uint32"},
      {"UINT64", "uint64"},  {"INT8", "int8"},      {"INT16", "int16"},   {"INT32", "int32"},
      {"INT64", "int64"},    {"FP16", "float16"},   {"FP32", "float32"},  {"FP64", "float64"}};
  for (const auto& [v2, numpy] : kTypes)
    if (datatype == v2) return numpy;
  throw std::invalid_argument("the fast path does not take datatype " + datatype);
}

}  // namespace

ModelQueue::ModelQueue(std::string name, int64_t version, std::vector<TensorSpec> inputs,
                       std::vector<TensorSpec> outputs, Policy policy, Callbacks callbacks,
                       std::string queue_full_message, std::string unloading_message,
                       std::shared_ptr<const ForecastSpec> forecast)
    : name_(std::move(name)), version_(version),
      signature_{std::move(inputs), std::move(outputs), std::move(policy)},
      callbacks_(std::move(callbacks)), forecast_(std::move(forecast)) {
  queue_full_.code = grpc::StatusCode::RESOURCE_EXHAUSTED;
  queue_full_.message = std::move(queue_full_message);
  unloading_.code = grpc::StatusCode::UNAVAILABLE;
  unloading_.message = std::move(unloading_message);
  zeros_ = callbacks_.run.is_none();
  py::module_ numpy = py::module_::import("numpy");
  for (const auto& spec : inputs_) dtypes_.push_back(numpy.attr("dtype")(NumpyDtype(spec.datatype)));
  for (int i = 0; i < std::max(policy_.instances, 1); ++i)
    threads_.emplace_back([this, i] { Work(i); });
}

ModelQueue::~ModelQueue() { Close(); }

bool ModelQueue::AcceptsForecast(const fpb::ForecastRequest& message, Request* request) const {
  if (!forecast_) return false;
  auto infer = std::make_unique<inference::ModelInferRequest>();
  auto typed = std::make_shared<TypedForecast>();
  if (!ForecastToInfer(forecast_, message, policy_.max_batch_size, infer.get(), typed.get()))
    return false;
  if (!Accepts(*infer, request)) return false;  // the model's own tensor rule, as for V2
  request->message = std::move(infer);
  request->typed = std::move(typed);
  return true;
}

void ModelQueue::Submit(std::unique_ptr<Request> request) {
  request->enqueued = Clock::now();
  if (!request->deadline && policy_.default_timeout_us > 0)  // as the Python batcher
    request->deadline = request->enqueued + std::chrono::microseconds(policy_.default_timeout_us);
  Refusal* refusal = nullptr;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closing_) {
      refusal = &unloading_;
    } else if (policy_.max_queue_size && queue_.size() >= policy_.max_queue_size) {
      refusal = &queue_full_;
    } else {
      pending_.fetch_add(1);
      queue_.push_back(std::move(request));
    }
  }
  if (refusal) {  // no GIL: counted here, folded into the statistics by Python later
    refusal->count.fetch_add(1);
    refusal->ns.fetch_add(Nanos(Clock::now() - request->received));
    request->call->Fail(grpc::Status(refusal->code, refusal->message));
    return;
  }
  wake_.notify_one();
}

std::vector<std::tuple<std::string, int64_t, int64_t>> ModelQueue::TakeRefusals() {
  std::vector<std::tuple<std::string, int64_t, int64_t>> out;
  for (auto& [kind, refusal] : {std::pair<const char*, Refusal*>{"queue_full", &queue_full_},
                                {"unloading", &unloading_}}) {
    const int64_t count = refusal->count.exchange(0);
    const int64_t ns = refusal->ns.exchange(0);
    if (count) out.emplace_back(kind, count, ns);
  }
  return out;
}

size_t ModelQueue::queue_size() {
  std::lock_guard<std::mutex> lock(mu_);
  return queue_.size();
}

void ModelQueue::Close() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closing_ && threads_.empty()) return;
    closing_ = true;
  }
  wake_.notify_all();
  for (auto& t : threads_) t.join();
  threads_.clear();
  py::gil_scoped_acquire gil;
  callbacks_ = Callbacks{};
  dtypes_.clear();
}

void ModelQueue::Work(int instance) {
  std::vector<std::unique_ptr<Request>> batch, dropped;
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    wake_.wait(lock, [this] { return closing_ || !queue_.empty(); });
    if (queue_.empty()) return;  // closing, and nothing left to run
    bool ready = TakeBatch(lock, &batch, &dropped);
    if (!dropped.empty() || ready) {
      lock.unlock();
      for (auto& r : dropped) {
        std::vector<std::unique_ptr<Request>> one;
        one.push_back(std::move(r));
        FailAll(one, one[0]->call->cancelled() ? "cancelled" : "expired", "");
      }
      dropped.clear();
      if (ready) RunBatch(instance, batch);
      batch.clear();
      lock.lock();
    }
  }
}

// Under the lock: drop cancelled and expired requests; pick the oldest live request and the
// same-shaped ones behind it, up to max_batch_size. Return true to run them now; false when
// the batch may still wait for company (this waits, then the caller looks again).
bool ModelQueue::TakeBatch(std::unique_lock<std::mutex>& lock,
                           std::vector<std::unique_ptr<Request>>* batch,
                           std::vector<std::unique_ptr<Request>>* dropped) {
  const Clock::time_point now = Clock::now();
  for (auto it = queue_.begin(); it != queue_.end();) {
    if ((*it)->call->cancelled() || ((*it)->deadline && now > *(*it)->deadline)) {
      dropped->push_back(std::move(*it));
      it = queue_.erase(it);
    } else {
      ++it;
    }
  }
  if (queue_.empty()) return false;
  const int64_t limit = policy_.batching ? policy_.max_batch_size : 0;
  std::vector<size_t> picked{0};
  int64_t total = queue_[0]->size;
  for (size_t i = 1; limit && i < queue_.size() && total < limit; ++i) {
    if (queue_[i]->key == queue_[0]->key && total + queue_[i]->size <= limit) {
      picked.push_back(i);
      total += queue_[i]->size;
    }
  }
  const auto until = queue_[0]->enqueued + std::chrono::microseconds(policy_.max_queue_delay_us);
  const auto& preferred = policy_.preferred_batch_sizes;
  const bool full = !limit || total >= limit ||
                    std::find(preferred.begin(), preferred.end(), total) != preferred.end();
  if (!full && now < until && !closing_) {
    if (!dropped->empty()) return false;  // answer those first, then look again
    wake_.wait_until(lock, until);
    return false;
  }
  for (auto it = picked.rbegin(); it != picked.rend(); ++it) {
    batch->push_back(std::move(queue_[*it]));
    queue_.erase(queue_.begin() + static_cast<std::ptrdiff_t>(*it));
  }
  std::reverse(batch->begin(), batch->end());
  return true;
}

void ModelQueue::RunBatch(int instance, std::vector<std::unique_ptr<Request>>& batch) {
  const Clock::time_point start = Clock::now();
  int64_t total = 0;
  for (const auto& r : batch) total += r->size;
  std::vector<inference::ModelInferResponse> replies(batch.size());
  std::string error;
  if (zeros_) {
    Zeros(batch, &replies);
  } else {
    py::gil_scoped_acquire gil;
    try {
      const auto t0 = Clock::now();
      py::dict feeds;
      const bool batched = policy_.max_batch_size > 0;
      size_t offset = 0;  // into the first request's item_shape
      for (size_t k = 0; k < inputs_.size(); ++k) {
        std::vector<py::ssize_t> shape;
        if (batched) shape.push_back(total);
        const size_t ndim = inputs_[k].dims.size();
        for (size_t d = 0; d < ndim; ++d) shape.push_back(batch[0]->item_shape[offset + d]);
        offset += ndim;
        py::array array(py::dtype::from_args(dtypes_[k]), shape);
        char* dst = static_cast<char*>(array.mutable_data());
        for (const auto& r : batch) {
          const std::string& raw = r->message->raw_input_contents(r->raw_index[k]);
          std::memcpy(dst, raw.data(), raw.size());
          dst += raw.size();
        }
        feeds[py::str(inputs_[k].name)] = array;
      }
      const auto t1 = Clock::now();
      py::dict results = callbacks_.run(instance, feeds);
      const auto t2 = Clock::now();
      std::vector<py::array> arrays;
      for (const auto& spec : outputs_) {
        py::array array = results[py::str(spec.name)];
        if (!(array.flags() & py::array::c_style))
          throw std::runtime_error("output " + spec.name + " is not C-contiguous");
        if (batched && (array.ndim() == 0 || array.shape(0) != total))
          throw std::runtime_error("output " + spec.name + " has the wrong batch size");
        arrays.push_back(std::move(array));
      }
      int64_t first = 0;  // the request's first row in the batch
      for (size_t i = 0; i < batch.size(); ++i) {
        const Request& r = *batch[i];
        for (size_t o : r.wanted) {
          const py::array& array = arrays[o];
          const size_t per_item = batched ? array.nbytes() / total : array.nbytes();
          auto* tensor = replies[i].add_outputs();
          tensor->set_name(outputs_[o].name);
          tensor->set_datatype(outputs_[o].datatype);
          if (batched) tensor->add_shape(r.size);
          for (int d = batched ? 1 : 0; d < array.ndim(); ++d) tensor->add_shape(array.shape(d));
          replies[i].add_raw_output_contents(
              static_cast<const char*>(array.data()) + per_item * first, per_item * r.size);
        }
        first += r.size;
      }
      const auto t3 = Clock::now();
      py::list queue_ns, durations_ns;
      for (const auto& r : batch) {
        queue_ns.append(Nanos(start - r->enqueued));
        durations_ns.append(Nanos(t3 - r->received));
      }
      callbacks_.account(queue_ns, total, Nanos(t1 - t0), Nanos(t2 - t1), Nanos(t3 - t2),
                         durations_ns);
    } catch (py::error_already_set& err) {
      error = err.what();
    } catch (const std::exception& err) {
      error = err.what();
    }
  }
  if (!error.empty()) {
    FailAll(batch, "backend", error);
    return;
  }
  for (size_t i = 0; i < batch.size(); ++i) {
    Request& r = *batch[i];
    auto& reply = replies[i];
    reply.set_model_name(name_);
    reply.set_model_version(std::to_string(version_));
    reply.set_id(r.message->id());
    grpc::ByteBuffer buffer;
    bool own;
    if (r.typed) {
      fpb::ForecastResponse typed;
      InferToForecast(*r.typed, reply, &typed);
      grpc::SerializationTraits<fpb::ForecastResponse>::Serialize(typed, &buffer, &own);
    } else {
      grpc::SerializationTraits<inference::ModelInferResponse>::Serialize(reply, &buffer, &own);
    }
    pending_.fetch_sub(1);
    requests_.fetch_add(1);
    r.call->Reply(&buffer);
  }
}

// Zero-filled outputs of the declared shapes (a variable dimension as 1), without Python: what
// the transport and the queue cost alone.
void ModelQueue::Zeros(const std::vector<std::unique_ptr<Request>>& batch,
                       std::vector<inference::ModelInferResponse>* replies) const {
  const bool batched = policy_.max_batch_size > 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    const Request& r = *batch[i];
    for (size_t o : r.wanted) {
      auto* tensor = (*replies)[i].add_outputs();
      tensor->set_name(outputs_[o].name);
      tensor->set_datatype(outputs_[o].datatype);
      int64_t elements = batched ? r.size : 1;
      if (batched) tensor->add_shape(r.size);
      for (int64_t d : outputs_[o].dims) {
        tensor->add_shape(std::max<int64_t>(d, 1));
        elements *= std::max<int64_t>(d, 1);
      }
      (*replies)[i].add_raw_output_contents(std::string(elements * outputs_[o].itemsize, '\0'));
    }
  }
}

void ModelQueue::FailAll(std::vector<std::unique_ptr<Request>>& requests, const char* kind,
                         const std::string& detail) {
  std::vector<grpc::Status> statuses;
  {
    py::gil_scoped_acquire gil;
    for (const auto& r : requests) {
      int code = grpc::StatusCode::UNAVAILABLE;
      std::string message = "model '" + name_ + "' is unloading; retry";
      if (!callbacks_.fail) {  // closed: the model is gone
        statuses.emplace_back(static_cast<grpc::StatusCode>(code), message);
        continue;
      }
      code = grpc::StatusCode::INTERNAL;
      message = "internal error";
      try {
        py::tuple status = callbacks_.fail(kind, Nanos(Clock::now() - r->received), detail);
        code = status[0].cast<int>();
        message = status[1].cast<std::string>();
      } catch (py::error_already_set& err) {
        err.restore();
        PyErr_Print();
      }
      statuses.emplace_back(static_cast<grpc::StatusCode>(code), message);
    }
  }
  for (size_t i = 0; i < requests.size(); ++i) {
    pending_.fetch_sub(1);
    requests[i]->call->Fail(statuses[i]);
  }
}

}  // namespace seqserve
