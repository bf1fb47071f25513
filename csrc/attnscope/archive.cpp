// The zip's central directory (zip64 included) walked by hand, and each stored member's bytes
// checked against its CRC-32: libtorch's miniz is built without reader CRC checks, and its own
// validator refuses the archives torch writes.
#include <attnscope/archive.h>

#include <attnscope/pickled_tensors.h>

#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <map>
#include <string>
#include <vector>

namespace attnscope {

namespace {

/// CRC-32 (IEEE 802.3, as zip uses), eight bytes per step with eight tables.
class Crc32 {
 public:
  Crc32() {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t_[0][i] = c;
    }
    for (int s = 1; s < 8; ++s)
      for (uint32_t i = 0; i < 256; ++i) t_[s][i] = (t_[s - 1][i] >> 8) ^ t_[0][t_[s - 1][i] & 0xFF];
  }
  uint32_t operator()(const uint8_t* p, size_t n, uint32_t prior = 0) const {
    uint32_t c = prior ^ 0xFFFFFFFFu;
    for (; n >= 8; p += 8, n -= 8) {
      uint32_t lo, hi;
      std::memcpy(&lo, p, 4);
      std::memcpy(&hi, p + 4, 4);
      lo ^= c;
      c = t_[7][lo & 0xFF] ^ t_[6][(lo >> 8) & 0xFF] ^ t_[5][(lo >> 16) & 0xFF] ^ t_[4][lo >> 24] ^
          t_[3][hi & 0xFF] ^ t_[2][(hi >> 8) & 0xFF] ^ t_[1][(hi >> 16) & 0xFF] ^ t_[0][hi >> 24];
    }
    while (n--) c = t_[0][(c ^ *p++) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
  }

 private:
  std::array<std::array<uint32_t, 256>, 8> t_;
};

/// The archive mapped read-only; little-endian fields read with bounds checks.
struct Mapped {
  const uint8_t* p = nullptr;
  size_t n = 0;
  std::string path;
  ~Mapped() {
    if (p) munmap(const_cast<uint8_t*>(p), n);
  }
  template <class T>
  T at(uint64_t off) const {
    TORCH_CHECK_VALUE(off <= n && sizeof(T) <= n - off, "'", path, "': damaged TorchScript archive: a zip field at ",
                      off, " lies past the end of the file (", n, " bytes)");
    T v;
    std::memcpy(&v, p + off, sizeof(T));
    return v;
  }
};

/// The archive's zip directory, walked once: each member's name, method, CRC and where its bytes lie.
struct Member {
  std::string name;
  uint16_t method = 0;
  uint32_t crc = 0;
  uint64_t data = 0, csize = 0, usize = 0;
};

struct Zip {
  Mapped m;
  std::vector<Member> members;
  std::string bad;  // "'<path>': damaged TorchScript archive: "

  explicit Zip(const std::string& path) {
    m.path = path;
    bad = "'" + path + "': damaged TorchScript archive: ";
    const int fd = open(path.c_str(), O_RDONLY);
    TORCH_CHECK_VALUE(fd >= 0, "archive not found: '", path, "'");
    struct stat st {};
    fstat(fd, &st);
    m.n = static_cast<size_t>(st.st_size);
    void* mem = m.n ? mmap(nullptr, m.n, PROT_READ, MAP_PRIVATE, fd, 0) : MAP_FAILED;
    close(fd);
    TORCH_CHECK_VALUE(mem != MAP_FAILED, "'", path, "': not a TorchScript archive (empty or unreadable)");
    m.p = static_cast<const uint8_t*>(mem);
    walk(directory());
  }

  const Member* find(const std::string& name) const {
    for (const auto& e : members)
      if (e.name == name) return &e;
    return nullptr;
  }

