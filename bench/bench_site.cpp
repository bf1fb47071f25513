// One attention site, measured alone: aten SDPA (the plain forward's attention) against
// attnscope::sdpa with a recorder capturing every aggregate, one head's map, or the head-mean
// map. The layer's projections and MLP are left out, so these ratios are what the capture costs
// at the site itself (the model-level ratios of bench_capture are diluted by the rest of the
// forward). The last two columns run every aggregate through the GPU's block route in ATen ops
// on the CPU (ATTNSCOPE_SDPA_ROUTE=blocks: the flash kernel's log-sum-exp; =softmax: a softmax
// per block): what the log-sum-exp saves over a softmax with the same ATen ops. Prints one
// table, minima of interleaved repetitions; asserts nothing.
//
// usage: bench_site [T ...]   env: HEADS (8), KV_HEADS (=HEADS), DIM (64); default T = 512 2048 4096;
//        PROFILE=0..5 runs only that variant 20 times (0 aten SDPA, 1 every aggregate, 2 one head,
//        3 head mean, 4 / 5 every aggregate on the block route with lse / softmax), for perf
#include <attnscope/capture_ops.h>
#include <attnscope/recorder.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

namespace {

int64_t env_int(const char* name, int64_t dflt) {
  const char* v = std::getenv(name);
  return v && *v ? std::stoll(v) : dflt;
}

double ms(const std::function<void()>& fn) {
  auto a = std::chrono::steady_clock::now();
  fn();
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - a).count();
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int64_t> lengths;
  for (int i = 1; i < argc; ++i) lengths.push_back(std::stoll(argv[i]));
  if (lengths.empty()) lengths = {512, 2048, 4096};
  const int64_t H = env_int("HEADS", 8), Hkv = env_int("KV_HEADS", H), D = env_int("DIM", 64);
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  torch::NoGradGuard no_grad;
  torch::manual_seed(0);

  attnscope::CaptureSpec all = attnscope::CaptureSpec::all_aggregates();
  all.top_k = 0;
  attnscope::CaptureSpec one_head;
  one_head.heads = {{0, 0}};
  attnscope::CaptureSpec mean_map;
  mean_map.layer_maps = {0};

  std::printf("one causal SDPA site: %lld query heads, %lld KV heads, head dim %lld, batch 1, %d threads\n",
              (long long)H, (long long)Hkv, (long long)D, torch::get_num_threads());
  std::printf("| T | aten SDPA | every aggregate | one head's map | head-mean map | every aggregate, "
              "block route (lse) | every aggregate, block route (softmax) |\n|---|---|---|---|---|---|---|\n");
  for (int64_t T : lengths) {
    // Laid out as models make them: [B, T, H, D] memory viewed as [B, H, T, D].
    auto q = torch::randn({1, T, H, D}).transpose(1, 2);
    auto k = torch::randn({1, T, Hkv, D}).transpose(1, 2);
    auto v = torch::randn({1, T, Hkv, D}).transpose(1, 2);
    attnscope::RunContext ctx;
    ctx.valid = torch::ones({1, T}, torch::kBool);
    // Ids from a small vocabulary, so most queries have earlier copies, as in natural text (the
    // row statistics compare ids only for those; unrepeated ids would flatter them).
    ctx.ids = torch::randint(0, 512, {1, T}, torch::kLong);
    auto plain = [&] { at::scaled_dot_product_attention(q, k, v, {}, 0.0, true, {}, Hkv != H); };
    auto captured = [&](const attnscope::CaptureSpec& spec) {
      return [&, spec] {
        attnscope::Recorder rec(spec, ctx, /*layer_from_order=*/false);
        attnscope::RecorderScope scope(&rec);
        attnscope::sdpa(q, k, v, {}, 0.0, true, {}, Hkv != H, 0);
        rec.finish();
      };
    };
    auto routed = [&](const char* route) {
      return [&, route] {
        setenv("ATTNSCOPE_SDPA_ROUTE", route, 1);
        captured(all)();
        unsetenv("ATTNSCOPE_SDPA_ROUTE");
      };
    };
    std::vector<std::function<void()>> fns{plain, captured(all), captured(one_head), captured(mean_map),
                                           routed("blocks"), routed("softmax")};
    if (std::getenv("PROFILE")) {
      for (int r = 0; r < 20; ++r) fns.at(env_int("PROFILE", 0))();
      continue;
    }
    for (auto& f : fns) f();  // warm up
    const int reps = T <= 512 ? 40 : T <= 2048 ? 10 : 5;
    std::vector<double> best(fns.size(), 1e18);
    for (int r = 0; r < reps; ++r)
      for (size_t i = 0; i < fns.size(); ++i) best[i] = std::min(best[i], ms(fns[i]));
    std::printf("| %lld | %.2f ms |", (long long)T, best[0]);
    for (size_t i = 1; i < fns.size(); ++i) std::printf(" %.2f ms = **%.2fx** |", best[i], best[i] / best[0]);
    std::printf("\n");
  }
  return 0;
}
