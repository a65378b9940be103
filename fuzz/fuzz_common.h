#ifndef SBX_FUZZ_FUZZ_COMMON_H_
#define SBX_FUZZ_FUZZ_COMMON_H_

// What the fuzz targets share: quiet logging, a fuzz input read as a
// header of little-endian fields plus a guest memory image, the split
// virtqueue layout (virtio 1.2 §2.7) the virtqueue targets use, and the
// seed writer (fuzz/README.md).

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "base/logging.h"
#include "vmm/memory/guest_memory.h"

namespace sbx::fuzz {

// Fails the fuzz run: a broken invariant the sanitizers cannot see.
#define SBX_FUZZ_ASSERT(cond)                                                 \
  do {                                                                        \
    if (!(cond)) {                                                            \
      std::fprintf(stderr, "%s:%d: fuzz invariant failed: %s\n", __FILE__,    \
                   __LINE__, #cond);                                          \
      std::abort();                                                           \
    }                                                                         \
  } while (0)

// Guest-caused warnings are logged (rate-limited) by the code under test;
// while fuzzing they are noise. SBX_LOG_LEVEL still overrides.
inline void QuietLogs() {
  if (std::getenv("SBX_LOG_LEVEL") == nullptr) SetMinLogLevel(LogLevel::kFatal);
}

// Reads little-endian fields off the front of the input; reads past its
// end give zeros, so every input is a valid header.
class InputReader {
 public:
  InputReader(const uint8_t* data, size_t size) : data_(data), size_(size) {}

  template <typename T>
  T Take() {
    T value{};
    uint8_t raw[sizeof(T)] = {};
    for (size_t i = 0; i < sizeof(T); ++i) {
      raw[i] = pos_ < size_ ? data_[pos_] : 0;
      ++pos_;
    }
    std::memcpy(&value, raw, sizeof(T));
    return value;
  }
  // Skips to `offset` from the start (the header's fixed size).
  void Seek(size_t offset) { pos_ = offset; }
  // What is left after the header.
  std::span<const uint8_t> Rest() const {
    return pos_ >= size_ ? std::span<const uint8_t>()
                         : std::span<const uint8_t>(data_ + pos_, size_ - pos_);
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

// The guest RAM every iteration reuses (creating a memfd mapping per input
// would cost more than the parsing under test). kRamBytes is small so that
// fuzzed addresses often land inside it.
inline constexpr uint64_t kRamBytes = 64 * 1024;

inline vmm::GuestMemory& FuzzMemory() {
  static vmm::GuestMemory* mem = [] {
    absl::StatusOr<std::unique_ptr<vmm::GuestMemory>> m =
        vmm::GuestMemory::Create(kRamBytes);
    SBX_FUZZ_ASSERT(m.ok());
    return m->release();
  }();
  return *mem;
}

// Guest RAM = `image` from address 0, zeros after it (deterministic: no
// state from the previous input survives).
inline void LoadImage(vmm::GuestMemory& mem, std::span<const uint8_t> image) {
  absl::StatusOr<std::span<uint8_t>> ram = mem.Slice(0, mem.ram_bytes());
  SBX_FUZZ_ASSERT(ram.ok());
  size_t n = std::min(image.size(), ram->size());
  if (n > 0) std::memcpy(ram->data(), image.data(), n);
  std::memset(ram->data() + n, 0, ram->size() - n);
}

// A split virtqueue as a driver lays it out (§2.7): descriptor table
// (16-aligned), the available ring right after it, the used ring at the
// next 4-byte boundary.
struct RingLayout {
  vmm::GuestAddress desc = 0;
  vmm::GuestAddress avail = 0;
  vmm::GuestAddress used = 0;
  vmm::GuestAddress end = 0;  // first byte after the used ring
};

inline RingLayout LayOutRing(vmm::GuestAddress base, uint16_t size) {
  RingLayout r;
  r.desc = (base + 15) & ~vmm::GuestAddress{15};
  r.avail = r.desc + 16u * size;
  r.used = (r.avail + 6 + 2u * size + 3) & ~vmm::GuestAddress{3};
  r.end = r.used + 6 + 8u * size;
  return r;
}

// A queue size from one header byte: a power of 2 in [1, max].
// REQUIRES: max is a power of 2.
inline uint16_t QueueSizeFrom(uint8_t b, uint16_t max) {
  const int log2_max = std::bit_width(max) - 1;
  return static_cast<uint16_t>(1u << (b % (log2_max + 1)));
}

// --- Seeds. A target's seed writer builds a guest memory image the way a
// driver would (descriptors, rings, buffers) and writes it as a file.

// A guest memory image under construction (address 0 = byte 0).
class ImageBuilder {
 public:
  void Put(uint64_t addr, const void* data, size_t len) {
    if (bytes_.size() < addr + len) bytes_.resize(addr + len, 0);
    std::memcpy(bytes_.data() + addr, data, len);
  }
  template <typename T>
  void PutObj(uint64_t addr, T value) {
    Put(addr, &value, sizeof(value));
  }
  void Descriptor(uint64_t table, uint16_t index, uint64_t addr, uint32_t len,
                  uint16_t flags, uint16_t next) {
    uint64_t at = table + 16u * index;
    PutObj(at, addr);
    PutObj(at + 8, len);
    PutObj(at + 12, flags);
    PutObj(at + 14, next);
  }
  // avail->ring[i] = head, avail->idx = idx.
  void Avail(const RingLayout& r, uint16_t size, uint16_t i, uint16_t head,
             uint16_t idx) {
    PutObj<uint16_t>(r.avail + 4 + 2u * (i % size), head);
    PutObj<uint16_t>(r.avail + 2, idx);
    // Extend the image to the end of the used ring so a seed has the
    // whole queue in it.
    if (bytes_.size() < r.end) bytes_.resize(r.end, 0);
  }
  const std::vector<uint8_t>& bytes() const { return bytes_; }

 private:
  std::vector<uint8_t> bytes_;
};

// With SBX_FUZZ_WRITE_SEEDS=<dir> in the environment a target writes its
// hand-made seeds there and exits instead of fuzzing (scripts/fuzz
// --write-seeds).
inline const char* SeedDir() { return std::getenv("SBX_FUZZ_WRITE_SEEDS"); }

inline void WriteSeed(const std::string& name, std::span<const uint8_t> bytes) {
  std::string path = std::string(SeedDir()) + "/" + name;
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  SBX_FUZZ_ASSERT(fd >= 0);
  SBX_FUZZ_ASSERT(::write(fd, bytes.data(), bytes.size()) ==
                  static_cast<ssize_t>(bytes.size()));
  ::close(fd);
}

// Header + image, as the virtqueue targets read them.
inline std::vector<uint8_t> Concat(std::span<const uint8_t> header,
                                   std::span<const uint8_t> image) {
  std::vector<uint8_t> out(header.begin(), header.end());
  out.insert(out.end(), image.begin(), image.end());
  return out;
}

}  // namespace sbx::fuzz

// libFuzzer's two entry points for a target that defines, in namespace
// sbx::fuzz, `void WriteSeeds()` (its seed corpus, written when
// SBX_FUZZ_WRITE_SEEDS names a directory; the process then exits) and
// `void RunOne(const uint8_t*, size_t)` (one input). Use once, at global
// scope, after both.
#define SBX_FUZZ_ENTRY_POINTS()                                            \
  extern "C" int LLVMFuzzerInitialize(int*, char***) {                     \
    sbx::fuzz::QuietLogs();                                                \
    if (sbx::fuzz::SeedDir() != nullptr) {                                 \
      sbx::fuzz::WriteSeeds();                                             \
      std::exit(0);                                                        \
    }                                                                      \
    return 0;                                                              \
  }                                                                        \
  extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) { \
    sbx::fuzz::RunOne(data, size);                                         \
    return 0;                                                              \
  }

#endif  // SBX_FUZZ_FUZZ_COMMON_H_
