#include "accept.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace seqserve {

namespace {

template <typename T>
bool AllFinite(const std::string& raw) {
  const size_t n = raw.size() / sizeof(T);
  const char* p = raw.data();
  for (size_t i = 0; i < n; ++i) {
    T v;
    std::memcpy(&v, p + i * sizeof(T), sizeof(T));
    if (!std::isfinite(v)) return false;
  }
  return true;
}

bool Known(const google::protobuf::Message& message) {
  const google::protobuf::Reflection* reflection = message.GetReflection();
  if (!reflection->GetUnknownFields(message).empty()) return false;
  std::vector<const google::protobuf::FieldDescriptor*> fields;
  reflection->ListFields(message, &fields);
  for (const auto* field : fields) {
    if (field->cpp_type() != google::protobuf::FieldDescriptor::CPPTYPE_MESSAGE) continue;
    if (!field->is_repeated()) {
      if (!Known(reflection->GetMessage(message, field))) return false;
      continue;
    }
    const int n = reflection->FieldSize(message, field);
    for (int i = 0; i < n; ++i)
      if (!Known(reflection->GetRepeatedMessage(message, field, i))) return false;
  }
  return true;
}

}  // namespace

bool Whole(const google::protobuf::Message& message, size_t size) {
  return message.ByteSizeLong() == size && Known(message);
}

bool Accept(const Signature& signature, const inference::ModelInferRequest& m, Request* r) {
  const auto& inputs = signature.inputs;
  const auto& outputs = signature.outputs;
  const auto& policy = signature.policy;
  if (m.inputs_size() != static_cast<int>(inputs.size()) ||
      m.raw_input_contents_size() != m.inputs_size())
    return false;
  r->timeout_us = 0;
  for (const auto& [key, value] : m.parameters()) {
    if (key == "timeout" && value.parameter_choice_case() == inference::InferParameter::kInt64Param &&
        value.int64_param() >= 0) {
      r->timeout_us = value.int64_param();
    } else if (key != "triton_enable_empty_final_response") {  // perf_analyzer's; not decoupled
      return false;
    }
  }
  r->raw_index.assign(inputs.size(), -1);
  r->key.clear();
  r->item_shape.clear();
  int64_t batch = -1;
  for (int i = 0; i < m.inputs_size(); ++i) {
    const auto& t = m.inputs(i);
    if (t.parameters_size() != 0) return false;
    size_t k = 0;
    while (k < inputs.size() && inputs[k].name != t.name()) ++k;
    if (k == inputs.size() || r->raw_index[k] != -1) return false;
    const TensorSpec& spec = inputs[k];
    if (t.datatype() != spec.datatype) return false;
    const int lead = policy.max_batch_size > 0 ? 1 : 0;
    if (t.shape_size() != static_cast<int>(spec.dims.size()) + lead) return false;
    // Checked arithmetic: a claimed shape may not wrap the byte count around to the size of
    // what was sent. Past kMaxElements the Python server answers, naming the input.
    // The product of the dimensions, zeros left out, is bounded too: numpy refuses a larger
    // shape even with no element in it.
    int64_t elements = 1, extent = 1;
    for (int d = 0; d < t.shape_size(); ++d) {
      const int64_t dim = t.shape(d);
      if (dim < 0 || dim > kMaxElements ||
          (d >= lead && spec.dims[d - lead] != -1 && spec.dims[d - lead] != dim))
        return false;
      if (dim != 0 && extent > kMaxElements / dim) return false;
      extent *= dim != 0 ? dim : 1;
      elements *= dim;
    }
    if (lead) {
      if (batch == -1) batch = t.shape(0);
      if (t.shape(0) != batch) return false;
    }
    const std::string& raw = m.raw_input_contents(i);
    if (raw.size() != static_cast<size_t>(elements) * spec.itemsize) return false;
    if (spec.datatype == "FP32" && !AllFinite<float>(raw)) return false;
    if (spec.datatype == "FP64" && !AllFinite<double>(raw)) return false;
    if (spec.datatype == "FP16") return false;  // checked for NaN by the Python server
    r->raw_index[k] = i;
  }
  if (policy.max_batch_size > 0 && (batch < 1 || batch > policy.max_batch_size)) return false;
  for (size_t k = 0; k < inputs.size(); ++k) {
    const auto& shape = m.inputs(r->raw_index[k]).shape();
    const int lead = policy.max_batch_size > 0 ? 1 : 0;
    r->key.push_back(static_cast<int64_t>(shape.size()) - lead);
    for (int d = lead; d < shape.size(); ++d) {
      r->key.push_back(shape[d]);
      r->item_shape.push_back(shape[d]);
    }
  }
  if (!policy.batching) r->key.push_back(batch);  // unbatched: a batch is one request
  r->wanted.clear();
  for (const auto& out : m.outputs()) {
    if (out.parameters_size() != 0) return false;
    size_t k = 0;
    while (k < outputs.size() && outputs[k].name != out.name()) ++k;
    if (k == outputs.size()) return false;
    if (std::find(r->wanted.begin(), r->wanted.end(), k) == r->wanted.end())
      r->wanted.push_back(k);  // named twice: once, where first named (as the Python server)
  }
  if (r->wanted.empty())
    for (size_t k = 0; k < outputs.size(); ++k) r->wanted.push_back(k);
  r->size = policy.max_batch_size > 0 ? batch : 1;
  return true;
}

}  // namespace seqserve
