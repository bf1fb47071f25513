// Capture overhead on CPU, measured in one run: plain forward vs forward with every aggregate
// for all layers vs forward with one head's full map vs every layer's head-mean map, and the
// peak memory each adds above the RSS before the run.
//
// usage: bench_capture MODEL.pt [T ...]     (default T = 512 2048)
//        PROFILE=0..6 runs only that column 8 times (0 plain, 1 every aggregate + row statistics,
//        2 without row statistics, 3 one head, 4 head-mean maps, 5 nothing, 6 plain in a block
//        cache scope), for perf
//
// Model::run reuses freed large blocks during the forward (block_cache.h); the last column runs
// the plain forward the same way, so the allocator's share of a ratio can be told from the
// capture's: the capture's own cost is a ratio divided by that column's.
#include <attnscope/block_cache.h>
#include <attnscope/model.h>

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <thread>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iostream>
#include <string>
#include <vector>

namespace {

double rss_mib() {
  std::ifstream f("/proc/self/statm");
  long pages = 0, resident = 0;
  f >> pages >> resident;
  return resident * double(sysconf(_SC_PAGESIZE)) / (1 << 20);
}

struct Time {
  double wall_ms, cpu_ms;  // wall clock; CPU time of the whole process (all threads)
};

double cpu_now_ms() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

Time timed(const std::function<void()>& fn) {
  auto a = std::chrono::steady_clock::now();
  double c = cpu_now_ms();
  fn();
  return {std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - a).count(),
          cpu_now_ms() - c};
}

// Peak RSS growth (MiB) while fn runs, sampled every 0.2 ms by a watcher thread (fork is
// not an option: OpenMP worker pools do not survive it). Large tensors are mmapped and
// returned to the OS when freed, so RSS follows live memory.
double peak_mib(const std::function<void()>& fn) {
  const double before = rss_mib();
  std::atomic<bool> done{false};
  double peak = before;
  std::thread watcher([&] {
    while (!done.load()) {
      peak = std::max(peak, rss_mib());
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  });
  fn();
  done = true;
  watcher.join();
  return std::max(peak, rss_mib()) - before;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: bench_capture MODEL.pt [T ...]\n";
    return 2;
  }
  std::vector<int64_t> lengths;
  for (int i = 2; i < argc; ++i) lengths.push_back(std::stoll(argv[i]));
  if (lengths.empty()) lengths = {512, 2048};
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  torch::NoGradGuard no_grad;
  auto plain = torch::jit::load(argv[1], torch::kCPU);
  plain.eval();
  auto model = attnscope::Model::load(argv[1], "cpu");
  const int64_t L = model.info().n_layers;

  attnscope::CaptureSpec none;
  none.top_k = 0;
  attnscope::CaptureSpec all = attnscope::CaptureSpec::all_aggregates();  // received, entropy, sink, row stats
  all.top_k = 0;
  attnscope::CaptureSpec no_rows = all;  // the same without row statistics: their own cost, in this run
  no_rows.row_stats = false;
  attnscope::CaptureSpec one_head;
  one_head.heads = {{L / 2, 0}};
  one_head.top_k = 0;
  attnscope::CaptureSpec maps;
  for (int64_t l = 0; l < L; ++l) maps.layer_maps.push_back(l);
  maps.top_k = 0;

  std::printf("model %s: %lld attention layers, %d threads\n", argv[1], (long long)L,
              torch::get_num_threads());
  std::printf("| T | plain forward | every aggregate + row statistics, all layers | every aggregate, no row "
              "statistics | one head's full map | head-mean map of every layer | run with nothing captured | plain "
              "forward, block cache |\n");
  std::printf("|---|---|---|---|---|---|---|---|\n");
  for (int64_t T : lengths) {
    auto ids = torch::randint(0, std::max<int64_t>(2, model.info().vocab_size), {1, T}, torch::kLong);
    // Models whose forward takes (input_ids, attention_mask), like attnscope's Llama-family
    // archives, get an all-ones mask.
    const bool takes_mask = plain.get_method("forward").function().getSchema().arguments().size() >= 3;
    auto ones = torch::ones_like(ids);
    auto f_plain = [&] { takes_mask ? plain.forward({ids, ones}) : plain.forward({ids}); };
    auto f_none = [&] { model.run(ids, none); };
    auto f_all = [&] { model.run(ids, all); };
    auto f_no_rows = [&] { model.run(ids, no_rows); };
    auto f_one = [&] { model.run(ids, one_head); };
    auto f_maps = [&] { model.run(ids, maps); };
    auto f_plain_cached = [&] {
      attnscope::BlockCacheScope blocks;
      f_plain();
    };
    f_plain(); f_all();  // warm up (graph executor profiling runs)
    std::vector<std::function<void()>> fns{f_plain, f_all, f_no_rows, f_one, f_maps, f_none, f_plain_cached};
    if (const char* p = std::getenv("PROFILE")) {  // one variant only, for perf
      for (int r = 0; r < 8; ++r) {
        rusage u0, u1;
        getrusage(RUSAGE_SELF, &u0);
        const Time t = timed(fns.at(std::stoi(p)));
        getrusage(RUSAGE_SELF, &u1);
        std::printf("%.1f ms wall, %ld minor faults\n", t.wall_ms, u1.ru_minflt - u0.ru_minflt);
      }
      continue;
    }
    f_plain(); f_all(); f_no_rows(); f_one(); f_none(); f_maps(); f_plain_cached();
    const int reps = T <= 512 ? 40 : T <= 2048 ? 8 : 3;
    // Interleaved repetitions, minimum of each: noise from other tenants only ever adds time.
    // CPU time is reported too: it does not count time the process waited for a core.
    std::vector<Time> best(fns.size(), Time{1e18, 1e18});
    for (int r = 0; r < reps; ++r)
      for (size_t i = 0; i < fns.size(); ++i) {
        Time t = timed(fns[i]);
        best[i].wall_ms = std::min(best[i].wall_ms, t.wall_ms);
        best[i].cpu_ms = std::min(best[i].cpu_ms, t.cpu_ms);
      }
    auto cell = [&](size_t i) {
      static char buf[128];
      std::snprintf(buf, sizeof buf, "%.1f ms = **%.3fx** wall, %.3fx CPU", best[i].wall_ms,
                    best[i].wall_ms / best[0].wall_ms, best[i].cpu_ms / best[0].cpu_ms);
      return std::string(buf);
    };
    std::printf("| %lld | %.1f ms wall, %.1f ms CPU | %s | %s | %s | %s | %s | %s |\n", (long long)T,
                best[0].wall_ms, best[0].cpu_ms, cell(1).c_str(), cell(2).c_str(), cell(3).c_str(),
                cell(4).c_str(), cell(5).c_str(), cell(6).c_str());
    auto kept = [&](const attnscope::CaptureSpec& sp) {
      double b = 0;
      for (const auto& kv : model.run(ids, sp).captures) b += kv.second.nbytes();
      return b / (1 << 20);
    };
    std::printf("| MiB kept in the trace, T=%lld | - | %.2f | %.2f | %.2f | %.2f | %.2f | - |\n", (long long)T,
                kept(all), kept(no_rows), kept(one_head), kept(maps), kept(none));
    std::printf("| peak MiB above baseline, T=%lld | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f |\n",
                (long long)T, peak_mib(f_plain), peak_mib(f_all), peak_mib(f_no_rows), peak_mib(f_one),
                peak_mib(f_maps), peak_mib(f_none), peak_mib(f_plain_cached));
  }
  return 0;
}
