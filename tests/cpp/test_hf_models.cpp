// Models nobody here wrote: tiny random-initialised transformers models traced through a
// logits-only wrapper, eager and SDPA; captures equal transformers' own eager
// output_attentions to 1e-5 on every real (non-padding) query row.
#include "helpers.h"

#include <fstream>
#include <sstream>

using attnscope::CaptureSpec;
using attnscope::Model;

namespace {

std::string trace_failure(const std::string& name) {
  std::ifstream f(test::fixture("hf_failures.json"));
  std::stringstream ss;
  ss << f.rdbuf();
  auto s = ss.str();
  auto at = s.find("\"" + name + "\"");
  return at == std::string::npos ? "" : s.substr(at, s.find('\n', at) - at);
}

void check_hf(const std::string& name, const char* kind) {
  CATCH_INFO("fixture " << name);
  std::ifstream probe(test::fixture(name + ".pt"));
  if (!probe.good()) {
    CATCH_FAIL("could not be traced with this transformers version: " << trace_failure(name));
    return;
  }
  auto ref = test::load_ref(name);
  auto model = Model::load(test::fixture(name + ".pt"), "cpu");
  CATCH_REQUIRE(model.instrumented());
  const int64_t layers = static_cast<int64_t>(ref.probs.size()), heads = ref.probs[0].size(1);
  CATCH_REQUIRE(static_cast<int64_t>(model.sites().size()) == layers);
  for (const auto& s : model.sites()) CATCH_CHECK(s.kind == kind);
  CaptureSpec spec = CaptureSpec::all_aggregates();
  for (int64_t l = 0; l < layers; ++l)
    for (int64_t h = 0; h < heads; ++h) spec.heads.emplace_back(l, h);
  auto t = model.run(ref.ids, spec, ref.mask);
  CATCH_CHECK(t.n_layers == layers);
  auto valid = ref.mask.to(torch::kBool);
  for (int64_t l = 0; l < layers; ++l)
    for (int64_t h = 0; h < heads; ++h) {
      CATCH_INFO("layer " << l << " head " << h);
      auto got = t.get("head_map/L" + std::to_string(l) + "H" + std::to_string(h));
      auto want = ref.probs[l].select(1, h);
      for (int64_t b = 0; b < got.size(0); ++b) {
        auto rows = valid[b].nonzero().squeeze(1);
        CATCH_CHECK(test::max_abs(got[b].index_select(0, rows), want[b].index_select(0, rows)) < 1e-5);
      }
    }
  // Instrumentation changed nothing numerically: entropy from the reference logits matches
  // on real tokens (eager and SDPA differ at padded positions, which no one reads).
  auto p = ref.logits.to(torch::kDouble).softmax(-1);
  auto h = -(p * p.log()).sum(-1);
  CATCH_CHECK(test::max_abs(t.entropy.masked_select(valid), h.masked_select(valid)) < 1e-4);
}

}  // namespace

CATCH_TEST_CASE("transformers LlamaForCausalLM (GQA), eager", "[hf]") { check_hf("hf_llama_eager", "softmax"); }
CATCH_TEST_CASE("transformers LlamaForCausalLM (GQA), sdpa", "[hf]") { check_hf("hf_llama_sdpa", "sdpa"); }
CATCH_TEST_CASE("transformers Qwen2ForCausalLM (GQA, qkv bias), eager", "[hf]") { check_hf("hf_qwen2_eager", "softmax"); }
CATCH_TEST_CASE("transformers Qwen2ForCausalLM (GQA, qkv bias), sdpa", "[hf]") { check_hf("hf_qwen2_sdpa", "sdpa"); }
CATCH_TEST_CASE("transformers GPT2LMHeadModel, eager", "[hf]") { check_hf("hf_gpt2_eager", "softmax"); }
CATCH_TEST_CASE("transformers GPT2LMHeadModel, sdpa", "[hf]") { check_hf("hf_gpt2_sdpa", "sdpa"); }
