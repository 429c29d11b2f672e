// The name of the machine this process runs on, for messages that must say where (a lock's holder, a
// rank that differs, a shared GPU) and for file names that must not collide across hosts.
#pragma once

#include <string>

namespace electra {

// gethostname(); "unknown-host" when it cannot be read.
std::string host_name();

// Every program calls this first: a write past the file-size limit (`ulimit -f`, a Slurm job's limit) then
// fails with EFBIG, which the writers report naming the file, instead of SIGXFSZ killing the process without
// a word (exit 153) and leaving its temporary files.
void ignore_file_size_signal();

}  // namespace electra
