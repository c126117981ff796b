#include "adapters/journal/journal.h"

#include <utility>

#include "absl/time/clock.h"

namespace defender::journal {

void NoJournal::Begin(Entry entry, absl::Time window_start, BeginCallback done) {
  entry.id = next_id_.fetch_add(1, std::memory_order_relaxed);
  entry.created = entry.updated = absl::Now();
  BeginResult result;
  result.created = true;
  result.entry = std::move(entry);
  std::move(done)(std::move(result));
}

void NoJournal::Update(Entry entry, DoneCallback done) { std::move(done)(absl::OkStatus()); }

absl::StatusOr<std::vector<Entry>> NoJournal::List(const ListOptions& options) const {
  return std::vector<Entry>();
}

}  // namespace defender::journal
