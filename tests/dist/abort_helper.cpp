// A tiny MPI program for the whole-job tests in CMakeLists.txt:
//   ok                 every rank meets in a barrier and exits 0
//   throw <rank>       <rank> throws inside run_rank_main while the others wait in a barrier
//   watchdog <rank>    <rank> stops heartbeating (a hung step) while the others wait in a barrier
//   throw_reducing <rank>  <rank> throws with a bucket reduction in flight that no other rank matches
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "lib/core/error.h"
#include "lib/core/log.h"
#include "lib/dist/communicator.h"
#include "lib/dist/mpi_reducer.h"
#include "lib/dist/rank_main.h"
#include "lib/dist/watchdog.h"

using namespace electra;

int main(int argc, char** argv) {
  auto comm = dist::Communicator::init(argc, argv);
  log::LogOptions log_options;
  log_options.rank = comm.rank();
  log_options.world_size = comm.world_size();
  log::init(log_options);
  const std::string mode = argc > 1 ? argv[1] : "";
  const int target = argc > 2 ? std::atoi(argv[2]) : -1;

  return dist::run_rank_main(comm, [&]() -> int {
    if (mode == "ok") {
      const int64_t ranks = comm.allreduce_sum(int64_t{1});
      comm.barrier();
      return ranks == comm.world_size() ? 0 : 2;
    }
    if (mode == "throw") {
      if (comm.rank() == target) {
        std::this_thread::sleep_for(std::chrono::milliseconds(200));  // the others are in the barrier
        fail("injected failure on rank ", comm.rank());
      }
      comm.barrier();  // never completes: the target rank does not arrive
      return 0;
    }
    if (mode == "throw_reducing") {
      std::vector<float> grads(4000, 1.0f);
      dist::MpiReducer reducer(comm, grads, {.bucket_bytes = 1000 * sizeof(float)});
      if (comm.rank() == target) {
        reducer.begin();
        reducer.mark_ready(3000, 1000);  // launches the last bucket: the others never will
        fail("injected failure on rank ", comm.rank(), " during backward");
      }
      comm.barrier();
      return 0;
    }
    if (mode == "watchdog") {
      // Only the hung rank has a short timeout, so the message must come from it.
      dist::Watchdog watchdog(comm.rank() == target ? 1.0 : 60.0, comm.rank(), dist::Watchdog::abort_action(comm, 5));
      for (int64_t step = 1; step <= 3; ++step) watchdog.heartbeat(step);
      if (comm.rank() == target) std::this_thread::sleep_for(std::chrono::seconds(120));  // a hung step
      comm.barrier();
      return 0;
    }
    fail("usage: dist_abort_helper ok | throw <rank> | throw_reducing <rank> | watchdog <rank>");
  });
}
