#include "files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

namespace fs = std::filesystem;

namespace pid {
namespace {

std::string kind_of(mode_t mode) {
  if (S_ISDIR(mode)) return "a folder";
  if (S_ISFIFO(mode)) return "a FIFO (named pipe)";
  if (S_ISCHR(mode) || S_ISBLK(mode)) return "a device";
  if (S_ISSOCK(mode)) return "a socket";
  return "not a regular file";
}

}  // namespace

ReadFile::ReadFile(const std::string& path, const std::string& what, int64_t max_bytes, ErrorKind kind)
    : path_(path), what_(what), kind_(kind) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);  // O_NONBLOCK: a FIFO must not hang the open
  if (fd_ < 0) {
    int err = errno;
    std::string why = err == ENOENT         ? "it does not exist"
                      : err == ENAMETOOLONG ? "the path is too long"
                      : err == ELOOP        ? "too many symbolic links"
                      : err == EACCES       ? "permission denied"
                                            : std::strerror(err);
    throw Error(kind, "Cannot open the " + what + ": " + why + ".", path.substr(0, 300), "a readable regular file",
                "check the path");
  }
  struct stat st {};
  int stat_failed = ::fstat(fd_, &st);
  if (stat_failed || !S_ISREG(st.st_mode)) {
    std::string got = stat_failed ? std::strerror(errno) : kind_of(st.st_mode);
    ::close(fd_);
    throw Error(kind, "The " + what + " is " + got + ", not a regular file.", path.substr(0, 300),
                "a regular file", "pass the file itself");
  }
  if (st.st_size > max_bytes) {
    ::close(fd_);
    throw Error(kind, "The " + what + " is larger than any this runtime reads.",
                std::to_string(st.st_size) + " bytes", "at most " + std::to_string(max_bytes) + " bytes",
                "check that the path names the right file");
  }
  size_ = st.st_size;
  ::fcntl(fd_, F_SETFL, ::fcntl(fd_, F_GETFL) & ~O_NONBLOCK);  // a regular file: ordinary reads from here on
}

ReadFile::~ReadFile() {
  if (fd_ >= 0) ::close(fd_);
}

void ReadFile::read_at(int64_t offset, char* out, size_t count) const {
  while (count > 0) {
    ssize_t got = ::pread(fd_, out, std::min(count, size_t(1) << 30), offset);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0)
      throw Error(kind_, "The " + what_ + " could not be read to its end (truncated while it was read?).", path_,
                  std::to_string(size_) + " bytes", "write the file again");
    out += got, offset += got, count -= size_t(got);
  }
}

std::string ReadFile::read_all() const {
  std::string data(size_t(size_), '\0');
  read_at(0, data.data(), data.size());
  return data;
}

std::string inside(const std::string& folder, const std::string& rel) {
  fs::path path(rel);
  bool bad = rel.empty() || path.is_absolute();
  for (const auto& part : path) bad = bad || part == "..";
  std::error_code ec;
  fs::path root = fs::weakly_canonical(folder, ec);
  if (!bad) {
    fs::path resolved = fs::weakly_canonical(root / path, ec);
    auto mismatch = std::mismatch(root.begin(), root.end(), resolved.begin(), resolved.end());
    bad = ec || mismatch.first != root.end();
  }
  if (bad)
    throw Error(ErrorKind::checkpoint, "The manifest of " + folder + " names a file outside its folder.", rel,
                "a relative path inside the engine folder (no absolute path, no '..', no symbolic link leading out)",
                "rebuild the folder with pid-sdk export; never edit paths by hand");
  return (root / path).string();
}

}  // namespace pid
