// seqserve's native gRPC front end, a Python extension module (`serving.native._frontend`).
//
// A Python gRPC server pays about 0.6 ms of interpreter time per call on this machine's cores,
// which caps it near 1,800 calls/s however little the model costs. This front end listens in
// its place: it runs the KServe V2 ModelInfer of plain tensor models itself, from parsing to
// dynamic batching to the response, and calls into Python once per batch (the model's runner,
// then its statistics). The typed Forecaster API is answered in process by the Python servicer
// (in_process.h), without a second gRPC call. Every other call, and every ModelInfer it does
// not take as it is, goes unchanged to the Python server on a private socket; the Python side
// stays the one dataplane for validation, errors, the typed APIs, health, reflection and
// repository control.
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "call.h"
#include "in_process.h"
#include "inference/grpc_service.pb.h"
#include "model_queue.h"
#include "registry.h"

namespace seqserve {

namespace py = pybind11;

// Answers a call with a status at once: what a call past the concurrency cap gets.
class Refuse : public grpc::ServerGenericBidiReactor {
 public:
  explicit Refuse(const grpc::Status& status) { Finish(status); }
  void OnDone() override { delete this; }
};

// One restricted method (serving/restricted.py): the header and value it needs.
struct Restriction {
  std::string header, value, message;
};
using Restrictions = std::map<std::string, Restriction, std::less<>>;

// Answers ServerLive here, without the hop to the Python server: a liveness probe must not
// fail because the server is busy (the soak saw its p99 over 50 ms through the hop while a
// translator engine restarted). Used only while the Python server's event loop turns (its
// beat is recent): a stuck server still fails its probes.
class AnswerLive : public grpc::ServerGenericBidiReactor {
 public:
  AnswerLive() { StartRead(&request_); }
  void OnReadDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "no request received"));
      return;
    }
    static const std::string live = [] {
      inference::ServerLiveResponse response;
      response.set_live(true);
      return response.SerializeAsString();
    }();
    grpc::Slice slice(live);
    response_ = grpc::ByteBuffer(&slice, 1);
    StartWriteAndFinish(&response_, grpc::WriteOptions(), grpc::Status::OK);
  }
  void OnDone() override { delete this; }

 private:
  grpc::ByteBuffer request_, response_;
};

constexpr char kServerLive[] = "/inference.GRPCInferenceService/ServerLive";
// The Python server beats every 100 ms; older than this, ServerLive goes to it.
constexpr auto kLoopStale = std::chrono::seconds(1);

// A message still arriving this long may be shed (budget.h); the watch looks this often.
constexpr auto kArrivalGrace = std::chrono::milliseconds(10);
constexpr auto kArrivalTick = std::chrono::milliseconds(5);

// Whether `context` carries what its method's restriction asks for (none: yes).
bool Allowed(const Restrictions& restrictions, grpc::GenericCallbackServerContext* context,
             const Restriction** refused) {
  auto rule = restrictions.find(context->method());
  if (rule == restrictions.end()) return true;
  const auto& metadata = context->client_metadata();
  auto found = metadata.find(rule->second.header);
  const std::string& want = rule->second.value;
  if (found != metadata.end() && found->second.size() == want.size()) {
    unsigned char diff = 0;  // in constant time, as Python's hmac.compare_digest
    for (size_t i = 0; i < want.size(); ++i)
      diff |= static_cast<unsigned char>(found->second.data()[i] ^ want[i]);
    if (diff == 0) return true;
  }
  *refused = &rule->second;
  return false;
}

