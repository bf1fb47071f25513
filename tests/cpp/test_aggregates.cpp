// Aggregates against formulas written out with loops in double precision on the reference
// probabilities (a padded batch of 2), and invariance to the chunk size.
#include "helpers.h"

#include <attnscope/aggregates.h>
#include <attnscope/entropy.h>

#include <cmath>

using attnscope::CaptureSpec;
using attnscope::Model;

namespace {

struct Expected {
  torch::Tensor recv_mean, recv_max, entropy, sink_rows, sink_mean;
};

// Reference aggregates of one layer: P [B, H, T, T], valid [B, T].
Expected expected(const torch::Tensor& P_, const torch::Tensor& valid_, int64_t sink_k) {
  auto P = P_.to(torch::kDouble).contiguous();
  auto valid = valid_.to(torch::kBool);
  const int64_t B = P.size(0), H = P.size(1), T = P.size(2);
  const double nan = std::nan("");
  Expected e;
  e.recv_mean = torch::full({B, H, T}, nan, torch::kDouble);
  e.recv_max = torch::full({B, H, T}, nan, torch::kDouble);
  e.entropy = torch::full({B, H, T}, nan, torch::kDouble);
  e.sink_rows = torch::full({B, H, T}, nan, torch::kDouble);
  e.sink_mean = torch::zeros({B, H}, torch::kDouble);
  auto p = P.accessor<double, 4>();
  auto v = valid.accessor<bool, 2>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      int64_t nq = 0;
      double sink_sum = 0;
      for (int64_t i = 0; i < T; ++i) {
        if (!v[b][i]) continue;
        double ent = 0, sink = 0;
        int64_t real = 0;  // sink keys: the first sink_k real tokens of the row
        for (int64_t j = 0; j < T; ++j) {
          if (p[b][h][i][j] > 0) ent -= p[b][h][i][j] * std::log(p[b][h][i][j]);
          if (v[b][j] && real++ < sink_k) sink += p[b][h][i][j];
        }
        e.entropy[b][h][i] = ent;
        e.sink_rows[b][h][i] = sink;
        sink_sum += sink;
        ++nq;
      }
      e.sink_mean[b][h] = sink_sum / nq;
      for (int64_t j = 0; j < T; ++j) {
        if (!v[b][j]) continue;
        double sum = 0, mx = 0;
        int64_t n = 0;
        for (int64_t i = j; i < T; ++i)  // causal: queries at or after j see key j
          if (v[b][i]) {
            sum += p[b][h][i][j];
            mx = std::max(mx, p[b][h][i][j]);
            ++n;
          }
        e.recv_mean[b][h][j] = sum / n;
        e.recv_max[b][h][j] = mx;
      }
    }
  return e;
}

bool close_nan(const torch::Tensor& a, const torch::Tensor& b, double tol) {
  auto x = a.to(torch::kDouble), y = b.to(torch::kDouble);
  if (!x.isnan().equal(y.isnan())) return false;
  return (x.nan_to_num(0) - y.nan_to_num(0)).abs().max().item<double>() < tol;
}

void check_aggregates(const std::string& name, int64_t chunk_elements) {
  CATCH_INFO("fixture " << name << ", chunk_elements " << chunk_elements);
  auto ref = test::load_ref(name);
  auto model = Model::load(test::fixture(name + ".pt"), "cpu");
  CaptureSpec spec = CaptureSpec::all_aggregates();
  spec.sink_tokens = 2;
  spec.from_tokens = {-1, 4};
  spec.layers = {2, 0};  // order kept in the stacked result
  spec.layer_maps = {1};
  spec.chunk_elements = chunk_elements;
  auto t = model.run(ref.ids, spec, ref.mask);
  CATCH_CHECK(t.get("aggregate_layers").equal(torch::tensor({2, 0}, torch::kLong)));
  for (int64_t k = 0; k < 2; ++k) {
    const int64_t l = spec.layers[k];
    CATCH_INFO("layer " << l);
    auto e = expected(ref.probs[l], ref.mask, 2);
    CATCH_CHECK(close_nan(t.get("received_mean")[k], e.recv_mean, 1e-6));
    CATCH_CHECK(close_nan(t.get("received_max")[k], e.recv_max, 1e-6));
    CATCH_CHECK(close_nan(t.get("attn_entropy")[k], e.entropy, 1e-5));
    CATCH_CHECK(close_nan(t.get("sink_mass_rows")[k], e.sink_rows, 1e-6));
    CATCH_CHECK(close_nan(t.get("sink_mass")[k], e.sink_mean, 1e-6));
    auto from = t.get("from")[k];  // [B, H, 2, T]
    CATCH_CHECK(test::max_abs(from.select(2, 0), ref.probs[l].select(2, -1)) < 1e-6);
    CATCH_CHECK(test::max_abs(from.select(2, 1), ref.probs[l].select(2, 4)) < 1e-6);
  }
  // Rows of padded queries are NaN in maps; the rest is the head mean.
  auto row_ok = ref.mask.to(torch::kBool).unsqueeze(2).expand({-1, -1, ref.mask.size(1)});
  auto want = torch::where(row_ok, ref.probs[1].mean(1), std::nan(""));
  CATCH_CHECK(close_nan(t.get("layer_map/L1"), want, 1e-6));
}

}  // namespace

