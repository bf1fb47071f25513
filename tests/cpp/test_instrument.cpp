// Graph instrumentation: every attention style is found, numbered by execution order, and
// the captured maps equal the plain-PyTorch reference probabilities.
#include "helpers.h"

#include <attnscope/capture_ops.h>
#include <attnscope/instrument.h>

using attnscope::CaptureSpec;
using attnscope::Model;

namespace {

CaptureSpec every_head(int64_t layers, int64_t heads) {
  CaptureSpec s;
  for (int64_t l = 0; l < layers; ++l)
    for (int64_t h = 0; h < heads; ++h) s.heads.emplace_back(l, h);
  s.top_k = 0;
  return s;
}

void check_maps_equal_reference(const std::string& name, const char* kind, double tol,
                                int64_t chunk_elements = int64_t(1) << 24) {
  CATCH_INFO("fixture " << name);
  auto ref = test::load_ref(name);
  auto model = Model::load(test::fixture(name + ".pt"), "cpu");
  const int64_t layers = static_cast<int64_t>(ref.probs.size()), heads = ref.probs[0].size(1);
  if (std::string(kind) != "own") {
    CATCH_REQUIRE(model.instrumented());
    CATCH_REQUIRE(static_cast<int64_t>(model.sites().size()) == layers);  // gate softmax not counted
    for (const auto& s : model.sites()) CATCH_CHECK(s.kind == kind);
  } else {
    CATCH_REQUIRE_FALSE(model.instrumented());
  }
  CaptureSpec spec = every_head(layers, heads);
  spec.chunk_elements = chunk_elements;
  auto trace = model.run(ref.ids, spec, ref.mask);
  CATCH_CHECK(trace.n_layers == layers);
  CATCH_CHECK(trace.n_heads == heads);
  for (int64_t l = 0; l < layers; ++l)
    for (int64_t h = 0; h < heads; ++h) {
      CATCH_INFO("layer " << l << " head " << h);
      auto got = trace.get("head_map/L" + std::to_string(l) + "H" + std::to_string(h));
      CATCH_CHECK(test::max_abs_rows(got, ref.probs[l].select(1, h), ref.mask) < tol);
    }
}

}  // namespace

CATCH_TEST_CASE("every attention style: maps equal the reference", "[instrument]") {
  struct Style { const char* fixture; const char* kind; const char* what; };
  static const Style styles[] = {
      {"toy_hf_eager", "softmax", "HF-eager style: additive mask, fp32 softmax cast back"},
      {"toy_gpt2", "softmax", "GPT-2 style: torch.where mask, division by sqrt(d)"},
      {"toy_bmm", "softmax", "baddbmm/bmm style on [B*H, T, T]"},
      {"toy_einsum", "softmax", "einsum style"},
      {"toy_eager_gqa", "softmax", "GQA with repeat_kv (expand + reshape), eager"},
      {"toy_sdpa_causal", "sdpa", "SDPA with is_causal"},
      {"toy_sdpa_mask", "sdpa", "SDPA with an explicit bool mask and explicit scale, left padding"},
      {"toy_own_ops", "own", "archive with its own capture ops is used as exported"},
  };
  for (const Style& st : styles) {
    CATCH_DYNAMIC_SECTION(st.what) { check_maps_equal_reference(st.fixture, st.kind, 1e-6); }
  }
}
CATCH_TEST_CASE("SDPA with enable_gqa: KV heads read per query head", "[instrument]") {
  check_maps_equal_reference("toy_sdpa_gqa", "sdpa", 1e-6);
  auto model = Model::load(test::fixture("toy_sdpa_gqa.pt"), "cpu");
  auto ref = test::load_ref("toy_sdpa_gqa");
  auto t = model.run(ref.ids, attnscope::CaptureSpec::all_aggregates());
  CATCH_CHECK(t.n_kv_heads == 2);
  CATCH_CHECK(t.kv_head_of.equal(torch::tensor({0, 0, 1, 1}, torch::kLong)));
}
CATCH_TEST_CASE("bidirectional attention without metadata: causal trimming is checked, not assumed",
                "[instrument]") {
  check_maps_equal_reference("toy_bidirectional", "softmax", 1e-6);
  check_maps_equal_reference("toy_bidirectional", "softmax", 1e-6, 2 * 4 * 12 * 3);  // 3-row blocks
  check_maps_equal_reference("toy_hf_eager", "softmax", 1e-6, 2 * 4 * 12 * 3);       // trimmed
}

