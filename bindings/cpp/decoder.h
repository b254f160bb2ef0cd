// pid::Decoder: an engine folder's AOTInductor graph sets, run by libtorch with the student sampler. The C ABI
// (bindings/c/pid_sdk.h) is a thin wrapper over this class; C++ applications may use it directly.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "windows.h"

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

  // Windowed decoding (pid_sdk/windows.py): any latent size, through windows of `window` output pixels ({0, 0}: the
  // largest entry that fits inside the output) whose neighbours share `overlap` pixels (-1: a quarter of the
  // window's shorter side, in whole latent cells), blended by `blend`. Equal to Python's decode(window=, overlap=,
  // blend=) on the CPU; a window covering the output is `decode`.
  void decode_windowed(const float* latent, const std::vector<int64_t>& shape, const std::string& latent_space,
                       float latent_sigma, int64_t seed, std::pair<int64_t, int64_t> window, int64_t overlap,
                       uint8_t* out, size_t out_size, Blend blend = Blend::linear);

  // {H, W} of a windowed decode of a latent of shape {B, C, h, w}: h and w times the folder's latent cell.
  std::pair<int64_t, int64_t> windowed_output_size(const std::vector<int64_t>& shape) const;

  const std::string& latent_space() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace pid
