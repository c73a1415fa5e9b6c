#include "forecast.h"

#include <cmath>
#include <cstring>
#include <limits>

namespace seqserve {

namespace {

constexpr int64_t kSecondNs = 1'000'000'000;
constexpr int64_t kDayNs = 86'400 * kSecondNs;
// Seconds whose nanoseconds cannot overflow int64 (as serving/servicers/forecast.py's _SAFE_S).
constexpr int64_t kSafeSeconds = std::numeric_limits<int64_t>::max() / kSecondNs - 3;
constexpr int64_t kMaxNs = std::numeric_limits<int64_t>::max();

int64_t FloorDiv(int64_t a, int64_t b) {
  const int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

// Days since 1970-01-01 of a proleptic Gregorian date, and back (H. Hinnant's algorithms).
int64_t DaysFromCivil(int64_t y, int64_t m, int64_t d) {
  y -= m <= 2;
  const int64_t era = FloorDiv(y, 400);
  const int64_t yoe = y - era * 400;
  const int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + doe - 719468;
}

void CivilFromDays(int64_t z, int64_t* y, int64_t* m, int64_t* d) {
  z += 719468;
  const int64_t era = FloorDiv(z, 146097);
  const int64_t doe = z - era * 146097;
  const int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const int64_t mp = (5 * doy + 2) / 153;
  *d = doy - (153 * mp + 2) / 5 + 1;
  *m = mp < 10 ? mp + 3 : mp - 9;
  *y = yoe + era * 400 + (*m <= 2);
}

const char* const kCalendarNames[kCalendarFeatures] = {"hour", "weekday", "month",
                                                       "day_of_month", "day_of_year"};
const int kCalendarSizes[kCalendarFeatures] = {24, 7, 12, 31, 366};

// A protobuf Timestamp as nanoseconds, if it is within what the fast path takes.
bool Nanoseconds(const google::protobuf::Timestamp& t, int64_t* ns) {
  if (t.seconds() > kSafeSeconds || t.seconds() < -kSafeSeconds) return false;
  if (t.nanos() < 0 || t.nanos() >= kSecondNs) return false;
  *ns = t.seconds() * kSecondNs + t.nanos();
  return true;
}

bool AllFinite(const google::protobuf::RepeatedField<float>& values) {
  for (float v : values)
    if (!std::isfinite(v)) return false;
  return true;
}

// The series named `name` in `series`, if it is there exactly once.
const fpb::Series* Only(const google::protobuf::RepeatedPtrField<fpb::Series>& series,
                        const std::string& name) {
  const fpb::Series* found = nullptr;
  for (const auto& s : series) {
    if (s.name() != name) continue;
    if (found != nullptr) return nullptr;
    found = &s;
  }
  return found;
}

void AppendFloats(std::string* raw, const float* values, size_t n) {
  raw->append(reinterpret_cast<const char*>(values), n * sizeof(float));
}

}  // namespace

int CalendarIndex(const std::string& name) {
  for (int f = 0; f < kCalendarFeatures; ++f)
    if (name == kCalendarNames[f]) return f;
  return -1;
}

float Calendar(int feature, int64_t ns) {
  const int64_t days = FloorDiv(ns, kDayNs);
  int64_t index = 0;
  if (feature == kHour) {
    index = FloorDiv(ns, 3600 * kSecondNs) - days * 24;
  } else if (feature == kWeekday) {
    index = ((days + 3) % 7 + 7) % 7;  // 1970-01-01 was a Thursday (3)
  } else {
    int64_t y, m, d;
    CivilFromDays(days, &y, &m, &d);
    if (feature == kMonth) index = m - 1;
    if (feature == kDayOfMonth) index = d - 1;
    if (feature == kDayOfYear) index = days - DaysFromCivil(y, 1, 1);
  }
  return static_cast<float>(static_cast<double>(index) / (kCalendarSizes[feature] - 1) - 0.5);
}

bool ForecastToInfer(std::shared_ptr<const ForecastSpec> spec, const fpb::ForecastRequest& request,
                     int64_t max_batch_size, inference::ModelInferRequest* infer,
                     TypedForecast* typed) {
  const ForecastSpec& s = *spec;
  const int64_t B = request.windows_size(), L = s.input_window, H = s.horizon;
  if (B == 0 || max_batch_size <= 0 || B > max_batch_size || s.step_ns <= 0) return false;
  if (H < 1 || L < 1 || s.step_ns > kMaxNs / (H + 1)) return false;
  typed->levels.clear();
  for (double q : request.quantile_levels()) {  // as serving.forecasting.quantile_indices
    int match = -1;
    for (size_t i = 0; i < s.quantiles.size() && match < 0; ++i)
      if (std::fabs(s.quantiles[i] - q) < 1e-6) match = static_cast<int>(i);
    if (match < 0) return false;
    typed->levels.push_back(match);
  }
  if (request.quantile_levels_size() == 0)
    for (size_t i = 0; i < s.quantiles.size(); ++i) typed->levels.push_back(static_cast<int>(i));

  const size_t F_in = s.past_features.size(), F_fut = s.future_features.size();
  size_t known = 0;
  for (int c : s.calendar) known += c < 0;
  std::vector<float> past(B * L * F_in), future(B * H * F_fut);  // [B, L, F_in], [B, H, F_fut]
  typed->last_ns.assign(B, 0);
  for (int64_t b = 0; b < B; ++b) {
    const fpb::Window& w = request.windows(static_cast<int>(b));
    if (w.has_start() || w.has_frequency() || !w.frequency_alias().empty()) return false;
    if (static_cast<size_t>(w.past_size()) != F_in) return false;
    if (static_cast<size_t>(w.future_size()) != known) return false;
    const int64_t n = w.timestamps_size();
    if (n < L || n < 1) return false;
    for (size_t f = 0; f < F_in; ++f) {
      const fpb::Series* series = Only(w.past(), s.past_features[f]);
      if (series == nullptr || series->values_size() != n || !AllFinite(series->values()))
        return false;
      const float* last = series->values().data() + (n - L);
      for (int64_t t = 0; t < L; ++t) past[(b * L + t) * F_in + f] = last[t];
    }
    int64_t previous = 0;  // every step exactly the model's, increasing
    for (int64_t i = 0; i < n; ++i) {
      int64_t ns;
      if (!Nanoseconds(w.timestamps(static_cast<int>(i)), &ns)) return false;
      if (i > 0 && (ns <= previous || ns - previous != s.step_ns)) return false;
      previous = ns;
    }
    if (previous > kMaxNs - H * s.step_ns) return false;  // the horizon stays in range
    typed->last_ns[b] = previous;
    for (size_t f = 0; f < F_fut; ++f) {
      float* column = future.data() + b * H * F_fut + f;
      if (s.calendar[f] >= 0) {
        for (int64_t h = 0; h < H; ++h)
          column[h * F_fut] = Calendar(s.calendar[f], previous + (h + 1) * s.step_ns);
        continue;
      }
      const fpb::Series* series = Only(w.future(), s.future_features[f]);
      if (series == nullptr || series->values_size() != H || !AllFinite(series->values()))
        return false;
      for (int64_t h = 0; h < H; ++h) column[h * F_fut] = series->values(static_cast<int>(h));
    }
  }
  infer->set_model_name(request.model_name());
  infer->set_model_version(request.model_version());
  auto add = [&](const char* name, int64_t steps, size_t features, const std::vector<float>& v) {
    auto* input = infer->add_inputs();
    input->set_name(name);
    input->set_datatype("FP32");
    for (int64_t d : {B, steps, static_cast<int64_t>(features)}) input->add_shape(d);
    AppendFloats(infer->add_raw_input_contents(), v.data(), v.size());
  };
  add("past", L, F_in, past);
  if (F_fut > 0) add("future", H, F_fut, future);
  typed->spec = std::move(spec);
  return true;
}

void InferToForecast(const TypedForecast& typed, const inference::ModelInferResponse& reply,
                     fpb::ForecastResponse* out) {
  const ForecastSpec& s = *typed.spec;
  const float* forecast = nullptr;  // [B, H, F_out]
  const float* quantiles = nullptr;  // [B, H, F_out, Q]
  for (int i = 0; i < reply.outputs_size(); ++i) {
    const auto* data = reinterpret_cast<const float*>(reply.raw_output_contents(i).data());
    if (reply.outputs(i).name() == "forecast") forecast = data;
    if (reply.outputs(i).name() == "quantiles") quantiles = data;
  }
  out->set_model_name(reply.model_name());
  out->set_model_version(reply.model_version());
  const int64_t H = s.horizon, F = static_cast<int64_t>(s.target_names.size());
  const int64_t Q = static_cast<int64_t>(s.quantiles.size());
  for (size_t b = 0; b < typed.last_ns.size(); ++b) {
    auto* wf = out->add_forecasts();
    for (int64_t h = 1; h <= H; ++h) {
      const int64_t ns = typed.last_ns[b] + h * s.step_ns;
      auto* t = wf->add_timestamps();
      t->set_seconds(FloorDiv(ns, kSecondNs));
      t->set_nanos(static_cast<int32_t>(ns - FloorDiv(ns, kSecondNs) * kSecondNs));
    }
    for (int64_t f = 0; f < F; ++f) {
      auto* sf = wf->add_targets();
      sf->set_name(s.target_names[f]);
      auto* point = sf->mutable_point();
      point->Reserve(static_cast<int>(H));
      for (int64_t h = 0; h < H; ++h) point->Add(forecast[(b * H + h) * F + f]);
      if (quantiles == nullptr) continue;
      for (int q : typed.levels) {
        auto* qf = sf->add_quantiles();
        qf->set_level(s.quantiles[q]);
        auto* values = qf->mutable_values();
        values->Reserve(static_cast<int>(H));
        for (int64_t h = 0; h < H; ++h) values->Add(quantiles[((b * H + h) * F + f) * Q + q]);
      }
    }
  }
}

}  // namespace seqserve
