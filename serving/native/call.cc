#include "call.h"

#include <grpcpp/support/proto_buffer_reader.h>

#include "in_process.h"
#include "registry.h"

namespace seqserve {

namespace {
const char kModelInfer[] = "/inference.GRPCInferenceService/ModelInfer";
const char kForecast[] = "/seqserve.forecast.v1.Forecaster/Forecast";

// Client metadata that gRPC sets itself; the rest travels upstream as the client sent it.
bool Forwarded(const std::string& key) {
  return key.rfind("grpc-", 0) != 0 && key != "user-agent" && key != "te" &&
         key != "content-type" && key[0] != ':';
}
}  // namespace

void Upstream::OnReadDone(bool ok) { call_->UpstreamRead(ok); }
void Upstream::OnWriteDone(bool ok) { call_->UpstreamWrote(ok); }
void Upstream::OnDone(const grpc::Status& status) { call_->UpstreamDone(status); }

Call::Call(grpc::GenericCallbackServerContext* context, grpc::GenericStub* upstream,
           Registry* registry, InProcess* in_process, std::atomic<int>* active,
           Budgets budgets)
    : context_(context), stub_(upstream), registry_(registry), in_process_(in_process),
      infer_(context->method() == kModelInfer),
      local_(!infer_ && in_process->Serves(context->method())),
      stream_(!infer_ && !local_ && in_process->Streams(context->method())), active_(active),
      budgets_(budgets) {
  if (stream_) {
    refs_.fetch_add(1);  // the servicer's, until it ends the stream (End), whatever ends first
    std::lock_guard<std::mutex> lock(mu_);  // (OnCancel looks at the id)
    local_id_ = in_process_->Start(this);
  } else if (!infer_ && !local_) {
    Forward(false);
  }
  StartReading();
}

void Call::StartReading() {
  // (Not under mu_: the watch takes its lock, then a call's. A call is shed only after the
  // grace, long after its read has started.)
  ticket_ = budgets_.arrivals->Add(this);
  StartRead(&request_);
}

bool Call::Shed() {
  Upstream* up;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_) return false;
    finished_ = true;
    up = upstream_.load();
  }
  if (up != nullptr) up->context.TryCancel();  // its end only releases: this call is finished
  Finish(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, *budgets_.busy));
  if (stream_) in_process_->Cancel(local_id_);  // its servicer stops, and ends it (End)
  return true;
}

bool Call::FinishOnce(const grpc::Status& status) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_) return false;
    finished_ = true;
  }
  Finish(status);
  return true;
}

void Call::OnReadDone(bool ok) {
  budgets_.arrivals->Remove(ticket_);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_) return;  // shed while it arrived, or the upstream has ended it
  }
  // From here the message costs what it is.
  const int64_t size = ok ? static_cast<int64_t>(request_.Length()) : 0;
  held_received_ = size * kReceivedCopies;
  budgets_.received->Force(held_received_);
  read_ok_ = ok;
  if (size > 0) {
    held_serving_ = size * kFurtherCopies;  // before Take: a grant may come on another thread
    refs_.fetch_add(1);                     // the budget's, while this call waits in it
    if (!budgets_.serving->Take(held_serving_, this)) return;  // Granted() serves it
    refs_.fetch_sub(1);
  }
  Serve(ok);
}

void Call::Granted() {
  bool finished;
  {
    std::lock_guard<std::mutex> lock(mu_);
    finished = finished_;  // the upstream ended it meanwhile
  }
  if (!finished) Serve(read_ok_);
  Release();
}

