// One gRPC call as the front end sees it. ModelInfer for a model of the fast path is parsed
// here and handed to that model's queue; every other call (other RPCs, other models, and any
// ModelInfer the fast path does not take) is forwarded unchanged to the Python server behind.
#pragma once

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>

#include "budget.h"

namespace seqserve {

class Registry;
class Call;
class InProcess;

// The upstream half of a forwarded call: a bidi stream of raw messages to the Python server.
class Upstream : public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  explicit Upstream(Call* call) : call_(call) {}
  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnDone(const grpc::Status& status) override;

  grpc::ClientContext context;
  grpc::ByteBuffer reply;  // upstream -> client

 private:
  Call* call_;
};

// The front end's budgets of request bytes (budget.h).
struct Budgets {
  ByteBudget* received;  // what calls have received
  Arrivals* arrivals;    // calls whose message is still arriving (and may be shed)
  ByteBudget* serving;   // the further copies of the messages being served
  const std::string* busy;  // the message a shed call gets
};

class Call : public grpc::ServerGenericBidiReactor, public BudgetWaiter, public Sheddable {
 public:
  Call(grpc::GenericCallbackServerContext* context, grpc::GenericStub* upstream,
       Registry* registry, InProcess* in_process, std::atomic<int>* active, Budgets budgets);

  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;
  void Granted() override;  // the serving budget has room for the message: serve it
  bool Shed() override;     // the received budget is over: end it if its message is arriving

  // Fast path and in-process calls: answer with a serialized response, or fail.
  void Reply(grpc::ByteBuffer* response);
  void Fail(const grpc::Status& status);
  // In-process calls: a stream's next response; the end, with `status`, once the responses
  // given are written (a unary call's failure: at once).
  void Write(grpc::ByteBuffer* response);
  void End(const grpc::Status& status);
  bool cancelled() const { return cancelled_.load(std::memory_order_relaxed); }
  grpc::GenericCallbackServerContext* context() const { return context_; }
  std::chrono::steady_clock::time_point received() const { return received_; }

  // From the upstream half.
  void UpstreamRead(bool ok);
  void UpstreamWrote(bool ok);
  void UpstreamDone(const grpc::Status& status);

 private:
  void Forward(bool with_first_message);
  void Serve(bool ok);  // the message read (or not: `ok` false) goes where it goes
  void ServeLocally();  // to this process's Python servicer (in_process.h)
  std::string TakeRequest();  // the message read, as bytes; its buffer is freed
  void ReadNext();      // a stream's next message: give back the last one's received bytes
  void HandedOn();      // under mu_: the message's further copies now wait for its answer
  void StartReading();  // registered with the arrivals watch, read
  bool FinishOnce(const grpc::Status& status);  // unless finished already
  void Release();

  const std::chrono::steady_clock::time_point received_ = std::chrono::steady_clock::now();
  grpc::GenericCallbackServerContext* context_;
  grpc::GenericStub* stub_;
  Registry* registry_;
  InProcess* in_process_;
  bool infer_;  // a ModelInfer whose first message is still to be read
  const bool local_;  // answered by a Python servicer in this process (in_process.h)
  const bool stream_;  // a stream answered so, message by message
  grpc::ByteBuffer request_, response_;
  // Set by Forward (on the thread that reads the request) and read by OnCancel (on another).
  std::atomic<Upstream*> upstream_{nullptr};
  std::atomic<int>* active_;  // the service's count of calls in progress
  const Budgets budgets_;
  // What this call holds of each budget: its message's received size, and its further copies
  // while it is served. Reads are sequential, and so are these.
  int64_t held_received_ = 0, held_serving_ = 0;
  // The further copies of the messages handed to the Python server, oldest first, held until
  // it answers each (one response per request: ModelInfer, ModelStreamInfer without decoupled
  // models) or the call ends: it keeps its copies until then, not until the handing on is done
  // (given back at the write's end, a flood over streams held ~150 MiB more). Under mu_.
  std::deque<int64_t> unanswered_;
  uint64_t ticket_ = 0;  // with the arrivals watch, while a read runs
  uint64_t local_id_ = 0;  // an in-process call's, once handed over (under mu_)
  // An in-process stream's responses to write, the first being written, each with the bytes
  // of the serving budget its writing gives back (the request it answers); and its status,
  // once the servicer has ended it. Under mu_.
  std::deque<std::pair<grpc::ByteBuffer, int64_t>> writes_;
  std::optional<grpc::Status> end_;
  bool read_ok_ = false;  // the last read's outcome, for Granted()
  // The upstream call holds (AddHold) until its response stream has ended; after that no
  // operation may start on it. `mu_` orders that end against writes being started, and a
  // granted read against the call's end.
  std::mutex mu_;
  bool upstream_ended_ = false;
  bool finished_ = false;  // Finish was called (or is about to be): nothing more starts
  // This half, the upstream half while it runs, the serving budget while it waits in it.
  std::atomic<int> refs_{1};
  std::atomic<bool> cancelled_{false};
};

}  // namespace seqserve
