// DatasetStats: running sums against per-sequence runs, padding, merge, save/load, errors.
#include "helpers.h"

#include <attnscope/dataset.h>

using attnscope::CaptureSpec;
using attnscope::DatasetParts;
using attnscope::DatasetStats;
using attnscope::Model;

namespace {
torch::Tensor ids_of(int64_t n, int64_t t, int64_t seed) {
  auto g = at::make_generator<at::CPUGeneratorImpl>(seed);
  return torch::randint(1, 64, {n, t}, g, torch::kLong);
}
}  // namespace

CATCH_TEST_CASE("dataset means equal the mean of per-sequence runs", "[dataset]") {
  auto model = Model::load(test::fixture("toy_hf_eager.pt"), "cpu");  // 3 layers, 4 heads
  DatasetParts parts;
  parts.head_maps = true;
  auto spec = attnscope::dataset_capture_spec(parts, 3, 4);
  auto ids = ids_of(5, 7, 1);
  DatasetStats d(parts);
  d.add(model.run(ids.narrow(0, 0, 2), spec));
  d.add(model.run(ids.narrow(0, 2, 3), spec));
  CATCH_CHECK(d.n_sequences() == 5);
  CATCH_CHECK(d.length() == 7);
  torch::Tensor map = torch::zeros({7, 7}), head = torch::zeros({7, 7}), alpha = torch::zeros({3, 4, 7});
  torch::Tensor hits = torch::zeros({3, 4});
  for (int64_t i = 0; i < 5; ++i) {
    auto t = model.run(ids.narrow(0, i, 1), spec);
    map += t.get("layer_map/L1")[0] / 5;
    head += t.get("head_map/L2H3")[0] / 5;
    alpha += t.get("received_mean").select(1, 0) / 5;
    hits += (t.get("received_mean").select(1, 0).select(2, 0) > 0.3).to(torch::kFloat) / 5;
  }
  CATCH_CHECK(test::max_abs(d.layer_map(1), map) < 1e-6);
  CATCH_CHECK(test::max_abs(d.layer_map(2, 3), head) < 1e-6);
  CATCH_CHECK(test::max_abs(d.alpha(), alpha) < 1e-6);
  CATCH_CHECK(test::max_abs(d.sink_rate(), hits) < 1e-6);
  CATCH_CHECK(std::abs(d.sink1() - hits.mean().item<double>()) < 1e-6);

  // merge = adding everything to one; save/load keeps the sums exactly
  DatasetStats a(parts), b(parts);
  a.add(model.run(ids.narrow(0, 0, 2), spec));
  b.add(model.run(ids.narrow(0, 2, 3), spec));
  a.merge(b);
  for (const auto& kv : d.state()) CATCH_CHECK(kv.second.allclose(a.state().at(kv.first), 1e-9, 1e-9));
  const std::string path = test::fixture("dataset_roundtrip.safetensors");
  a.save(path);
  auto c = DatasetStats::load(path);
  CATCH_CHECK(c.n_sequences() == 5);
  CATCH_CHECK(c.epsilon() == a.epsilon());
  for (const auto& kv : a.state()) CATCH_CHECK(kv.second.equal(c.state().at(kv.first)));
}

CATCH_TEST_CASE("dataset: right padding counts each cell over the sequences that have it", "[dataset]") {
  auto model = Model::load(test::fixture("toy_hf_eager.pt"), "cpu");
  DatasetParts parts;
  auto spec = attnscope::dataset_capture_spec(parts, 3, 4);
  auto ids = ids_of(2, 6, 2);
  auto mask = torch::ones({2, 6}, torch::kLong);
  mask[1].narrow(0, 4, 2).zero_();  // second sequence: 4 tokens
  DatasetStats d(parts);
  d.add(model.run(ids, spec, mask));
  auto a = model.run(ids.narrow(0, 0, 1), spec).get("layer_map/L0")[0];
  auto b = model.run(ids.narrow(0, 1, 1).narrow(1, 0, 4), spec).get("layer_map/L0")[0];
  auto ref = a.clone();
  ref.narrow(0, 0, 4).narrow(1, 0, 4).add_(b).div_(2);
  CATCH_CHECK(test::max_abs(d.layer_map(0), ref) < 1e-6);
  CATCH_CHECK(d.position_count().equal(torch::tensor({2.f, 2.f, 2.f, 2.f, 1.f, 1.f})));
}

CATCH_TEST_CASE("dataset errors name the bad value", "[dataset][errors]") {
  auto model = Model::load(test::fixture("toy_hf_eager.pt"), "cpu");
  DatasetParts parts;
  auto ids = ids_of(2, 5, 3);
  auto left = torch::ones({2, 5}, torch::kLong);
  left[1][0] = 0;
  DatasetStats d(parts);
  auto spec = attnscope::dataset_capture_spec(parts, 3, 4);
  CATCH_CHECK_THAT(test::error_of([&] { d.add(model.run(ids, spec, left)); }),
                   Catch::Contains("sequences must be right-padded"));
  CaptureSpec partial = spec;
  partial.layers = {0, 1};
  CATCH_CHECK_THAT(test::error_of([&] { d.add(model.run(ids, partial)); }),
                   Catch::Contains("aggregates of every layer 0..2"));
  CATCH_CHECK_THAT(test::error_of([&] { d.layer_map(0); }), Catch::Contains("the dataset is empty"));
  d.add(model.run(ids, spec));
  CATCH_CHECK_THAT(test::error_of([&] { d.layer_map(3); }), Catch::Contains("layer 3 out of range: the dataset has 3 layers"));
  CATCH_CHECK_THAT(test::error_of([&] { d.layer_map(0, 1); }), Catch::Contains("no head_maps"));
  CATCH_CHECK_THAT(test::error_of([] { DatasetStats(DatasetParts{}, 1.0); }),
                   Catch::Contains("epsilon 1 out of range: expected [0, 1)"));
  DatasetParts other;
  other.attn_entropy = false;
  DatasetStats e(other);
  e.add(model.run(ids, attnscope::dataset_capture_spec(other, 3, 4)));
  CATCH_CHECK_THAT(test::error_of([&] { d.merge(e); }),
                   Catch::Contains("parts differ (layer_maps,received,attn_entropy vs layer_maps,received)"));
}
