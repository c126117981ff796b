// Defender's MachineAction answers (POST .../StopAndQuarantineFile, GET
// /api/machineactions/{id}, list answers) and the times in them.
#include <cstddef>
#include <cstdint>
#include <string>

#include "adapters/defender/machine_action.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace defender;
  const std::string json(reinterpret_cast<const char*>(data), size);
  auto action = api::ParseMachineAction(json);
  fuzz::CheckError(action.status());
  if (action.ok()) {
    fuzz::Check(!action->id.empty(), "a parsed action without an id");
    (void)action->IsFinal();
  }
  auto list = api::ParseMachineActionList(json);
  fuzz::CheckError(list.status());
  if (list.ok()) {
    for (const auto& entry : *list) fuzz::Check(!entry.id.empty(), "a listed action without an id");
  }
  (void)api::ParseDefenderTime(json);
  return 0;
}
