// Every bad input gets a clear error naming the bad value and what was expected.
#include "helpers.h"

#include <torch/cuda.h>

using attnscope::CaptureSpec;
using attnscope::Model;

namespace {
bool has(const std::string& msg, const std::string& part) {
  CATCH_INFO("message: " << msg);
  return msg.find(part) != std::string::npos;
}
}  // namespace

CATCH_TEST_CASE("missing file", "[errors]") {
  auto e = test::error_of([] { Model::load("/nonexistent/model.pt", "cpu"); });
  CATCH_CHECK(has(e, "model file not found: '/nonexistent/model.pt'"));
}

CATCH_TEST_CASE("a file that is not TorchScript", "[errors]") {
  auto e = test::error_of([] { Model::load(test::fixture("not_torchscript.pt"), "cpu"); });
  CATCH_CHECK(has(e, "not_torchscript.pt' is not a loadable TorchScript archive"));
}

CATCH_TEST_CASE("a TorchScript module with no attention", "[errors]") {
  auto e = test::error_of([] { Model::load(test::fixture("no_attention.pt"), "cpu"); });
  CATCH_CHECK(has(e, "no attention site found in forward: searched for aten::softmax"));
  CATCH_CHECK(has(e, "aten::scaled_dot_product_attention"));
}

CATCH_TEST_CASE("wrong forward signature", "[errors]") {
  auto e = test::error_of([] { Model::load(test::fixture("bad_signature.pt"), "cpu"); });
  CATCH_CHECK(has(e, "wrong forward signature forward(a, b, c)"));
  CATCH_CHECK(has(e, "forward(input_ids [B, T] int64)"));
}

CATCH_TEST_CASE("ids outside the vocabulary, negative ids, float ids", "[errors]") {
  auto model = Model::load(test::fixture("toy_hf_eager.pt"), "cpu");  // vocab_size 64 in metadata
  auto e = test::error_of([&] { model.run(torch::tensor({1, 2, 64, 3}, torch::kLong)); });
  CATCH_CHECK(has(e, "token id 64 at position 2 out of range: vocabulary has 64 entries"));
  e = test::error_of([&] { model.run(torch::tensor({1, -5}, torch::kLong)); });
  CATCH_CHECK(has(e, "token id -5 at position 1 is negative"));
  e = test::error_of([&] { model.run(torch::tensor({1.0, 2.0})); });
  CATCH_CHECK(has(e, "input_ids must be integer token ids, got dtype Float"));
  auto nometa = Model::load(test::fixture("toy_sdpa_causal.pt"), "cpu");  // vocab from logits
  e = test::error_of([&] { nometa.run(torch::tensor({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 64}, torch::kLong)); });
  CATCH_CHECK(has(e, "token id 64"));
}

CATCH_TEST_CASE("empty sequence", "[errors]") {
  auto model = Model::load(test::fixture("toy_hf_eager.pt"), "cpu");
  auto e = test::error_of([&] { model.run(torch::zeros({1, 0}, torch::kLong)); });
  CATCH_CHECK(has(e, "empty sequence: input_ids has shape [1, 0]"));
}

CATCH_TEST_CASE("layer/head out of range, before and after the run", "[errors]") {
  auto ref = test::load_ref("toy_gpt2");
  auto meta = Model::load(test::fixture("toy_hf_eager.pt"), "cpu");  // 3 layers, 4 heads known
  CaptureSpec s;
  s.heads = {{3, 0}};
  auto e = test::error_of([&] { meta.run(ref.ids, s); });
  CATCH_CHECK(has(e, "layer 3 out of range: model has 3 layers (0..2)"));
  s.heads = {{0, 4}};
  e = test::error_of([&] { meta.run(ref.ids, s); });
  CATCH_CHECK(has(e, "head 4 out of range: model has 4 heads (0..3)"));
  auto nometa = Model::load(test::fixture("toy_gpt2.pt"), "cpu");  // heads from the dry run at load
  s.heads = {{1, 9}};
  e = test::error_of([&] { nometa.run(ref.ids, s, ref.mask); });
  CATCH_CHECK(has(e, "head 9 out of range: model has 4 heads (0..3)"));
  CaptureSpec f;
  f.from_tokens = {12};
  e = test::error_of([&] { meta.run(ref.ids, f); });
  CATCH_CHECK(has(e, "token_idx 12 out of range for a sequence of 12 tokens (valid: -12..11)"));
  CaptureSpec m;
  m.layer_maps = {-1};
  e = test::error_of([&] { meta.run(ref.ids, m); });
  CATCH_CHECK(has(e, "layer -1 out of range"));
}

