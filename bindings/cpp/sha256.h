// SHA-256 of a file through OpenSSL's EVP interface, to check engine files against their manifest.
#pragma once

#include <cstdint>
#include <string>

namespace pid {

// Lower-case hex digest of a regular file of at most max_bytes (files.h: opened without blocking, never a FIFO or
// device); throws pid::Error (checkpoint) when it cannot be read.
std::string sha256_file(const std::string& path, int64_t max_bytes);

}  // namespace pid
