#include "latent_file.h"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstring>
#include <nlohmann/json.hpp>

#include "error.h"
#include "files.h"

namespace pid {
namespace {

using nlohmann::json;
const char* EXPECTED = "a safetensors file holding one float latent [B, C, h, w] or [C, h, w] (or one named 'latent')";
const char* FIX = "save it with safetensors.torch.save_file({'latent': z.float().contiguous()}, path)";
constexpr uint64_t MAX_HEADER_BYTES = uint64_t(100) << 20;  // safetensors' own limit
constexpr int MAX_NESTING = 8;                              // a safetensors header is two levels deep
constexpr int64_t MAX_FILE_BYTES = 8 + int64_t(MAX_HEADER_BYTES) + MAX_LATENT_ELEMENTS * 4;

Error bad_file(const std::string& what, const std::string& received) {
  return Error(ErrorKind::input, what, received, EXPECTED, FIX);
}

float widen(const char* p, const std::string& dtype) {
  if (dtype == "F32") {
    float f;
    std::memcpy(&f, p, 4);
    return f;
  }
  uint16_t bits;
  std::memcpy(&bits, p, 2);
  if (dtype == "F16") return static_cast<float>(c10::Half(bits, c10::Half::from_bits()));
  return static_cast<float>(c10::BFloat16(bits, c10::BFloat16::from_bits()));
}

json parse_header(const std::string& header) {
  try {
    return json::parse(header, [](int depth, json::parse_event_t, json&) {
      if (depth > MAX_NESTING) throw bad_file("The safetensors header nests deeper than any header does.", "");
      return true;
    });
  } catch (const json::exception&) {
    throw bad_file("The safetensors header is not valid JSON.", header.substr(0, 80));
  }
}

}  // namespace

LatentFile read_latent_file(const std::string& path, bool with_data) {
  ReadFile in(path, "latent file", MAX_FILE_BYTES, ErrorKind::input);  // a regular file: never a FIFO or device
  uint64_t file_size = uint64_t(in.size()), header_size = 0;
  if (file_size < 8) throw bad_file("The file is not a safetensors file (it is shorter than its header length).", path);
  in.read_at(0, reinterpret_cast<char*>(&header_size), 8);  // little-endian, as every platform this builds on
  if (header_size == 0 || header_size > MAX_HEADER_BYTES || header_size > file_size - 8)
    throw bad_file("The file is not a safetensors file (its header length is wrong).", path);
  std::string header(header_size, '\0');
  in.read_at(8, header.data(), header_size);
  json meta = parse_header(header);
  if (!meta.is_object()) throw bad_file("The safetensors header is not a JSON object.", header.substr(0, 80));
  meta.erase("__metadata__");
  std::string name = meta.contains("latent") ? "latent" : (meta.size() == 1 ? meta.begin().key() : "");
  if (name.empty())
    throw bad_file("The file holds several tensors and none is named 'latent'.", meta.dump().substr(0, 200));
  LatentFile out;
  std::string dtype;
  uint64_t begin = 0, end = 0;
  try {
    dtype = meta[name].at("dtype").get<std::string>();
    for (const auto& d : meta[name].at("shape")) {
      if (!d.is_number_integer() || out.shape.size() >= 8) throw bad_file("The latent has the wrong rank or size.", "");
      out.shape.push_back(d.get<int64_t>());
    }
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
  if (end < begin || end - begin != uint64_t(count) * item || end > file_size - 8 - header_size)  // no sum overflows
    throw bad_file("The tensor's data offsets do not match its shape or the file size (truncated?).", path);
  if (!with_data) return out;
  std::vector<char> raw(end - begin);
  in.read_at(int64_t(8 + header_size + begin), raw.data(), raw.size());
  out.data.resize(size_t(count));
  for (int64_t i = 0; i < count; ++i) out.data[size_t(i)] = widen(raw.data() + i * item, dtype);
  return out;
}

}  // namespace pid
