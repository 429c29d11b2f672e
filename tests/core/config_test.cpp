#include "lib/core/config.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <limits>
#include <string>

namespace electra {
namespace {

Config make_config() {
  return Config(nlohmann::json::parse(R"({"train": {"steps": 10, "seed": 1, "name": "run"},
                                          "optim": {"lr": 0.0005}, "data": {"dir": null}})"));
}

TEST(Config, SetParsesValuesByType) {
  Config config = make_config();
  config.set("train.steps=200");
  config.set("optim.lr=1e-3");
  config.set("train.name=my run");
  config.set("optim.lr=2");  // an integer is a fine float
  config.set("data.dir=/tmp/shards");
  EXPECT_EQ(config.get<int>("train.steps"), 200);
  EXPECT_DOUBLE_EQ(config.get<double>("optim.lr"), 2.0);
  EXPECT_EQ(config.get<std::string>("train.name"), "my run");
  EXPECT_EQ(config.get<std::string>("data.dir"), "/tmp/shards");
}

// A real-valued key given an integer stays real-valued: a later fractional value (another --set, or a
// --set after a config file that wrote "lr": 1) is still accepted.
TEST(Config, ARealKeyGivenAnIntegerStaysReal) {
  Config config = make_config();
  config.set("optim.lr=1");
  config.set("optim.lr=0.25");
  EXPECT_DOUBLE_EQ(config.get<double>("optim.lr"), 0.25);
  config.merge(nlohmann::json::parse(R"({"optim": {"lr": 3}})"), "test");
  EXPECT_TRUE(config.at("optim.lr").is_number_float());
  config.set("optim.lr=5e-4");
  EXPECT_DOUBLE_EQ(config.get<double>("optim.lr"), 5e-4);
  EXPECT_THROW(config.set("train.steps=1.5"), Error);  // integer keys stay integral
}

TEST(Config, RejectsUnknownKeysAndWrongTypesNamingTheKey) {
  Config config = make_config();
  try {  // a Latin-1 path: the config is written as JSON, where it failed (exit 1, after set-up)
    config.set("train.name=caf\xe9");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("config key 'train.name': the value is not valid UTF-8"), std::string::npos)
        << e.what();
  }
  try {
    config.set("train.stpes=5");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("train.stpes"), std::string::npos) << e.what();
  }
  try {
    config.set("train.steps=3.7");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("config key 'train.steps' expects an integer, got 3.7"), std::string::npos)
        << e.what();
  }
  try {
    config.merge(nlohmann::json::parse(R"({"train": {"seed": 2.5}})"), "config file x.json");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("config key 'train.seed' expects an integer, got 2.5"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(config.set("train.steps=abc"), Error);
  EXPECT_THROW(config.set("train=3"), Error);
  try {
    config.set("train={}");  // a section is not a value, even an object one
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("config key 'train' is a section: set its keys one by one (e.g. train."),
              std::string::npos)
        << e.what();
  }
  EXPECT_THROW(config.set("novalue"), Error);
  EXPECT_EQ(config.get<int>("train.steps"), 10);
}

// nlohmann's get<T> casts: without the range check -1 reads as 2^64 - 1 into a uint64_t and 2^32 as 0 into an
// int. Every integer outside T's range is refused naming the key; the extremes inside it read exactly.
TEST(Config, IntegersOutsideTheTypesRangeAreRefusedNamingTheKey) {
  Config config = make_config();
  auto error_of = [&](auto read) -> std::string {
    try {
      read();
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  config.set("train.seed=-1");
  EXPECT_EQ(config.get<int64_t>("train.seed"), -1);
  EXPECT_EQ(error_of([&] { config.get<uint64_t>("train.seed"); }),
            "config key 'train.seed' must be an integer in [0, 18446744073709551615], got -1");
  config.set("train.steps=4294967296");
  EXPECT_EQ(config.get<int64_t>("train.steps"), int64_t{1} << 32);
  EXPECT_NE(error_of([&] { config.get<int>("train.steps"); })
                .find("config key 'train.steps' must be an integer in "
                      "[-2147483648, 2147483647], got 4294967296"),
            std::string::npos);
  config.set("train.steps=-2147483648");
  EXPECT_EQ(config.get<int>("train.steps"), std::numeric_limits<int>::min());
  config.set("train.steps=18446744073709551615");
  EXPECT_EQ(config.get<uint64_t>("train.steps"), std::numeric_limits<uint64_t>::max());
  EXPECT_NE(error_of([&] { config.get<int64_t>("train.steps"); }), "");
  config.set("train.steps=9223372036854775807");
  EXPECT_EQ(config.get<int64_t>("train.steps"), std::numeric_limits<int64_t>::max());
  EXPECT_NE(error_of([&] { config.get<uint32_t>("train.steps"); }), "");
}

TEST(Config, MergesFilesAndNamesTheFileInErrors) {
  const std::string path = ::testing::TempDir() + "/config_test.json";
  {
    std::ofstream out(path);
    out << R"({"train": {"steps": 42}, // comment allowed
               "optim": {"lr": 0.1}})";
  }
  Config config = make_config();
  config.merge_file(path);
  EXPECT_EQ(config.get<int>("train.steps"), 42);
  EXPECT_EQ(config.get<int>("train.seed"), 1);
  {
    std::ofstream out(path);
    out << R"({"train": {"bogus": 1}})";
  }
  try {
    config.merge_file(path);
    FAIL();
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find(path), std::string::npos) << what;
    EXPECT_NE(what.find("train.bogus"), std::string::npos) << what;
  }
  // A key twice in one object (a repeated section would drop the first's keys), a number beyond double,
  // a directory: each refused naming the file.
  const std::pair<std::string, std::string> bad[] = {
      {R"({"train": {"steps": 3, "seed": 2}, "train": {"name": "x"}})", "key 'train' appears twice in one object"},
      {R"({"train": {"steps": 3, "steps": 4}})", "key 'steps' appears twice in one object"},
      {R"({"train": {"steps": 1e400}})", "number overflow"},
  };
  for (const auto& [text, message] : bad) {
    std::ofstream(path) << text;
    try {
      config.merge_file(path);
      ADD_FAILURE() << text;
    } catch (const Error& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find(path), std::string::npos) << what;
      EXPECT_NE(what.find(message), std::string::npos) << what;
    }
  }
  std::remove(path.c_str());
  try {
    config.merge_file(::testing::TempDir());
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("is a directory"), std::string::npos) << e.what();
  }
  EXPECT_THROW(config.merge_file("/nonexistent/config.json"), Error);
  EXPECT_EQ(config.keys(),
            (std::vector<std::string>{"data.dir", "optim.lr", "train.name", "train.seed", "train.steps"}));
}

}  // namespace
}  // namespace electra
