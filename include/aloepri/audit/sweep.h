// Joining `aloepri audit --json` reports of several parameter settings into one table
// (params -> attack figures), for the sweep tables and the TTRSR-vs-alpha figure. Reports of the
// same parameters (one attack rerun alone) join into one row.
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace aloepri::audit {

struct SweepTable {
  // One object per setting: name, params, ttrsr / vocab_recovery / top10 / goal_met by attack
  // (NN's parts as "NN/<part>"), and "attacks" (the list `aloepri eval-frontier --attacks` joins).
  nlohmann::json rows = nlohmann::json::array();
  std::vector<std::string> attacks;  // in order of first appearance
};

// Reads the reports; an unreadable or non-audit JSON file is an Error naming it.
SweepTable join_audit_reports(const std::vector<std::string>& paths);
// A Markdown table: setting, alpha_e, alpha_h, lambda, h, beta, then TTRSR (vocab) per attack.
std::string sweep_markdown(const SweepTable& t);
// Self-contained HTML: TTRSR vs alpha_e and vs alpha_h (others at the report's defaults), inline SVG.
std::string sweep_html(const SweepTable& t);

}  // namespace aloepri::audit
