// The body of every MPI program: run the rank's work, and if it throws on any rank, log the error
// with the rank and abort the whole job. Without this a rank that throws leaves the others waiting in
// their next collective until the scheduler kills the job.
#pragma once

#include <functional>

#include "lib/dist/communicator.h"

namespace electra::dist {

// Returns fn()'s exit code. An exception (electra::Error, any std::exception, or anything else)
// becomes comm.abort(message, abort_code): the job ends within seconds, with a non-zero status.
int run_rank_main(const Communicator& comm, const std::function<int()>& fn, int abort_code = 1);

}  // namespace electra::dist
