#include "lib/core/log.h"

#include <boost/core/null_deleter.hpp>
#include <boost/log/attributes/constant.hpp>
#include <boost/log/core.hpp>
#include <boost/log/expressions.hpp>
#include <boost/log/sinks/sync_frontend.hpp>
#include <boost/log/sinks/text_ostream_backend.hpp>
#include <boost/log/support/date_time.hpp>
#include <boost/log/utility/setup/common_attributes.hpp>
#include <boost/smart_ptr/make_shared_object.hpp>
#include <fstream>
#include <iostream>

namespace electra::log {
namespace {

namespace expr = boost::log::expressions;
namespace sinks = boost::log::sinks;

BOOST_LOG_ATTRIBUTE_KEYWORD(severity_kw, "Severity", Severity)
BOOST_LOG_ATTRIBUTE_KEYWORD(rank_kw, "Rank", int)

int g_rank = 0;

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

  using TextSink = sinks::synchronous_sink<sinks::text_ostream_backend>;
  auto console = boost::make_shared<TextSink>();
  console->locked_backend()->add_stream(boost::shared_ptr<std::ostream>(&std::clog, boost::null_deleter()));
  console->locked_backend()->auto_flush(true);
  console->set_formatter(make_formatter());
  const Severity console_level = options.rank == 0 ? options.console_level : boost::log::trivial::warning;
  console->set_filter(severity_kw >= console_level);
  core->add_sink(console);

  if (!options.file.empty()) {
    auto file_sink = boost::make_shared<TextSink>();
    auto stream = boost::make_shared<std::ofstream>(options.file, std::ios::app);
    if (!*stream) {
      std::cerr << "warning: cannot open log file " << options.file << "\n";
    } else {
      file_sink->locked_backend()->add_stream(stream);
      file_sink->locked_backend()->auto_flush(true);
      file_sink->set_formatter(make_formatter());
      file_sink->set_filter(severity_kw >= options.file_level);
      core->add_sink(file_sink);
    }
  }
}

void shutdown() {
  auto core = boost::log::core::get();
  core->flush();
  core->remove_all_sinks();
}

}  // namespace electra::log
