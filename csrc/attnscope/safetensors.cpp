#include <attnscope/safetensors.h>

#include <attnscope/json.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <unistd.h>
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <cerrno>
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
  remove_stale_temporaries(path);
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
  // The bytes reach the disk before the rename makes them the file: after a crash or power
  // loss, `path` is the old file or the new one, never a torn one.
  bool synced = out.good();
  if (synced) {
    const int fd = ::open(tmp.c_str(), O_RDONLY);
    synced = fd >= 0 && ::fsync(fd) == 0;
    if (fd >= 0) ::close(fd);
  }
  if (!synced || std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    std::remove(tmp.c_str());
    TORCH_CHECK(false, "writing '", path, "' failed: ", std::strerror(err), " (the old file, if any, is unchanged)");
  }
  const std::string dir = path.find('/') == std::string::npos ? "." : path.substr(0, path.rfind('/') + 1);
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (dfd >= 0) {  // the rename itself is durable
    ::fsync(dfd);
    ::close(dfd);
  }
}

void remove_stale_temporaries(const std::string& path) {
  // `path`.tmp<PID> files of writers that were killed (kill -9, OOM) before their rename.
  const std::string dir = path.find('/') == std::string::npos ? "." : path.substr(0, path.rfind('/'));
  const std::string base = path.substr(path.rfind('/') + 1) + ".tmp";
  DIR* d = ::opendir(dir.empty() ? "/" : dir.c_str());
  if (!d) return;
  while (dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    if (name.rfind(base, 0) != 0 || name.size() == base.size()) continue;
    const std::string pid = name.substr(base.size());
    if (pid.find_first_not_of("0123456789") != std::string::npos || pid.size() > 9) continue;
    const long p = std::stol(pid);
    if (p == static_cast<long>(::getpid())) continue;
    if (::kill(static_cast<pid_t>(p), 0) != 0 && errno == ESRCH)  // its writer is gone
      std::remove((dir + "/" + name).c_str());
  }
  ::closedir(d);
}

namespace {
// One tensor's record in a safetensors header: name, dtype, shape, data bytes [b, e).
struct Entry {
  std::string name;
  c10::ScalarType st;
  std::vector<int64_t> shape;
  uint64_t b, e;
};

// The header's JSON (its length bounded, 100 MB, and inside the file); `base` is where data begins.
json::Value read_header(std::ifstream& in, const std::string& path, uint64_t size, uint64_t& base) {
  unsigned char len[8] = {0};
  in.read(reinterpret_cast<char*>(len), 8);
  TORCH_CHECK(in.gcount() == 8, "'", path, "': cannot read its header length");
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(len[i]) << (8 * i);
  constexpr uint64_t kMaxHeader = 100000000;
  TORCH_CHECK_VALUE(n >= 2 && n <= size - 8 && n <= kMaxHeader, "'", path,
                    "' is not a safetensors file (header length ", n, " for a file of ", size, " bytes; at most ",
                    kMaxHeader, ")");
  std::string header(n, '\0');
  in.read(&header[0], static_cast<std::streamsize>(n));
  TORCH_CHECK(static_cast<uint64_t>(in.gcount()) == n, "'", path, "': header truncated");
  TORCH_CHECK_VALUE(header[0] == '{', "'", path, "': safetensors header does not start with '{'");
  json::Value root = json::parse(header, "'" + path + "' safetensors header");
  TORCH_CHECK_VALUE(root.is_object(), "'", path, "': safetensors header is not a JSON object");
  base = 8 + n;
  return root;
}

// A tensor's record checked: known dtype, non-negative shape, offsets inside the data section,
// byte length = dtype size x elements (computed without overflow).
Entry entry_of(const std::string& name, const json::Value& v, const std::string& where, uint64_t data_len) {
  TORCH_CHECK_VALUE(v.is_object(), where, ": expected an object with dtype, shape, data_offsets");
  const std::string dt = v.get_string("dtype", "");
  c10::ScalarType st = torch::kFloat;
  bool known = false;
  for (const auto& d : dtype_names())
    if (d.second == dt) st = d.first, known = true;
  TORCH_CHECK_VALUE(known, where, " has unsupported dtype '", dt, "'");
  const json::Value* s = v.get_array("shape");
  TORCH_CHECK_VALUE(s, where, " has no shape");
  std::vector<int64_t> shape;
  uint64_t numel = 1;
  const uint64_t limit = data_len / c10::elementSize(st) + 1;  // what the file's data can hold
  for (size_t d = 0; d < s->arr.size(); ++d) {
    const int64_t x = s->arr[d].as_int(where + " shape[" + std::to_string(d) + "]", 0, INT64_MAX);
    shape.push_back(x);
    numel = x == 0 ? 0 : (numel > limit / static_cast<uint64_t>(x) ? limit : numel * static_cast<uint64_t>(x));
  }
  const json::Value* off = v.get_array("data_offsets");
  TORCH_CHECK_VALUE(off && off->arr.size() == 2, where, " lacks data_offsets [begin, end]");
  const uint64_t b = static_cast<uint64_t>(off->arr[0].as_int(where + " data_offsets[0]", 0, INT64_MAX));
  const uint64_t e = static_cast<uint64_t>(off->arr[1].as_int(where + " data_offsets[1]", 0, INT64_MAX));
  TORCH_CHECK_VALUE(b <= e && e <= data_len, where, " has data_offsets [", b, ", ", e, ") outside the data section of ",
                    data_len, " bytes");
  TORCH_CHECK_VALUE(numel < limit && numel * c10::elementSize(st) == e - b, where, " holds ", e - b,
                    " bytes, but dtype ", dt, " x its shape needs ",
                    numel >= limit ? std::string("more than the file") : std::to_string(numel * c10::elementSize(st)));
  return {name, st, std::move(shape), b, e};
}

// The records tile the data section: contiguous, not overlapping, nothing left over.
void check_layout(const std::vector<Entry>& entries, const std::string& path, uint64_t data_len) {
  std::vector<const Entry*> order;
  for (const auto& e : entries) order.push_back(&e);
  std::sort(order.begin(), order.end(),
            [](const Entry* x, const Entry* y) { return x->b < y->b || (x->b == y->b && x->e < y->e); });
  uint64_t at = 0;
  for (const Entry* e : order) {
    TORCH_CHECK_VALUE(e->b == at, "'", path, "': tensor '", e->name.substr(0, 80), "' starts at byte ", e->b,
                      " of the data, expected ", at, " (tensors must be contiguous and not overlap)");
    at = e->e;
  }
  TORCH_CHECK_VALUE(at == data_len, "'", path, "': the tensors cover ", at, " of the ", data_len,
                    " data bytes (the file has trailing or missing data)");
}
}  // namespace

