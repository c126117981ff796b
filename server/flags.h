// flags.h: a small command-line flag parser for the plugin's binaries.
//
// Accepts "--name value", "--name=value" and, for booleans, "--name". Names may
// contain dashes ("--tls-cert"), which absl::flags does not allow. Anything
// that does not start with "--" is a positional argument; "--" ends the flags.
//
//   std::string listen = "127.0.0.1:50051";
//   FlagParser flags("defender-plugin");
//   flags.AddString("listen", &listen, "HOST:PORT to serve gRPC on");
//   if (absl::Status s = flags.Parse(argc, argv); !s.ok()) { ... exit 2 ... }
#ifndef DEFENDER_SERVER_FLAGS_H_
#define DEFENDER_SERVER_FLAGS_H_

#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace defender {

// FlagParser parses flags into variables the caller owns.
class FlagParser {
 public:
  explicit FlagParser(std::string program) : program_(std::move(program)) {}

  // AddString / AddInt / AddBool register `--name` writing to `target`, whose
  // current value is the default shown in Usage(). `value_name` names the
  // value in Usage() (e.g. "HOST:PORT").
  void AddString(const std::string& name, std::string* target, const std::string& help,
                 const std::string& value_name = "VALUE");
  void AddInt(const std::string& name, int* target, const std::string& help);
  void AddBool(const std::string& name, bool* target, const std::string& help);

  // Parse reads argv[1..]. Unknown flags, a missing value, or a bad number are
  // INVALID_ARGUMENT naming the flag. "--help" sets HelpRequested().
  absl::Status Parse(int argc, const char* const* argv);

  // WasSet says whether `--name` appeared on the command line.
  bool WasSet(const std::string& name) const { return set_.count(name) > 0; }
  bool HelpRequested() const { return help_; }
  const std::vector<std::string>& positional() const { return positional_; }

  // Usage lists every flag with its help and default.
  std::string Usage() const;

 private:
  enum class Kind { kString, kInt, kBool };
  struct Flag {
    Kind kind;
    void* target;
    std::string help;
    std::string value_name;
    std::string default_text;
  };
  std::string program_;
  std::map<std::string, Flag> flags_;
  std::vector<std::string> order_;
  std::set<std::string> set_;
  std::vector<std::string> positional_;
  bool help_ = false;
};

}  // namespace defender

#endif  // DEFENDER_SERVER_FLAGS_H_
