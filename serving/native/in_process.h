// Calls answered by this process's Python servicers without the hop to the Python gRPC
// server behind the front end (serving/native/in_process.py): every unary call the fast path
// does not run, and the streams (ModelStreamInfer, TranslateStream, health, reflection).
//
// A call whose method is served here reads its request (under the request-bytes budgets, as
// every call), then waits in one queue. A thread takes what has gathered, takes the GIL once
// for all of it, and hands each call to the Python handler as an InProcessCall, which the
// handler answers exactly once from its event loop (Reply or Fail; an InProcessCall dropped
// unanswered fails its call with INTERNAL). A call cancelled meanwhile has its work
// cancelled too (the handler's `cancel`), as grpc.aio cancels a handler. So a call costs the
// interpreter its servicer's work and not, on top, a second gRPC call through grpc.aio.
//
// A stream is handed over when it starts (without a request); each message it reads follows,
// in order, then its end (the client's half-close), through the handler's `messages`. The
// servicer writes its responses (Write) and ends it (Finish or Fail) from its event loop.
#pragma once

#include <pybind11/pybind11.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <optional>
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
  // A stream's: its next response; its end, OK, once the responses are written.
  void Write(const std::string& response);
  void Finish();

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

  // Serve the unary `methods` and the `streams` with `handler(list[InProcessCall])` and its
  // `messages(list[(id, bytes | None)])`, called with the GIL on this class's thread. Before
  // the server starts.
  void Set(std::vector<std::string> methods, std::vector<std::string> streams,
           py::object handler);
  bool Serves(std::string_view method) const { return methods_.count(method) > 0; }
  bool Streams(std::string_view method) const { return streams_.count(method) > 0; }
  // Hand `call` over (its id returned): a unary call with its request, answered through its
  // InProcessCall; a stream as it starts (no request), then each message it reads, then its
  // end (no message).
  uint64_t Start(Call* call, std::optional<std::string> request = std::nullopt);
  void Message(uint64_t id, std::optional<std::string> message);
  // The call `id` was cancelled (by its client, or by the end of the grace period): the
  // handler's `cancel([ids])` stops its work, as grpc.aio cancels a handler.
  void Cancel(uint64_t id);
  void Stop();  // once no call is left (after the server's shutdown); without the GIL

 private:
  struct Pending {
    Call* call;  // a call to hand over; none: a message for stream `id`
    uint64_t id;
    std::optional<std::string> request;  // a message; a stream's end: none
    // Read from the call's context when it comes (a stream may end, and its context go,
    // before the hand-over).
    std::string method;
    std::chrono::system_clock::time_point deadline;
  };
  void Work();

  std::set<std::string, std::less<>> methods_, streams_;
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
