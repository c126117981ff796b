// Defender's File (GET /api/files/{hash}) and Machine list (GET /api/machines)
// answers.
#include <cctype>
#include <cstddef>
#include <cstdint>
#include <string>

#include "adapters/defender/entities.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace defender;
  const std::string json(reinterpret_cast<const char*>(data), size);
  auto file = api::ParseFileInfo(json);
  fuzz::CheckError(file.status());
  if (file.ok()) {
    fuzz::Check(!file->sha1.empty() || !file->sha256.empty(), "a file without sha1 or sha256");
    for (char c : file->sha1 + file->sha256) {
      fuzz::Check(!std::isupper(static_cast<unsigned char>(c)), "a hash not lowercased");
    }
    if (file->size) fuzz::Check(*file->size >= 0, "a negative file size");
  }
  auto machines = api::ParseMachineList(json);
  fuzz::CheckError(machines.status());
  if (machines.ok()) {
    for (const auto& machine : *machines) fuzz::Check(!machine.id.empty(), "a machine without an id");
  }
  return 0;
}
