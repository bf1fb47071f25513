// attnscope-cli: run a TorchScript LM on token ids with attention capture, write a trace file.
// Text is tokenised on the Python side; this tool takes ids.
#include <attnscope/archive.h>
#include <attnscope/model.h>

#include <charconv>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace {

const char* kHelp = R"(usage: attnscope-cli --model PATH (--ids 1,2,3 | --ids-file FILE) [options]

Runs a TorchScript causal LM with attention capture and writes an attnscope trace
(safetensors: Python reads it with the safetensors package alone).

input
  --model PATH         TorchScript archive (torch.jit.save); capture operators are inserted
                       automatically when the archive has none
  --ids LIST           comma-separated token ids of one sequence
  --ids-file FILE      one sequence per line, ids separated by spaces or commas; shorter
                       lines are left-padded with --pad-id (a batch)
  --pad-id N           padding id for --ids-file batches (default 0)
  --device DEV         cpu | cuda | cuda:N | auto (default auto)

what to capture (default: --all)
  --all                every aggregate for every layer: received mean/max, attention entropy,
                       sink mass (first token), row statistics
  --heads L:H,...      full maps of these (layer, head) pairs
  --layer-maps L,...   head-mean map of these layers (--layer-map-head H: one head instead)
  --layers L,...       restrict the aggregates below to these layers
  --received           attention received per key position (mean and max)
  --attn-entropy       entropy of each attention row
  --sink K             attention mass on the first K tokens
  --from P,...         attention rows FROM these query positions (negative = from the end)
  --top-k K            top-k next-token predictions (default 5)
  --temperature T      softmax temperature for entropy and top-k (default 1)
  --chunk-elements N   max elements of one recomputed attention block on CUDA (default 67108864;
                       the CPU uses blocks of at most 262144)

output
  --out FILE           trace file to write (default: no file, summary only)
  --describe           print the model summary before running
  --help               this text
)";

// Values parsed whole with std::from_chars (no locale, no silent prefix): "--top-k x" says
// which flag and what it got instead of std::stoll's bare "stoll".
int64_t parse_int(const std::string& s, const std::string& flag) {
  int64_t v = 0;
  auto r = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || r.ec != std::errc() || r.ptr != s.data() + s.size())
    throw std::invalid_argument(flag + ": '" + s + "' is not an integer");
  return v;
}

double parse_number(const std::string& s, const std::string& flag) {
  double v = 0;
  auto r = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || r.ec != std::errc() || r.ptr != s.data() + s.size() || !std::isfinite(v))
    throw std::invalid_argument(flag + ": '" + s + "' is not a finite number");
  return v;
}

std::vector<int64_t> parse_ints(const std::string& s, const std::string& flag) {
  std::vector<int64_t> out;
  std::string tok;
  std::stringstream ss(s);
  while (std::getline(ss, tok, ',')) {
    if (tok.empty()) continue;
    out.push_back(parse_int(tok, flag));
  }
  return out;
}

std::vector<std::vector<int64_t>> read_ids_file(const std::string& path) {
  std::ifstream f(path);
  if (!f) throw std::invalid_argument("--ids-file: cannot open '" + path + "'");
  std::vector<std::vector<int64_t>> rows;
  std::string line;
  while (std::getline(f, line)) {
    for (char& c : line) if (c == ' ' || c == '\t') c = ',';
    auto r = parse_ints(line, "--ids-file");
    if (!r.empty()) rows.push_back(r);
  }
  return rows;
}

struct Args {
  std::string model_path, out_path, device = "auto", ids_file;
  std::vector<int64_t> ids;
  int64_t pad_id = 0;
  bool help = false, describe = false;
  attnscope::CaptureSpec spec;
};

void parse_heads(const std::string& text, attnscope::CaptureSpec& spec) {
  std::stringstream ss(text);
  std::string pair;
  while (std::getline(ss, pair, ',')) {
    auto c = pair.find(':');
    if (c == std::string::npos) throw std::invalid_argument("--heads: '" + pair + "' is not LAYER:HEAD");
    spec.heads.emplace_back(parse_int(pair.substr(0, c), "--heads layer"),
                            parse_int(pair.substr(c + 1), "--heads head"));
  }
}

