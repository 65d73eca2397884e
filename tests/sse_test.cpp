// The one streamed-reply parser (sse.h), as the backends and the demo feed it.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "aloepri/client/sse.h"

using aloepri::SseEvent;
using aloepri::SseParser;

namespace {
std::vector<SseEvent> feed_in_pieces(const std::string& s, size_t piece) {
  SseParser p;
  std::vector<SseEvent> out;
  for (size_t i = 0; i < s.size(); i += piece)
    EXPECT_TRUE(p.feed(s.data() + i, std::min(piece, s.size() - i), [&](const SseEvent& e) {
      out.push_back(e);
      return true;
    }));
  return out;
}
}  // namespace

TEST(Sse, EventsInAnySplitLfAndCrlf) {
  const std::string s = "data: {\"a\":1}\n\n: keep-alive\n\ndata:{\"b\":2}\r\n\r\ndata: x\ndata: y\n\ndata: [DONE]\n\n";
  for (size_t piece : {1u, 3u, 7u, 1000u}) {
    auto ev = feed_in_pieces(s, piece);
    ASSERT_EQ(ev.size(), 4u) << piece;
    EXPECT_EQ(ev[0].data, "{\"a\":1}");
    EXPECT_EQ(ev[1].data, "{\"b\":2}");
    EXPECT_EQ(ev[2].data, "xy");  // data lines joined
    EXPECT_EQ(ev[3].data, "[DONE]");
    for (const auto& e : ev) EXPECT_FALSE(e.error);
  }
}

TEST(Sse, InBandErrorAndEarlyStop) {
  auto ev = feed_in_pieces("error: {\"message\":\"boom\"}\n\n", 5);
  ASSERT_EQ(ev.size(), 1u);
  ASSERT_TRUE(ev[0].error);
  EXPECT_EQ(*ev[0].error, " {\"message\":\"boom\"}");
  SseParser p;
  int seen = 0;
  const std::string s = "data: 1\n\ndata: 2\n\n";
  EXPECT_FALSE(p.feed(s.data(), s.size(), [&](const SseEvent&) { return ++seen < 1; }));
  EXPECT_EQ(seen, 1);
  // Incomplete event: nothing yet.
  SseParser q;
  EXPECT_TRUE(q.feed("data: 3\n", 8, [&](const SseEvent&) { return false; }));
}
