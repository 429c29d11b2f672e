// Checks shared by the programs' command lines (CLI11).
#pragma once

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <string>

namespace electra::cli {

// A path flag's value: not '' (often an unset shell variable: --config "$CONFIG"), which was taken as "not
// given" and silently trained the defaults or ignored the weights; and UTF-8, since configs, manifests,
// metrics and the ranks' agreements are JSON (another name failed at the first dump, exit 1, or hung a rank).
inline CLI::Validator checked_path() {
  return CLI::Validator(
      [](std::string& value) -> std::string {
        if (value.empty()) return "is empty: give a path, or leave the flag out";
        try {
          (void)nlohmann::json(value).dump();
        } catch (const nlohmann::json::exception&) {
          return "is not valid UTF-8; rename the file or directory";
        }
        return "";
      },
      "PATH", "non-empty UTF-8 path");
}

// Refuses "--flag=" (an empty value after '='), which CLI11 takes as the flag without its value and then
// fills with the next argument ("--config= --print-config" read a config file named --print-config). Call it
// just before CLI::App::parse, in the same try: the error is CLI11's, so app.exit prints it.
inline void refuse_empty_values(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--") return;  // positional arguments follow
    if (arg.size() > 3 && arg.starts_with("--") && arg.back() == '=' && arg.find('=') == arg.size() - 1) {
      const std::string flag = arg.substr(0, arg.size() - 1);
      throw CLI::ValidationError(flag, "is empty: give a value after '=', or leave the flag out");
    }
  }
}

}  // namespace electra::cli
