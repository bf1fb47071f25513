// Bounded mutation fuzzing of every reader that takes bytes from a file or a user: the JSON
// parser, capture specs, attnscope.json (ModelInfo), tokenizer.json / tokens.json (Vocab),
// safetensors traces and datasets, and a TorchScript archive's zip directory and pickles. No libFuzzer needed: built by
// the normal compiler, and under tools/sanitize.sh with ASan + UBSan, which turn a read past a buffer or undefined
// behaviour into a report and a non-zero exit.
//
// usage: attnscope_fuzz <corpus dir> <iterations> [seed]
// A corpus file's name prefix picks its reader: json_, spec_, info_, vocab_, tokens_, st_, and
// trmeta_ (a trace's header JSON, framed before the data of the st_ trace: its metadata and
// tensor table mutated while the file stays well-formed), dsmeta_ (the same for a dataset file),
// pkl_ (a data.pkl: its storages and tensors) and zip_ (a whole archive, records checked).
// Every input must either parse or raise c10::Error; any other exception is a finding.
#include <attnscope/archive.h>
#include <attnscope/dataset.h>
#include <attnscope/json.h>
#include <attnscope/model.h>
#include <attnscope/pickled_tensors.h>
#include <attnscope/safetensors.h>
#include <attnscope/spec.h>
#include <attnscope/trace.h>
#include <attnscope/vocab.h>

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using attnscope::json::parse;

namespace {

struct Seed {
  std::string kind, bytes;
};

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream o;
  o << in.rdbuf();
  return o.str();
}

const char* kTokens[] = {"1e300", "-1", "99999999999999999999", "NaN", "0x10", "+3", "2.9", "1e-400", "[]", "{}",
                         "null", "\"\\ud800\"", "\"\\u0000\"", "-0", "1e999", "[[0,0]]", "true", "\"all\""};

std::string mutate(std::string s, const std::vector<Seed>& corpus, std::mt19937_64& rng) {
  auto pick = [&](size_t n) { return n ? static_cast<size_t>(rng() % n) : 0; };
  const int rounds = 1 + static_cast<int>(rng() % 4);
  for (int r = 0; r < rounds; ++r) {
    switch (rng() % 8) {
      case 0: if (!s.empty()) s[pick(s.size())] ^= static_cast<char>(1u << (rng() % 8)); break;
      case 1: if (!s.empty()) s[pick(s.size())] = "\0\xff\"{[-9e:,}]"[rng() % 12]; break;
      case 2: s.insert(pick(s.size() + 1), std::string(1 + rng() % 8, static_cast<char>(rng()))); break;
      case 3: if (!s.empty()) { size_t a = pick(s.size()); s.erase(a, 1 + rng() % 16); } break;
      case 4: if (!s.empty()) { size_t a = pick(s.size()); s.insert(pick(s.size()), s.substr(a, 1 + rng() % 32)); } break;
      case 5: {  // replace a number with a hostile token
        size_t a = s.find_first_of("0123456789", pick(s.size()));
        if (a != std::string::npos) {
          size_t b = s.find_first_not_of("0123456789.eE+-", a);
          s.replace(a, (b == std::string::npos ? s.size() : b) - a, kTokens[rng() % (sizeof kTokens / sizeof *kTokens)]);
        }
        break;
      }
      case 6: {  // splice another seed's tail
        const auto& o = corpus[pick(corpus.size())].bytes;
        if (!o.empty()) s = s.substr(0, pick(s.size() + 1)) + o.substr(pick(o.size()));
        break;
      }
      case 7: if (s.size() >= 8) {  // safetensors: a hostile header length
        uint64_t n = rng() % 3 == 0 ? rng() : rng() % (s.size() + 16);
        for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((n >> (8 * i)) & 0xFF);
      } break;
    }
  }
  return s;
}

/// The data parts of the corpus trace and dataset (st_*.safetensors), set by main: trmeta_ and
/// dsmeta_ inputs are those files' header JSON, mutated, so the metadata and the tensor table are
/// what varies.
std::string& data_of(const std::string& kind) {
  static std::string trace, dataset;
  return kind == "trmeta" ? trace : dataset;
}

void frame(const std::string& header, const std::string& data, const std::string& path) {
  std::string file(8, '\0');
  for (int i = 0; i < 8; ++i) file[i] = static_cast<char>((uint64_t(header.size()) >> (8 * i)) & 0xFF);
  std::ofstream(path, std::ios::binary) << file << header << data;
}

