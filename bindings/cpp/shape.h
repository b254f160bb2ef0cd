// Latent shapes as the runtime judges them: the element count bounded before anything is allocated, and the
// printed form error messages use.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace pid {

constexpr int64_t MAX_LATENT_ELEMENTS = int64_t(1) << 28;  // as pid_sdk.latent_files.MAX_ELEMENTS

// The number of elements, or MAX_LATENT_ELEMENTS + 1 when a dimension is < 1 or the count passes the bound.
inline int64_t bounded_count(const std::vector<int64_t>& shape) {
  int64_t count = 1;
  for (int64_t d : shape) count = (d < 1 || d > MAX_LATENT_ELEMENTS) ? MAX_LATENT_ELEMENTS + 1 : count * d;
  return count;
}

// "[1, 16, 16, 16]"
inline std::string format_shape(const std::vector<int64_t>& shape) {
  std::string text;
  for (int64_t d : shape) text += (text.empty() ? "" : ", ") + std::to_string(d);
  return "[" + text + "]";
}

}  // namespace pid
