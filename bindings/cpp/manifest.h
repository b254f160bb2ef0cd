// An engine folder's manifest.json, as the C++ runtime needs it: the model's latent space and the AOTInductor
// entries (bucket, batch, device, files, hashes, input shapes). Every path is confined to the folder.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace pid {

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
};

struct Entry {
  std::string key;  // as Python's Entry.key: backend:target:HxW:bB:precision
  std::string backend, target, precision, torch_version;
  int64_t height = 0, width = 0, batch = 0;
  std::map<std::string, std::string> files;   // graph (text, adapter, denoiser) -> path in the folder
  std::map<std::string, std::string> sha256;  // path in the folder -> hex digest
  std::map<std::string, std::vector<TensorSpec>> inputs;  // graph -> its inputs

  // The shape of one input of one graph; throws pid::Error (checkpoint) when the manifest lacks it.
  const std::vector<int64_t>& input_shape(const std::string& graph, const std::string& name) const;
};

struct Manifest {
  std::string preset, latent_space;
  std::vector<Entry> entries;
};

// Reads and checks FOLDER/manifest.json; throws pid::Error (checkpoint) when it is missing, damaged, of another
// format, or names a file outside the folder.
Manifest read_manifest(const std::string& folder);

// Every file of the entry exists and matches its sha256 (a file without a hash is refused).
void verify_entry(const std::string& folder, const Entry& entry);

}  // namespace pid
