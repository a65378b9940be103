#ifndef SBX_BASE_UNIQUE_FD_H_
#define SBX_BASE_UNIQUE_FD_H_

namespace sbx {

// Owns one file descriptor and closes it when destroyed. Move-only: exactly
// one UniqueFd owns a given descriptor, so nothing is closed twice and
// nothing leaks on an early return. Holds -1 when empty.
class UniqueFd {
 public:
  UniqueFd() = default;
  // Takes ownership of `fd` (which may be -1).
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() { reset(); }

  UniqueFd(UniqueFd&& other) noexcept : fd_(other.release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) reset(other.release());
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  explicit operator bool() const { return valid(); }

  // Gives up ownership without closing; returns the descriptor.
  [[nodiscard]] int release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }

  // Closes the owned descriptor (if any) and takes ownership of `fd`.
  void reset(int fd = -1);

 private:
  int fd_ = -1;
};

}  // namespace sbx

#endif  // SBX_BASE_UNIQUE_FD_H_
