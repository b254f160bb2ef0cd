#include "manifest.h"

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "error.h"
#include "files.h"
#include "sha256.h"
#include "shape.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace pid {
namespace {

const char* FORMAT = "pid-sdk-engines";
const char* REEXPORT = "re-export the engine set (pid-sdk export FOLDER --format aoti)";

// Bounds every number of an entry keeps (as Python's Entry.from_dict): nothing the runtime multiplies or allocates
// from can be zero, negative or large enough to overflow.
constexpr int64_t MAX_SIDE = 65536, MAX_BATCH = 1024, MAX_DIM = MAX_SIDE * 64, MAX_TENSOR_ELEMENTS = int64_t(1) << 32;
constexpr int64_t MAX_MANIFEST_BYTES = int64_t(16) << 20;  // as pid_sdk.files.MAX_JSON_BYTES
constexpr int64_t MAX_PACKAGE_BYTES = int64_t(64) << 30;
constexpr int MAX_NESTING = 32;                             // as pid_sdk.files.MAX_JSON_NESTING

int64_t integer(const json& value, int64_t low, int64_t high, const std::string& what) {
  if (!value.is_number_integer() || value.get<int64_t>() < low || value.get<int64_t>() > high ||
      (value.is_number_unsigned() && value.get<uint64_t>() > uint64_t(high)))
    throw Error(ErrorKind::checkpoint, "The manifest gives " + what + " out of range.", value.dump().substr(0, 80),
                "an integer in [" + std::to_string(low) + ", " + std::to_string(high) + "]", REEXPORT);
  return value.get<int64_t>();
}

std::vector<int64_t> tensor_shape(const json& shape, const std::string& what) {
  std::vector<int64_t> dims;
  for (const auto& d : shape) dims.push_back(integer(d, 1, MAX_DIM, what + " dimension"));
  if (dims.empty() || dims.size() > 8 || bounded_product(dims, MAX_TENSOR_ELEMENTS) > MAX_TENSOR_ELEMENTS)
    throw Error(ErrorKind::checkpoint, "The manifest gives " + what + " a shape out of range.", format_shape(dims),
                "1 to 8 dimensions, at most 2^32 elements", REEXPORT);
  return dims;
}

Entry parse_entry(const json& e) {
  Entry entry;
  entry.backend = e.at("backend").get<std::string>();
  entry.target = e.value("target", json()).is_string() ? e["target"].get<std::string>() : "";
  entry.precision = e.at("precision").get<std::string>();
  entry.torch_version = e.value("torch_version", json()).is_string() ? e["torch_version"].get<std::string>() : "";
  entry.height = integer(e.at("bucket").at(0), 1, MAX_SIDE, "a bucket height");
  entry.width = integer(e.at("bucket").at(1), 1, MAX_SIDE, "a bucket width");
  entry.batch = integer(e.at("batch"), 1, MAX_BATCH, "a batch");
  entry.files = e.at("files").get<std::map<std::string, std::string>>();
  entry.sha256 = e.at("sha256").get<std::map<std::string, std::string>>();
  for (const auto& [graph, spec] : e.at("io").items())
    for (const auto& t : spec.at("inputs"))
      entry.inputs[graph].push_back({t.at("name").get<std::string>(), tensor_shape(t.at("shape"), graph + " input")});
  std::string attention = e.value("attention_dtype", json()).is_string() ? e["attention_dtype"].get<std::string>() : "";
  entry.key = entry.backend + ":" + (entry.target.empty() ? "-" : entry.target) + ":" + std::to_string(entry.height) +
              "x" + std::to_string(entry.width) + ":b" + std::to_string(entry.batch) + ":" + entry.precision +
              (attention.empty() ? "" : "-attn-" + attention);  // as Python's Entry.key
  return entry;
}

}  // namespace

const std::vector<int64_t>& Entry::input_shape(const std::string& graph, const std::string& name) const {
  auto found = inputs.find(graph);
  if (found != inputs.end())
    for (const auto& t : found->second)
      if (t.name == name) return t.shape;
  throw Error(ErrorKind::checkpoint, "The manifest entry " + key + " does not describe the input " + graph + "." +
                                         name + ".", "", "", REEXPORT);
}

// The manifest's text as JSON, refused before it is built when it nests deeper than any manifest does (a parser
// callback sees every depth as it is reached).
static json parse_bounded(const std::string& text) {
  return json::parse(text, [](int depth, json::parse_event_t, json&) {
    if (depth > MAX_NESTING) throw Error(ErrorKind::checkpoint, "The manifest nests deeper than any manifest does.",
                                         "depth > " + std::to_string(MAX_NESTING), "", REEXPORT);
    return true;
  });
}

Manifest read_manifest(const std::string& folder) {
  std::string path = inside(folder, "manifest.json");
  std::error_code ec;
  if (!fs::exists(path, ec))
    throw Error(ErrorKind::checkpoint, folder + " has no engine manifest (manifest.json).", folder, "",
                "export AOTInductor graphs into it: pid-sdk export FOLDER --format aoti");
  ReadFile file(path, "engine manifest", MAX_MANIFEST_BYTES, ErrorKind::checkpoint);
  Manifest manifest;
  try {
    json data = parse_bounded(file.read_all());
    if (data.value("format", json()) != FORMAT || data.value("format_version", json()) != 1)
      throw Error(ErrorKind::checkpoint, path + " is not a pid-sdk engine manifest of a supported version.",
                  "", std::string("format=") + FORMAT + " version=1", REEXPORT);
    manifest.preset = data.at("preset").get<std::string>();
    manifest.latent_space = data.at("config").at("latent_space").get<std::string>();
    for (const auto& e : data.at("entries")) manifest.entries.push_back(parse_entry(e));
  } catch (const json::exception& exc) {
    throw Error(ErrorKind::checkpoint, path + " is damaged.", std::string(exc.what()).substr(0, 200), "", REEXPORT);
  }
  for (const auto& entry : manifest.entries) {
    for (const auto& [graph, rel] : entry.files) inside(folder, rel);
    for (const auto& [rel, digest] : entry.sha256) inside(folder, rel);
  }
  return manifest;
}

void verify_entry(const std::string& folder, const Entry& entry) {
  for (const auto& [graph, rel] : entry.files) {
    std::string file = inside(folder, rel);
    auto want = entry.sha256.find(rel);
    if (want == entry.sha256.end())
      throw Error(ErrorKind::checkpoint, "The manifest lists " + rel + " of " + entry.key + " without a sha256.", rel,
                  "", "re-export the entry (pid-sdk export FOLDER --format aoti)");
    std::error_code ec;
    if (!fs::exists(file, ec))
      throw Error(ErrorKind::checkpoint, rel + " of " + entry.key + " is missing.", file, "",
                  "re-export the entry (pid-sdk export FOLDER --format aoti)");
    std::string digest = sha256_file(file, MAX_PACKAGE_BYTES);  // a FIFO, device or folder is refused, not read
    if (digest != want->second)
      throw Error(ErrorKind::checkpoint,
                  rel + " of " + entry.key + " does not match the manifest's sha256 (modified, truncated or replaced).",
                  digest, want->second, "re-export the entry (pid-sdk export FOLDER --format aoti)");
  }
}

}  // namespace pid