 private:
  /// (entries, offset of the central directory), from the end record (zip64 included).
  std::pair<uint64_t, uint64_t> directory() const {
    // End of central directory: the last signature within the final 64 KiB + 22 bytes.
    int64_t eocd = -1;
    for (int64_t i = static_cast<int64_t>(m.n) - 22; i >= 0 && i >= static_cast<int64_t>(m.n) - 22 - 65535; --i)
      if (m.at<uint32_t>(i) == 0x06054b50u) {
        eocd = i;
        break;
      }
    TORCH_CHECK_VALUE(eocd >= 0, "'", m.path, "': not a TorchScript archive (no zip directory)");
    uint64_t entries = m.at<uint16_t>(eocd + 10), cd = m.at<uint32_t>(eocd + 16);
    if (entries == 0xFFFF || cd == 0xFFFFFFFFu) {  // zip64: its locator sits right before
      TORCH_CHECK_VALUE(eocd >= 20 && m.at<uint32_t>(eocd - 20) == 0x07064b50u, bad, "no zip64 locator");
      const uint64_t z = m.at<uint64_t>(eocd - 12);
      TORCH_CHECK_VALUE(m.at<uint32_t>(z) == 0x06064b50u, bad, "no zip64 directory end at ", z);
      entries = m.at<uint64_t>(z + 32);
      cd = m.at<uint64_t>(z + 48);
    }
    TORCH_CHECK_VALUE(entries <= m.n / 46, bad, "the directory lists ", entries,
                      " members, more than the file can hold");
    return {entries, cd};
  }

