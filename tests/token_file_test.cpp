// The corpus token reader (aloepri/token_file.h): little-endian uint16 ids, clear errors.
#include <gtest/gtest.h>

#include <fstream>
#include <string>

#include "aloepri/error.h"
#include "aloepri/token_file.h"
#include "support/paths.h"

using aloepri::read_token_file;

namespace {
std::string write_bytes(const std::string& dir, const std::string& name, const std::string& bytes) {
  const std::string path = dir + "/" + name;
  std::ofstream(path, std::ios::binary) << bytes;
  return path;
}

std::string error_of(const std::string& path) {
  try {
    read_token_file(path);
  } catch (const aloepri::Error& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST(TokenFile, ReadsLittleEndianIds) {
  const std::string dir = aloepri::testing::scratch_dir("token_file_ids");
  const auto p = write_bytes(dir, "ids.bin", std::string("\x01\x00\x34\x12\xff\xff\x00\x80", 8));
  EXPECT_EQ(read_token_file(p), (std::vector<uint16_t>{1, 0x1234, 0xffff, 0x8000}));
  EXPECT_EQ(read_token_file(p, 2), (std::vector<uint16_t>{1, 0x1234}));
  EXPECT_EQ(read_token_file(p, 100).size(), 4u);  // a limit above the length reads everything
}

TEST(TokenFile, BadFilesNameThePath) {
  const std::string dir = aloepri::testing::scratch_dir("token_file_bad");
  const auto odd = write_bytes(dir, "odd.bin", std::string("\x01\x00\x02", 3));
  EXPECT_NE(error_of(odd).find(odd), std::string::npos);
  EXPECT_NE(error_of(odd).find("3 bytes"), std::string::npos);
  const auto empty = write_bytes(dir, "empty.bin", "");
  EXPECT_NE(error_of(empty).find("empty"), std::string::npos);
  const auto missing = dir + "/missing.bin";
  EXPECT_NE(error_of(missing).find("cannot open"), std::string::npos);
  EXPECT_NE(error_of(missing).find(missing), std::string::npos);
}
