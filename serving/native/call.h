// One gRPC call as the front end sees it. ModelInfer for a model of the fast path is parsed
// here and handed to that model's queue; every other call (other RPCs, other models, and any
// ModelInfer the fast path does not take) is forwarded unchanged to the Python server behind.
#pragma once

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>

namespace seqserve {

class Registry;
class Call;

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

class Call : public grpc::ServerGenericBidiReactor {
 public:
  Call(grpc::GenericCallbackServerContext* context, grpc::GenericStub* upstream,
       Registry* registry, std::atomic<int>* active);

  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

  // Fast path: answer with a serialized ModelInferResponse, or fail.
  void Reply(grpc::ByteBuffer* response);
  void Fail(const grpc::Status& status);
  bool cancelled() const { return cancelled_.load(std::memory_order_relaxed); }
  grpc::GenericCallbackServerContext* context() const { return context_; }
  std::chrono::steady_clock::time_point received() const { return received_; }

  // From the upstream half.
  void UpstreamRead(bool ok);
  void UpstreamWrote(bool ok);
  void UpstreamDone(const grpc::Status& status);

 private:
  void Forward(bool with_first_message);
  void Release();

  const std::chrono::steady_clock::time_point received_ = std::chrono::steady_clock::now();
  grpc::GenericCallbackServerContext* context_;
  grpc::GenericStub* stub_;
  Registry* registry_;
  bool infer_;  // a ModelInfer whose first message is still to be read
  grpc::ByteBuffer request_, response_;
  // Set by Forward (on the thread that reads the request) and read by OnCancel (on another).
  std::atomic<Upstream*> upstream_{nullptr};
  std::atomic<int>* active_;  // the service's count of calls in progress
  // The upstream call holds (AddHold) until its response stream has ended; after that no
  // operation may start on it. `mu_` orders that end against writes being started.
  std::mutex mu_;
  bool upstream_ended_ = false;
  std::atomic<int> refs_{1};  // this half, and the upstream half while it runs
  std::atomic<bool> cancelled_{false};
};

}  // namespace seqserve
