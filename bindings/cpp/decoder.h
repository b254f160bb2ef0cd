// pid::Decoder: an engine folder's AOTInductor graph sets, run by libtorch with the student sampler. The C ABI
// (bindings/c/pid_sdk.h) is a thin wrapper over this class; C++ applications may use it directly.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace pid {

class Decoder {
 public:
  // Reads and checks the folder's manifest; throws pid::Error when no AOTInductor entry runs on `device`
  // ("cpu", "cuda", "cuda:N") with this libtorch.
  Decoder(const std::string& folder, const std::string& device);
  ~Decoder();
  Decoder(const Decoder&) = delete;
  Decoder& operator=(const Decoder&) = delete;

  // {H, W} of the images decoded from a latent of shape {B, C, h, w}.
  std::pair<int64_t, int64_t> output_size(const std::vector<int64_t>& shape) const;

  // Decodes a float32 latent {B, C, h, w} into uint8 [B, H, W, 3] written to `out` (out_size bytes). One decode at
  // a time per Decoder (a mutex serialises calls); throws pid::Error.
  void decode(const float* latent, const std::vector<int64_t>& shape, const std::string& latent_space,
              float latent_sigma, int64_t seed, uint8_t* out, size_t out_size);

  const std::string& latent_space() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace pid
