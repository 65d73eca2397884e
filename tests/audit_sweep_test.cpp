// Joining audit reports of a sweep (audit/sweep.h) on hand-written reports: same parameters join
// into one row, an attack rerun alone adds its figures, a non-audit file is an error naming it.
#include <gtest/gtest.h>

#include "aloepri/audit/sweep.h"
#include "aloepri/core/error.h"
#include "aloepri/core/output.h"
#include "support/paths.h"

using namespace aloepri;
using nlohmann::json;

namespace {

json report(double alpha_e, const std::vector<std::pair<std::string, double>>& ttrsr) {
  json results = json::array();
  for (const auto& [a, v] : ttrsr)
    results.push_back({{"attack", a}, {"ttrsr", v}, {"vocab_recovery", v / 2}, {"topk", {{"top10", v}}},
                       {"goal_met", v <= 0.05}});
  return {{"meta", {{"params", {{"alpha_e", alpha_e}, {"alpha_h", 0.2}, {"lambda", 0.3}, {"expansion", 128}, {"beta", 8}}}}},
          {"results", results}};
}

}  // namespace

TEST(AuditSweep, JoinsReportsBySettingAndWritesTables) {
  const std::string d = aloepri::testing::scratch_dir("audit_sweep");
  write_file_atomic(d + "/ae0.5.json", report(0.5, {{"VMA", 0.01}, {"NN", 1.0}}).dump());
  write_file_atomic(d + "/ae1.json", report(1.0, {{"VMA", 0.002}}).dump());
  // The same setting as ae1 with one attack rerun alone: joins into ae1's row.
  write_file_atomic(d + "/ae1.oracle.json", report(1.0, {{"Oracle", 0.3}}).dump());
  const auto t = audit::join_audit_reports({d + "/ae0.5.json", d + "/ae1.json", d + "/ae1.oracle.json"});
  ASSERT_EQ(t.rows.size(), 2u);
  EXPECT_EQ(t.attacks, (std::vector<std::string>{"VMA", "NN", "Oracle"}));
  EXPECT_EQ(t.rows[1]["name"], "ae1");
  EXPECT_DOUBLE_EQ(t.rows[1]["ttrsr"]["VMA"].get<double>(), 0.002);
  EXPECT_DOUBLE_EQ(t.rows[1]["ttrsr"]["Oracle"].get<double>(), 0.3);
  EXPECT_FALSE(t.rows[1]["ttrsr"].contains("NN"));
  EXPECT_EQ(t.rows[0]["attacks"].size(), 2u);

  const std::string md = audit::sweep_markdown(t);
  EXPECT_NE(md.find("| ae0.5 | 0.5 | 0.2 |"), std::string::npos) << md;
  EXPECT_NE(md.find("30.00% (15.00%)"), std::string::npos) << md;  // ae1's Oracle
  EXPECT_NE(md.find("| - (-) |"), std::string::npos) << md;         // ae1 has no NN figure
  // Two alpha_e points at the other defaults: one chart per attack measured at both.
  const std::string html = audit::sweep_html(t);
  EXPECT_NE(html.find("TTRSR vs alpha_e"), std::string::npos);
  EXPECT_NE(html.find("<svg"), std::string::npos);
}

TEST(AuditSweep, RefusesAFileThatIsNotAnAuditReportNamingIt) {
  const std::string d = aloepri::testing::scratch_dir("audit_sweep_bad");
  write_file_atomic(d + "/eval.json", json{{"results", json::array()}}.dump());
  try {
    audit::join_audit_reports({d + "/eval.json"});
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("eval.json"), std::string::npos) << e.what();
  }
  write_file_atomic(d + "/broken.json", "{not json");
  EXPECT_THROW(audit::join_audit_reports({d + "/broken.json"}), Error);
}
