// The zip's central directory (zip64 included) walked by hand, and each stored member's bytes
// checked against its CRC-32: libtorch's miniz is built without reader CRC checks, and its own
// validator refuses the archives torch writes.
#include <attnscope/archive.h>

#include <c10/util/Exception.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cstring>
#include <string>

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
  uint32_t operator()(const uint8_t* p, size_t n) const {
    uint32_t c = 0xFFFFFFFFu;
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

}  // namespace

void verify_archive(const std::string& path) {
  Mapped m;
  m.path = path;
  const int fd = open(path.c_str(), O_RDONLY);
  TORCH_CHECK_VALUE(fd >= 0, "archive not found: '", path, "'");
  struct stat st{};
  fstat(fd, &st);
  m.n = static_cast<size_t>(st.st_size);
  void* mem = m.n ? mmap(nullptr, m.n, PROT_READ, MAP_PRIVATE, fd, 0) : MAP_FAILED;
  close(fd);
  TORCH_CHECK_VALUE(mem != MAP_FAILED, "'", path, "': not a TorchScript archive (empty or unreadable)");
  m.p = static_cast<const uint8_t*>(mem);
  const std::string bad = "'" + path + "': damaged TorchScript archive: ";
  // End of central directory: the last signature within the final 64 KiB + 22 bytes.
  int64_t eocd = -1;
  for (int64_t i = static_cast<int64_t>(m.n) - 22; i >= 0 && i >= static_cast<int64_t>(m.n) - 22 - 65535; --i)
    if (m.at<uint32_t>(i) == 0x06054b50u) { eocd = i; break; }
  TORCH_CHECK_VALUE(eocd >= 0, "'", path, "': not a TorchScript archive (no zip directory)");
  uint64_t entries = m.at<uint16_t>(eocd + 10), cd = m.at<uint32_t>(eocd + 16);
  if (entries == 0xFFFF || cd == 0xFFFFFFFFu) {  // zip64: its locator sits right before
    TORCH_CHECK_VALUE(eocd >= 20 && m.at<uint32_t>(eocd - 20) == 0x07064b50u, bad, "no zip64 locator");
    const uint64_t z = m.at<uint64_t>(eocd - 12);
    TORCH_CHECK_VALUE(m.at<uint32_t>(z) == 0x06064b50u, bad, "no zip64 directory end at ", z);
    entries = m.at<uint64_t>(z + 32);
    cd = m.at<uint64_t>(z + 48);
  }
  TORCH_CHECK_VALUE(entries <= m.n / 46, bad, "the directory lists ", entries, " members, more than the file can hold");
  static const Crc32 crc;
  uint64_t off = cd;
  for (uint64_t e = 0; e < entries; ++e) {
    TORCH_CHECK_VALUE(m.at<uint32_t>(off) == 0x02014b50u, bad, "directory entry ", e, " is corrupted");
    const uint16_t method = m.at<uint16_t>(off + 10);
    const uint32_t want = m.at<uint32_t>(off + 16);
    uint64_t csize = m.at<uint32_t>(off + 20), usize = m.at<uint32_t>(off + 24);
    const uint16_t nlen = m.at<uint16_t>(off + 28), xlen = m.at<uint16_t>(off + 30), clen = m.at<uint16_t>(off + 32);
    uint64_t local = m.at<uint32_t>(off + 42);
    const std::string name(reinterpret_cast<const char*>(m.p) + off + 46,
                           std::min<uint64_t>(nlen, m.n - std::min<uint64_t>(m.n, off + 46)));
    // zip64 extra field (id 1): the sizes and offset that did not fit, in this order.
    for (uint64_t x = off + 46 + nlen; x + 4 <= off + 46 + nlen + xlen;) {
      const uint16_t id = m.at<uint16_t>(x), len = m.at<uint16_t>(x + 2);
      if (id == 1) {
        uint64_t y = x + 4;
        if (usize == 0xFFFFFFFFu) { usize = m.at<uint64_t>(y); y += 8; }
        if (csize == 0xFFFFFFFFu) { csize = m.at<uint64_t>(y); y += 8; }
        if (local == 0xFFFFFFFFu) local = m.at<uint64_t>(y);
      }
      x += 4 + len;
    }
    TORCH_CHECK_VALUE(m.at<uint32_t>(local) == 0x04034b50u, bad, "member '", name, "' has no local header at ", local);
    const uint64_t data = local + 30 + m.at<uint16_t>(local + 26) + m.at<uint16_t>(local + 28);
    TORCH_CHECK_VALUE(data <= m.n && csize <= m.n - data, bad, "member '", name, "' (", csize,
                      " bytes) runs past the end of the file");
    // Stored members (all torch writes) are checked; a compressed one is left to the reader.
    if (method == 0) {
      TORCH_CHECK_VALUE(csize == usize, bad, "stored member '", name, "' has two sizes (", csize, ", ", usize, ")");
      TORCH_CHECK_VALUE(crc(m.p + data, csize) == want, bad, "member '", name, "' fails its CRC-32");
    }
    off += 46 + nlen + xlen + clen;
  }
}

}  // namespace attnscope
