// Logging through Boost.Log. Every record carries the MPI rank; rank 0's info lines go to the console,
// every rank can also write its own file (RUN_DIR/logs/rank_<r>.log).
#pragma once

#include <boost/log/sources/record_ostream.hpp>
#include <boost/log/sources/severity_logger.hpp>
#include <boost/log/trivial.hpp>
#include <string>

namespace electra::log {

using Severity = boost::log::trivial::severity_level;

struct LogOptions {
  int rank = 0;
  int world_size = 1;
  // Console: rank 0 prints records at >= console_level; other ranks print only warnings and errors.
  Severity console_level = boost::log::trivial::info;
  // Optional per-rank file (all levels >= file_level); empty: none.
  std::string file;
  Severity file_level = boost::log::trivial::debug;
  // Hold the file's records in memory until open_deferred_file() creates the file (and its directory) and
  // writes them first: a program that fails its checks leaves no file behind.
  bool defer_file = false;
};

// Sets up sinks; safe to call again (replaces the previous sinks), e.g. once the run directory is known.
void init(const LogOptions& options);
// With LogOptions::defer_file: creates the file's directory and the file, writes the records held so far,
// and logs straight to the file from here on. Does nothing without a deferred file.
void open_deferred_file();
// Removes all sinks and flushes files (records of a deferred file never opened are dropped).
void shutdown();
int rank();

boost::log::sources::severity_logger_mt<Severity>& logger();

}  // namespace electra::log

#define ELECTRA_LOG(level) BOOST_LOG_SEV(::electra::log::logger(), ::boost::log::trivial::level)
