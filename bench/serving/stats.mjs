// Small statistics shared by the serving benchmarks (serving_bench.mjs, decode_split.mjs).

export const median = (a) => {
  const s = [...a].sort((x, y) => x - y);
  const k = s.length >> 1;
  return s.length % 2 ? s[k] : (s[k - 1] + s[k]) / 2;
};

// 95% percentile-bootstrap interval of the median of v, B resamples. A fixed-seed LCG, so reruns
// on the same samples print the same interval.
export function bootstrapMedianCI(v, B = 2000) {
  let st = 987654321;
  const rnd = () => { st = (st * 1103515245 + 12345) % 2147483648; return st / 2147483648; };
  const meds = [];
  for (let b = 0; b < B; b++) meds.push(median(v.map(() => v[Math.floor(rnd() * v.length)])));
  meds.sort((x, y) => x - y);
  return [meds[Math.floor(0.025 * B)], meds[Math.ceil(0.975 * B) - 1]];
}
