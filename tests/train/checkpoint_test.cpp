#include "lib/train/checkpoint.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "lib/core/atomic_file.h"
#include "lib/core/error.h"
#include "tests/support/file_size_limit.h"
#include "tests/train/test_util.h"

namespace electra::train {
namespace {

using testing::layout_size;
using testing::read_bytes;
using testing::small_layout;
using testing::TempDir;
using testing::write_bytes;

// Random bit patterns plus the awkward values (-0, inf, NaN with payload, denormals).
std::vector<float> random_bits(size_t count, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<float> data(count);
  for (float& x : data) {
    const uint32_t bits = rng();
    std::memcpy(&x, &bits, sizeof(x));
  }
  const float specials[] = {-0.0f,
                            std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity(),
                            std::numeric_limits<float>::quiet_NaN(),
                            std::numeric_limits<float>::denorm_min(),
                            std::numeric_limits<float>::max()};
  for (size_t i = 0; i < std::size(specials) && i < count; ++i) data[i] = specials[i];
  uint32_t payload_nan = 0x7FC12345u;
  if (count > 7) std::memcpy(&data[7], &payload_nan, sizeof(float));
  return data;
}

bool bitwise_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

struct Saved {
  std::vector<TensorSlice> layout = small_layout();
  std::vector<float> params, m, v;
  CheckpointContent content() const {
    CheckpointContent c;
    c.layout = layout;
    c.params = params;
    c.adam_m = m;
    c.adam_v = v;
    c.state = {{"step", 1200},       {"tokens_seen", int64_t{1} << 40},
               {"seed", 42},         {"loss_scale", 65536.0},
               {"skipped_steps", 3}, {"finite", true},
               {"note", "warm"}};
    c.loader = {{"rank_0", {{"epoch", 1}, {"cursor", 4096}}}, {"rank_1", {{"epoch", 1}, {"cursor", 4100}}}};
    c.config = {{"model", {{"hidden_size", 256}}}, {"train", {{"lr", 5e-4}}}};
    return c;
  }
};

Saved make_saved() {
  Saved s;
  const size_t n = layout_size(s.layout);
  s.params = random_bits(n, 1);
  s.m = random_bits(n, 2);
  s.v = random_bits(n, 3);
  return s;
}

TEST(Checkpoint, RoundTripIsBitwise) {
  TempDir dir;
  const Saved saved = make_saved();
  const auto path = dir.path() / "ckpt.h5";
  write_checkpoint(path, saved.content());
  EXPECT_FALSE(std::filesystem::exists(dir.path() / ".ckpt.h5.tmp")) << "the temporary must be renamed away";

  const CheckpointFile file = read_checkpoint(path);
  EXPECT_EQ(file.step(), 1200);
  EXPECT_EQ(file.format_version(), kCheckpointFormatVersion);
  EXPECT_EQ(file.state(), saved.content().state);
  EXPECT_EQ(file.loader(), saved.content().loader);
  EXPECT_EQ(file.config(), saved.content().config);

  const auto stored = file.tensors(Section::kParams);
  ASSERT_EQ(stored.size(), saved.layout.size());
  for (size_t i = 1; i < stored.size(); ++i) EXPECT_LT(stored[i - 1].name, stored[i].name) << "sorted by name";
  for (const TensorSlice& t : saved.layout) {
    auto it = std::find_if(stored.begin(), stored.end(), [&](const StoredTensor& s) { return s.name == t.name; });
    ASSERT_NE(it, stored.end()) << t.name;
    EXPECT_EQ(it->shape, t.shape) << t.name;
  }

  const size_t n = layout_size(saved.layout);
  for (auto [section, expected] : {std::pair{Section::kParams, &saved.params}, std::pair{Section::kAdamM, &saved.m},
                                   std::pair{Section::kAdamV, &saved.v}}) {
    std::vector<float> buffer(n, 0.0f);
    file.read_into(section, saved.layout, buffer);
    EXPECT_TRUE(bitwise_equal(buffer, *expected)) << section_name(section);
  }

  std::vector<int64_t> shape;
  const auto& query = saved.layout[2];
  const std::vector<float> one = file.read_tensor(Section::kAdamV, query.name, &shape);
  EXPECT_EQ(shape, query.shape);
  EXPECT_EQ(std::memcmp(one.data(), saved.v.data() + query.offset, query.size * sizeof(float)), 0);
  EXPECT_THROW(file.read_tensor(Section::kParams, "no.such.tensor"), Error);
}

TEST(Checkpoint, ReadIntoAPermutedLayout) {
  // Same names and shapes at other offsets (a different but compatible parameter order).
  TempDir dir;
  const Saved saved = make_saved();
  write_checkpoint(dir.path() / "c.h5", saved.content());
  std::vector<TensorSlice> reversed = saved.layout;
  std::reverse(reversed.begin(), reversed.end());
  size_t offset = 0;
  for (TensorSlice& t : reversed) {
    t.offset = offset;
    offset += t.size;
  }
  std::vector<float> buffer(offset);
  read_checkpoint(dir.path() / "c.h5").read_into(Section::kParams, reversed, buffer);
  for (size_t i = 0; i < reversed.size(); ++i) {
    const TensorSlice& original = saved.layout[saved.layout.size() - 1 - i];
    EXPECT_EQ(std::memcmp(buffer.data() + reversed[i].offset, saved.params.data() + original.offset,
                          original.size * sizeof(float)),
              0)
        << original.name;
  }
}

std::string read_into_error(const std::filesystem::path& path, const std::vector<TensorSlice>& layout,
                            std::vector<float>& buffer) {
  try {
    read_checkpoint(path).read_into(Section::kParams, layout, buffer);
  } catch (const Error& error) {
    return error.what();
  }
  return "";
}

TEST(Checkpoint, MismatchesNameTheTensor) {
  TempDir dir;
  const Saved saved = make_saved();
  const auto path = dir.path() / "c.h5";
  write_checkpoint(path, saved.content());
  const size_t n = layout_size(saved.layout);

  {  // The model has a tensor the file lacks.
    std::vector<TensorSlice> layout = saved.layout;
    layout.push_back(TensorSlice{"generator_lm_head.bias", {30}, n, 30});
    std::vector<float> buffer(n + 30, 7.0f);
    const std::string message = read_into_error(path, layout, buffer);
    EXPECT_NE(message.find("no tensor 'generator_lm_head.bias'"), std::string::npos) << message;
    EXPECT_NE(message.find("[30]"), std::string::npos) << message;
    EXPECT_TRUE(std::all_of(buffer.begin(), buffer.end(), [](float x) { return x == 7.0f; }))
        << "nothing may be read before the names and shapes are checked";
  }
  {  // The file has a tensor the model lacks.
    std::vector<TensorSlice> layout = saved.layout;
    layout.erase(layout.begin() + 1);
    std::vector<float> buffer(n);
    const std::string message = read_into_error(path, layout, buffer);
    EXPECT_NE(message.find("electra.embeddings.LayerNorm.weight"), std::string::npos) << message;
    EXPECT_NE(message.find("not a tensor of the model"), std::string::npos) << message;
  }
  {  // Same name, other shape.
    std::vector<TensorSlice> layout = saved.layout;
    layout[0].shape = {24, 10};
    std::vector<float> buffer(n);
    const std::string message = read_into_error(path, layout, buffer);
    EXPECT_NE(message.find("electra.embeddings.word_embeddings.weight"), std::string::npos) << message;
    EXPECT_NE(message.find("[30, 8]"), std::string::npos) << message;
    EXPECT_NE(message.find("[24, 10]"), std::string::npos) << message;
  }
  {  // A buffer too small for the layout.
    std::vector<float> buffer(n - 1);
    EXPECT_NE(read_into_error(path, saved.layout, buffer).find("outside the buffer"), std::string::npos);
  }
}

TEST(Checkpoint, WeightsOnlyFileHasNoMoments) {
  TempDir dir;
  Saved saved = make_saved();
  CheckpointContent content = saved.content();
  content.adam_m = {};
  content.adam_v = {};
  write_checkpoint(dir.path() / "w.h5", content);
  const CheckpointFile file = read_checkpoint(dir.path() / "w.h5");
  EXPECT_TRUE(file.has_section(Section::kParams));
  EXPECT_FALSE(file.has_section(Section::kAdamM));
  std::vector<float> buffer(saved.params.size());
  EXPECT_THROW(file.read_into(Section::kAdamM, saved.layout, buffer), Error);
}

TEST(Checkpoint, WriterRejectsBadInput) {
  TempDir dir;
  const Saved saved = make_saved();
  const auto path = dir.path() / "bad.h5";
  auto expect_error = [&](CheckpointContent content, const std::string& needle) {
    try {
      write_checkpoint(path, content);
      ADD_FAILURE() << "expected an error mentioning " << needle;
    } catch (const Error& error) {
      EXPECT_NE(std::string(error.what()).find(needle), std::string::npos) << error.what();
    }
    EXPECT_FALSE(std::filesystem::exists(path));
    EXPECT_FALSE(std::filesystem::exists(temp_path_for(path)));
  };
  std::vector<TensorSlice> slash = saved.layout;
  slash[1].name = "electra/embeddings";
  CheckpointContent c = saved.content();
  c.layout = slash;
  expect_error(c, "electra/embeddings");

  std::vector<TensorSlice> duplicate = saved.layout;
  duplicate[1].name = duplicate[0].name;
  c.layout = duplicate;
  expect_error(c, "duplicate tensor name");

  std::vector<TensorSlice> wrong_size = saved.layout;
  wrong_size[3].size += 1;
  c.layout = wrong_size;
  expect_error(c, "query.bias");

  c = saved.content();
  std::vector<float> short_m(saved.m.begin(), saved.m.end() - 1);
  c.adam_m = short_m;
  expect_error(c, "adam_m");

  c = saved.content();
  c.state = {{"tokens_seen", 5}};
  expect_error(c, "\"step\"");
}

// A write that fails half-way (the file-size limit standing in for a full disk) leaves the previous checkpoint
// as it was and removes its partial temporary file, which would otherwise keep the disk full.
TEST(Checkpoint, AFailedWriteKeepsTheOldFileAndRemovesTheTemporary) {
  TempDir dir;
  const Saved saved = make_saved();
  const auto path = dir.path() / "ckpt.h5";
  write_checkpoint(path, saved.content());
  const std::string before = read_bytes(path);
  CheckpointContent next = saved.content();
  next.state["step"] = 1300;

  const std::string message =
      test::error_under_file_size_limit(before.size() / 2, [&] { write_checkpoint(path, next); });
  EXPECT_NE(message.find(temp_path_for(path).string()), std::string::npos) << message;
  EXPECT_EQ(read_bytes(path), before);
  EXPECT_EQ(read_checkpoint(path).step(), 1200);
  EXPECT_FALSE(std::filesystem::exists(temp_path_for(path)));
}

TEST(Checkpoint, DetectsTruncationAndGarbage) {
  TempDir dir;
  const Saved saved = make_saved();
  const auto path = dir.path() / "c.h5";
  write_checkpoint(path, saved.content());
  const std::string bytes = read_bytes(path);
  ASSERT_FALSE(CheckpointFile::check(path).has_value());

  write_bytes(path, bytes.substr(0, bytes.size() / 2));
  auto problem = CheckpointFile::check(path);
  ASSERT_TRUE(problem.has_value());
  EXPECT_NE(problem->find(path.string()), std::string::npos) << *problem;

  std::string garbage = bytes;
  for (size_t i = 0; i < 64; ++i) garbage[i] = static_cast<char>(i * 37);
  write_bytes(path, garbage);
  EXPECT_TRUE(CheckpointFile::check(path).has_value());

  write_bytes(path, "");
  EXPECT_TRUE(CheckpointFile::check(path).has_value());
  EXPECT_TRUE(CheckpointFile::check(dir.path() / "missing.h5").has_value());
  problem = CheckpointFile::check(dir.path());  // --resume RUN/checkpoints: said, not "no such file"
  ASSERT_TRUE(problem.has_value());
  EXPECT_NE(problem->find("is a directory, not a checkpoint file"), std::string::npos) << *problem;
}

TEST(Checkpoint, DetectsCorruptTensorData) {
  TempDir dir;
  Saved saved = make_saved();
  // A recognisable run of values in one tensor, to find its bytes in the file.
  const TensorSlice& target = saved.layout[0];
  for (size_t i = 0; i < target.size; ++i) saved.params[target.offset + i] = 1000.0f + static_cast<float>(i);
  const auto path = dir.path() / "c.h5";
  write_checkpoint(path, saved.content());
  std::string bytes = read_bytes(path);
  const std::string needle(reinterpret_cast<const char*>(saved.params.data() + target.offset), 64);
  const size_t at = bytes.find(needle);
  ASSERT_NE(at, std::string::npos);
  bytes[at + 10] ^= 0x01;
  write_bytes(path, bytes);

  const CheckpointFile file = read_checkpoint(path);  // the metadata is intact
  std::vector<float> buffer(saved.params.size());
  try {
    file.read_into(Section::kParams, saved.layout, buffer);
    FAIL() << "a flipped bit in the tensor data must be detected";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("/params/" + target.name + " is corrupt"), std::string::npos)
        << error.what();
  }
  // The moments were not touched.
  std::vector<float> m(saved.m.size());
  EXPECT_NO_THROW(file.read_into(Section::kAdamM, saved.layout, m));
}

TEST(Checkpoint, FileWithoutCompletionMarkIsRejected) {
  // Stands in for a file that stopped before its last attribute: written by hand, same format otherwise.
  TempDir dir;
  const Saved saved = make_saved();
  const auto path = dir.path() / "c.h5";
  write_checkpoint(path, saved.content());
  std::string bytes = read_bytes(path);
  const size_t at = bytes.find("complete");
  ASSERT_NE(at, std::string::npos);
  bytes.replace(at, 8, "COMPLETE");  // the attribute is no longer found under its name
  write_bytes(path, bytes);
  auto problem = CheckpointFile::check(path);
  ASSERT_TRUE(problem.has_value());
  EXPECT_NE(problem->find("incomplete"), std::string::npos) << *problem;
}

// h5py (what export and analysis scripts use) sees the documented layout.
TEST(Checkpoint, ReadableByH5py) {
  const char* python = std::getenv("ELECTRA_PYTHON");
  if (python == nullptr || !std::filesystem::exists(python) ||
      std::system((std::string(python) + " -c 'import h5py' >/dev/null 2>&1").c_str()) != 0) {
    GTEST_SKIP() << "ELECTRA_PYTHON is not set or lacks h5py";
  }
  TempDir dir;
  const Saved saved = make_saved();
  const auto path = dir.path() / "c.h5";
  write_checkpoint(path, saved.content());
  const std::string script =
      "import h5py, json, sys\n"
      "f = h5py.File(sys.argv[1], 'r')\n"
      "out = {'format': f.attrs['format'].decode() if isinstance(f.attrs['format'], bytes) else f.attrs['format'],\n"
      "       'step': int(f.attrs['step']), 'complete': int(f.attrs['complete']),\n"
      "       'state_step_attr': int(f['state'].attrs['step']),\n"
      "       'state': json.loads(f['state'][()]),\n"
      "       'shapes': {k: list(f['params'][k].shape) for k in f['params']},\n"
      "       'groups': sorted(f.keys())}\n"
      "print(json.dumps(out))\n";
  write_bytes(dir.path() / "read.py", script);
  const std::string command = std::string(python) + " " + (dir.path() / "read.py").string() + " " + path.string();
  FILE* pipe = popen(command.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string output;
  char chunk[4096];
  while (size_t n = fread(chunk, 1, sizeof(chunk), pipe)) output.append(chunk, n);
  ASSERT_EQ(pclose(pipe), 0) << output;
  const auto got = nlohmann::json::parse(output);
  EXPECT_EQ(got["format"], "electra-mpi checkpoint");
  EXPECT_EQ(got["step"], 1200);
  EXPECT_EQ(got["complete"], 1);
  EXPECT_EQ(got["state_step_attr"], 1200);
  EXPECT_EQ(got["state"], saved.content().state);
  EXPECT_EQ(got["groups"], nlohmann::json({"adam_m", "adam_v", "config", "loader", "params", "state"}));
  for (const TensorSlice& t : saved.layout) EXPECT_EQ(got["shapes"][t.name], nlohmann::json(t.shape)) << t.name;
}

}  // namespace
}  // namespace electra::train
