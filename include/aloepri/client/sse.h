// Server-sent events (text/event-stream) as the engines and the proxy stream replies: the one
// parser of streamed replies, used by the engine backends (backend.cpp) and by `aloepri demo`
// reading the proxy's OpenAI stream.
#pragma once
#include <cstddef>
#include <functional>
#include <optional>
#include <string>

namespace aloepri {

// One event: its "data:" lines joined (one leading space after the colon dropped), and the text
// of an in-band "error:" line when the event has one (llama-server reports failures that way).
struct SseEvent {
  std::string data;
  std::optional<std::string> error;
};

// Incremental: feed() the bytes as they arrive, in any split; each complete event (ended by a
// blank line, "\n\n" or "\r\n\r\n") goes to on_event, except events with neither data nor error
// (comments, keep-alives). on_event returns false to stop; feed() then returns false too. An
// exception thrown by on_event propagates.
class SseParser {
 public:
  bool feed(const char* data, size_t n, const std::function<bool(const SseEvent&)>& on_event);

 private:
  std::string buf_;
};

}  // namespace aloepri