void Call::Serve(bool ok) {
  if (infer_) {
    infer_ = false;
    if (!ok) {  // the client went away before sending its request
      FinishOnce(grpc::Status(grpc::StatusCode::CANCELLED, "no request received"));
      return;
    }
    auto message = std::make_unique<inference::ModelInferRequest>();
    bool parsed;
    {
      grpc::ProtoBufferReader reader(&request_);
      parsed = message->ParseFromZeroCopyStream(&reader);
    }
    parsed = parsed && Whole(*message, request_.Length());
    // Once submitted, the call may be answered (and this object gone) from another thread.
    if (parsed && registry_->Submit(this, std::move(message))) return;
    // The Python servicer answers it, as every request the fast path leaves.
    if (in_process_->Serves(context_->method())) {
      ServeLocally();
    } else {
      Forward(true);
    }
    return;
  }
  if (stream_) {  // each message to the servicer, in order; then the client's half-close
    if (!ok) {
      in_process_->Message(local_id_, std::nullopt);
      return;
    }
    std::string message = TakeRequest();
    {
      std::lock_guard<std::mutex> lock(mu_);
      HandedOn();  // its further copies wait for its answer
    }
    in_process_->Message(local_id_, std::move(message));
    ReadNext();
    return;
  }
  if (local_) {
    if (!ok) {
      FinishOnce(grpc::Status(grpc::StatusCode::CANCELLED, "no request received"));
      return;
    }
    if (context_->method() == kForecast) {  // on the fast path if its model takes it as it is
      fpb::ForecastRequest message;
      bool parsed;
      {
        grpc::ProtoBufferReader reader(&request_);
        parsed = message.ParseFromZeroCopyStream(&reader);
      }
      parsed = parsed && Whole(message, request_.Length());
      // Once submitted, the call may be answered (and this object gone) from another thread.
      if (parsed && registry_->SubmitForecast(this, message)) return;
    }
    ServeLocally();
    return;
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (upstream_ended_) return;  // the upstream answered already; drop the rest
  if (ok) {
    HandedOn();
    upstream_.load()->StartWrite(&request_);
  } else {
    upstream_.load()->StartWritesDone();
  }
}

std::string Call::TakeRequest() {
  std::string request;
  {
    grpc::ProtoBufferReader reader(&request_);
    const void* data;
    int size;
    while (reader.Next(&data, &size)) request.append(static_cast<const char*>(data), size);
  }
  request_.Clear();
  return request;
}

void Call::ServeLocally() {
  std::string request = TakeRequest();
  bool cancelled_meanwhile;
  uint64_t id;
  {
    std::lock_guard<std::mutex> lock(mu_);  // ordered against OnCancel's look at the id
    id = local_id_ = in_process_->Start(this, std::move(request));  // Reply or Fail answer
    cancelled_meanwhile = cancelled();
  }
  if (cancelled_meanwhile) in_process_->Cancel(id);
}

void Call::HandedOn() {
  unanswered_.push_back(held_serving_);
  held_serving_ = 0;
}

void Call::ReadNext() {
  // The last message has gone upstream: the transport's copies are free (its further copies
  // wait for its answer).
  budgets_.received->Give(held_received_);
  held_received_ = 0;
  if (cancelled()) return;  // it reads no more: its upstream's end finishes it
  StartReading();
}

void Call::OnWriteDone(bool ok) {
  if (stream_) {
    grpc::ByteBuffer* next = nullptr;
    std::optional<grpc::Status> end;
    int64_t answered;
    {
      std::lock_guard<std::mutex> lock(mu_);
      answered = writes_.front().second;
      writes_.pop_front();
      if (!ok || finished_) {  // the client is gone (its cancellation ends the servicer's
                               // work), or the call was shed: nothing more is written
        for (const auto& w : writes_) answered += w.second;
        writes_.clear();
        end = end_;  // the servicer ended it already: it still has to finish
      } else if (!writes_.empty()) {
        next = &writes_.front().first;
      } else {
        end = end_;
      }
    }
    budgets_.serving->Give(answered);
    if (next != nullptr) StartWrite(next);
    if (end) FinishOnce(*end);
    return;
  }
  Upstream* up = upstream_.load();
  if (up == nullptr) return;
  if (!ok) up->context.TryCancel();  // the client is gone: end the upstream call too
  up->StartRead(&up->reply);          // (after a cancel it ends, and so does the hold)
}

void Call::OnCancel() {
  cancelled_.store(true);
  Upstream* up = upstream_.load();
  if (up != nullptr) up->context.TryCancel();
  {  // its work in process, if handed over already (else ServeLocally sees the flag)
    uint64_t id;
    {
      std::lock_guard<std::mutex> lock(mu_);
      id = local_id_;
    }
    if (id != 0) in_process_->Cancel(id);
  }
  if (!budgets_.serving->Cancel(this)) return;
  // It was waiting for the serving budget, which it never got; nothing else ends it but the
  // upstream call, if there is one (cancelled above: its end finishes this call).
  held_serving_ = 0;
  if (up == nullptr)
    FinishOnce(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled before it was served"));
  Release();  // the budget's reference
}

void Call::OnDone() { Release(); }

void Call::Reply(grpc::ByteBuffer* response) {
  response_.Swap(response);
  StartWriteAndFinish(&response_, grpc::WriteOptions(), grpc::Status::OK);
}

void Call::Fail(const grpc::Status& status) { Finish(status); }

void Call::Write(grpc::ByteBuffer* response) {
  grpc::ByteBuffer* first = nullptr;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_ || end_) return;
    // The oldest request unanswered is answered by this response, once it is written.
    int64_t answered = 0;
    if (!unanswered_.empty()) {
      answered = unanswered_.front();
      unanswered_.pop_front();
    }
    writes_.emplace_back(grpc::ByteBuffer(), answered);
    writes_.back().first.Swap(response);
    if (writes_.size() == 1) first = &writes_.front().first;
  }
  if (first != nullptr) StartWrite(first);
}

