#include "manifest.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "error.h"
#include "sha256.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace pid {
namespace {

const char* FORMAT = "pid-sdk-engines";
const char* REEXPORT = "re-export the engine set (pid-sdk export FOLDER --format aoti)";

Entry parse_entry(const json& e) {
  Entry entry;
  entry.backend = e.at("backend").get<std::string>();
  entry.target = e.value("target", json()).is_string() ? e["target"].get<std::string>() : "";
  entry.precision = e.at("precision").get<std::string>();
  entry.torch_version = e.value("torch_version", json()).is_string() ? e["torch_version"].get<std::string>() : "";
  entry.height = e.at("bucket").at(0).get<int64_t>();
  entry.width = e.at("bucket").at(1).get<int64_t>();
  entry.batch = e.at("batch").get<int64_t>();
  entry.files = e.at("files").get<std::map<std::string, std::string>>();
  entry.sha256 = e.at("sha256").get<std::map<std::string, std::string>>();
  for (const auto& [graph, spec] : e.at("io").items())
    for (const auto& t : spec.at("inputs"))
      entry.inputs[graph].push_back({t.at("name").get<std::string>(), t.at("shape").get<std::vector<int64_t>>()});
  entry.key = entry.backend + ":" + (entry.target.empty() ? "-" : entry.target) + ":" + std::to_string(entry.height) +
              "x" + std::to_string(entry.width) + ":b" + std::to_string(entry.batch) + ":" + entry.precision;
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

std::string inside(const std::string& folder, const std::string& rel) {
  fs::path path(rel);
  bool bad = rel.empty() || path.is_absolute();
  for (const auto& part : path) bad = bad || part == "..";
  std::error_code ec;
  fs::path root = fs::weakly_canonical(folder, ec);
  if (!bad) {
    fs::path resolved = fs::weakly_canonical(root / path, ec);
    auto mismatch = std::mismatch(root.begin(), root.end(), resolved.begin(), resolved.end());
    bad = ec || mismatch.first != root.end();
  }
  if (bad)
    throw Error(ErrorKind::checkpoint, "The manifest of " + folder + " names a file outside its folder.", rel,
                "a relative path inside the engine folder (no absolute path, no '..', no symbolic link leading out)",
                "rebuild the folder with pid-sdk export; never edit paths by hand");
  return (root / path).string();
}

Manifest read_manifest(const std::string& folder) {
  fs::path path = fs::path(folder) / "manifest.json";
  std::error_code ec;
  if (!fs::is_regular_file(path, ec))
    throw Error(ErrorKind::checkpoint, folder + " has no engine manifest (manifest.json).", folder, "",
                "export AOTInductor graphs into it: pid-sdk export FOLDER --format aoti");
  Manifest manifest;
  try {
    std::ifstream in(path);
    json data = json::parse(in);
    if (data.value("format", json()) != FORMAT || data.value("format_version", json()) != 1)
      throw Error(ErrorKind::checkpoint, path.string() + " is not a pid-sdk engine manifest of a supported version.",
                  "", std::string("format=") + FORMAT + " version=1", REEXPORT);
    manifest.preset = data.at("preset").get<std::string>();
    manifest.latent_space = data.at("config").at("latent_space").get<std::string>();
    for (const auto& e : data.at("entries")) manifest.entries.push_back(parse_entry(e));
  } catch (const json::exception& exc) {
    throw Error(ErrorKind::checkpoint, path.string() + " is damaged.", std::string(exc.what()).substr(0, 200), "",
                REEXPORT);
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
    if (!fs::is_regular_file(file, ec))
      throw Error(ErrorKind::checkpoint, rel + " of " + entry.key + " is missing.", file, "",
                  "re-export the entry (pid-sdk export FOLDER --format aoti)");
    std::string digest = sha256_file(file);
    if (digest != want->second)
      throw Error(ErrorKind::checkpoint,
                  rel + " of " + entry.key + " does not match the manifest's sha256 (modified, truncated or replaced).",
                  digest, want->second, "re-export the entry (pid-sdk export FOLDER --format aoti)");
  }
}

}  // namespace pid