CATCH_TEST_CASE("instrument() leaves the original module untouched and shares weights", "[instrument]") {
  auto m = torch::jit::load(test::fixture("toy_hf_eager.pt"));
  auto ins = attnscope::instrument(m);
  CATCH_CHECK(attnscope::count_capture_ops(m) == 0);
  CATCH_CHECK(attnscope::count_capture_ops(ins.module) == 3);
  auto p0 = *m.parameters().begin();
  auto p1 = *ins.module.parameters().begin();
  CATCH_CHECK(p0.data_ptr() == p1.data_ptr());  // clone(true): no weight copy
  // Layer numbering follows the graph/execution order, with module paths from the call stack.
  CATCH_REQUIRE(ins.sites.size() == 3);
  for (int i = 0; i < 3; ++i) {
    CATCH_INFO("site " << i << " path '" << ins.sites[i].path << "'");
    CATCH_CHECK(ins.sites[i].id == i);
    CATCH_CHECK(ins.sites[i].path.find("blocks." + std::to_string(i)) != std::string::npos);
    CATCH_CHECK_FALSE(ins.sites[i].in_block);
  }
}

CATCH_TEST_CASE("scripted model with control flow: loop sites numbered by execution, dead branch reported",
                "[instrument]") {
  auto ref = test::load_ref("toy_scripted_branch");
  auto model = Model::load(test::fixture("toy_scripted_branch.pt"), "cpu");
  CATCH_REQUIRE(model.sites().size() == 2);  // one site in the loop body, one in the `if`
  for (const auto& s : model.sites()) CATCH_CHECK(s.in_block);
  CaptureSpec spec = every_head(2, 4);
  auto t = model.run(ref.ids, spec);
  CATCH_CHECK(t.n_layers == 2);  // the loop ran its site twice; the branch never ran
  CATCH_REQUIRE(model.idle_sites().size() == 1);
  CATCH_CHECK(model.describe().find("did not run") != std::string::npos);
  for (int64_t l = 0; l < 2; ++l)
    for (int64_t h = 0; h < 4; ++h)
      CATCH_CHECK(test::max_abs(t.get("head_map/L" + std::to_string(l) + "H" + std::to_string(h)),
                                ref.probs[l].select(1, h)) < 1e-6);
  auto err = test::error_of([&] { model.run(ref.ids, every_head(3, 1)); });
  CATCH_CHECK(err.find("layer 2 out of range: model has 2 layers") != std::string::npos);
}

CATCH_TEST_CASE("device constants baked by tracing on the CPU are retargeted", "[instrument][device]") {
  for (const char* name : {"hf_llama_sdpa.pt", "hf_gpt2_eager.pt"}) {
    auto m = torch::jit::load(test::fixture(name));
    auto clone = m.clone(true);
    auto count_cpu = [](torch::jit::Module& mod) {
      int64_t n = 0;
      for (const auto& sub : mod.modules())
        for (const auto& meth : sub.get_methods())
          for (auto* node : meth.graph()->nodes())
            if (node->kind() == c10::prim::Constant &&
                node->output()->type()->kind() == c10::TypeKind::DeviceObjType &&
                torch::jit::toIValue(node->output())->toDevice().is_cpu())
              ++n;
      return n;
    };
    int64_t before = count_cpu(clone);
    CATCH_CHECK(before > 0);  // tracing recorded device="cpu"
    // No CUDA needed: the pass rewrites constants, it allocates nothing on the device.
    CATCH_CHECK(attnscope::retarget_device_constants(clone, torch::Device("cuda:0")) >= before);
    CATCH_CHECK(count_cpu(clone) == 0);
    CATCH_CHECK(count_cpu(m) == before);  // the original module keeps its graphs
    CATCH_CHECK(attnscope::retarget_device_constants(clone, torch::Device("cuda:0"), true) == 0);
    // and back: an archive traced on a GPU runs on the CPU
    CATCH_CHECK(attnscope::retarget_device_constants(clone, torch::kCPU) >= before);
    CATCH_CHECK(count_cpu(clone) >= before);
  }
}