void Call::End(const grpc::Status& status) {
  const bool stream = stream_;  // (a unary call may be gone once finished)
  bool now = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!finished_ && !end_) {
      if (writes_.empty()) {
        now = true;
      } else {
        end_ = status;  // after them (OnWriteDone)
      }
    }
  }
  if (now) FinishOnce(status);
  if (stream) Release();  // the servicer's reference: a stream shed meanwhile may end here
}

void Call::Forward(bool with_first_message) {
  refs_.fetch_add(1);
  auto* upstream = new Upstream(this);
  grpc::ClientContext& up = upstream->context;
  up.set_deadline(context_->deadline());
  for (const auto& [key, value] : context_->client_metadata()) {
    std::string k(key.data(), key.size());
    if (Forwarded(k)) up.AddMetadata(k, std::string(value.data(), value.size()));
  }
  stub_->PrepareBidiStreamingCall(&up, context_->method(), grpc::StubOptions(), upstream);
  upstream->AddHold();
  if (with_first_message) {
    std::lock_guard<std::mutex> lock(mu_);  // (nothing else runs yet: for HandedOn's contract)
    HandedOn();
    upstream->StartWrite(&request_);
  }
  upstream->StartRead(&upstream->reply);
  upstream_.store(upstream);  // before the call starts: its callbacks use it
  if (cancelled_.load()) up.TryCancel();  // a cancel that came while it was being set up
  upstream->StartCall();
}

void Call::UpstreamRead(bool ok) {
  if (ok) {
    int64_t answered = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!unanswered_.empty()) {
        answered = unanswered_.front();
        unanswered_.pop_front();
      }
    }
    budgets_.serving->Give(answered);
    StartWrite(&upstream_.load()->reply);  // the next upstream read starts after this write
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    upstream_ended_ = true;
  }
  upstream_.load()->RemoveHold();  // OnDone, with the status, once writes in flight are done
}

void Call::UpstreamWrote(bool ok) {
  if (ok) ReadNext();
}

void Call::UpstreamDone(const grpc::Status& status) {
  FinishOnce(status);  // (a call shed meanwhile is finished already)
  Release();
}

void Call::Release() {
  if (refs_.fetch_sub(1) == 1) {
    budgets_.received->Give(held_received_);
    int64_t serving = held_serving_;
    for (int64_t bytes : unanswered_) serving += bytes;
    budgets_.serving->Give(serving);
    delete upstream_.load();
    active_->fetch_sub(1);
    delete this;
  }
}

}  // namespace seqserve
