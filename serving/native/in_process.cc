#include "in_process.h"

#include <pybind11/stl.h>

#include <chrono>

#include "call.h"

namespace seqserve {

namespace {
// Calls handed to Python at once, at most: one GIL take each.
constexpr size_t kMostAtOnce = 256;
}  // namespace

InProcessCall::InProcessCall(Call* call, uint64_t id, std::string method, py::bytes request,
                             double timeout_s)
    : id(id), method(std::move(method)), request(std::move(request)), timeout_s(timeout_s),
      call_(call) {}

InProcessCall::~InProcessCall() {
  if (!answered_) Fail(static_cast<int>(grpc::StatusCode::INTERNAL), "Internal server error");
}

void InProcessCall::Reply(const std::string& response) {
  if (answered_) return;
  answered_ = true;
  grpc::Slice slice(response);
  grpc::ByteBuffer buffer(&slice, 1);
  py::gil_scoped_release unlocked;
  call_->Reply(&buffer);
}

void InProcessCall::Fail(int code, const std::string& message) {
  if (answered_) return;
  answered_ = true;
  py::gil_scoped_release unlocked;
  call_->End(grpc::Status(static_cast<grpc::StatusCode>(code), message));
}

void InProcessCall::Write(const std::string& response) {
  if (answered_) return;
  grpc::Slice slice(response);
  grpc::ByteBuffer buffer(&slice, 1);
  py::gil_scoped_release unlocked;
  call_->Write(&buffer);
}

void InProcessCall::Finish() {
  if (answered_) return;
  answered_ = true;
  py::gil_scoped_release unlocked;
  call_->End(grpc::Status::OK);
}

InProcess::~InProcess() {
  if (!thread_.joinable()) return;
  if (PyGILState_Check()) {  // (destroyed by Python's collector: let the thread finish)
    py::gil_scoped_release unlocked;
    Stop();
  } else {
    Stop();
  }
}

void InProcess::Set(std::vector<std::string> methods, std::vector<std::string> streams,
                    py::object handler) {
  methods_ = std::set<std::string, std::less<>>(methods.begin(), methods.end());
  streams_ = std::set<std::string, std::less<>>(streams.begin(), streams.end());
  handler_ = std::move(handler);
  if (!thread_.joinable()) thread_ = std::thread([this] { Work(); });
}

uint64_t InProcess::Start(Call* call, std::optional<std::string> request) {
  Pending pending{call, 0, std::move(request), call->context()->method(),
                  call->context()->deadline()};
  std::lock_guard<std::mutex> lock(mu_);
  const uint64_t id = pending.id = ++next_id_;
  pending_.push_back(std::move(pending));
  wake_.notify_one();  // (under the lock: cheap, and the id is known)
  return id;
}

void InProcess::Message(uint64_t id, std::optional<std::string> message) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    pending_.push_back(Pending{nullptr, id, std::move(message), {}, {}});
  }
  wake_.notify_one();
}

void InProcess::Cancel(uint64_t id) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    cancelled_.push_back(id);
  }
  wake_.notify_one();
}

void InProcess::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  wake_.notify_one();
  if (thread_.joinable()) thread_.join();
}

void InProcess::Work() {
  for (;;) {
    std::vector<Pending> batch;
    std::vector<uint64_t> cancelled;
    {
      std::unique_lock<std::mutex> lock(mu_);
      wake_.wait(lock, [this] { return stop_ || !pending_.empty() || !cancelled_.empty(); });
      if (pending_.empty() && cancelled_.empty()) return;  // stopping, and nothing is left
      while (!pending_.empty() && batch.size() < kMostAtOnce) {
        batch.push_back(std::move(pending_.front()));
        pending_.pop_front();
      }
      cancelled.swap(cancelled_);  // (after the calls they may name: handed over first)
    }
    const auto now = std::chrono::system_clock::now();
    py::gil_scoped_acquire gil;
    py::list calls, messages;
    for (Pending& p : batch) {
      if (p.call == nullptr) {  // a stream's message, or its end
        messages.append(py::make_tuple(
            p.id, p.request ? py::object(py::bytes(*p.request)) : py::object(py::none())));
        continue;
      }
      const auto deadline = p.deadline;
      const double timeout_s =
          deadline == std::chrono::system_clock::time_point::max()
              ? -1.0
              : std::chrono::duration<double>(deadline - now).count();
      calls.append(py::cast(new InProcessCall(p.call, p.id, p.method,
                                              py::bytes(p.request.value_or("")), timeout_s),
                            py::return_value_policy::take_ownership));
      p.request.reset();  // the Python copy is the one kept
    }
    try {
      if (!calls.empty()) handler_(calls);
      if (!messages.empty()) handler_.attr("messages")(messages);
      if (!cancelled.empty()) handler_.attr("cancel")(cancelled);
    } catch (py::error_already_set& err) {
      err.restore();
      PyErr_Print();  // each call unanswered fails INTERNAL when its object goes
    }
  }
}

}  // namespace seqserve
