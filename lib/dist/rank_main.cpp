#include "lib/dist/rank_main.h"

#include <exception>
#include <string>

namespace electra::dist {

int run_rank_main(const Communicator& comm, const std::function<int()>& fn, int abort_code) {
  std::string message;
  try {
    return fn();
  } catch (const std::exception& error) {
    message = std::string("error: ") + error.what();
  } catch (...) {
    message = "error: unknown exception";
  }
  // Outside the catch block, so nothing of the exception machinery is live while MPI tears down.
  comm.abort(message, abort_code);
}

}  // namespace electra::dist
