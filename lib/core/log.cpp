#include "lib/core/log.h"

#include <unistd.h>

#include <boost/core/null_deleter.hpp>
#include <boost/log/attributes/constant.hpp>
#include <boost/log/core.hpp>
#include <boost/log/expressions.hpp>
#include <boost/log/sinks/sync_frontend.hpp>
#include <boost/log/sinks/text_ostream_backend.hpp>
#include <boost/log/support/date_time.hpp>
#include <boost/log/utility/setup/common_attributes.hpp>
#include <boost/smart_ptr/make_shared_object.hpp>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <streambuf>
#include <string>

namespace electra::log {
namespace {

namespace expr = boost::log::expressions;
namespace sinks = boost::log::sinks;

BOOST_LOG_ATTRIBUTE_KEYWORD(severity_kw, "Severity", Severity)
BOOST_LOG_ATTRIBUTE_KEYWORD(rank_kw, "Rank", int)

int g_rank = 0;

using TextSink = sinks::synchronous_sink<sinks::text_ostream_backend>;

// The console stream: stderr, one write(2) per record at the sink's flush. std::clog is unbuffered, so a
// record and its newline left as two writes, and the ranks sharing mpirun's stderr glued lines together
// ("...run 0.0[2026-... ] [rank 0] [error] ..."). A write of up to PIPE_BUF bytes to a pipe is atomic.
class RecordPerWrite : public std::streambuf {
 protected:
  int_type overflow(int_type c) override {
    if (!traits_type::eq_int_type(c, traits_type::eof())) record_.push_back(traits_type::to_char_type(c));
    return traits_type::not_eof(c);
  }
  std::streamsize xsputn(const char* text, std::streamsize n) override {
    record_.append(text, static_cast<size_t>(n));
    return n;
  }
  int sync() override {
    size_t written = 0;
    while (written < record_.size()) {
      const ssize_t n = ::write(STDERR_FILENO, record_.data() + written, record_.size() - written);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;  // nowhere to report a failed write to stderr
      written += static_cast<size_t>(n);
    }
    record_.clear();
    return 0;
  }

 private:
  std::string record_;
};

// Never destroyed, as std::clog is not: a record logged during static destruction still has a stream.
std::ostream& stderr_records() {
  static auto* const buffer = new RecordPerWrite;
  static auto* const stream = new std::ostream(buffer);
  return *stream;
}

// LogOptions::defer_file: the records held in memory, and where they go.
struct DeferredFile {
  boost::shared_ptr<TextSink> sink;
  boost::shared_ptr<std::ostringstream> records;
  std::string path;
  Severity level = boost::log::trivial::debug;
};
DeferredFile g_deferred;

boost::shared_ptr<TextSink> make_sink(boost::shared_ptr<std::ostream> stream, Severity level);

auto make_formatter() {
  return expr::stream << "[" << expr::format_date_time<boost::posix_time::ptime>("TimeStamp", "%Y-%m-%d %H:%M:%S")
                      << "] [rank " << rank_kw << "] [" << severity_kw << "] " << expr::smessage;
}

}  // namespace

boost::log::sources::severity_logger_mt<Severity>& logger() {
  static boost::log::sources::severity_logger_mt<Severity> instance;
  return instance;
}

int rank() { return g_rank; }

void init(const LogOptions& options) {
  auto core = boost::log::core::get();
  core->remove_all_sinks();
  g_rank = options.rank;
  static bool common_added = false;
  if (!common_added) {
    boost::log::add_common_attributes();
    common_added = true;
  }
  core->add_global_attribute("Rank", boost::log::attributes::constant<int>(options.rank));

  g_deferred = DeferredFile{};
  const Severity console_level = options.rank == 0 ? options.console_level : boost::log::trivial::warning;
  core->add_sink(make_sink(boost::shared_ptr<std::ostream>(&stderr_records(), boost::null_deleter()), console_level));

  if (options.file.empty()) return;
  if (options.defer_file) {
    g_deferred.records = boost::make_shared<std::ostringstream>();
    g_deferred.sink = make_sink(g_deferred.records, options.file_level);
    g_deferred.path = options.file;
    g_deferred.level = options.file_level;
    core->add_sink(g_deferred.sink);
    return;
  }
  auto stream = boost::make_shared<std::ofstream>(options.file, std::ios::app);
  if (!*stream) {
    std::cerr << "warning: cannot open log file " << options.file << "\n";
  } else {
    core->add_sink(make_sink(stream, options.file_level));
  }
}

void open_deferred_file() {
  if (!g_deferred.sink) return;
  auto core = boost::log::core::get();
  core->remove_sink(g_deferred.sink);
  g_deferred.sink->flush();
  std::error_code ignored;
  std::filesystem::create_directories(std::filesystem::path(g_deferred.path).parent_path(), ignored);
  auto stream = boost::make_shared<std::ofstream>(g_deferred.path, std::ios::app);
  if (!*stream) {
    std::cerr << "warning: cannot open log file " << g_deferred.path << "\n";
  } else {
    *stream << g_deferred.records->str() << std::flush;
    core->add_sink(make_sink(stream, g_deferred.level));
  }
  g_deferred = DeferredFile{};
}

void shutdown() {
  g_deferred = DeferredFile{};
  auto core = boost::log::core::get();
  core->flush();
  core->remove_all_sinks();
}

namespace {

boost::shared_ptr<TextSink> make_sink(boost::shared_ptr<std::ostream> stream, Severity level) {
  auto sink = boost::make_shared<TextSink>();
  sink->locked_backend()->add_stream(stream);
  sink->locked_backend()->auto_flush(true);
  sink->set_formatter(make_formatter());
  sink->set_filter(severity_kw >= level);
  return sink;
}

}  // namespace

}  // namespace electra::log
