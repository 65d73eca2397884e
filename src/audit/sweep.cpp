// Joining audit reports of a parameter sweep (see audit/sweep.h).
#include "aloepri/audit/sweep.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <sstream>

#include "aloepri/audit/report.h"
#include "aloepri/core/error.h"
#include "aloepri/core/output.h"

namespace fs = std::filesystem;

namespace aloepri::audit {

using nlohmann::json;

namespace {

double pnum(const json& row, const char* k) {
  return row["params"].is_object() && row["params"].contains(k) ? row["params"][k].get<double>() : -1.0;
}

std::string pct(const json& v) {
  if (!v.is_number()) return std::string("-");
  char b[32];
  std::snprintf(b, sizeof b, "%.2f%%", 100 * v.get<double>());
  return std::string(b);
}

}  // namespace

SweepTable join_audit_reports(const std::vector<std::string>& paths) {
  SweepTable t;
  json& rows = t.rows;
  std::vector<std::string>& attacks = t.attacks;
  for (const auto& path : paths) {
    json j;
    try {
      j = json::parse(read_file(path));
    } catch (const json::exception& e) {
      throw Error(path, std::string("invalid JSON: ") + e.what());
    }
    require(j.contains("results") && j.contains("meta"), path, "not an `aloepri audit --json` report");
    // Reports of the same parameters (e.g. one attack rerun alone) join into one row.
    const json params = j["meta"].value("params", json(nullptr));
    json* existing = nullptr;
    for (auto& r : rows)
      if (!params.is_null() && r["params"] == params) existing = &r;
    std::string name = fs::path(path).stem().string();
    // NAME.<attacks>.json (a rerun of some attacks): drop the attack-list suffix, keep "ae0.25".
    if (const auto dot = name.rfind('.'); dot != std::string::npos &&
        name.find_first_not_of("abcdefghijklmnopqrstuvwxyz-", dot + 1) == std::string::npos)
      name = name.substr(0, dot);
    json row = existing ? *existing
                        : json{{"name", name}, {"params", params}, {"ttrsr", json::object()},
                               {"vocab_recovery", json::object()}, {"top10", json::object()},
                               {"goal_met", json::object()}};
    json tt = row["ttrsr"], voc = row["vocab_recovery"], top10 = row["top10"], met = row["goal_met"];
    for (const auto& r : j["results"]) {
      const std::string a = r.value("attack", "?");
      if (std::find(attacks.begin(), attacks.end(), a) == attacks.end()) attacks.push_back(a);
      tt[a] = r["ttrsr"];
      voc[a] = r["vocab_recovery"];
      top10[a] = r["topk"].value("top10", json(nullptr));
      met[a] = r["goal_met"];
      if (r.contains("details") && r["details"].contains("parts"))
        for (const auto& [k, v] : r["details"]["parts"].items())
          if (a == "NN") {
            const std::string pa = "NN/" + k;
            if (std::find(attacks.begin(), attacks.end(), pa) == attacks.end()) attacks.push_back(pa);
            tt[pa] = v["ttrsr"];
            voc[pa] = v["vocab_recovery"];
          }
    }
    row["ttrsr"] = tt;
    row["vocab_recovery"] = voc;
    row["top10"] = top10;
    row["goal_met"] = met;
    // Also as a list in the shape `aloepri eval-frontier --attacks` joins on (params + attacks).
    json list = json::array();
    for (const auto& [a, v] : tt.items())
      if (a.find('/') == std::string::npos)
        list.push_back({{"attack", a}, {"ttrsr", v}, {"vocab_recovery", voc.value(a, json(nullptr))},
                        {"goal_met", met.value(a, json(nullptr))}});
    row["attacks"] = list;
    if (existing) *existing = row;
    else rows.push_back(row);
  }
  return t;
}

std::string sweep_markdown(const SweepTable& t) {
  const json& rows = t.rows;
  const std::vector<std::string>& attacks = t.attacks;
  std::ostringstream md;
  md << "| setting | alpha_e | alpha_h | lambda | h | beta |";
  for (const auto& a : attacks) md << " " << a << " TTRSR (vocab) |";
  md << "\n|---|---|---|---|---|---|";
  for (size_t i = 0; i < attacks.size(); ++i) md << "---|";
  md << "\n";
  for (const auto& r : rows) {
    md << "| " << r["name"].get<std::string>() << " | " << pnum(r, "alpha_e") << " | " << pnum(r, "alpha_h") << " | "
       << pnum(r, "lambda") << " | " << pnum(r, "expansion") << " | " << pnum(r, "beta") << " |";
    for (const auto& a : attacks)
      md << " " << pct(r["ttrsr"].value(a, json(nullptr))) << " (" << pct(r["vocab_recovery"].value(a, json(nullptr)))
         << ") |";
    md << "\n";
  }
  return md.str();
}

std::string sweep_html(const SweepTable& t) {
  const json& rows = t.rows;
  const std::vector<std::string>& attacks = t.attacks;
  // Figure 3: TTRSR against alpha_e (other parameters at the defaults) and against alpha_h.
  auto is_default_except = [&](const json& r, const char* free) {
    const std::vector<std::pair<const char*, double>> d = {
        {"alpha_e", 1.0}, {"alpha_h", 0.2}, {"lambda", 0.3}, {"expansion", 128}, {"beta", 8}};
    for (const auto& [k, v] : d)
      if (std::string(k) != free && std::abs(pnum(r, k) - v) > 1e-9) return false;
    return true;
  };
  std::ostringstream h;
  h << "<!DOCTYPE html><html><head><meta charset='utf-8'><title>aloepri audit sweep</title></head>"
       "<body style='font-family:sans-serif;max-width:1000px;margin:2em auto'><h1>Privacy audit sweep</h1>\n";
  for (const char* x : {"alpha_e", "alpha_h"}) {
    std::vector<std::pair<std::string, std::vector<std::pair<double, double>>>> series;
    for (const auto& a : attacks) {
      std::vector<std::pair<double, double>> pts;
      for (const auto& r : rows)
        if (is_default_except(r, x) && r["ttrsr"].contains(a) && r["ttrsr"][a].is_number())
          pts.emplace_back(pnum(r, x), r["ttrsr"][a].get<double>());
      std::sort(pts.begin(), pts.end());
      if (pts.size() >= 2) series.emplace_back(a, pts);
    }
    if (!series.empty())
      h << "<p>" << svg_line_chart(std::string("TTRSR vs ") + x + " (other parameters at the defaults)", x,
                                        "victim tokens recovered", series)
        << "</p>\n";
  }
  h << "<pre>" << rows.dump(1) << "</pre></body></html>\n";
  return h.str();
}

}  // namespace aloepri::audit
