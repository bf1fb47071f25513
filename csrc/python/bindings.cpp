// attnscope._core: binds the C++ core for the Python package. Binds, nothing else.
#include <attnscope/dataset.h>
#include <attnscope/memory_budget.h>
#include <attnscope/model.h>

#include <torch/extension.h>

#include <pybind11/functional.h>
#include <pybind11/stl.h>

#include <variant>

namespace py = pybind11;
using namespace pybind11::literals;
using attnscope::CaptureSpec;
using attnscope::DatasetParts;
using attnscope::DatasetStats;
using attnscope::Knockout;
using attnscope::Model;
using attnscope::Trace;

namespace {
template <class... F>
struct Overload : F... {
  using F::operator()...;
};
template <class... F>
Overload(F...) -> Overload<F...>;

// The spec's fields come from its one description (attnscope::spec_fields()).
// Pairs read as [layer, head] lists, as the spec's JSON writes them.
py::object field_value(const CaptureSpec& s, const attnscope::SpecField& f) {
  return std::visit(Overload{[&](std::vector<std::pair<int64_t, int64_t>> CaptureSpec::*m) {
                               py::list out;
                               for (const auto& p : s.*m) out.append(py::cast(std::vector<int64_t>{p.first, p.second}));
                               return py::object(out);
                             },
                             [&](auto m) { return py::object(py::cast(s.*m)); }},
                    f.member);
}

const char* field_type(const attnscope::SpecField& f) {
  return std::visit(Overload{[](bool CaptureSpec::*) { return "bool"; }, [](int64_t CaptureSpec::*) { return "int"; },
                             [](double CaptureSpec::*) { return "float"; },
                             [](std::vector<int64_t> CaptureSpec::*) { return "ints"; }, [](auto) { return "pairs"; }},
                    f.member);
}

void bind_capture_spec(py::module_& m) {
  py::class_<CaptureSpec> cls(m, "CaptureSpec", "What a run keeps (see csrc/attnscope/spec.h)");
  cls.def(py::init<>());
  for (const auto& f : attnscope::spec_fields())
    std::visit([&](auto member) { cls.def_readwrite(f.name, member, f.doc); }, f.member);
  cls.def("to_json", &CaptureSpec::to_json, "the spec as JSON")
      .def_static("from_json", &CaptureSpec::from_json, py::arg("text"), "spec from JSON")
      .def(
          "to_dict",
          [](const CaptureSpec& s) {
            py::dict d;
            for (const auto& f : attnscope::spec_fields()) d[f.name] = field_value(s, f);
            return d;
          },
          "the spec as {field: value}")
      .def_static("all_aggregates", &CaptureSpec::all_aggregates, "every aggregate for every layer (capture='all')")
      .def_static("for_captures", &CaptureSpec::for_captures, py::arg("names"), "the spec that produces these captures")
      .def("captures_anything", &CaptureSpec::captures_anything, "True when the spec keeps any attention capture")
      .def("produces", &CaptureSpec::produces, "names of the captures a run with this spec produces")
      .def("kept_bytes", &CaptureSpec::kept_bytes, py::arg("n_layers"), py::arg("batch"), py::arg("n_heads"),
           py::arg("tokens"), "bytes a run keeps for these captures (estimated before it allocates)")
      .def_static(
          "fields",
          [] {
            py::list out;
            const CaptureSpec d;
            for (const auto& f : attnscope::spec_fields())
              out.append(py::dict(py::arg("name") = f.name, py::arg("type") = field_type(f),
                                  py::arg("default") = field_value(d, f), py::arg("lo") = f.lo, py::arg("hi") = f.hi,
                                  py::arg("doc") = f.doc));
            return out;
          },
          "every field: name, type, default, bounds, doc")
      .def_static(
          "capture_names",
          [] {
            py::list out;
            for (const auto& c : attnscope::capture_names())
              out.append(py::dict(py::arg("name") = c.name, py::arg("field") = c.field, py::arg("value") = c.value,
                                  py::arg("shape") = c.shape, py::arg("doc") = c.doc));
            return out;
          },
          "every capture a run can produce: name, field, value, shape, doc");
}
py::object opt(const std::optional<double>& v) {
  return v ? py::cast(*v) : py::none();
}

py::dict generation_dict(const attnscope::GenerationInfo& g) {
  py::dict d("temperature"_a = g.temperature, "top_k"_a = g.top_k, "top_p"_a = g.top_p, "seed"_a = g.seed,
             "max_new_tokens"_a = g.max_new_tokens, "stop_ids"_a = g.stop_ids, "kv_cache"_a = g.kv_cache,
             "prefix_cached"_a = g.prefix_cached, "steps"_a = g.steps, "stop_reason"_a = g.stop_reason);
  if (g.fork) {
    const auto& f = *g.fork;
    d["fork"] = py::dict("position"_a = f.position, "chosen_id"_a = f.chosen_id, "chosen"_a = f.chosen,
                         "chosen_p"_a = opt(f.chosen_p), "forced_id"_a = f.forced_id, "forced"_a = f.forced,
                         "forced_p"_a = opt(f.forced_p), "rank"_a = f.rank ? py::cast(*f.rank) : py::none());
  }
  return d;
}

void bind_generation(py::module_& m) {
  using attnscope::Fork;
  using attnscope::GenerationInfo;
  py::class_<Fork>(m, "Fork", "where a branch left its answer (see csrc/attnscope/generation_info.h)")
      .def(py::init<>())
      .def_readwrite("position", &Fork::position)
      .def_readwrite("chosen_id", &Fork::chosen_id)
      .def_readwrite("forced_id", &Fork::forced_id)
      .def_readwrite("chosen", &Fork::chosen)
      .def_readwrite("forced", &Fork::forced)
      .def_readwrite("chosen_p", &Fork::chosen_p)
      .def_readwrite("forced_p", &Fork::forced_p)
      .def_readwrite("rank", &Fork::rank);
  py::class_<GenerationInfo>(m, "GenerationInfo", "how a trace was generated (see generation_info.h)")
      .def(py::init<>())
      .def_readwrite("temperature", &GenerationInfo::temperature)
      .def_readwrite("top_k", &GenerationInfo::top_k)
      .def_readwrite("top_p", &GenerationInfo::top_p)
      .def_readwrite("seed", &GenerationInfo::seed)
      .def_readwrite("max_new_tokens", &GenerationInfo::max_new_tokens)
      .def_readwrite("stop_ids", &GenerationInfo::stop_ids)
      .def_readwrite("kv_cache", &GenerationInfo::kv_cache)
      .def_readwrite("prefix_cached", &GenerationInfo::prefix_cached)
      .def_readwrite("steps", &GenerationInfo::steps)
      .def_readwrite("stop_reason", &GenerationInfo::stop_reason)
      .def_readwrite("fork", &GenerationInfo::fork)
      .def("to_dict", &generation_dict, "as a dict (Trace.generation)")
      .def("to_json", &GenerationInfo::to_json, "as the JSON trace files keep");
}

void bind_trace(py::module_& m) {
  py::class_<Trace>(m, "Trace", "Everything one run produced (see csrc/attnscope/trace.h)")
      .def_readonly("input_ids", &Trace::input_ids)
      .def_readonly("attention_mask", &Trace::attention_mask)
      .def_readonly("entropy", &Trace::entropy)
      .def_readonly("warnings", &Trace::warnings)
      .def(
          "set_capture", [](Trace& t, const std::string& name, const torch::Tensor& x) { t.captures[name] = x; },
          py::arg("name"), py::arg("tensor"), "add or replace a capture")
      .def(
          "drop_capture", [](Trace& t, const std::string& name) { t.captures.erase(name); }, py::arg("name"),
          "remove a capture")
      .def_readonly("prompt_len", &Trace::prompt_len)
      .def_readonly("model_id", &Trace::model_id, "the model that made it (Model.model_id)")
      .def_readonly("model_name", &Trace::model_name)
      .def("set_generation", &Trace::set_generation, py::arg("prompt_len"), py::arg("generation"),
           "mark as generated: where the answer begins, how it was made")
      .def_readonly("generation", &Trace::generation)
      .def_readonly("topk_probs", &Trace::topk_probs)
      .def_readonly("topk_ids", &Trace::topk_ids)
      .def_readonly("captures", &Trace::captures)
      .def_readonly("spec", &Trace::spec)
      .def_readonly("n_layers", &Trace::n_layers)
      .def_readonly("n_heads", &Trace::n_heads)
      .def_readonly("n_kv_heads", &Trace::n_kv_heads)
      .def_readonly("kv_head_of", &Trace::kv_head_of)
      .def_readonly("layer_paths", &Trace::layer_paths)
      .def_readonly("routes", &Trace::routes)
      .def_readonly("attention_layers", &Trace::attention_layers)
      .def_readonly("tokens", &Trace::tokens)
      .def("save", &Trace::save, py::arg("path"), "write as safetensors")
      .def_static("load", &Trace::load, py::arg("path"), "read a trace file");
}

void bind_dataset(py::module_& m) {
  py::class_<DatasetParts>(m, "DatasetParts", "What a dataset run accumulates (see csrc/attnscope/dataset.h)")
      .def(py::init<>())
      .def_readwrite("layer_maps", &DatasetParts::layer_maps)
      .def_readwrite("head_maps", &DatasetParts::head_maps)
      .def_readwrite("received", &DatasetParts::received)
      .def_readwrite("attn_entropy", &DatasetParts::attn_entropy)
      .def_readwrite("row_stats", &DatasetParts::row_stats)
      .def("needed", &DatasetParts::needed, py::arg("n_layers"), py::arg("n_heads"), "captures each trace must hold")
      .def_static("of_trace", &DatasetParts::of_trace, py::arg("trace"), "every part a trace's captures can feed")
      .def_static("part_of", &DatasetParts::part_of, py::arg("name"),
                  "the part that accumulates a capture (\"\" = none)");

  py::class_<Knockout>(m, "Knockout", "attention edges removed before the softmax (knockout.h)")
      .def(py::init<>())
      .def_readwrite("layers", &Knockout::layers, "model layers (empty = every attention layer)")
      .def_readwrite("heads", &Knockout::heads, "query heads (empty = every head)")
      .def_readwrite("edges", &Knockout::edges, "[B, T, T] bool: true = edge (query i, key j) removed")
      .def_readwrite("ablate", &Knockout::ablate, "[B, L, H] bool: true = head h of layer l ablated in row b")
      .def_readwrite("ablate_mode", &Knockout::ablate_mode, "'zero' or 'mean' (over the row's real positions)");
  m.def("memory_budget", &attnscope::memory_budget, "bytes one argument's work may allocate (ATTNSCOPE_MAX_BYTES)");
  m.def("dataset_capture_spec", &attnscope::dataset_capture_spec, py::arg("parts"),
        py::arg("n_layers"), py::arg("n_heads"), "the CaptureSpec a dataset run needs");

  py::class_<DatasetStats>(m, "DatasetStats", "Running attention sums over sequences (see csrc/attnscope/dataset.h)")
      .def(py::init<DatasetParts, double>(), py::arg("parts") = DatasetParts(), py::arg("epsilon") = 0.3)
      .def("add", &DatasetStats::add, py::arg("trace"), "add every sequence of a trace",
           py::call_guard<py::gil_scoped_release>())
      .def("merge", &DatasetStats::merge, py::arg("other"), "add another dataset's sums")
      .def("resize", &DatasetStats::resize, py::arg("length"), "grow the position axes")
      .def_property_readonly("state", py::overload_cast<>(&DatasetStats::state),
                             py::return_value_policy::reference_internal, "running sums by name")
      .def_static("max_state_names", &DatasetStats::max_state_names, "sums reduced with MAX")
      .def_property_readonly("n_sequences", &DatasetStats::n_sequences)
      .def_property_readonly("length", &DatasetStats::length)
      .def_property_readonly("n_layers", &DatasetStats::n_layers)
      .def_property_readonly("n_heads", &DatasetStats::n_heads)
      .def_property_readonly("epsilon", &DatasetStats::epsilon)
      .def_property_readonly("model_id", &DatasetStats::model_id, "the model the sums come from")
      .def_property_readonly("model_name", &DatasetStats::model_name)
      .def_property("allow_different_models", &DatasetStats::allow_different_models,
                    &DatasetStats::set_allow_different_models, "pool sums of different models on purpose")
      .def_property_readonly("parts", &DatasetStats::parts)
      .def("layer_map", &DatasetStats::layer_map, py::arg("layer"), py::arg("head") = -1, "mean map [T, T]")
      .def("alpha", &DatasetStats::alpha, "mean received attention [L, H, T]")
      .def("received_max", &DatasetStats::received_max, "max received attention [L, H, T]")
      .def("sink_rate", &DatasetStats::sink_rate, "fraction of sequences with alpha_1 > epsilon [L, H]")
      .def("sink1_per_layer", &DatasetStats::sink1_per_layer, "Sink_1 per layer [L]")
      .def("sink1", &DatasetStats::sink1, "Sink_1 of the model")
      .def("attn_entropy", &DatasetStats::attn_entropy, "mean attention entropy [L, H, T]")
      .def("row_stats", &DatasetStats::row_stats, "mean row statistics per head [6, L, H]")
      .def("row_stat_counts", &DatasetStats::row_stat_counts, "rows behind each mean [6, L, H]")
      .def("learned_sink", &DatasetStats::learned_sink, "learned sinks' mean share per head [L, H], or None")
      .def("head_entropy", &DatasetStats::head_entropy, "mean attention entropy per head [L, H]")
      .def("predictive_entropy", &DatasetStats::predictive_entropy, "mean predictive entropy [T]")
      .def("position_count", &DatasetStats::position_count, "sequences having each position [T]")
      .def("save", &DatasetStats::save, py::arg("path"), "write as safetensors")
      .def_static("load", &DatasetStats::load, py::arg("path"), "read a dataset file");
}

// Model's forward and decode step with a knockout (knockout.h): what attnscope.knockout,
// knockout_sweep and head_effects compare.
void bind_interventions(py::class_<Model>& model) {
  model
      .def(
          "logits",
          [](Model& self, const torch::Tensor& ids, const std::optional<torch::Tensor>& mask,
             const std::optional<Knockout>& knockout) {
            return self.logits(ids, mask.value_or(torch::Tensor()), knockout ? &*knockout : nullptr);
          },
          py::arg("input_ids"), py::arg("attention_mask") = py::none(), py::arg("knockout") = py::none(),
          "the forward's logits [B, T, V] (fp32), with an attention knockout applied when given",
          py::call_guard<py::gil_scoped_release>())
      .def(
          "decode_logits",
          [](Model& self, const torch::Tensor& ids, const torch::Tensor& mask, const torch::Tensor& past_k,
             const torch::Tensor& past_v, const std::optional<Knockout>& knockout) {
            return self.decode_logits(ids, mask, past_k, past_v, knockout ? &*knockout : nullptr);
          },
          py::arg("input_ids"), py::arg("attention_mask"), py::arg("past_k"), py::arg("past_v"),
          py::arg("knockout") = py::none(), "logits [B, t, V] of one decode step over a KV cache, with a knockout",
          py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("decode_intervenes", &Model::decode_intervenes,
                             "a knockout can run over the KV cache (decode_logits)");
}

void bind_model(py::module_& m) {
  py::class_<attnscope::GenerateOptions>(m, "GenerateOptions", "how Model.generate picks tokens (model.h)")
      .def(py::init<>())
      .def_readwrite("max_new_tokens", &attnscope::GenerateOptions::max_new_tokens)
      .def_readwrite("temperature", &attnscope::GenerateOptions::temperature)
      .def_readwrite("top_k", &attnscope::GenerateOptions::top_k)
      .def_readwrite("top_p", &attnscope::GenerateOptions::top_p)
      .def_readwrite("seed", &attnscope::GenerateOptions::seed)
      .def_readwrite("stop_ids", &attnscope::GenerateOptions::stop_ids)
      .def_readwrite("pad_id", &attnscope::GenerateOptions::pad_id)
      .def_readwrite("use_cache", &attnscope::GenerateOptions::use_cache)
      .def_readwrite("on_step", &attnscope::GenerateOptions::on_step)
      .def_readwrite("past_k", &attnscope::GenerateOptions::past_k)
      .def_readwrite("past_v", &attnscope::GenerateOptions::past_v)
      .def_readwrite("capture", &attnscope::GenerateOptions::capture);

  py::class_<Model> model(m, "Model", "A TorchScript LM loaded for capture (see csrc/attnscope/model.h)");
  bind_interventions(model);
  model.def_static("load", &Model::load, py::arg("path"), py::arg("device") = "auto", "load a TorchScript archive")
      .def(
          "run",
          [](Model& self, const torch::Tensor& ids, const CaptureSpec& spec, const std::optional<torch::Tensor>& mask) {
            return self.run(ids, spec, mask.value_or(torch::Tensor()));
          },
          py::arg("input_ids"), py::arg("spec"), py::arg("attention_mask") = py::none(), "forward with capture",
          py::call_guard<py::gil_scoped_release>())
      .def_static(
          "from_module",
          [](const py::object& script_module, const std::string& device, const std::string& info) {
            return Model::from_module(
                py::cast<torch::jit::Module>(script_module.attr("_c")), attnscope::resolve_device(device),
                info.empty() ? attnscope::ModelInfo() : attnscope::ModelInfo::from_json(info), info);
          },
          py::arg("script_module"), py::arg("device") = "auto", py::arg("info") = "",
          "wrap a torch.jit ScriptModule (attnscope.json text as info)")
      .def("prefill", &Model::prefill, py::arg("ids"), "KV cache (k, v) [L, B, KV, T, D] of ids [B, T]",
           py::call_guard<py::gil_scoped_release>())
      .def(
          "generate",
          [](Model& self, const torch::Tensor& ids, const attnscope::GenerateOptions& o, const CaptureSpec& spec,
             const std::optional<torch::Tensor>& mask) {
            return self.generate(ids, o, spec, mask.value_or(torch::Tensor()));
          },
          py::arg("prompt_ids"), py::arg("options"), py::arg("spec"), py::arg("attention_mask") = py::none(),
          "generate, then one capture run over prompt + response", py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("has_decode", &Model::has_decode)
      .def_property_readonly("model_id", &Model::model_id, "which weights: w:<hex> (archive) or m:<hex> (module)")
      .def_property_readonly("model_name", &Model::model_name)
      .def_property_readonly("eos_id", [](const Model& x) { return x.info().eos_id; })
      .def("describe", &Model::describe, "summary text")
      .def_property_readonly("n_layers", [](const Model& x) { return x.info().n_layers; })
      .def_property_readonly(
          "attention_layers", [](const Model& x) { return x.info().attention_layers; },
          "model-layer indices of a hybrid's attention layers ([] = every layer)")
      .def_property_readonly("n_heads", [](const Model& x) { return x.info().n_heads; })
      .def_property_readonly("n_kv_heads", [](const Model& x) { return x.info().n_kv_heads; })
      .def_property_readonly("head_dim", [](const Model& x) { return x.info().head_dim; })
      .def_property_readonly(
          "v_head_dim",
          [](const Model& x) { return x.info().v_head_dim > 0 ? x.info().v_head_dim : x.info().head_dim; })
      .def_property_readonly("vocab_size", [](const Model& x) { return x.info().vocab_size; })
      .def_property_readonly("family", [](const Model& x) { return x.info().family; })
      .def_property_readonly("bos_id", [](const Model& x) { return x.info().bos_id; })
      .def_property_readonly("causal", [](const Model& x) { return x.info().causal; })
      .def_property_readonly("output", [](const Model& x) { return x.info().output; })
      .def_property_readonly("context_length", [](const Model& x) { return x.info().context_length; })
      .def_property_readonly("device", [](const Model& x) { return x.device().str(); })
      .def_property_readonly("instrumented", &Model::instrumented)
      .def_property_readonly("tokenizer_json", &Model::tokenizer_json)
      .def_property_readonly("metadata_json", &Model::metadata_json);
}
}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "attnscope C++ core (private; use the attnscope package)";
  bind_capture_spec(m);
  bind_generation(m);
  bind_trace(m);
  bind_dataset(m);
  bind_model(m);
}
