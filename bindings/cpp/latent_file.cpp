#include "latent_file.h"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "error.h"

namespace pid {
namespace {

using nlohmann::json;
const char* EXPECTED = "a safetensors file holding one float latent [B, C, h, w] or [C, h, w] (or one named 'latent')";
const char* FIX = "save it with safetensors.torch.save_file({'latent': z.float().contiguous()}, path)";

Error bad_file(const std::string& what, const std::string& received) {
  return Error(ErrorKind::input, what, received, EXPECTED, FIX);
}

float half_to_float(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000) << 16, exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
  uint32_t bits;
  if (exponent == 0x1f) {
    bits = sign | 0x7f800000 | (mantissa << 13);
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    bits = sign;
  } else {  // subnormal half: normalise
    int shift = 0;
    while (!(mantissa & 0x400)) mantissa <<= 1, ++shift;
    bits = sign | uint32_t(113 - shift) << 23 | ((mantissa & 0x3ff) << 13);
  }
  float out;
  std::memcpy(&out, &bits, 4);
  return out;
}

float widen(const char* p, const std::string& dtype) {
  if (dtype == "F32") {
    float f;
    std::memcpy(&f, p, 4);
    return f;
  }
  uint16_t h;
  std::memcpy(&h, p, 2);
  if (dtype == "F16") return half_to_float(h);
  uint32_t bits = uint32_t(h) << 16;  // BF16 is the top half of a float32
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

}  // namespace

LatentFile read_latent_file(const std::string& path, bool with_data) {
  std::ifstream in(path, std::ios::binary);
  std::error_code ec;
  if (!in || !std::filesystem::is_regular_file(path, ec)) throw bad_file("Cannot open the latent file.", path);
  uint64_t file_size = std::filesystem::file_size(path, ec), header_size = 0;
  in.read(reinterpret_cast<char*>(&header_size), 8);  // little-endian, as every platform this builds on
  if (!in || header_size == 0 || header_size > (100u << 20) || 8 + header_size > file_size)
    throw bad_file("The file is not a safetensors file (its header length is wrong).", path);
  std::string header(header_size, '\0');
  in.read(header.data(), header_size);
  json meta;
  try {
    meta = json::parse(header);
  } catch (const json::exception&) {
    throw bad_file("The safetensors header is not valid JSON.", path);
  }
  meta.erase("__metadata__");
  std::string name = meta.contains("latent") ? "latent" : (meta.size() == 1 ? meta.begin().key() : "");
  if (name.empty())
    throw bad_file("The file holds several tensors and none is named 'latent'.", meta.dump().substr(0, 200));
  LatentFile out;
  std::string dtype;
  uint64_t begin = 0, end = 0;
  try {
    dtype = meta[name].at("dtype").get<std::string>();
    out.shape = meta[name].at("shape").get<std::vector<int64_t>>();
    begin = meta[name].at("data_offsets").at(0).get<uint64_t>();
    end = meta[name].at("data_offsets").at(1).get<uint64_t>();
  } catch (const json::exception&) {
    throw bad_file("The safetensors header does not describe its tensor.", meta.dump().substr(0, 200));
  }
  if (dtype != "F32" && dtype != "F16" && dtype != "BF16")
    throw bad_file("The latent has a dtype this reader does not take.", dtype);
  if (out.shape.size() == 3) out.shape.insert(out.shape.begin(), 1);
  int64_t count = bounded_count(out.shape);
  if (out.shape.size() != 4 || count > MAX_LATENT_ELEMENTS)
    throw bad_file("The latent has the wrong rank or size.", "shape " + format_shape(out.shape));
  uint64_t item = dtype == "F32" ? 4 : 2;
  if (end < begin || end - begin != uint64_t(count) * item || 8 + header_size + end > file_size)
    throw bad_file("The tensor's data offsets do not match its shape or the file size (truncated?).", path);
  if (!with_data) return out;
  std::vector<char> raw(end - begin);
  in.seekg(int64_t(8 + header_size + begin));
  in.read(raw.data(), int64_t(raw.size()));
  if (!in) throw bad_file("The latent file could not be read to its end.", path);
  out.data.resize(size_t(count));
  for (int64_t i = 0; i < count; ++i) out.data[size_t(i)] = widen(raw.data() + i * item, dtype);
  return out;
}

}  // namespace pid
