#include "server/flags.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace defender {

void FlagParser::AddString(const std::string& name, std::string* target, const std::string& help,
                           const std::string& value_name) {
  flags_[name] = Flag{Kind::kString, target, help, value_name, *target};
  order_.push_back(name);
}

void FlagParser::AddInt(const std::string& name, int* target, const std::string& help) {
  flags_[name] = Flag{Kind::kInt, target, help, "N", absl::StrCat(*target)};
  order_.push_back(name);
}

void FlagParser::AddBool(const std::string& name, bool* target, const std::string& help) {
  flags_[name] = Flag{Kind::kBool, target, help, "", *target ? "true" : "false"};
  order_.push_back(name);
}

absl::Status FlagParser::Parse(int argc, const char* const* argv) {
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    if (arg == "--") {
      for (++i; i < argc; ++i) positional_.emplace_back(argv[i]);
      break;
    }
    if (arg.substr(0, 2) != "--" || arg.size() == 2) {
      positional_.emplace_back(arg);
      continue;
    }
    arg.remove_prefix(2);
    std::string name(arg);
    std::string value;
    bool has_value = false;
    if (size_t eq = arg.find('='); eq != absl::string_view::npos) {
      name = std::string(arg.substr(0, eq));
      value = std::string(arg.substr(eq + 1));
      has_value = true;
    }
    if (name == "help") {
      help_ = true;
      continue;
    }
    auto it = flags_.find(name);
    if (it == flags_.end()) {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name));
    }
    Flag& flag = it->second;
    if (flag.kind == Kind::kBool) {
      bool b = true;
      if (has_value && !absl::SimpleAtob(value, &b)) {
        return absl::InvalidArgumentError(absl::StrCat("--", name, " expects true or false"));
      }
      *static_cast<bool*>(flag.target) = b;
      set_.insert(name);
      continue;
    }
    if (!has_value) {
      if (i + 1 >= argc) {
        return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a value"));
      }
      value = argv[++i];
    }
    if (flag.kind == Kind::kInt) {
      int n = 0;
      if (!absl::SimpleAtoi(value, &n)) {
        return absl::InvalidArgumentError(absl::StrCat("--", name, " expects a whole number"));
      }
      *static_cast<int*>(flag.target) = n;
    } else {
      *static_cast<std::string*>(flag.target) = value;
    }
    set_.insert(name);
  }
  return absl::OkStatus();
}

std::string FlagParser::Usage() const {
  std::string out = absl::StrCat("usage: ", program_, " [flags]\n");
  for (const std::string& name : order_) {
    const Flag& flag = flags_.at(name);
    std::string left = absl::StrCat("  --", name);
    if (!flag.value_name.empty()) absl::StrAppend(&left, " ", flag.value_name);
    if (left.size() < 34) left.resize(34, ' ');
    absl::StrAppend(&out, left, " ", flag.help);
    if (!flag.default_text.empty() && flag.kind != Kind::kBool) {
      absl::StrAppend(&out, " (default: ", flag.default_text, ")");
    }
    absl::StrAppend(&out, "\n");
  }
  return out;
}

}  // namespace defender