class Service : public grpc::CallbackGenericService {
 public:
  // `budget_bytes` (0: none) is split: the further copies of one message at the cap being
  // served, and the rest for what calls receive.
  Service(std::shared_ptr<grpc::Channel> upstream, Registry* registry, InProcess* in_process,
          int max_calls, Restrictions restrictions, int64_t budget_bytes, int64_t cap)
      : stub_(std::move(upstream)), registry_(registry), in_process_(in_process),
        max_calls_(max_calls),
        restrictions_(std::move(restrictions)),
        budget_bytes_(std::max<int64_t>(budget_bytes, 0)),
        received_(budget_bytes <= 0 ? 0
                                    : std::max<int64_t>(budget_bytes - cap * kFurtherCopies, 1)),
        serving_(budget_bytes <= 0 ? 0 : cap * kFurtherCopies),
        arrivals_(&received_, &serving_, cap * kReceivedCopies, kArrivalGrace, kArrivalTick),
        busy_("server busy: the requests in progress would hold more than " +
              std::to_string(budget_bytes) +
              " bytes (--max-request-bytes-in-flight); retry after a back-off") {}
  grpc::ServerGenericBidiReactor* CreateReactor(
      grpc::GenericCallbackServerContext* context) override {
    const Restriction* refused = nullptr;
    if (!Allowed(restrictions_, context, &refused))
      return new Refuse(grpc::Status(grpc::StatusCode::PERMISSION_DENIED, refused->message));
    // (Before the concurrency cap: a probe must not fail because the server is busy.)
    if (context->method() == kServerLive && LoopTurns()) return new AnswerLive();
    if (max_calls_ > 0 && active_.fetch_add(1) >= max_calls_) {
      active_.fetch_sub(1);
      return new Refuse(grpc::Status(
          grpc::StatusCode::RESOURCE_EXHAUSTED,
          "server busy: " + std::to_string(max_calls_) +
              " calls in progress (--max-concurrent-rpcs); retry after a back-off"));
    }
    if (max_calls_ <= 0) active_.fetch_add(1);
    return new Call(context, &stub_, registry_, in_process_, &active_,
                    Budgets{&received_, &arrivals_, &serving_, &busy_});
  }

  int64_t request_bytes() const { return received_.in_use() + serving_.in_use(); }

  // The HTTP port's requests hold bytes of the same budget, counted with what calls receive
  // (so the watch takes the memory they hold as explained): `bytes` more for a request that
  // holds `mine` already are refused (false) if they would take the whole past its limit
  // while others hold bytes too; never queued, HTTP refuses with 429. (Read, then forced: a
  // gRPC call may take bytes between the two; the overshoot is at most one message.)
  bool TakeShared(int64_t bytes, int64_t mine) {
    if (budget_bytes_ <= 0) return true;  // no budget
    const int64_t held = request_bytes();
    if (held + bytes > budget_bytes_ && held > mine) return false;
    received_.Force(bytes);
    return true;
  }
  void GiveShared(int64_t bytes) { received_.Give(bytes); }
  int64_t budget() const { return budget_bytes_; }

  // The Python server's event loop turned just now.
  void Beat() {
    beat_.store(std::chrono::steady_clock::now().time_since_epoch().count(),
                std::memory_order_relaxed);
  }
  int64_t shed() const { return arrivals_.shed(); }

 private:
  grpc::GenericStub stub_;
  Registry* registry_;
  InProcess* in_process_;
  const int max_calls_;  // 0: no cap
  const Restrictions restrictions_;
  const int64_t budget_bytes_;  // 0: none
  bool LoopTurns() const {
    const auto last = std::chrono::steady_clock::time_point(
        std::chrono::steady_clock::duration(beat_.load(std::memory_order_relaxed)));
    return std::chrono::steady_clock::now() - last < kLoopStale;
  }

  std::atomic<int> active_{0};
  std::atomic<std::chrono::steady_clock::rep> beat_{0};  // never: the loop has not turned
  ByteBudget received_, serving_;
  Arrivals arrivals_;
  const std::string busy_;
};

struct Tls {
  std::string cert, key, client_ca;  // PEM; empty cert: plaintext
};

