#include "common/random.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/random.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"

namespace hkv {
namespace {

// Reads `size` bytes from /dev/urandom (kernels without getrandom).
absl::Status ReadUrandom(unsigned char* out, size_t size) {
  const int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return absl::InternalError(absl::StrCat("cannot open /dev/urandom: ", strerror(errno)));
  }
  size_t done = 0;
  while (done < size) {
    const ssize_t n = read(fd, out + done, size - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = n < 0 ? errno : EIO;
      close(fd);
      return absl::InternalError(absl::StrCat("cannot read /dev/urandom: ", strerror(err)));
    }
    done += static_cast<size_t>(n);
  }
  close(fd);
  return absl::OkStatus();
}

}  // namespace

absl::Status FillRandomBytes(void* data, size_t size) {
  auto* out = static_cast<unsigned char*>(data);
  size_t done = 0;
  while (done < size) {
    // Blocks only until the kernel's pool is first initialised (early boot), never after.
    const ssize_t n = getrandom(out + done, size - done, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == ENOSYS) return ReadUrandom(out + done, size - done);
    if (n < 0) return absl::InternalError(absl::StrCat("getrandom failed: ", strerror(errno)));
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> RandomUint64() {
  uint64_t value = 0;
  absl::Status s = FillRandomBytes(&value, sizeof(value));
  if (!s.ok()) return s;
  return value;
}

absl::StatusOr<std::string> RandomHex(size_t num_bytes) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::vector<unsigned char> bytes(num_bytes);
  absl::Status s = FillRandomBytes(bytes.data(), bytes.size());
  if (!s.ok()) return s;
  std::string out;
  out.reserve(2 * num_bytes);
  for (unsigned char b : bytes) {
    out.push_back(kHex[b >> 4]);
    out.push_back(kHex[b & 0xf]);
  }
  return out;
}

}  // namespace hkv