  void walk(std::pair<uint64_t, uint64_t> dir) {
    uint64_t off = dir.second;
    for (uint64_t e = 0; e < dir.first; ++e) {
      TORCH_CHECK_VALUE(m.at<uint32_t>(off) == 0x02014b50u, bad, "directory entry ", e, " is corrupted");
      Member mb;
      mb.method = m.at<uint16_t>(off + 10);
      mb.crc = m.at<uint32_t>(off + 16);
      mb.csize = m.at<uint32_t>(off + 20);
      mb.usize = m.at<uint32_t>(off + 24);
      const uint16_t nlen = m.at<uint16_t>(off + 28), xlen = m.at<uint16_t>(off + 30), clen = m.at<uint16_t>(off + 32);
      uint64_t local = m.at<uint32_t>(off + 42);
      mb.name.assign(reinterpret_cast<const char*>(m.p) + off + 46,
                     std::min<uint64_t>(nlen, m.n - std::min<uint64_t>(m.n, off + 46)));
      // zip64 extra field (id 1): the sizes and offset that did not fit, in this order.
      for (uint64_t x = off + 46 + nlen; x + 4 <= off + 46 + nlen + xlen;) {
        const uint16_t id = m.at<uint16_t>(x), len = m.at<uint16_t>(x + 2);
        if (id == 1) {
          uint64_t y = x + 4;
          if (mb.usize == 0xFFFFFFFFu) {
            mb.usize = m.at<uint64_t>(y);
            y += 8;
          }
          if (mb.csize == 0xFFFFFFFFu) {
            mb.csize = m.at<uint64_t>(y);
            y += 8;
          }
          if (local == 0xFFFFFFFFu) local = m.at<uint64_t>(y);
        }
        x += 4 + len;
      }
      TORCH_CHECK_VALUE(m.at<uint32_t>(local) == 0x04034b50u, bad, "member '", mb.name, "' has no local header at ",
                        local);
      mb.data = local + 30 + m.at<uint16_t>(local + 26) + m.at<uint16_t>(local + 28);
      TORCH_CHECK_VALUE(mb.data <= m.n && mb.csize <= m.n - mb.data, bad, "member '", mb.name, "' (", mb.csize,
                        " bytes) runs past the end of the file");
      TORCH_CHECK_VALUE(mb.method != 0 || mb.csize == mb.usize, bad, "stored member '", mb.name, "' has two sizes (",
                        mb.csize, ", ", mb.usize, ")");
      members.push_back(std::move(mb));
      off += 46 + nlen + xlen + clen;
    }
  }
};

/// Checks one pickle's storages against their records and its tensors against their storages.
void check_pickle(const Zip& z, const std::string& root, const std::string& dir) {
  const Member* pkl = z.find(root + dir + ".pkl");
  if (!pkl) return;  // constants.pkl is optional; a missing data.pkl is torch's own error
  TORCH_CHECK_VALUE(pkl->method == 0, z.bad, "'", pkl->name, "' is compressed; attnscope reads archives as ",
                    "torch.jit.save writes them (stored members)");
  const auto decl = read_pickled_tensors(z.m.p + pkl->data, pkl->usize, "'" + z.m.path + "' " + dir + ".pkl");
  std::map<std::string, int64_t> numel;  // storage key → declared elements
  for (const auto& s : decl.storages) {
    const std::string rec = root + dir + "/" + s.key;
    const Member* r = s.numel > 0 ? z.find(rec) : nullptr;
    TORCH_CHECK_VALUE(s.numel == 0 || r, z.bad, dir, ".pkl declares a ", s.type, " storage of ", s.numel,
                      " elements in record '", rec, "', which the archive does not have");
    TORCH_CHECK_VALUE(s.numel == 0 || static_cast<uint64_t>(s.numel) <= r->usize / static_cast<uint64_t>(s.itemsize),
                      z.bad, "record '", rec, "' holds ", r->usize, " bytes, but ", dir, ".pkl declares a ", s.type,
                      " storage of ", s.numel, " elements (", static_cast<double>(s.numel) * s.itemsize,
                      " bytes) there");
    numel[s.key] = std::max(numel[s.key], s.numel);
  }
  for (const auto& t : decl.tensors) {
    bool empty = false;
    long double last = t.offset;  // the last element the tensor reaches, exact far beyond int64
    for (size_t d = 0; d < t.sizes.size(); ++d) {
      empty |= t.sizes[d] == 0;
      last += static_cast<long double>(t.sizes[d] > 0 ? t.sizes[d] - 1 : 0) * t.strides[d];
    }
    TORCH_CHECK_VALUE(empty || last < static_cast<long double>(numel[t.key]), z.bad, "a tensor in ", dir,
                      ".pkl (offset ", t.offset, ", sizes ", c10::IntArrayRef(t.sizes), ", strides ",
                      c10::IntArrayRef(t.strides), ") reaches element ", static_cast<double>(last), " of record '",
                      root, dir, "/", t.key, "', which holds ", numel[t.key], " elements");
  }
}

}  // namespace

void verify_archive(const std::string& path) {
  const Zip z(path);
  static const Crc32 crc;
  // Stored members (all torch writes) are checked; a compressed one is left to the reader.
  for (const auto& e : z.members)
    TORCH_CHECK_VALUE(e.method != 0 || crc(z.m.p + e.data, e.csize) == e.crc, z.bad, "member '", e.name,
                      "' fails its CRC-32");
}

namespace {
/// "x/" of a TorchScript archive whose members are x/data.pkl, x/code/..., or "" for another zip.
std::string root_of(const Zip& z) {
  for (const auto& e : z.members) {
    const auto slash = e.name.find('/');
    if (slash != std::string::npos && e.name.compare(slash + 1, std::string::npos, "data.pkl") == 0)
      return e.name.substr(0, slash + 1);
  }
  return "";
}
}  // namespace

uint32_t crc32(const uint8_t* p, size_t n, uint32_t crc) {
  static const Crc32 table;
  return table(p, n, crc);
}

uint64_t fnv1a(const void* p, size_t n, uint64_t h) {
  const auto* b = static_cast<const uint8_t*>(p);
  for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ull;
  return h;
}

std::string hex16(uint64_t h) {
  static const char* d = "0123456789abcdef";
  std::string s(16, '0');
  for (int i = 15; i >= 0; --i, h >>= 4) s[static_cast<size_t>(i)] = d[h & 15];
  return s;
}

namespace {
std::string identity_of(const Zip& z, const std::string& root) {
  std::vector<const Member*> records;
  for (const auto& e : z.members)
    if (e.name.rfind(root + "data/", 0) == 0) records.push_back(&e);  // the module's parameters and buffers
  std::sort(records.begin(), records.end(), [](const Member* a, const Member* b) { return a->name < b->name; });
  uint64_t h = fnv1a(nullptr, 0);
  for (const Member* r : records) {
    const std::string rel = r->name.substr(root.size());
    h = fnv1a(rel.data(), rel.size() + 1, h);  // with its terminating NUL: names cannot run together
    h = fnv1a(&r->usize, sizeof r->usize, h);
    h = fnv1a(&r->crc, sizeof r->crc, h);
  }
  return "w:" + hex16(h);
}
}  // namespace

std::string check_archive_records(const std::string& path) {
  const Zip z(path);
  const std::string root = root_of(z);
  if (root.empty()) return "";  // not a TorchScript module archive: torch::jit::load names it
  check_pickle(z, root, "data");
  check_pickle(z, root, "constants");
  return identity_of(z, root);  // the directory is read once for both
}

}  // namespace attnscope
