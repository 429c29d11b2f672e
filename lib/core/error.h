// Errors: one exception type whose message names what went wrong and where (file, dataset, key, line).
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace electra {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {
template <typename... Parts>
std::string concat(const Parts&... parts) {
  std::ostringstream out;
  (out << ... << parts);
  return out.str();
}
}  // namespace detail

// Throws electra::Error with the parts streamed together: fail("shard ", path, ": missing dataset ", name).
template <typename... Parts>
[[noreturn]] void fail(const Parts&... parts) {
  throw Error(detail::concat(parts...));
}

}  // namespace electra

// Precondition checks that stay on in release builds; the message parts are only built on failure.
#define ELECTRA_CHECK(cond, ...)                                                      \
  do {                                                                                \
    if (!(cond)) ::electra::fail(__FILE__, ":", __LINE__, ": ", ##__VA_ARGS__);     \
  } while (0)
