// Unary calls answered by this process's Python servicers without the hop to the Python gRPC
// server behind the front end (serving/native/in_process.py): the typed Forecaster API.
//
// A call whose method is served here reads its request (under the request-bytes budgets, as
// every call), then waits in one queue. A thread takes what has gathered, takes the GIL once
// for all of it, and hands each call to the Python handler as an InProcessCall, which the
// handler answers exactly once from its event loop (Reply or Fail; an InProcessCall dropped
// unanswered fails its call with INTERNAL). A call cancelled meanwhile has its work
// cancelled too (the handler's `cancel`), as grpc.aio cancels a handler. So a call costs the interpreter its servicer's
// work and not, on top, a second gRPC call through grpc.aio.
#pragma once

#include <pybind11/pybind11.h>

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace seqserve {

namespace py = pybind11;

class Call;

// One call as the Python handler sees it.
class InProcessCall {
 public:
  InProcessCall(Call* call, uint64_t id, std::string method, py::bytes request,
                double timeout_s);
  ~InProcessCall();  // unanswered: INTERNAL
  InProcessCall(const InProcessCall&) = delete;
  InProcessCall& operator=(const InProcessCall&) = delete;

  // The answer: a serialized response, or a status. Only the first counts.
  void Reply(const std::string& response);
  void Fail(int code, const std::string& message);

  const uint64_t id;  // what a cancellation names
  const std::string method;
  py::bytes request;
  const double timeout_s;  // from the call's deadline when handed over; < 0: none

 private:
  Call* call_;  // alive until answered: nothing else finishes it
  bool answered_ = false;  // under the GIL (Python calls Reply and Fail)
};

class InProcess {
 public:
  InProcess() = default;
  ~InProcess();  // stops the thread

  // Serve `methods` with `handler(list[InProcessCall])`, called with the GIL on this class's
  // thread. Before the server starts.
  void Set(std::vector<std::string> methods, py::object handler);
  bool Serves(std::string_view method) const { return methods_.count(method) > 0; }
  // Hand `call` and its request over (its id returned); it is answered through its
  // InProcessCall.
  uint64_t Submit(Call* call, std::string request);
  // The call `id` was cancelled (by its client, or by the end of the grace period): the
  // handler's `cancel([ids])` stops its work, as grpc.aio cancels a handler.
  void Cancel(uint64_t id);
  void Stop();  // once no call is left (after the server's shutdown); without the GIL

 private:
  struct Pending {
    Call* call;
    uint64_t id;
    std::string request;
  };
  void Work();

  std::set<std::string, std::less<>> methods_;
  py::object handler_;
  std::mutex mu_;
  std::condition_variable wake_;
  std::deque<Pending> pending_;
  std::vector<uint64_t> cancelled_;
  uint64_t next_id_ = 0;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace seqserve
