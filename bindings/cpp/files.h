// Opening the files the runtime reads as the Python side does (pid_sdk/files.py): a regular file only, never a
// FIFO, device or folder (opened without blocking, judged by fstat before a byte is read), its size bounded before
// anything is read, and for a folder's files no path or symbolic link leading out of the folder.
#pragma once

#include <cstdint>
#include <string>

#include "error.h"

namespace pid {

// An open regular file, closed with the object.
class ReadFile {
 public:
  // Opens `path` (what: how messages name it); refuses anything but a regular file of at most max_bytes with a
  // pid::Error of `kind`.
  ReadFile(const std::string& path, const std::string& what, int64_t max_bytes, ErrorKind kind);
  ~ReadFile();
  ReadFile(const ReadFile&) = delete;
  ReadFile& operator=(const ReadFile&) = delete;

  int64_t size() const { return size_; }
  // Exactly `count` bytes at `offset`; a pid::Error when the file is shorter (it changed after it was opened).
  void read_at(int64_t offset, char* out, size_t count) const;
  std::string read_all() const;

 private:
  int fd_ = -1;
  int64_t size_ = 0;
  std::string path_, what_;
  ErrorKind kind_;
};

// FOLDER/rel after checking it stays inside the folder: no absolute path, no "..", no symbolic link leading out.
std::string inside(const std::string& folder, const std::string& rel);

}  // namespace pid
