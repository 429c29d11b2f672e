#include "lib/core/config.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <vector>

namespace electra {
namespace {

bool compatible(const nlohmann::json& old_value, const nlohmann::json& new_value) {
  if (old_value.is_null() || new_value.is_null()) return true;  // null: "unset", any type may replace it
  if (old_value.is_number() && new_value.is_number()) {
    // An integer key must stay integral ("train.steps=1.5" is a mistake).
    return !(old_value.is_number_integer() && new_value.is_number_float());
  }
  return old_value.type() == new_value.type();
}

// The value to store in `slot`: a number given to a real-valued key stays real-valued, so that "50" for
// train.peak_gflops does not turn the key into an integer key that a later "12.5" would be refused by.
nlohmann::json kept_kind(const nlohmann::json& slot, const nlohmann::json& value) {
  if (slot.is_number_float() && value.is_number_integer()) return nlohmann::json(value.get<double>());
  return value;
}

// What a key's default says it takes, for errors: "an integer" for integral defaults (JSON calls every
// number "number", which reads wrong for "train.steps=3.7"), else the JSON type name.
std::string expected_kind(const nlohmann::json& slot) {
  if (slot.is_number_integer()) return "an integer";
  if (slot.is_number()) return "a number";
  return slot.type_name();
}

void merge_into(nlohmann::json& target, const nlohmann::json& source, const std::string& prefix,
                const std::string& origin) {
  for (const auto& [key, value] : source.items()) {
    const std::string dotted = prefix.empty() ? key : prefix + "." + key;
    if (!target.contains(key)) fail(origin, ": unknown config key '", dotted, "'");
    nlohmann::json& slot = target[key];
    if (slot.is_object() && value.is_object()) {
      merge_into(slot, value, dotted, origin);
    } else if (slot.is_object() != value.is_object() || !compatible(slot, value)) {
      fail(origin, ": config key '", dotted, "' expects ", expected_kind(slot), ", got ", value.dump());
    } else {
      slot = kept_kind(slot, value);
    }
  }
}

void collect_keys(const nlohmann::json& node, const std::string& prefix, std::vector<std::string>& out) {
  if (!node.is_object()) {
    out.push_back(prefix);
    return;
  }
  for (const auto& [key, value] : node.items()) collect_keys(value, prefix.empty() ? key : prefix + "." + key, out);
}

}  // namespace

nlohmann::json::json_pointer dotted_to_pointer(std::string_view dotted_key) {
  if (dotted_key.empty()) fail("empty config key");
  std::string pointer = "/";
  for (char c : dotted_key) {
    if (c == '.') {
      pointer += '/';
    } else if (c == '/') {
      pointer += "~1";
    } else if (c == '~') {
      pointer += "~0";
    } else {
      pointer += c;
    }
  }
  return nlohmann::json::json_pointer(pointer);
}

nlohmann::json read_config_file(const std::string& path) {
  std::error_code error;
  if (std::filesystem::is_directory(path, error)) fail("config file ", path, " is a directory");
  std::ifstream in(path);
  if (!in) fail("cannot open config file ", path);
  // A key twice in one object: JSON parsers keep the last, so half of a repeated section would vanish.
  std::vector<std::set<std::string>> open_objects;
  const nlohmann::json::parser_callback_t no_repeated_keys = [&](int, nlohmann::json::parse_event_t event,
                                                                 nlohmann::json& parsed) {
    using Event = nlohmann::json::parse_event_t;
    if (event == Event::object_start) {
      open_objects.emplace_back();
    } else if (event == Event::object_end) {
      open_objects.pop_back();
    } else if (event == Event::key && !open_objects.back().insert(parsed.get<std::string>()).second) {
      fail("config file ", path, ": key '", parsed.get<std::string>(),
           "' appears twice in one object (a JSON parser would keep only the last)");
    }
    return true;
  };
  nlohmann::json parsed;
  try {
    parsed = nlohmann::json::parse(in, no_repeated_keys, true, /*ignore_comments=*/true);
  } catch (const nlohmann::json::exception& e) {  // parse errors, and numbers beyond double (1e400)
    fail("config file ", path, ": ", e.what());
  }
  if (!parsed.is_object()) fail("config file ", path, ": top level must be a JSON object");
  return parsed;
}

void Config::merge_file(const std::string& path) { merge(read_config_file(path), "config file " + path); }

void Config::merge(const nlohmann::json& overrides, const std::string& origin) {
  merge_into(root_, overrides, "", origin);
}

void Config::set(std::string_view assignment) {
  const auto eq = assignment.find('=');
  if (eq == std::string_view::npos || eq == 0) fail("--set expects key=value, got '", assignment, "'");
  const std::string_view key = assignment.substr(0, eq);
  const std::string text(assignment.substr(eq + 1));
  nlohmann::json value = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (value.is_discarded()) value = text;
  try {  // the config is written as JSON (config.json, checkpoints): a value that is not UTF-8 cannot be
    (void)value.dump();
  } catch (const nlohmann::json::exception&) {
    fail("config key '", key, "': the value is not valid UTF-8");
  }
  set(key, value);
}

void Config::set(std::string_view dotted_key, const nlohmann::json& value) {
  const auto pointer = dotted_to_pointer(dotted_key);
  if (!root_.contains(pointer)) fail("unknown config key '", dotted_key, "'");
  nlohmann::json& slot = root_[pointer];
  if (slot.is_object()) {
    fail("config key '", dotted_key, "' is a section: set its keys one by one (e.g. ", dotted_key, ".",
         slot.begin().key(), "=...), or give a config file");
  }
  if (!compatible(slot, value)) {
    fail("config key '", dotted_key, "' expects ", expected_kind(slot), ", got ", value.dump());
  }
  slot = kept_kind(slot, value);
}

bool Config::has(std::string_view dotted_key) const { return root_.contains(dotted_to_pointer(dotted_key)); }

const nlohmann::json& Config::at(std::string_view dotted_key) const {
  const auto pointer = dotted_to_pointer(dotted_key);
  if (!root_.contains(pointer)) fail("missing config key '", dotted_key, "'");
  return root_.at(pointer);
}

std::vector<std::string> Config::keys() const {
  std::vector<std::string> out;
  collect_keys(root_, "", out);
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<std::string> config_differences(const nlohmann::json& expected, const nlohmann::json& actual,
                                            const std::string& prefix, const std::string& expected_name,
                                            const std::string& actual_name) {
  std::vector<std::string> differences;
  if (expected.is_object() && actual.is_object()) {
    for (const auto& [key, value] : expected.items()) {
      const std::string path = prefix.empty() ? key : prefix + "." + key;
      if (!actual.contains(key)) {
        differences.push_back(path + ": " + expected_name + " " + value.dump() + ", " + actual_name +
                              " has no such key");
        continue;
      }
      for (std::string& difference : config_differences(value, actual.at(key), path, expected_name, actual_name))
        differences.push_back(std::move(difference));
    }
    for (const auto& [key, value] : actual.items()) {
      if (!expected.contains(key)) {
        differences.push_back((prefix.empty() ? key : prefix + "." + key) + ": " + expected_name +
                              " has no such key, " + actual_name + " " + value.dump());
      }
    }
    return differences;
  }
  const bool both_numbers = expected.is_number() && actual.is_number();
  if (both_numbers ? expected.get<double>() != actual.get<double>() : expected != actual)
    differences.push_back(prefix + ": " + expected_name + " " + expected.dump() + ", " + actual_name + " " +
                          actual.dump());
  return differences;
}

}  // namespace electra
