// Checks shared by the programs' command lines (CLI11).
#pragma once

#include <CLI/CLI.hpp>
#include <string>

namespace electra::cli {

// A path flag given as '' (often an unset shell variable: --config "$CONFIG") is refused as a usage error
// instead of being taken as "not given", which silently trained the defaults or ignored the weights.
inline CLI::Validator non_empty_path() {
  return CLI::Validator(
      [](std::string& value) {
        return value.empty() ? std::string("is empty: give a path, or leave the flag out") : std::string();
      },
      "PATH", "non-empty path");
}

}  // namespace electra::cli
