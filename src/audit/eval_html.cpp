// HTML (inline SVG, no scripts) for the accuracy audit, and the accuracy/privacy frontier join.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <sstream>

#include "aloepri/audit/eval.h"

namespace aloepri::eval {

namespace {

using json = nlohmann::json;

std::string esc(const std::string& s) {
  std::string r;
  for (char c : s) {
    switch (c) {
      case '<': r += "&lt;"; break;
      case '>': r += "&gt;"; break;
      case '&': r += "&amp;"; break;
      case '"': r += "&quot;"; break;
      default: r += c;
    }
  }
  return r;
}

std::string fmt(double v, const char* f = "%.4g") {
  char b[64];
  std::snprintf(b, sizeof b, f, v);
  return b;
}

double num(const json& j, const char* k, double dflt = NAN) {
  if (j.is_object() && j.contains(k) && j[k].is_number()) return j[k].get<double>();
  return dflt;
}

const char* kColors[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"};

struct Series {
  std::string name;
  std::vector<std::pair<double, double>> pts;  // (x, y)
};

// A line/scatter chart. log_y: log10 axis (non-positive values are dropped). x_labels: category
// names for integer x positions (empty = numeric x).
std::string svg_chart(const std::string& title, const std::string& xlabel, const std::string& ylabel,
                      const std::vector<Series>& series, bool log_y, const std::vector<std::string>& x_labels = {},
                      bool lines = true, const std::vector<std::pair<double, double>>* goal_box = nullptr) {
  const double W = 640, H = 320, ml = 70, mr = 170, mt = 30, mb = 50;
  double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
  auto ty = [&](double y) { return log_y ? std::log10(y) : y; };
  for (const auto& s : series)
    for (auto [x, y] : s.pts) {
      if (!std::isfinite(y) || (log_y && y <= 0)) continue;
      x0 = std::min(x0, x), x1 = std::max(x1, x);
      y0 = std::min(y0, ty(y)), y1 = std::max(y1, ty(y));
    }
  if (goal_box)
    for (auto [x, y] : *goal_box) {
      x0 = std::min(x0, x), x1 = std::max(x1, x);
      y0 = std::min(y0, ty(y)), y1 = std::max(y1, ty(y));
    }
  std::ostringstream o;
  o << "<figure><svg xmlns='http://www.w3.org/2000/svg' width='" << W << "' height='" << H
    << "' font-family='sans-serif' font-size='11'>";
  o << "<text x='" << ml << "' y='16' font-size='13' font-weight='bold'>" << esc(title) << "</text>";
  if (!std::isfinite(x0)) {
    o << "<text x='" << ml << "' y='" << H / 2 << "'>no data</text></svg></figure>";
    return o.str();
  }
  if (x1 == x0) x0 -= 0.5, x1 += 0.5;
  if (y1 == y0) y0 -= log_y ? 0.5 : std::max(1e-12, std::fabs(y0) * 0.1 + 1e-12), y1 += log_y ? 0.5 : std::max(1e-12, std::fabs(y1) * 0.1 + 1e-12);
  if (!log_y && y0 > 0 && y0 < 0.5 * y1) y0 = 0;
  const double pw = W - ml - mr, ph = H - mt - mb;
  auto X = [&](double x) { return ml + (x - x0) / (x1 - x0) * pw; };
  auto Y = [&](double y) { return mt + ph - (ty(y) - y0) / (y1 - y0) * ph; };
  o << "<rect x='" << ml << "' y='" << mt << "' width='" << pw << "' height='" << ph
    << "' fill='none' stroke='#999'/>";
  // y ticks
  for (int i = 0; i <= 4; ++i) {
    const double v = y0 + (y1 - y0) * i / 4.0;
    const double py = mt + ph - ph * i / 4.0;
    o << "<line x1='" << ml - 4 << "' x2='" << ml << "' y1='" << py << "' y2='" << py << "' stroke='#999'/>";
    o << "<text x='" << ml - 6 << "' y='" << py + 4 << "' text-anchor='end'>"
      << esc(fmt(log_y ? std::pow(10.0, v) : v, "%.3g")) << "</text>";
  }
  // x ticks
  if (!x_labels.empty()) {
    for (size_t i = 0; i < x_labels.size(); ++i)
      o << "<text x='" << X(double(i)) << "' y='" << mt + ph + 14 << "' text-anchor='middle'>" << esc(x_labels[i])
        << "</text>";
  } else {
    std::vector<double> xs;
    for (const auto& s : series)
      for (auto [x, y] : s.pts) xs.push_back(x);
    std::sort(xs.begin(), xs.end());
    xs.erase(std::unique(xs.begin(), xs.end()), xs.end());
    if (xs.size() > 10) {
      xs.clear();
      for (int i = 0; i <= 5; ++i) xs.push_back(x0 + (x1 - x0) * i / 5.0);
    }
    for (double x : xs)
      o << "<text x='" << X(x) << "' y='" << mt + ph + 14 << "' text-anchor='middle'>" << esc(fmt(x, "%.3g"))
        << "</text>";
  }
  o << "<text x='" << ml + pw / 2 << "' y='" << H - 12 << "' text-anchor='middle'>" << esc(xlabel) << "</text>";
  o << "<text transform='translate(14," << mt + ph / 2 << ") rotate(-90)' text-anchor='middle'>" << esc(ylabel)
    << "</text>";
  if (goal_box && goal_box->size() == 2) {
    const double gx0 = X((*goal_box)[0].first), gx1 = X((*goal_box)[1].first);
    const double gy0 = Y((*goal_box)[0].second), gy1 = Y((*goal_box)[1].second);
    o << "<rect x='" << std::min(gx0, gx1) << "' y='" << std::min(gy0, gy1) << "' width='" << std::fabs(gx1 - gx0)
      << "' height='" << std::fabs(gy1 - gy0) << "' fill='#2ca02c' fill-opacity='0.12' stroke='#2ca02c'/>";
  }
  for (size_t si = 0; si < series.size(); ++si) {
    const auto& s = series[si];
    const char* col = kColors[si % 8];
    std::string path;
    for (auto [x, y] : s.pts) {
      if (!std::isfinite(y) || (log_y && y <= 0)) continue;
      path += (path.empty() ? "" : " ") + fmt(X(x), "%.1f") + "," + fmt(Y(y), "%.1f");
      o << "<circle cx='" << X(x) << "' cy='" << Y(y) << "' r='3' fill='" << col << "'><title>" << esc(s.name)
        << ": (" << fmt(x) << ", " << fmt(y) << ")</title></circle>";
    }
    if (lines && !path.empty())
      o << "<polyline fill='none' stroke='" << col << "' stroke-width='1.5' points='" << path << "'/>";
    o << "<rect x='" << W - mr + 10 << "' y='" << mt + 14 * si << "' width='10' height='10' fill='" << col << "'/>";
    o << "<text x='" << W - mr + 24 << "' y='" << mt + 9 + 14 * si << "'>" << esc(s.name) << "</text>";
  }
  o << "</svg></figure>";
  return o.str();
}

const char* kStyle =
    "<style>body{font-family:sans-serif;max-width:1000px;margin:1em auto;padding:0 1em}"
    "table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
    "th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}code{background:#f4f4f4}</style>";

std::string params_str(const json& p) {
  if (!p.is_object()) return "";
  std::ostringstream o;
  bool first = true;
  for (const char* k : {"lambda", "expansion", "alpha_e", "alpha_h", "beta", "keymat", "kappa", "noise_scale"}) {
    if (!p.contains(k)) continue;
    o << (first ? "" : ", ") << k << " " << (p[k].is_string() ? p[k].get<std::string>() : p[k].dump());
    first = false;
  }
  return o.str();
}

}  // namespace

std::string render_html(const json& r) {
  std::ostringstream o;
  o << "<!doctype html><html><head><meta charset='utf-8'><title>aloepri eval</title>" << kStyle << "</head><body>";
  o << "<h1>Accuracy audit</h1><p>Plaintext <code>" << esc(r.value("model", "")) << "</code> vs obfuscated <code>"
    << esc(r.value("obf_model", "")) << "</code> (served dtype " << esc(r.value("served_dtype", "")) << ").<br>"
    << "Parameters: " << esc(params_str(r.value("params", json::object()))) << ".<br>Held-out text: <code>"
    << esc(r.value("text", "")) << "</code>, " << r["tokens"].value("windows", 0) << " windows of "
    << r["tokens"].value("window", 0) << " tokens.</p>";
  o << "<h2>Next-token figures</h2><table><tr><th>engine</th><th>positions</th><th>top-1 plain</th><th>top-1 obf</th>"
       "<th>relative loss</th><th>ppl plain</th><th>ppl obf</th><th>KL mean</th><th>KL max</th><th>top-1 agreement</th>"
       "<th>greedy agreement</th></tr>";
  for (auto& [name, s] : r["engines"].items()) {
    o << "<tr><td>" << esc(name) << "</td><td>" << s.value("positions", 0) << "</td><td>"
      << fmt(num(s, "top1_plain"), "%.4f") << "</td><td>" << fmt(num(s, "top1_obf"), "%.4f") << "</td><td>"
      << fmt(100 * num(s, "rel_loss"), "%.2f") << "%</td><td>" << fmt(num(s, "ppl_plain"), "%.2f") << "</td><td>"
      << fmt(num(s, "ppl_obf"), "%.2f") << "</td><td>" << fmt(num(s, "kl_mean")) << "</td><td>"
      << fmt(num(s, "kl_max")) << "</td><td>" << fmt(num(s, "top1_agreement"), "%.4f") << "</td><td>"
      << fmt(num(s, "greedy_agreement"), "%.3f") << "</td></tr>";
  }
  o << "</table>";
  if (r.contains("layers") && !r["layers"].empty()) {
    o << "<h2>Where the error enters</h2><p>Relative error of the residual stream read back through a reader "
         "matrix Q of the key, ||x~Q - x|| / ||x||, mean over positions; position 0 is the embedding, l the "
         "output of layer l. Each ingredient alone is a re-obfuscation with the same seed.</p>";
    std::vector<Series> ss;
    std::vector<std::string> xl;
    for (auto& v : r["layers"]) {
      Series s{v.value("name", ""), {}};
      const auto e = v["rel_err"].get<std::vector<double>>();
      for (size_t i = 0; i < e.size(); ++i) s.pts.push_back({double(i), e[i]});
      if (xl.size() < e.size()) {
        xl.clear();
        for (size_t i = 0; i < e.size(); ++i) xl.push_back(i == 0 ? "emb" : "L" + std::to_string(i - 1));
      }
      ss.push_back(s);
    }
    o << svg_chart("residual-stream relative error per layer", "layer", "rel. error (log)", ss, true, xl);
    o << "<table><tr><th>variant</th><th>dtype</th><th>rel. error (emb .. last)</th><th>KL mean</th>"
         "<th>top-1 agreement</th><th>relative loss</th></tr>";
    for (auto& v : r["layers"]) {
      std::string e;
      for (double x : v["rel_err"]) e += (e.empty() ? "" : " ") + fmt(x, "%.2e");
      o << "<tr><td>" << esc(v.value("name", "")) << "</td><td>" << esc(v.value("dtype", "")) << "</td><td>" << e
        << "</td><td>" << fmt(num(v["scores"], "kl_mean")) << "</td><td>"
        << fmt(num(v["scores"], "top1_agreement"), "%.4f") << "</td><td>"
        << fmt(100 * num(v["scores"], "rel_loss"), "%.2f") << "%</td></tr>";
    }
    o << "</table>";
  }
  o << "<p>Seconds: " << fmt(num(r, "seconds"), "%.1f") << "</p></body></html>\n";
  return o.str();
}

// ---------------------------------------------------------------- frontier

namespace {

void collect_attacks(const json& j, std::vector<json>& out) {
  if (j.is_array()) {
    for (auto& e : j) collect_attacks(e, out);
    return;
  }
  if (!j.is_object()) return;
  const char* keys[] = {"attacks", "results"};
  // `aloepri audit --json` writes {"meta": {"params": ...}, "results": [...]}; other producers may
  // put "params" beside the list.
  const json* params = nullptr;
  if (j.contains("params") && j["params"].is_object()) params = &j["params"];
  else if (j.contains("meta") && j["meta"].is_object() && j["meta"].contains("params") && j["meta"]["params"].is_object())
    params = &j["meta"]["params"];
  if (params) {
    for (const char* k : keys)
      if (j.contains(k) && j[k].is_array()) {
        out.push_back({{"params", *params}, {"attacks", j[k]}});
        return;
      }
  }
  for (auto& [k, v] : j.items())
    if (v.is_object() || v.is_array()) collect_attacks(v, out);
}

bool params_match(const json& a, const json& b) {
  for (const char* k : {"lambda", "expansion", "alpha_e", "alpha_h", "beta", "keymat", "noise_scale"}) {
    if (!a.contains(k) || !b.contains(k)) continue;
    const auto &x = a[k], &y = b[k];
    if (x.is_number() && y.is_number()) {
      if (std::fabs(x.get<double>() - y.get<double>()) > 1e-9) return false;
    } else if (x != y) {
      return false;
    }
  }
  return true;
}

double loss_of(const json& p) {
  const json& e = p.value("engines", json::object());
  for (const char* k : {"reference", "llamacpp"})
    if (e.contains(k)) return num(e[k], "rel_loss");
  return NAN;
}

}  // namespace

json frontier(const std::vector<json>& points, const json& attacks, const std::vector<std::string>& exclude) {
  std::vector<json> entries;
  if (!attacks.is_null()) collect_attacks(attacks, entries);
  json out;
  out["attack_entries"] = entries.size();
  out["excluded_attacks"] = exclude;
  out["points"] = json::array();
  for (const auto& p : points) {
    json q;
    q["params"] = p.value("params", json::object());
    q["tags"] = p.value("tags", json::object());
    q["loss"] = loss_of(p);
    const json& ref = p.value("engines", json::object()).value("reference", json::object());
    q["kl_mean"] = num(ref, "kl_mean");
    q["top1_plain"] = num(ref, "top1_plain");
    q["top1_obf"] = num(ref, "top1_obf");
    q["top1_agreement"] = num(ref, "top1_agreement");
    q["greedy_agreement"] = num(ref, "greedy_agreement");
    q["source"] = p.value("source", "");
    double worst = NAN;
    std::string worst_name;
    json per = json::object();
    for (const auto& e : entries) {
      if (!params_match(q["params"], e["params"])) continue;
      const json& arr = e["attacks"];
      for (const auto& a : arr) {
        const double t = num(a, "ttrsr");
        if (!std::isfinite(t)) continue;
        if (std::find(exclude.begin(), exclude.end(), a.value("attack", "")) != exclude.end()) continue;
        const std::string nm = a.value("attack", "?") + (a.contains("setting") ? " (" + a.value("setting", "") + ")" : "");
        per[nm] = per.contains(nm) ? std::max(per[nm].get<double>(), t) : t;
        if (!std::isfinite(worst) || t > worst) worst = t, worst_name = nm;
      }
    }
    q["attacks"] = per;
    if (std::isfinite(worst)) {
      q["worst_attack"] = worst;
      q["worst_attack_name"] = worst_name;
    }
    out["points"].push_back(q);
  }
  // Pareto front over (worst attack recovery, accuracy loss): lower is better for both.
  std::vector<size_t> front;
  const auto& P = out["points"];
  for (size_t i = 0; i < P.size(); ++i) {
    if (!P[i].contains("worst_attack") || !std::isfinite(P[i]["loss"].get<double>())) continue;
    const double wi = P[i]["worst_attack"], li = P[i]["loss"];
    bool dominated = false;
    for (size_t j = 0; j < P.size() && !dominated; ++j) {
      if (j == i || !P[j].contains("worst_attack") || !std::isfinite(P[j]["loss"].get<double>())) continue;
      const double wj = P[j]["worst_attack"], lj = P[j]["loss"];
      dominated = wj <= wi && lj <= li && (wj < wi || lj < li);
    }
    if (!dominated) front.push_back(i);
  }
  std::sort(front.begin(), front.end(),
            [&](size_t a, size_t b) { return P[a]["worst_attack"].get<double>() < P[b]["worst_attack"].get<double>(); });
  out["frontier"] = front;
  json goal = {{"max_attack_recovery", 0.05}, {"max_rel_loss", 0.01}};
  double best = INFINITY;
  int64_t best_i = -1;
  for (size_t i = 0; i < P.size(); ++i)
    if (P[i].contains("worst_attack") && P[i]["worst_attack"].get<double>() <= 0.05 && P[i]["loss"].get<double>() < best)
      best = P[i]["loss"], best_i = int64_t(i);
  if (best_i >= 0) {
    goal["best_point"] = best_i;
    goal["best_loss"] = best;
    goal["met"] = best <= 0.01;
  } else {
    goal["met"] = nullptr;
    goal["note"] = entries.empty() ? "no attack figures given: the goal cannot be judged"
                                   : "no point with every attack <= 5% among the joined points";
  }
  out["goal"] = goal;
  return out;
}

std::string render_frontier_html(const json& f) {
  std::ostringstream o;
  o << "<!doctype html><html><head><meta charset='utf-8'><title>aloepri accuracy sweeps</title>" << kStyle
    << "</head><body><h1>Accuracy sweeps and the privacy/accuracy frontier</h1>";
  const auto& P = f["points"];
  // Sweep groups: tags.sweep names the group, tags.x the swept parameter, tags.series a series.
  std::map<std::string, std::map<std::string, Series>> groups;
  std::map<std::string, std::string> xname;
  for (const auto& p : P) {
    const json& t = p["tags"];
    if (!t.is_object() || !t.contains("sweep") || !t.contains("x")) continue;
    const std::string g = t["sweep"], x = t["x"], s = t.value("series", "loss");
    if (!p["params"].contains(x) || !p["params"][x].is_number()) continue;
    xname[g] = x;
    auto& se = groups[g][s];
    se.name = s;
    se.pts.push_back({p["params"][x].get<double>(), 100 * p["loss"].get<double>()});
  }
  for (auto& [g, m] : groups) {
    std::vector<Series> ss;
    for (auto& [k, s] : m) {
      std::sort(s.pts.begin(), s.pts.end());
      ss.push_back(s);
    }
    o << "<h2>" << esc(g) << "</h2>" << svg_chart(g + ": relative top-1 loss", xname[g], "relative loss (%)", ss, false);
  }
  o << "<h2>Frontier: accuracy loss vs worst attack recovery</h2>";
  if (f.contains("excluded_attacks") && !f["excluded_attacks"].empty())
    o << "<p>Left out of the worst-attack figure: " << esc(f["excluded_attacks"].dump()) << "</p>";
  if (f.value("attack_entries", 0) == 0) {
    o << "<p>No attack figures were given (<code>--attacks</code>): only the accuracy side is shown.</p>";
  } else {
    Series all{"points", {}}, fr{"frontier", {}};
    for (const auto& p : P)
      if (p.contains("worst_attack")) all.pts.push_back({100 * p["worst_attack"].get<double>(), 100 * p["loss"].get<double>()});
    for (auto i : f["frontier"]) {
      const auto& p = P[i.get<size_t>()];
      fr.pts.push_back({100 * p["worst_attack"].get<double>(), 100 * p["loss"].get<double>()});
    }
    std::vector<std::pair<double, double>> box = {{0, 0}, {5, 1}};
    o << svg_chart("accuracy loss vs worst attack recovery (goal: green box)", "worst attack token recovery (%)",
                   "relative loss (%)", {all, fr}, false, {}, false, &box);
  }
  const json& g = f["goal"];
  o << "<p>Goal (every attack <= 5% of tokens, relative loss <= 1%): "
    << (g["met"].is_null() ? std::string("not judged (") + g.value("note", "") + ")"
                           : (g["met"].get<bool>() ? std::string("met") : std::string("not met")) +
                                 ", best loss at <= 5% recovery " + fmt(100 * g["best_loss"].get<double>(), "%.2f") + "%")
    << "</p>";
  o << "<h2>All points</h2><table><tr><th>parameters</th><th>tags</th><th>relative loss</th><th>KL mean</th>"
       "<th>top-1 agreement</th><th>worst attack</th></tr>";
  for (const auto& p : P) {
    std::string tags;
    if (p["tags"].is_object())
      for (auto& [k, v] : p["tags"].items()) tags += (tags.empty() ? "" : ", ") + k + "=" + (v.is_string() ? v.get<std::string>() : v.dump());
    o << "<tr><td>" << esc(params_str(p["params"])) << "</td><td>" << esc(tags) << "</td><td>"
      << fmt(100 * p["loss"].get<double>(), "%.2f") << "%</td><td>" << fmt(p["kl_mean"].get<double>()) << "</td><td>"
      << fmt(p["top1_agreement"].get<double>(), "%.4f") << "</td><td>"
      << (p.contains("worst_attack") ? fmt(100 * p["worst_attack"].get<double>(), "%.2f") + "% " +
                                           p.value("worst_attack_name", "")
                                     : std::string("-"))
      << "</td></tr>";
  }
  o << "</table></body></html>\n";
  return o.str();
}

}  // namespace aloepri::eval