CATCH_TEST_CASE("bad attention_mask", "[errors]") {
  auto ref = test::load_ref("toy_hf_eager");
  auto model = Model::load(test::fixture("toy_hf_eager.pt"), "cpu");
  auto e = test::error_of([&] { model.run(ref.ids, {}, torch::ones({2, 5}, torch::kLong)); });
  CATCH_CHECK(has(e, "attention_mask shape [2, 5] does not match input_ids [2, 12]"));
  auto zero = ref.mask.clone();
  zero[1].zero_();
  e = test::error_of([&] { model.run(ref.ids, {}, zero); });
  CATCH_CHECK(has(e, "attention_mask has a row with no tokens"));
  auto ids_only = Model::load(test::fixture("toy_sdpa_causal.pt"), "cpu");
  e = test::error_of([&] { ids_only.run(ref.ids, {}, ref.mask); });
  CATCH_CHECK(has(e, "the model's forward takes no attention_mask argument"));
}

CATCH_TEST_CASE("devices", "[errors]") {
  auto e = test::error_of([] { Model::load(test::fixture("toy_hf_eager.pt"), "tpu"); });
  CATCH_CHECK(has(e, "unknown device 'tpu': expected 'cpu', 'cuda', 'cuda:N' or 'auto'"));
  if (!torch::cuda::is_available()) {
    e = test::error_of([] { Model::load(test::fixture("toy_hf_eager.pt"), "cuda"); });
    CATCH_CHECK(has(e, "device 'cuda' requested but CUDA is not available"));
    auto m = Model::load(test::fixture("toy_hf_eager.pt"), "auto");
    CATCH_CHECK(m.device().is_cpu());
  }
}

CATCH_TEST_CASE("NaN logits: entropy NaN there, finite elsewhere, no crash", "[errors]") {
  auto model = Model::load(test::fixture("nan_logits.pt"), "cpu");
  auto t = model.run(torch::tensor({1, 2, 3, 4}, torch::kLong), CaptureSpec::all_aggregates());
  CATCH_CHECK(std::isnan(t.entropy[0][1].item<float>()));
  CATCH_CHECK(std::isfinite(t.entropy[0][0].item<float>()));
  CATCH_CHECK(std::isfinite(t.entropy[0][3].item<float>()));
}

CATCH_TEST_CASE("asking a trace for something it did not capture", "[errors]") {
  auto model = Model::load(test::fixture("toy_hf_eager.pt"), "cpu");
  auto t = model.run(torch::tensor({1, 2, 3}, torch::kLong), CaptureSpec::all_aggregates());
  auto e = test::error_of([&] { t.get("head_map/L0H0"); });
  CATCH_CHECK(has(e, "trace has no capture named 'head_map/L0H0'"));
  CATCH_CHECK(has(e, "received_mean"));
}

CATCH_TEST_CASE("trace file errors", "[errors]") {
  auto e = test::error_of([] { attnscope::Trace::load("/nonexistent.trace"); });
  CATCH_CHECK(has(e, "trace file not found: '/nonexistent.trace'"));
  e = test::error_of([] { attnscope::Trace::load(test::fixture("not_torchscript.pt")); });
  CATCH_CHECK(has(e, "not_torchscript.pt' is not an attnscope trace"));
}
