#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <filesystem>

#include "aloepri/core/error.h"
#include "aloepri/core/keyfile.h"
#include "aloepri/core/output.h"
#include "support/paths.h"

using namespace aloepri;
namespace at = aloepri::testing;

TEST(KeyFile, GeneratedKeyIsPrivateAndRoundTrips) {
  std::string dir = at::scratch_dir("keyfile_roundtrip");
  std::string p = dir + "/client.key";
  KeyFile k = KeyFile::generate();
  k.save(p);
  struct stat st {};
  ASSERT_EQ(::stat(p.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  KeyFile r = KeyFile::load(p);
  EXPECT_EQ(r.seed, k.seed);
  EXPECT_FALSE(r.record.has_value());
  // Two generated keys differ (OS CSPRNG).
  EXPECT_NE(KeyFile::generate().seed, k.seed);
}

TEST(KeyFile, RefusesOverwriteWithoutForce) {
  std::string p = at::scratch_dir("keyfile_overwrite") + "/k";
  KeyFile::generate().save(p);
  KeyFile first = KeyFile::load(p);
  try {
    KeyFile::generate().save(p);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), kExitOutputExists);
  }
  EXPECT_EQ(KeyFile::load(p).seed, first.seed);
  KeyFile::generate().save(p, /*overwrite=*/true);
  EXPECT_NE(KeyFile::load(p).seed, first.seed);
}

TEST(KeyFile, RejectsWrongPermissionsVersionAndJunk) {
  std::string dir = at::scratch_dir("keyfile_bad");
  std::string p = dir + "/k";
  KeyFile::generate().save(p);
  ::chmod(p.c_str(), 0644);
  try {
    KeyFile::load(p);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), kExitKeyMismatch);
    EXPECT_NE(std::string(e.what()).find("chmod 600"), std::string::npos) << e.what();
  }
  std::string v2 = dir + "/v2";
  write_file_atomic(v2, R"({"format":"aloepri-key","version":3,"seed":"00"})", false, 0600);
  EXPECT_THROW(KeyFile::load(v2), Error);
  std::string junk = dir + "/junk";
  write_file_atomic(junk, "hello", false, 0600);
  EXPECT_THROW(KeyFile::load(junk), Error);
  std::string shortseed = dir + "/short";
  write_file_atomic(shortseed, R"({"format":"aloepri-key","version":1,"seed":"abcd"})", false, 0600);
  try {
    KeyFile::load(shortseed);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("seed"), std::string::npos);
    EXPECT_EQ(std::string(e.what()).find("abcd"), std::string::npos) << "secret material in an error";
  }
}

TEST(KeyFile, TauIsADeterministicPermutationAndInverts) {
  KeyFile k = KeyFile::generate();
  auto tau = derive_tau(k.seed, 32000);
  EXPECT_EQ(tau, derive_tau(k.seed, 32000));
  auto inv = invert_permutation(tau);
  for (int64_t i = 0; i < 32000; ++i) ASSERT_EQ(inv[size_t(tau[size_t(i)])], i);
  // Not the identity (probability of a fixed point everywhere is nil).
  int fixed = 0;
  for (int64_t i = 0; i < 32000; ++i) fixed += tau[size_t(i)] == i;
  EXPECT_LT(fixed, 20);
  EXPECT_NE(derive_tau(KeyFile::generate().seed, 32000), tau);
}

TEST(KeyFile, RecordRoundTripsAndModelCheckFailsClearly) {
  std::string p = at::scratch_dir("keyfile_record") + "/k";
  KeyFile k = KeyFile::generate();
  EXPECT_THROW(k.require_record(p), Error);
  k.record = ObfuscationRecord{"aaaa1111aaaa1111aaaa", "bbbb2222bbbb2222bbbb", 32000, {{"lambda", 0.3}}, {}};
  k.save(p);
  KeyFile r = KeyFile::load(p);
  ASSERT_TRUE(r.record);
  EXPECT_EQ(r.record->vocab_size, 32000);
  EXPECT_EQ(r.record->params["lambda"], 0.3);
  EXPECT_NO_THROW(check_key_matches_model(r, p, "aaaa1111aaaa1111aaaa", "plain"));
  EXPECT_NO_THROW(check_key_matches_model(r, p, "bbbb2222bbbb2222bbbb", "obf"));
  try {
    check_key_matches_model(r, p, "cccc3333cccc3333cccc", "/models/other");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), kExitKeyMismatch);
    EXPECT_NE(std::string(e.what()).find("/models/other"), std::string::npos);
  }
}

TEST(KeyCli, KeygenEncodeDecode) {
  std::string dir = at::scratch_dir("key_cli");
  std::string exe = at::aloepri_exe();
  std::string out;
  ASSERT_EQ(at::run_command(exe + " keygen --out " + dir + "/k", &out, true), 0) << out;
  out.clear();
  EXPECT_EQ(at::run_command(exe + " keygen --out " + dir + "/k", &out, true), 4) << out;
  // A fresh key has no record: encode explains what to do.
  out.clear();
  EXPECT_EQ(at::run_command(exe + " encode --key " + dir + "/k --ids 1,2", &out, true), 5);
  EXPECT_NE(out.find("aloepri obfuscate"), std::string::npos) << out;
  // Give it a record and map ids both ways.
  KeyFile k = KeyFile::load(dir + "/k");
  k.record = ObfuscationRecord{"p", "o", 100, {}, {}};
  k.save(dir + "/k", true);
  std::string enc, dec;
  ASSERT_EQ(at::run_command(exe + " encode --key " + dir + "/k --ids 0,5,99", &enc), 0);
  auto tau = derive_tau(k.seed, 100);
  EXPECT_EQ(enc, std::to_string(tau[0]) + "," + std::to_string(tau[5]) + "," + std::to_string(tau[99]) + "\n");
  enc.pop_back();
  ASSERT_EQ(at::run_command(exe + " decode --key " + dir + "/k --ids " + enc, &dec), 0);
  EXPECT_EQ(dec, "0,5,99\n");
  out.clear();
  EXPECT_EQ(at::run_command(exe + " encode --key " + dir + "/k --ids 100", &out, true), 5);
  EXPECT_NE(out.find("outside the vocabulary"), std::string::npos) << out;
  // The seed never reaches stdout/stderr.
}
