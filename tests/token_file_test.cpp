// The corpus token reader (aloepri/token_file.h): little-endian uint16 ids, clear errors.
#include <gtest/gtest.h>

#include <fstream>
#include <string>

#include "aloepri/core/error.h"
#include "aloepri/formats/token_file.h"
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

TEST(TokenFile, TextIdsAndEitherFormatByName) {
  using aloepri::parse_token_ids;
  EXPECT_EQ(parse_token_ids("1, 2 3\n4\r\n\t5,,6", "t"), (std::vector<int32_t>{1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(parse_token_ids("1,2,3", "t", 2), (std::vector<int32_t>{1, 2}));
  EXPECT_TRUE(parse_token_ids(" \n", "t").empty());
  for (const char* bad : {"1,x", "1,-2", "1,2.5"}) {
    try {
      parse_token_ids(bad, "where.txt");
      ADD_FAILURE() << bad;
    } catch (const aloepri::Error& e) {
      EXPECT_NE(std::string(e.what()).find("where.txt"), std::string::npos) << e.what();
    }
  }
  const std::string dir = aloepri::testing::scratch_dir("token_file_either");
  const auto bin = write_bytes(dir, "ids.bin", std::string("\x01\x00\x34\x12", 4));
  const auto txt = write_bytes(dir, "ids.txt", "1, 4660\n");
  EXPECT_EQ(aloepri::read_token_ids(bin), (std::vector<int32_t>{1, 0x1234}));
  EXPECT_EQ(aloepri::read_token_ids(txt), (std::vector<int32_t>{1, 0x1234}));
  EXPECT_EQ(aloepri::read_token_ids(txt, 1), (std::vector<int32_t>{1}));
}

TEST(TokenFile, DocumentsFromTheModelsSpecialIds) {
  using aloepri::split_documents;
  // BOS starts a document and stays in it; EOS is dropped; a stream without BOS is one document.
  const std::vector<uint16_t> ids = {1, 5, 6, 2, 1, 7, 2, 2, 1, 8};
  EXPECT_EQ(split_documents(ids, {1, 2}),
            (std::vector<std::vector<int32_t>>{{1, 5, 6}, {1, 7}, {1, 8}}));
  // Other special ids (a qwen-like vocabulary): 1 and 2 are ordinary tokens there.
  EXPECT_EQ(split_documents(ids, {8, 6}), (std::vector<std::vector<int32_t>>{{1, 5, 2, 1, 7, 2, 2, 1}, {8}}));
  EXPECT_EQ(split_documents(ids, {}), (std::vector<std::vector<int32_t>>{{1, 5, 6, 2, 1, 7, 2, 2, 1, 8}}));
  EXPECT_TRUE(split_documents({2, 2}, {1, 2}).empty());
}
