// The typed Forecast API on the fast path. A ForecastRequest that a fixed-step forecaster
// takes exactly as it is becomes that model's V2 request (its `past` and `future` tensors,
// calendar features computed here), joins the model's queue beside ModelInfer requests, and
// its V2 reply becomes the ForecastResponse. Every other request, and every one that would be
// refused, is left to the Python servicer (serving/servicers/forecast.py), which answers it
// with the dataplane's checks and messages; so this code needs no error message of its own.
//
// The rules are Python's (serving/forecasting.py, core/calendar.py), restricted to the common
// case: every window with its timestamps on the model's fixed step, the model's series each
// once, finite values. tests/serving/test_native_forecast.py holds the two against each other.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "inference/grpc_service.pb.h"
#include "seqserve/forecast/v1/forecast_service.pb.h"

namespace seqserve {

namespace fpb = seqserve::forecast::v1;

// core.calendar.FEATURES, in its order: index / (n - 1) - 0.5 of a UTC timestamp.
enum CalendarFeature { kHour, kWeekday, kMonth, kDayOfMonth, kDayOfYear, kCalendarFeatures };
int CalendarIndex(const std::string& name);  // -1: not a calendar feature
float Calendar(int feature, int64_t ns);

// A forecaster's task metadata (serving.forecasting.ForecasterSpec) when its frequency is a
// fixed step of seconds, minutes, hours or days.
struct ForecastSpec {
  int64_t input_window = 0, horizon = 0;
  std::vector<std::string> past_features, target_names, future_features;
  std::vector<int> calendar;  // per future feature: its CalendarFeature, or -1 (sent by clients)
  int64_t step_ns = 0;
  std::vector<double> quantiles;
};

// What the reply needs of a typed request.
struct TypedForecast {
  std::shared_ptr<const ForecastSpec> spec;
  std::vector<int64_t> last_ns;  // per window: its last timestamp
  std::vector<int> levels;       // positions in spec->quantiles, in the request's order
};

// Whether the fast path takes `request` as it is (windows within `max_batch_size`); if so, the
// model's V2 request goes to `infer` and what the reply needs to `typed`.
bool ForecastToInfer(std::shared_ptr<const ForecastSpec> spec, const fpb::ForecastRequest& request,
                     int64_t max_batch_size, inference::ModelInferRequest* infer,
                     TypedForecast* typed);

// The typed reply to `typed`'s request from its V2 reply (outputs `forecast` [B, H, F_out] and,
// if the model has it, `quantiles` [B, H, F_out, Q], as raw FP32).
void InferToForecast(const TypedForecast& typed, const inference::ModelInferResponse& reply,
                     fpb::ForecastResponse* out);

}  // namespace seqserve
