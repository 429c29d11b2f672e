// The name of the machine this process runs on, for messages that must say where (a lock's holder, a
// rank that differs, a shared GPU) and for file names that must not collide across hosts.
#pragma once

#include <string>

namespace electra {

// gethostname(); "unknown-host" when it cannot be read.
std::string host_name();

}  // namespace electra