CATCH_TEST_CASE("aggregates equal independent formulas, padded batch (softmax site)", "[aggregates]") {
  check_aggregates("toy_hf_eager", int64_t(1) << 24);
  check_aggregates("toy_hf_eager", 7);  // one query row per block
}

CATCH_TEST_CASE("aggregates equal independent formulas, padded batch (SDPA recompute)", "[aggregates]") {
  check_aggregates("toy_sdpa_mask", int64_t(1) << 24);
  check_aggregates("toy_sdpa_mask", 100);  // 2 rows per block of [2, 4, rows, 12]
}

CATCH_TEST_CASE("padded positions: NaN where undefined, excluded from means", "[aggregates]") {
  auto ref = test::load_ref("toy_hf_eager");
  auto model = Model::load(test::fixture("toy_hf_eager.pt"), "cpu");
  auto t = model.run(ref.ids, CaptureSpec::all_aggregates(), ref.mask);
  auto rm = t.get("received_mean");  // [L, B, H, T]; row 1 has 3 left-padded positions
  CATCH_CHECK(rm.select(1, 1).narrow(2, 0, 3).isnan().all().item<bool>());
  CATCH_CHECK_FALSE(rm.select(1, 1).narrow(2, 3, 9).isnan().any().item<bool>());
  CATCH_CHECK_FALSE(rm.select(1, 0).isnan().any().item<bool>());
  CATCH_CHECK(t.get("attn_entropy").select(1, 1).narrow(2, 0, 3).isnan().all().item<bool>());
}

CATCH_TEST_CASE("received_count: the real queries that can see each key (causal, padded)", "[aggregates]") {
  for (const char* name : {"toy_hf_eager", "toy_sdpa_mask"}) {
    CATCH_INFO("fixture " << name);
    auto ref = test::load_ref(name);
    auto model = Model::load(test::fixture(std::string(name) + ".pt"), "cpu");
    auto t = model.run(ref.ids, CaptureSpec::all_aggregates(), ref.mask);
    auto v = ref.mask.to(torch::kBool);  // [B, T]; causal: real queries i >= j see real key j
    const int64_t B = v.size(0), T = v.size(1);
    auto want = torch::zeros({B, T});
    for (int64_t b = 0; b < B; ++b)
      for (int64_t j = 0; j < T; ++j)
        for (int64_t i = j; i < T; ++i)
          if (v[b][i].item<bool>() && v[b][j].item<bool>()) want[b][j] += 1;
    auto got = t.get("received_count");  // [L, B, H, T]
    for (int64_t l = 0; l < got.size(0); ++l)
      for (int64_t h = 0; h < got.size(2); ++h)
        CATCH_CHECK(got[l].select(1, h).equal(want));
  }
}

