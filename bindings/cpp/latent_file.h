// Reading a latent from a safetensors file without Python: the header judged before any data is read.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "shape.h"

namespace pid {

struct LatentFile {
  std::vector<int64_t> shape;  // {B, C, h, w}; a [C, h, w] tensor is read as {1, C, h, w}
  std::vector<float> data;     // empty when only the shape was asked for
};

// The tensor named "latent", or the file's only tensor; float32, float16 or bfloat16, widened to float32.
LatentFile read_latent_file(const std::string& path, bool with_data);

}  // namespace pid