void feed(const std::string& kind, const std::string& bytes, const std::string& scratch) {
  if (kind == "json") parse(bytes, "fuzz");
  else if (kind == "spec") attnscope::CaptureSpec::from_json(bytes);
  else if (kind == "info") attnscope::ModelInfo::from_json(bytes);
  else if (kind == "vocab") attnscope::Vocab::from_tokenizer_json(bytes);
  else if (kind == "tokens") attnscope::Vocab::from_token_list(bytes);
  else if (kind == "trmeta") {  // a trace's header JSON alone: framed with a valid length before the data
    frame(bytes, data_of(kind), scratch);
    attnscope::Trace::load(scratch);
  } else if (kind == "dsmeta") {
    frame(bytes, data_of(kind), scratch);
    attnscope::DatasetStats::load(scratch);
  } else if (kind == "pkl") {
    attnscope::read_pickled_tensors(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "fuzz");
  } else if (kind == "zip") {
    { std::ofstream(scratch, std::ios::binary) << bytes; }
    attnscope::check_archive_records(scratch);
  } else if (kind == "st") {
    { std::ofstream(scratch, std::ios::binary) << bytes; }
    try { attnscope::Trace::load(scratch); } catch (const c10::Error&) {}
    try { attnscope::DatasetStats::load(scratch); } catch (const c10::Error&) {}
    attnscope::read_safetensors(scratch);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: attnscope_fuzz <corpus dir> <iterations> [seed]\n";
    return 2;
  }
  std::vector<Seed> corpus;
  for (const auto& e : fs::directory_iterator(argv[1])) {
    const std::string name = e.path().filename().string();
    const auto u = name.find('_');
    if (u == std::string::npos) continue;
    corpus.push_back({name.substr(0, u), slurp(e.path())});
  }
  std::sort(corpus.begin(), corpus.end(), [](const Seed& a, const Seed& b) { return a.bytes < b.bytes; });
  for (const auto& s : corpus)  // the st_ seeds' data parts, behind every trmeta_ / dsmeta_ header
    if (s.kind == "st" && s.bytes.size() >= 8) {
      uint64_t n = 0;
      for (int i = 0; i < 8; ++i) n |= uint64_t(static_cast<unsigned char>(s.bytes[i])) << (8 * i);
      if (8 + n > s.bytes.size()) continue;
      if (s.bytes.find("attnscope-trace") != std::string::npos) data_of("trmeta") = s.bytes.substr(8 + n);
      if (s.bytes.find("attnscope-dataset") != std::string::npos) data_of("dsmeta") = s.bytes.substr(8 + n);
    }
  if (corpus.empty()) {
    std::cerr << "attnscope_fuzz: no corpus files in " << argv[1] << "\n";
    return 2;
  }
  const long iterations = std::stol(argv[2]);
  std::mt19937_64 rng(argc > 3 ? std::stoull(argv[3]) : 1);
  const std::string scratch = (fs::temp_directory_path() / ("attnscope_fuzz_" + std::to_string(::getpid()))).string();
  long parsed = 0, rejected = 0;
  for (long it = 0; it < iterations + static_cast<long>(corpus.size()); ++it) {
    const bool original = it < static_cast<long>(corpus.size());  // every seed as it is first
    const Seed& s = corpus[original ? it : rng() % corpus.size()];
    const std::string input = original ? s.bytes : mutate(s.bytes, corpus, rng);
    try {
      feed(s.kind, input, scratch);
      ++parsed;
    } catch (const c10::Error&) {
      ++rejected;
    } catch (const std::exception& e) {
      std::cerr << "FINDING: " << s.kind << " input of " << input.size() << " bytes raised a non-c10 exception: "
                << e.what() << "\n";
      std::ofstream(scratch + ".finding", std::ios::binary) << input;
      return 1;
    }
    if (original && rejected) {
      std::cerr << "a corpus seed of kind '" << s.kind << "' is rejected: the corpus must start valid\n";
      return 1;
    }
  }
  std::remove(scratch.c_str());
  std::cout << "fuzz OK: " << iterations << " mutated inputs (" << parsed << " parsed, " << rejected
            << " rejected with c10::Error), " << corpus.size() << " seeds\n";
  return 0;
}
