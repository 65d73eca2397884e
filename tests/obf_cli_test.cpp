// `aloepri obfuscate` on the command line: key record, exit codes, GGUF output, errors.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>

#include "aloepri/core/keyfile.h"
#include "aloepri/model/model.h"
#include "aloepri/obfuscate/executor.h"
#include "aloepri/engine/synth.h"
#include "support/paths.h"

using namespace aloepri;
namespace fs = std::filesystem;
namespace at = aloepri::testing;

namespace {
std::string model_dir() {
  static std::string dir = [] {
    std::string d = at::scratch_dir("obf_cli_model") + "/plain";
    SynthOptions so;
    so.family = Family::Qwen2;
    so.vocab_dir = at::vocab_dir("qwen3");
    synthesize(so, d);
    return d;
  }();
  return dir;
}
}  // namespace

TEST(ObfCli, ObfuscatesRecordsAndRefusesToOverwrite) {
  const std::string w = at::scratch_dir("obf_cli");
  const std::string exe = at::aloepri_exe(), key = w + "/client.key";
  std::string out;
  ASSERT_EQ(at::run_command(exe + " keygen --out " + key, &out, true), 0) << out;
  out.clear();
  int rc = at::run_command(exe + " -q obfuscate " + model_dir() + " --key " + key + " --out " + w + "/obf --exact --gguf " +
                               w + "/obf.gguf",
                           &out, true);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_TRUE(fs::exists(w + "/obf/config.json"));
  EXPECT_TRUE(fs::exists(w + "/obf.gguf"));
  // The key now records parameters and both fingerprints, and is still 0600.
  struct stat st {};
  ASSERT_EQ(::stat(key.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600);
  KeyFile k = KeyFile::load(key);
  ASSERT_TRUE(k.record.has_value());
  EXPECT_EQ(k.record->plain_fingerprint, HFModel(model_dir()).fingerprint());
  EXPECT_EQ(k.record->obf_fingerprint, HFModel(w + "/obf").fingerprint());
  EXPECT_EQ(k.record->params["params"]["lambda"].get<double>(), 0.0);
  EXPECT_EQ(k.record->params["params"]["beta"].get<int64_t>(), 1);
  EXPECT_EQ(k.record->vocab_size, HFModel(model_dir()).config().vocab_size);

  // Output exists: exit code 4, nothing touched.
  const auto before = HFModel(w + "/obf").fingerprint();
  out.clear();
  rc = at::run_command(exe + " -q obfuscate " + model_dir() + " --key " + key + " --out " + w + "/obf --exact", &out, true);
  EXPECT_EQ(rc, 4) << out;
  EXPECT_NE(out.find("obf"), std::string::npos) << out;
  EXPECT_EQ(HFModel(w + "/obf").fingerprint(), before);

  // Contradictory / bad options: exit code 2 with the option named.
  out.clear();
  rc = at::run_command(exe + " -q obfuscate " + model_dir() + " --key " + key + " --out " + w + "/x --exact --beta 4", &out, true);
  EXPECT_EQ(rc, 2) << out;
  EXPECT_NE(out.find("--beta"), std::string::npos) << out;
  out.clear();
  rc = at::run_command(exe + " -q obfuscate " + model_dir() + " --key " + key + " --out " + w + "/x --keymat nope", &out, true);
  EXPECT_EQ(rc, 2) << out;
  EXPECT_FALSE(fs::exists(w + "/x"));

  // --value-cond: 0 or >= 1, else a usage error naming it; allowed with --exact (still exact)
  // and recorded in the key.
  out.clear();
  rc = at::run_command(exe + " -q obfuscate " + model_dir() + " --key " + key + " --out " + w + "/x --exact --value-cond 0.5",
                       &out, true);
  EXPECT_EQ(rc, 2) << out;
  EXPECT_NE(out.find("--value-cond"), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(w + "/x"));
  out.clear();
  rc = at::run_command(exe + " -q obfuscate " + model_dir() + " --key " + key + " --out " + w + "/vc --exact --value-cond 4",
                       &out, true);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_EQ(KeyFile::load(key).record->params["params"]["value_cond"].get<double>(), 4.0);
  // Other value maps with the same key (unless --exact already uses cond 4).
  EXPECT_EQ(HFModel(w + "/vc").fingerprint() != before, ObfuscationParams::exact().value_cond != 4.0);
  out.clear();
  ASSERT_EQ(at::run_command(exe + " obfuscate --help", &out, true), 0);
  EXPECT_NE(out.find("--value-cond"), std::string::npos) << out;
  EXPECT_NE(out.find("q4_0"), std::string::npos) << out;

  // A key readable by others is refused (exit 5) before anything is written.
  ASSERT_EQ(::chmod(key.c_str(), 0644), 0);
  out.clear();
  rc = at::run_command(exe + " -q obfuscate " + model_dir() + " --key " + key + " --out " + w + "/y --exact", &out, true);
  EXPECT_EQ(rc, 5) << out;
  EXPECT_FALSE(fs::exists(w + "/y"));
}