CATCH_TEST_CASE("predictive entropy and top-k equal the formulas on the reference logits", "[entropy]") {
  auto ref = test::load_ref("toy_gpt2");
  auto model = Model::load(test::fixture("toy_gpt2.pt"), "cpu");
  for (double temp : {1.0, 2.5}) {
    CATCH_INFO("temperature " << temp);
    CaptureSpec spec;
    spec.top_k = 3;
    spec.temperature = temp;
    auto t = model.run(ref.ids, spec, ref.mask);
    auto z = ref.logits.to(torch::kDouble) / temp;
    auto p = z.softmax(-1);
    auto h = -(p * p.log()).sum(-1);
    CATCH_CHECK(test::max_abs_rows(t.entropy, h, ref.mask) < 1e-5);  // NaN at padding
    auto top = p.topk(3, -1);
    CATCH_CHECK(t.topk_ids.equal(std::get<1>(top)));
    CATCH_CHECK(test::max_abs_rows(t.topk_probs, std::get<0>(top), ref.mask) < 1e-6);
  }
  // The caller's fp32 logits are read, never written (the blocks are views of them).
  {
    auto g0 = at::make_generator<at::CPUGeneratorImpl>(5);
    auto x = torch::randn({1, 4, 30}, g0), before = x.clone();
    attnscope::predictive_stats(x, true, 3, 1.0);
    CATCH_CHECK(x.equal(before));
  }
  // Uniform logits: entropy log V.
  auto u = attnscope::predictive_entropy(torch::zeros({1, 2, 10}));
  CATCH_CHECK(test::max_abs(u, torch::full({1, 2}, std::log(10.0))) < 1e-6);
  // bf16 logits over many position blocks (2 x 2000 per position: 65 positions per block).
  auto g = at::make_generator<at::CPUGeneratorImpl>(11);
  auto big = (torch::randn({2, 300, 2000}, g) * 4).to(torch::kBFloat16);
  auto zb = big.to(torch::kDouble);
  auto pb = zb.softmax(-1);
  CATCH_CHECK(test::max_abs(attnscope::predictive_entropy(big), -(pb * pb.log()).sum(-1)) < 1e-5);
  auto tb = attnscope::top_k_predictions(big, 4, 1.0);
  CATCH_CHECK(test::max_abs(tb.first, std::get<0>(pb.topk(4, -1))) < 1e-6);
  CATCH_CHECK(tb.first.scalar_type() == torch::kFloat);
  // A large vocabulary (2^17 near-uniform logits, entropy ~11.8 nats): the row sums, fp32 chunks
  // added in double, keep the entropy within 1e-5 of float64.
  {
    auto gl = at::make_generator<at::CPUGeneratorImpl>(13);
    auto zl = torch::randn({1, 3, 131072}, gl) * 0.1;
    auto pl = zl.to(torch::kDouble).softmax(-1);
    CATCH_CHECK(test::max_abs(attnscope::predictive_entropy(zl), -(pl * pl.log()).sum(-1)) < 1e-5);
  }
  // One pass for both (what Model::run uses): the same numbers, against float64 references,
  // at a temperature, with -inf logits in some rows; either part can be left out.
  auto zt = big.to(torch::kFloat).clone();
  zt.index_put_({0, torch::indexing::Slice(0, 5), torch::indexing::Slice(0, 100)}, -INFINITY);
  auto pt = (zt.to(torch::kDouble) / 0.7).softmax(-1);
  auto both = attnscope::predictive_stats(zt, true, 5, 0.7);
  auto href = -(pt * pt.clamp_min(1e-300).log()).sum(-1);
  CATCH_CHECK(test::max_abs(both.entropy, href) < 1e-5);
  CATCH_CHECK(test::max_abs(both.probs, std::get<0>(pt.topk(5, -1))) < 1e-6);
  // bf16 logits tie often: the ids are a top-k (their logits are the k largest), ties by lower id.
  auto got_vals = zt.gather(-1, both.ids);
  CATCH_CHECK(got_vals.equal(std::get<0>(zt.topk(5, -1))));
  auto same = got_vals.narrow(-1, 1, 4).eq(got_vals.narrow(-1, 0, 4));
  CATCH_CHECK(torch::where(same, both.ids.narrow(-1, 1, 4).gt(both.ids.narrow(-1, 0, 4)), true).all().item<bool>());
  auto only_k = attnscope::predictive_stats(zt, false, 3, 0.7);
  CATCH_CHECK((!only_k.entropy.defined() && only_k.probs.size(2) == 3));
  auto only_h = attnscope::predictive_stats(zt, true, 0, 0.7);
  CATCH_CHECK((!only_h.probs.defined() && test::max_abs(only_h.entropy, href) < 1e-5));
}
