// Server-sent events parser (see sse.h).
#include "aloepri/client/sse.h"

namespace aloepri {

bool SseParser::feed(const char* data, size_t n, const std::function<bool(const SseEvent&)>& on_event) {
  buf_.append(data, n);
  for (;;) {
    size_t end = buf_.find("\n\n");
    size_t sep = 2;
    const size_t end_crlf = buf_.find("\r\n\r\n");
    if (end_crlf != std::string::npos && (end == std::string::npos || end_crlf < end)) end = end_crlf, sep = 4;
    if (end == std::string::npos) return true;
    const std::string ev = buf_.substr(0, end);
    buf_.erase(0, end + sep);
    SseEvent e;
    size_t pos = 0;
    while (pos <= ev.size()) {
      size_t nl = ev.find('\n', pos);
      if (nl == std::string::npos) nl = ev.size();
      std::string line = ev.substr(pos, nl - pos);
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.rfind("data:", 0) == 0) {
        std::string d = line.substr(5);
        if (!d.empty() && d[0] == ' ') d.erase(0, 1);
        e.data += d;
      } else if (line.rfind("error:", 0) == 0 && !e.error) {
        e.error = line.substr(6);
      }
      pos = nl + 1;
    }
    if (e.data.empty() && !e.error) continue;
    if (!on_event(e)) return false;
  }
}

}  // namespace aloepri