class Frontend {
 public:
  Frontend(std::string address, std::string upstream, int max_message_bytes, bool reuse_port,
           Tls tls, int max_calls, int max_streams, Restrictions restrictions,
           int64_t max_request_bytes)
      : address_(std::move(address)), max_message_bytes_(max_message_bytes),
        reuse_port_(reuse_port), tls_(std::move(tls)), max_streams_(max_streams) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(-1);
    args.SetMaxSendMessageSize(-1);
    service_ = std::make_unique<Service>(
        grpc::CreateCustomChannel(upstream, grpc::InsecureChannelCredentials(), args), &registry_,
        &in_process_, max_calls, std::move(restrictions), max_request_bytes, max_message_bytes);
  }

  int64_t request_bytes_in_flight() const { return service_->request_bytes(); }
  bool TakeRequestBytes(int64_t bytes, int64_t mine) { return service_->TakeShared(bytes, mine); }
  void GiveRequestBytes(int64_t bytes) { service_->GiveShared(bytes); }
  int64_t request_bytes_limit() const { return service_->budget(); }
  int64_t calls_shed() const { return service_->shed(); }
  void Beat() { service_->Beat(); }

  // Listen; return the bound port. Raise if the address cannot be bound.
  int Start() {
    std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
    if (!tls_.cert.empty()) {
      grpc::SslServerCredentialsOptions options(
          tls_.client_ca.empty() ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                                 : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
      options.pem_key_cert_pairs.push_back({tls_.key, tls_.cert});
      options.pem_root_certs = tls_.client_ca;
      credentials = grpc::SslServerCredentials(options);
    }
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort(address_, credentials, &port);
    builder.SetMaxReceiveMessageSize(max_message_bytes_);
    builder.SetMaxSendMessageSize(max_message_bytes_);
    builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, reuse_port_ ? 1 : 0);
    if (max_streams_ > 0)  // HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS: per connection
      builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, max_streams_);
    builder.RegisterCallbackGenericService(service_.get());
    server_ = builder.BuildAndStart();
    if (!server_ || port == 0) {
      server_.reset();
      throw std::runtime_error("cannot listen on " + address_);
    }
    return port;
  }

  // Refuse new calls; let calls in flight finish for up to `grace_s`, then cancel them.
  void Shutdown(double grace_s) {
    if (!server_) return;
    server_->Shutdown(std::chrono::system_clock::now() +
                      std::chrono::microseconds(static_cast<int64_t>(grace_s * 1e6)));
    server_->Wait();
    server_.reset();
    in_process_.Stop();  // every call is done
  }

  // Answer the unary `methods` and the `streams` with `handler` in this process
  // (in_process.h). Before Start.
  void ServeInProcess(std::vector<std::string> methods, std::vector<std::string> streams,
                      py::object handler) {
    in_process_.Set(std::move(methods), std::move(streams), std::move(handler));
  }

  std::shared_ptr<ModelQueue> AddModel(const std::string& name, int64_t version,
                                       std::vector<TensorSpec> inputs,
                                       std::vector<TensorSpec> outputs, Policy policy,
                                       py::object run, py::object account, py::object fail,
                                       std::string queue_full_message,
                                       std::string unloading_message,
                                       std::optional<ForecastSpec> forecast) {
    auto model = std::make_shared<ModelQueue>(
        name, version, std::move(inputs), std::move(outputs), std::move(policy),
        Callbacks{run, account, fail}, std::move(queue_full_message),
        std::move(unloading_message),
        forecast ? std::make_shared<const ForecastSpec>(std::move(*forecast)) : nullptr);
    registry_.Add(name, version, model);
    return model;
  }

  // Stop routing the version here: new requests go to the Python server. The model's queue
  // keeps running what it holds until its `close()`.
  void RemoveModel(const std::string& name, int64_t version) { registry_.Remove(name, version); }

  void SetDefault(const std::string& name, int64_t version) {
    registry_.SetDefault(name, version);
  }

 private:
  std::string address_;
  int max_message_bytes_;
  bool reuse_port_;
  Tls tls_;
  int max_streams_;
  Registry registry_;
  InProcess in_process_;  // before the service, which calls use it through
  std::unique_ptr<Service> service_;
  std::unique_ptr<grpc::Server> server_;
};

}  // namespace seqserve

