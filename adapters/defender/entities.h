// entities.h: lenient parsers for Defender's File and Machine entities
// (FileInfo and MachineInfo, defender_client.h).
//
// As for MachineAction (machine_action.h): unknown fields are ignored, any
// field may be null or missing, and a field of the wrong type counts as
// missing. Errors are INTERNAL with reason BAD_UPSTREAM_RESPONSE and never
// quote the body. Never throws.
//
//   absl::StatusOr<FileInfo> file = ParseFileInfo(response.body);
//   if (file.ok() && !file->sha1.empty()) { ... }
#ifndef DEFENDER_ADAPTERS_DEFENDER_ENTITIES_H_
#define DEFENDER_ADAPTERS_DEFENDER_ENTITIES_H_

#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "adapters/defender/defender_client.h"

namespace defender::api {

// ParseFileInfo reads one File object (GET /api/files/{hash}): sha1, sha256,
// md5, fileType, size (a non-negative integer), filePublisher, signer,
// isValidCertificate (a boolean), determinationType. sha1 and sha256 are
// lowercased. A body that is not a JSON object, or has neither a non-empty
// string "sha1" nor "sha256", is an error.
absl::StatusOr<FileInfo> ParseFileInfo(absl::string_view json);

// ParseMachineList reads a list answer {"value": [Machine, ...]} (GET
// /api/machines): id (lowercased), computerDnsName, osPlatform, healthStatus,
// lastIpAddress, lastSeen (as ParseDefenderTime reads it). Entries that are
// not objects or have no non-empty string "id" are skipped, so the list may
// be empty. A body without a "value" array is an error.
absl::StatusOr<std::vector<MachineInfo>> ParseMachineList(absl::string_view json);

}  // namespace defender::api

#endif  // DEFENDER_ADAPTERS_DEFENDER_ENTITIES_H_
