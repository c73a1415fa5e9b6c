// The models on the fast path, by name and version, as the Python repository announces them.
#pragma once

#include <map>
#include <memory>
#include <shared_mutex>
#include <string>

#include "model_queue.h"

namespace seqserve {

class Registry {
 public:
  void Add(const std::string& name, int64_t version, std::shared_ptr<ModelQueue> model);
  // The version an empty `model_version` means (the newest ready one), or -1 for none.
  void SetDefault(const std::string& name, int64_t version);
  std::shared_ptr<ModelQueue> Remove(const std::string& name, int64_t version);
  // Take `message` on the fast path if its model is there and accepts it as it is.
  bool Submit(Call* call, std::unique_ptr<inference::ModelInferRequest> message);
  // Take a typed Forecast on the fast path if its model is there and takes it as it is.
  bool SubmitForecast(Call* call, const fpb::ForecastRequest& message);

 private:
  std::shared_ptr<ModelQueue> Find(const std::string& name, const std::string& version);
  void Enqueue(Call* call, ModelQueue* model, std::unique_ptr<Request> request);

  struct Entry {
    std::map<int64_t, std::shared_ptr<ModelQueue>> versions;
    int64_t default_version = -1;
  };
  std::shared_mutex mu_;
  std::map<std::string, Entry, std::less<>> models_;
};

}  // namespace seqserve
