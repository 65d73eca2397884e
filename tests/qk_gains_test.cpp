// The q/k norm gain attack (audit/qk_gains.h) on exactly obfuscated Qwen3 checkpoints: from the
// two models' gains alone the server recovers the shared pair map (BlockPerm slots and quarter-turn
// swaps) and the pair scales h; scored against the key's attention keys.
#include <gtest/gtest.h>

#include <cmath>

#include "aloepri/audit/qk_gains.h"
#include "aloepri/audit/weights.h"
#include "aloepri/core/error.h"
#include "aloepri/engine/synth.h"
#include "aloepri/obfuscate/attention.h"
#include "aloepri/obfuscate/executor.h"
#include "support/paths.h"

using namespace aloepri;

namespace {

Seed key_seed() {
  Seed s{};
  for (size_t i = 0; i < s.size(); ++i) s[i] = uint8_t(0x47 + 3 * i);
  return s;
}

}  // namespace

TEST(QkGains, PublishedGainsGiveAwayThePairMapAndScales) {
  const std::string root = aloepri::testing::scratch_dir("qk_gains");
  SynthOptions so;
  so.family = Family::Qwen3;
  so.heads = 4;
  so.kv_heads = 2;
  so.head_dim = 32;
  so.vocab_dir = aloepri::testing::vocab_dir("qwen3");
  so.seed = 4;
  synthesize(so, root + "/plain");
  const Seed seed = key_seed();
  for (const char* profile : {"exact", "noise"}) {  // BlockPerm: identity at exact (beta 1), windows of 8 in noise
    ObfuscateOptions opt;
    opt.params = ObfuscationParams::profile(profile);
    const std::string out = root + "/obf-" + profile;
    obfuscate_model(root + "/plain", seed, out, opt);
    const ModelWeights plain = audit::load_weights(root + "/plain"), obfw = audit::load_weights(out);
    const ModelConfig& c = plain.config;
    const auto rec = audit::qk_gain_attack(plain, obfw);
    ASSERT_EQ(rec.size(), size_t(c.num_hidden_layers));
    int64_t slots = 0, swaps = 0, moved = 0, total = 0;
    double worst_h = 0;
    for (const auto& r : rec) {
      obf::AttnKeyOptions ako;
      ako.beta = opt.params.beta;
      ako.gamma = opt.params.gamma;
      ako.scale_range = opt.params.head_scale_range;
      ako.per_group_perm = opt.params.per_group_perm;
      ako.value_cond = opt.params.value_cond;
      ako.qk_norm = true;
      const obf::AttnKeys K = obf::draw_attn_keys(seed, r.layer, c.num_attention_heads, c.num_key_value_heads,
                                                  c.head_dim, rope_inv_freq(c), ako);
      const obf::HeadKeys& hk = K.kv[0];
      for (size_t p = 0; p < r.pair_slot.size(); ++p) {
        slots += r.pair_slot[p] == hk.pair_slot[p];
        moved += hk.pair_slot[p] != int64_t(p);
        swaps += r.swapped[p] == ((hk.quarter[p] & 1) != 0);
        worst_h = std::max(worst_h, std::fabs(r.scale[p] / hk.scale[p] - 1));
        ++total;
      }
    }
    std::printf("qk-gains %s: pair slots %lld/%lld (key moved %lld), swaps %lld/%lld, worst |h^/h - 1| %.2e\n",
                profile, (long long)slots, (long long)total, (long long)moved, (long long)swaps, (long long)total,
                worst_h);
    EXPECT_EQ(slots, total) << profile;
    EXPECT_EQ(swaps, total) << profile;
    EXPECT_LT(worst_h, 1e-5) << profile;
    if (std::string(profile) == "noise") {
      EXPECT_GT(moved, 0);  // the slots were really permuted
    }
  }
  // A model without q/k norms is refused, naming what is missing.
  SynthOptions lo = so;
  lo.family = Family::Llama;
  lo.head_dim.reset();
  synthesize(lo, root + "/llama");
  const ModelWeights llama = audit::load_weights(root + "/llama");
  EXPECT_THROW(audit::qk_gain_attack(llama, llama), Error);
}
