#include <attnscope/safetensors.h>

#include <attnscope/json.h>

#include <cstdio>
#include <cstring>
#include <unistd.h>
#include <fstream>
#include <sstream>

namespace attnscope {

namespace {

const std::map<c10::ScalarType, std::string>& dtype_names() {
  static const std::map<c10::ScalarType, std::string> m = {
      {torch::kFloat, "F32"}, {torch::kDouble, "F64"}, {torch::kHalf, "F16"},
      {torch::kBFloat16, "BF16"}, {torch::kLong, "I64"}, {torch::kInt, "I32"},
      {torch::kShort, "I16"}, {torch::kChar, "I8"}, {torch::kByte, "U8"}, {torch::kBool, "BOOL"}};
  return m;
}

}  // namespace

void write_safetensors(const std::string& path, const SafetensorsFile& f) {
  std::vector<torch::Tensor> data;
  std::ostringstream h;
  h << "{\"__metadata__\":{";
  bool first = true;
  for (const auto& kv : f.metadata) {
    h << (first ? "" : ",") << json::quote(kv.first) << ":" << json::quote(kv.second);
    first = false;
  }
  h << "}";
  int64_t offset = 0;
  for (const auto& kv : f.tensors) {
    auto t = kv.second.detach().cpu().contiguous();
    auto it = dtype_names().find(t.scalar_type());
    TORCH_CHECK(it != dtype_names().end(), "safetensors: tensor '", kv.first, "' has dtype ",
                t.scalar_type(), " which the format cannot hold");
    const int64_t nbytes = static_cast<int64_t>(t.nbytes());
    h << "," << json::quote(kv.first) << ":{\"dtype\":\"" << it->second << "\",\"shape\":[";
    for (int64_t d = 0; d < t.dim(); ++d) h << (d ? "," : "") << t.size(d);
    h << "],\"data_offsets\":[" << offset << "," << offset + nbytes << "]}";
    offset += nbytes;
    data.push_back(t);
  }
  h << "}";
  std::string header = h.str();
  header.append((8 - header.size() % 8) % 8, ' ');  // keeps the data 8-byte aligned
  // Written next to `path`, then renamed over it: a reader that memory-mapped the old file
  // (safetensors' safe_open does) keeps the old contents instead of seeing them change or
  // vanish (SIGBUS) under it, and no half-written file ever carries the final name.
  const std::string tmp = path + ".tmp" + std::to_string(static_cast<long>(::getpid()));
  std::ofstream out(tmp, std::ios::binary);
  TORCH_CHECK(out.good(), "cannot write '", path, "'");
  uint64_t n = header.size();
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>((n >> (8 * i)) & 0xFF);
  out.write(reinterpret_cast<const char*>(len), 8);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  for (const auto& t : data)
    out.write(static_cast<const char*>(t.data_ptr()), static_cast<std::streamsize>(t.nbytes()));
  out.close();
  if (!out.good() || std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    TORCH_CHECK(false, "writing '", path, "' failed");
  }
}

SafetensorsFile read_safetensors(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  TORCH_CHECK(in.good(), "file not found: '", path, "'");
  unsigned char len[8] = {0};
  in.read(reinterpret_cast<char*>(len), 8);
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(len[i]) << (8 * i);
  in.seekg(0, std::ios::end);
  const uint64_t size = static_cast<uint64_t>(in.tellg());
  TORCH_CHECK(size >= 8 && n <= size - 8 && n < (uint64_t(1) << 30), "'", path,
              "' is not a safetensors file (header length ", n, " for a file of ", size, " bytes)");
  std::string header(n, '\0');
  in.seekg(8);
  in.read(&header[0], static_cast<std::streamsize>(n));
  json::Value root = json::parse(header, "'" + path + "' safetensors header");
  TORCH_CHECK(root.is_object(), "'", path, "': safetensors header is not a JSON object");
  SafetensorsFile f;
  const uint64_t base = 8 + n;
  for (const auto& kv : root.obj) {
    if (kv.first == "__metadata__") {
      for (const auto& m : kv.second.obj) f.metadata[m.first] = m.second.str;
      continue;
    }
    const std::string dt = kv.second.get_string("dtype", "");
    c10::ScalarType st = torch::kFloat;
    bool known = false;
    for (const auto& d : dtype_names())
      if (d.second == dt) { st = d.first; known = true; }
    TORCH_CHECK(known, "'", path, "': tensor '", kv.first, "' has unsupported dtype '", dt, "'");
    std::vector<int64_t> shape;
    if (const json::Value* s = kv.second.find("shape"))
      for (const auto& d : s->arr) shape.push_back(static_cast<int64_t>(d.num));
    const json::Value* off = kv.second.find("data_offsets");
    TORCH_CHECK(off && off->arr.size() == 2, "'", path, "': tensor '", kv.first, "' lacks data_offsets");
    const uint64_t b = static_cast<uint64_t>(off->arr[0].num), e = static_cast<uint64_t>(off->arr[1].num);
    auto t = torch::empty(shape, torch::dtype(st));
    TORCH_CHECK(e >= b && e - b == t.nbytes() && base + e <= size, "'", path, "': tensor '",
                kv.first, "' has inconsistent offsets [", b, ", ", e, ")");
    in.seekg(static_cast<std::streamoff>(base + b));
    in.read(static_cast<char*>(t.data_ptr()), static_cast<std::streamsize>(e - b));
    f.tensors[kv.first] = t;
  }
  return f;
}

}  // namespace attnscope