SafetensorsFile read_safetensors(const std::string& path) {
  // Validated the way the format's reference implementation does before anything is allocated;
  // every read is checked.
  std::ifstream in(path, std::ios::binary);
  TORCH_CHECK(in.good(), "file not found: '", path, "'");
  in.seekg(0, std::ios::end);
  const std::streamoff end = in.tellg();
  TORCH_CHECK_VALUE(end >= 8, "'", path, "' is not a safetensors file: ", end,
                    " bytes, less than its 8-byte header length");
  const uint64_t size = static_cast<uint64_t>(end);
  in.seekg(0);
  uint64_t base = 0;
  const json::Value root = read_header(in, path, size, base);
  const uint64_t data_len = size - base;
  SafetensorsFile f;
  std::vector<Entry> entries;
  for (const auto& kv : root.obj) {
    if (kv.first == "__metadata__") {
      TORCH_CHECK_VALUE(kv.second.is_object(), "'", path, "': __metadata__ must be an object of strings");
      for (const auto& m : kv.second.obj) {
        TORCH_CHECK_VALUE(m.second.is_string(), "'", path, "': __metadata__ '", m.first.substr(0, 80), "' is ",
                          m.second.describe(), ", expected a string");
        f.metadata[m.first] = m.second.str;
      }
      continue;
    }
    entries.push_back(
        entry_of(kv.first, kv.second, "'" + path + "': tensor '" + kv.first.substr(0, 80) + "'", data_len));
  }
  check_layout(entries, path, data_len);
  for (const auto& e : entries) {
    auto t = torch::empty(e.shape, torch::dtype(e.st));
    in.seekg(static_cast<std::streamoff>(base + e.b));
    in.read(static_cast<char*>(t.data_ptr()), static_cast<std::streamsize>(e.e - e.b));
    TORCH_CHECK(static_cast<uint64_t>(in.gcount()) == e.e - e.b, "'", path, "': tensor '", e.name, "' truncated");
    f.tensors[e.name] = t;
  }
  return f;
}

int64_t meta_int(const SafetensorsFile& f, const std::string& key, const std::string& path, int64_t lo,
                 int64_t hi, bool required, int64_t fallback) {
  auto it = f.metadata.find(key);
  if (it == f.metadata.end() || it->second.empty()) {
    TORCH_CHECK_VALUE(!required, "'", path, "': metadata '", key, "' is missing");
    return fallback;
  }
  const std::string& v = it->second;
  int64_t x = 0;
  auto r = std::from_chars(v.data(), v.data() + v.size(), x);
  TORCH_CHECK_VALUE(r.ec == std::errc() && r.ptr == v.data() + v.size(), "'", path, "': metadata '", key, "' is '",
                    v.substr(0, 40), "', expected an integer");
  TORCH_CHECK_VALUE(x >= lo && x <= hi, "'", path, "': metadata '", key, "' ", x, " out of range: expected ", lo, "..", hi);
  return x;
}

double meta_double(const SafetensorsFile& f, const std::string& key, const std::string& path) {
  auto it = f.metadata.find(key);
  TORCH_CHECK_VALUE(it != f.metadata.end(), "'", path, "': metadata '", key, "' is missing");
  const std::string& v = it->second;
  double x = 0;
  auto r = std::from_chars(v.data(), v.data() + v.size(), x);
  TORCH_CHECK_VALUE(r.ec == std::errc() && r.ptr == v.data() + v.size() && std::isfinite(x), "'", path,
                    "': metadata '", key, "' is '", v.substr(0, 40), "', expected a finite number");
  return x;
}

}  // namespace attnscope
