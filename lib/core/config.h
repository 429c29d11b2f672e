// Configuration as a JSON tree addressed by stable dotted keys ("train.steps", "model.hidden_size").
// A Config starts from a schema of defaults; files and --set overrides may only change keys the schema
// has, so a typo is an error that names the key instead of a silently ignored setting.
#pragma once

#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "lib/core/error.h"

namespace electra {

// A config file as JSON: comments allowed, a key twice in one object refused (parsers keep the last, so
// half of a repeated section would vanish), the top level an object. Errors name the file.
nlohmann::json read_config_file(const std::string& path);

class Config {
 public:
  Config() = default;
  explicit Config(nlohmann::json defaults) : root_(std::move(defaults)) {}

  // Merges a JSON file over the current values; unknown keys and type changes are errors naming the
  // file and key.
  void merge_file(const std::string& path);
  // Merges a JSON object over the current values (same rules; `origin` names it in errors).
  void merge(const nlohmann::json& overrides, const std::string& origin);
  // "key=value": value is parsed as JSON when it parses (numbers, true/false, arrays), else taken as a
  // string. The key must exist.
  void set(std::string_view assignment);
  void set(std::string_view dotted_key, const nlohmann::json& value);

  bool has(std::string_view dotted_key) const;
  const nlohmann::json& at(std::string_view dotted_key) const;

  template <typename T>
  T get(std::string_view dotted_key) const {
    const nlohmann::json& node = at(dotted_key);
    // nlohmann converts integers with a C cast: -1 would read as 2^64 - 1 into a uint64_t, 2^40 as 0 into an int.
    if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
      if (node.is_number_integer() && !fits<T>(node)) {
        fail("config key '", dotted_key, "' must be an integer in [", std::numeric_limits<T>::min(), ", ",
             std::numeric_limits<T>::max(), "], got ", node.dump());
      }
    }
    try {
      return node.get<T>();
    } catch (const nlohmann::json::exception&) {
      fail("config key '", dotted_key, "': value ", node.dump(), " has the wrong type");
    }
  }

  const nlohmann::json& json() const { return root_; }
  std::string dump(int indent = 2) const { return root_.dump(indent); }

  // All leaf keys in dotted form, sorted.
  std::vector<std::string> keys() const;

 private:
  template <typename T>
  static bool fits(const nlohmann::json& integer) {
    if (integer.is_number_unsigned()) return integer.get<uint64_t>() <= uint64_t{std::numeric_limits<T>::max()};
    const int64_t value = integer.get<int64_t>();
    return std::in_range<T>(value);
  }

  nlohmann::json root_ = nlohmann::json::object();
};

// Splits "a.b.c" into a JSON pointer "/a/b/c".
nlohmann::json::json_pointer dotted_to_pointer(std::string_view dotted_key);

// Every difference between two JSON trees, one line each ("model.num_layers: checkpoint 12, run 4", with
// the names given), in the order of `expected`'s keys, then keys only `actual` has. Numbers compare by
// value (5e-4 == 0.0005).
std::vector<std::string> config_differences(const nlohmann::json& expected, const nlohmann::json& actual,
                                            const std::string& prefix = "",
                                            const std::string& expected_name = "checkpoint",
                                            const std::string& actual_name = "run");

}  // namespace electra
