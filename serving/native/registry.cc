#include "registry.h"

#include <charconv>

#include "call.h"

namespace seqserve {

void Registry::Add(const std::string& name, int64_t version, std::shared_ptr<ModelQueue> model) {
  std::unique_lock lock(mu_);
  models_[name].versions[version] = std::move(model);
}

void Registry::SetDefault(const std::string& name, int64_t version) {
  std::unique_lock lock(mu_);
  models_[name].default_version = version;
}

std::shared_ptr<ModelQueue> Registry::Remove(const std::string& name, int64_t version) {
  std::unique_lock lock(mu_);
  auto it = models_.find(name);
  if (it == models_.end()) return nullptr;
  auto& versions = it->second.versions;
  auto found = versions.find(version);
  if (found == versions.end()) return nullptr;
  auto model = std::move(found->second);
  versions.erase(found);
  if (it->second.default_version == version) it->second.default_version = -1;
  return model;
}

std::shared_ptr<ModelQueue> Registry::Find(const std::string& name, const std::string& asked) {
  std::shared_lock lock(mu_);
  auto it = models_.find(name);
  if (it == models_.end()) return nullptr;
  int64_t version = it->second.default_version;
  if (!asked.empty()) {
    auto [end, err] = std::from_chars(asked.data(), asked.data() + asked.size(), version);
    if (err != std::errc() || end != asked.data() + asked.size()) return nullptr;
  }
  auto found = it->second.versions.find(version);
  return found == it->second.versions.end() ? nullptr : found->second;
}

void Registry::Enqueue(Call* call, ModelQueue* model, std::unique_ptr<Request> request) {
  request->call = call;
  request->received = call->received();
  // The V2 `timeout` parameter first, else the gRPC deadline, else the config's default.
  auto deadline = call->context()->deadline();
  if (request->timeout_us > 0)
    request->deadline = request->received + std::chrono::microseconds(request->timeout_us);
  else if (deadline != std::chrono::system_clock::time_point::max())
    request->deadline = request->received + (deadline - std::chrono::system_clock::now());
  model->Submit(std::move(request));
}

bool Registry::Submit(Call* call, std::unique_ptr<inference::ModelInferRequest> message) {
  std::shared_ptr<ModelQueue> model = Find(message->model_name(), message->model_version());
  if (!model) return false;
  auto request = std::make_unique<Request>();
  if (!model->Accepts(*message, request.get())) return false;
  request->message = std::move(message);
  Enqueue(call, model.get(), std::move(request));
  return true;
}

bool Registry::SubmitForecast(Call* call, const fpb::ForecastRequest& message) {
  std::shared_ptr<ModelQueue> model = Find(message.model_name(), message.model_version());
  if (!model) return false;
  auto request = std::make_unique<Request>();
  if (!model->AcceptsForecast(message, request.get())) return false;
  Enqueue(call, model.get(), std::move(request));
  return true;
}

}  // namespace seqserve