PYBIND11_MODULE(_frontend, m) {
  using namespace seqserve;
  m.doc() = "seqserve's native gRPC front end (see serving/native/frontend.py)";
  py::class_<TensorSpec>(m, "TensorSpec")
      .def(py::init([](std::string name, std::string datatype, std::vector<int64_t> dims,
                       size_t itemsize) {
             return TensorSpec{std::move(name), std::move(datatype), std::move(dims), itemsize};
           }),
           py::arg("name"), py::arg("datatype"), py::arg("dims"), py::arg("itemsize"));
  py::class_<Policy>(m, "Policy")
      .def(py::init([](int64_t max_batch_size, bool batching, int64_t max_queue_delay_us,
                       std::vector<int64_t> preferred, size_t max_queue_size,
                       int64_t default_timeout_us, int instances) {
             return Policy{max_batch_size, batching, max_queue_delay_us, std::move(preferred),
                           max_queue_size, default_timeout_us, instances};
           }),
           py::arg("max_batch_size"), py::arg("batching"), py::arg("max_queue_delay_us"),
           py::arg("preferred_batch_sizes"), py::arg("max_queue_size"),
           py::arg("default_timeout_us"), py::arg("instances"));
  py::class_<ForecastSpec>(m, "ForecastSpec")
      .def(py::init([](int64_t input_window, int64_t horizon, std::vector<std::string> past,
                       std::vector<std::string> targets, std::vector<std::string> future,
                       int64_t step_ns, std::vector<double> quantiles) {
             ForecastSpec spec{input_window, horizon, std::move(past), std::move(targets),
                               std::move(future), {}, step_ns, std::move(quantiles)};
             for (const auto& name : spec.future_features)
               spec.calendar.push_back(CalendarIndex(name));
             return spec;
           }),
           py::arg("input_window"), py::arg("horizon"), py::arg("past_features"),
           py::arg("target_names"), py::arg("future_features"), py::arg("step_ns"),
           py::arg("quantiles"));
  // The fast path's typed Forecast rule alone, for tests against the Python servicer's: the
  // model's V2 request (serialized) if the fast path takes `request` as it is, else None.
  m.def("forecast_to_infer",
        [](const ForecastSpec& spec, const py::bytes& request, int64_t max_batch_size) -> py::object {
          fpb::ForecastRequest message;
          const std::string bytes(request);
          if (!message.ParseFromString(bytes) || !Whole(message, bytes.size())) return py::none();
          inference::ModelInferRequest infer;
          TypedForecast typed;
          if (!ForecastToInfer(std::make_shared<const ForecastSpec>(spec), message, max_batch_size,
                               &infer, &typed))
            return py::none();
          return py::bytes(infer.SerializeAsString());
        },
        py::arg("spec"), py::arg("request"), py::arg("max_batch_size"));
  // The fast path's ModelInfer rule alone (accept.h), for tests against the Python
  // dataplane's: whether it takes `request` as it is for a model of this signature.
  m.def("v2_accepts",
        [](std::vector<TensorSpec> inputs, std::vector<TensorSpec> outputs, Policy policy,
           const py::bytes& request) {
          inference::ModelInferRequest message;
          const std::string bytes(request);
          if (!message.ParseFromString(bytes) || !Whole(message, bytes.size())) return false;
          const Signature signature{std::move(inputs), std::move(outputs), std::move(policy)};
          Request taken;
          return Accept(signature, message, &taken);
        },
        py::arg("inputs"), py::arg("outputs"), py::arg("policy"), py::arg("request"));
  m.def("calendar", [](int feature, std::vector<int64_t> ns) {
          std::vector<float> out;
          for (int64_t t : ns) out.push_back(Calendar(feature, t));
          return out;
        }, py::arg("feature"), py::arg("ns"));
  py::class_<ModelQueue, std::shared_ptr<ModelQueue>>(m, "ModelQueue")
      .def_property_readonly("queue_size", &ModelQueue::queue_size,
                             py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("pending", &ModelQueue::pending)
      .def_property_readonly("requests", &ModelQueue::requests)
      .def("take_refusals", &ModelQueue::TakeRefusals)
      .def("close", &ModelQueue::Close, py::call_guard<py::gil_scoped_release>());
  py::class_<InProcessCall>(m, "InProcessCall")
      .def_readonly("id", &InProcessCall::id)
      .def_readonly("method", &InProcessCall::method)
      .def_readonly("request", &InProcessCall::request)
      .def_readonly("timeout_s", &InProcessCall::timeout_s)
      .def("reply", &InProcessCall::Reply, py::arg("response"))
      .def("fail", &InProcessCall::Fail, py::arg("code"), py::arg("message"))
      .def("write", &InProcessCall::Write, py::arg("response"))
      .def("finish", &InProcessCall::Finish);
  py::class_<Frontend>(m, "Frontend")
      .def(py::init([](std::string address, std::string upstream, int max_message_bytes,
                       bool reuse_port, std::string cert, std::string key, std::string ca,
                       int max_calls, int max_streams,
                       std::vector<std::tuple<std::string, std::string, std::string, std::string>>
                           restricted,
                       int64_t max_request_bytes) {
             Restrictions restrictions;
             for (auto& [method, header, value, message] : restricted)
               restrictions[method] = Restriction{header, value, message};
             return std::make_unique<Frontend>(std::move(address), std::move(upstream),
                                               max_message_bytes, reuse_port,
                                               Tls{std::move(cert), std::move(key), std::move(ca)},
                                               max_calls, max_streams, std::move(restrictions),
                                               max_request_bytes);
           }),
           py::arg("address"), py::arg("upstream"), py::arg("max_message_bytes"),
           py::arg("reuse_port") = false, py::arg("tls_cert") = "", py::arg("tls_key") = "",
           py::arg("tls_client_ca") = "", py::arg("max_calls") = 0, py::arg("max_streams") = 0,
           py::arg("restricted") = std::vector<
               std::tuple<std::string, std::string, std::string, std::string>>{},
           py::arg("max_request_bytes") = 0)
      .def_property_readonly("request_bytes_in_flight", &Frontend::request_bytes_in_flight)
      .def_property_readonly("calls_shed", &Frontend::calls_shed)
      .def_property_readonly("request_bytes_limit", &Frontend::request_bytes_limit)
      .def("take_request_bytes", &Frontend::TakeRequestBytes, py::arg("bytes"), py::arg("mine"))
      .def("give_request_bytes", &Frontend::GiveRequestBytes, py::arg("bytes"))
      .def("beat", &Frontend::Beat)
      .def("start", &Frontend::Start, py::call_guard<py::gil_scoped_release>())
      .def("shutdown", &Frontend::Shutdown, py::arg("grace_s"),
           py::call_guard<py::gil_scoped_release>())
      .def("add_model", &Frontend::AddModel, py::arg("name"), py::arg("version"),
           py::arg("inputs"), py::arg("outputs"), py::arg("policy"), py::arg("run"),
           py::arg("account"), py::arg("fail"), py::arg("queue_full_message"),
           py::arg("unloading_message"), py::arg("forecast") = std::nullopt)
      .def("serve_in_process", &Frontend::ServeInProcess, py::arg("methods"),
           py::arg("streams"), py::arg("handler"))
      .def("set_default", &Frontend::SetDefault, py::arg("name"), py::arg("version"))
      .def("remove_model", &Frontend::RemoveModel, py::arg("name"), py::arg("version"));
}