// The options; throws std::invalid_argument naming the option and what it expected.
Args parse_args(const std::vector<std::string>& a) {
  Args r;
  auto& spec = r.spec;
  bool any_capture = false, all = false;
  for (size_t i = 0; i < a.size(); ++i) {
    auto next = [&]() -> std::string {
      if (i + 1 >= a.size()) throw std::invalid_argument(a[i] + " needs a value");
      return a[++i];
    };
    const std::string& f = a[i];
    if (f == "--help" || f == "-h") {
      r.help = true;
      return r;
    } else if (f == "--model")
      r.model_path = next();
    else if (f == "--ids")
      r.ids = parse_ints(next(), "--ids");
    else if (f == "--ids-file")
      r.ids_file = next();
    else if (f == "--pad-id")
      r.pad_id = parse_int(next(), f);
    else if (f == "--device")
      r.device = next();
    else if (f == "--out")
      r.out_path = next();
    else if (f == "--describe")
      r.describe = true;
    else if (f == "--all")
      all = any_capture = true;
    else if (f == "--heads") {
      parse_heads(next(), spec);
      any_capture = true;
    } else if (f == "--layer-maps") {
      spec.layer_maps = parse_ints(next(), f);
      any_capture = true;
    } else if (f == "--layer-map-head")
      spec.layer_map_head = parse_int(next(), f);
    else if (f == "--layers")
      spec.layers = parse_ints(next(), f);
    else if (f == "--received") {
      spec.received = true;
      any_capture = true;
    } else if (f == "--attn-entropy") {
      spec.attn_entropy = true;
      any_capture = true;
    } else if (f == "--sink") {
      spec.sink_tokens = parse_int(next(), f);
      any_capture = true;
    } else if (f == "--from") {
      spec.from_tokens = parse_ints(next(), f);
      any_capture = true;
    } else if (f == "--top-k")
      spec.top_k = parse_int(next(), f);
    else if (f == "--temperature")
      spec.temperature = parse_number(next(), f);
    else if (f == "--chunk-elements")
      spec.chunk_elements = parse_int(next(), f);
    else
      throw std::invalid_argument("unknown option '" + f + "' (see --help)");
  }
  if (r.model_path.empty()) throw std::invalid_argument("--model is required (see --help)");
  if (r.ids.empty() == r.ids_file.empty())
    throw std::invalid_argument("give exactly one of --ids or --ids-file (see --help)");
  if (all || !any_capture) {  // every aggregate (CaptureSpec::all_aggregates), with the options given
    const auto every = attnscope::CaptureSpec::all_aggregates();
    spec.received = every.received, spec.attn_entropy = every.attn_entropy, spec.row_stats = every.row_stats;
    if (spec.sink_tokens == 0) spec.sink_tokens = every.sink_tokens;
  }
  return r;
}

// ids [1, T] from --ids, or the rows of --ids-file left-padded with --pad-id (mask [B, T]).
torch::Tensor input_of(const Args& r, torch::Tensor& mask) {
  if (!r.ids.empty()) return torch::tensor(r.ids, torch::kLong).unsqueeze(0);
  auto rows = read_ids_file(r.ids_file);
  if (rows.empty()) throw std::invalid_argument("--ids-file: '" + r.ids_file + "' has no ids");
  size_t len = 0;
  for (auto& row : rows) len = std::max(len, row.size());
  auto input = torch::full({(int64_t)rows.size(), (int64_t)len}, r.pad_id, torch::kLong);
  mask = torch::zeros_like(input);
  for (size_t b = 0; b < rows.size(); ++b) {
    size_t off = len - rows[b].size();  // left padding, as decoder LMs expect
    for (size_t j = 0; j < rows[b].size(); ++j) {
      input[b][off + j] = rows[b][j];
      mask[b][off + j] = 1;
    }
  }
  return input;
}

void report(const attnscope::Trace& trace, const attnscope::CaptureSpec& spec) {
  std::cout << "ran " << trace.input_ids.size(0) << " x " << trace.input_ids.size(1) << " tokens through "
            << trace.n_layers << " attention layers (" << trace.n_heads << " heads, " << trace.n_kv_heads
            << " kv heads)\n";
  for (const auto& kv : trace.captures) std::cout << "  " << kv.first << " " << kv.second.sizes() << "\n";
  auto ent = trace.entropy[0];
  auto top = ent.nan_to_num(-1).topk(std::min<int64_t>(5, ent.size(0)));
  std::cout << "highest predictive entropy (nats) at positions:";
  for (int64_t i = 0; i < std::get<1>(top).size(0); ++i) {
    int64_t p = std::get<1>(top)[i].item<int64_t>();
    std::cout << " " << p << "=" << ent[p].item<float>();
    if (!trace.tokens.empty()) std::cout << "(" << trace.tokens[p] << ")";
  }
  std::cout << "\n";
  if (trace.captures.count("sink_mass")) {
    auto sink = trace.captures.at("sink_mass").mean({1, 2});
    std::cout << "sink mass (first " << spec.sink_tokens << " token[s]) per layer:";
    for (int64_t l = 0; l < sink.size(0); ++l) std::cout << " " << sink[l].item<float>();
    std::cout << "\n";
  }
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  try {
    args = parse_args(std::vector<std::string>(argv + 1, argv + argc));
  } catch (const std::exception& e) {
    std::cerr << "attnscope-cli: " << e.what() << "\n";
    return 2;
  }
  if (args.help) {
    std::cout << kHelp;
    return 0;
  }
  try {
    torch::Tensor mask;
    const auto input = input_of(args, mask);
    attnscope::verify_archive(args.model_path);  // CRC of every member: a damaged weight is not run
    auto model = attnscope::Model::load(args.model_path, args.device);
    if (args.describe) std::cout << model.describe();
    auto trace = model.run(input, args.spec, mask);
    report(trace, args.spec);
    if (!args.out_path.empty()) {
      trace.save(args.out_path);
      std::cout << "wrote " << args.out_path << "\n";
    }
  } catch (const c10::Error& e) {
    std::cerr << "attnscope-cli: " << e.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "attnscope-cli: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
