// SHA-256 of a file (FIPS 180-4), to check engine files against their manifest without a crypto library.
#pragma once

#include <string>

namespace pid {

// Lower-case hex digest of the file's bytes; throws pid::Error (checkpoint) when it cannot be read.
std::string sha256_file(const std::string& path);

}  // namespace pid
