// Reading a safetensors checkpoint directory into Float32Arrays, for the quantization bench
// scripts (weight_error.mjs, value_attack.mjs). Every *.safetensors file in the directory, every
// tensor; F32, BF16 and F16 only (other dtypes: an error naming the file and tensor).
import { closeSync, fstatSync, openSync, readSync, readdirSync } from "node:fs";
import path from "node:path";

export function f16ToF32(h) {
  const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

// name -> { shape, v: Float32Array }
export function readSafetensors(dir) {
  const out = new Map();
  for (const f of readdirSync(dir).filter((x) => x.endsWith(".safetensors")).sort()) {
    const file = path.join(dir, f);
    const fd = openSync(file, "r");
    const size = fstatSync(fd).size;
    const b8 = Buffer.alloc(8);
    readSync(fd, b8, 0, 8, 0);
    const n = Number(b8.readBigUInt64LE(0));
    const hb = Buffer.alloc(n);
    readSync(fd, hb, 0, n, 8);
    const header = JSON.parse(hb.toString("utf8"));
    const data = Buffer.alloc(size - 8 - n);
    readSync(fd, data, 0, data.length, 8 + n);
    closeSync(fd);
    for (const [name, t] of Object.entries(header)) {
      if (name === "__metadata__") continue;
      const raw = data.subarray(t.data_offsets[0], t.data_offsets[1]);
      const cnt = t.shape.reduce((a, b) => a * b, 1);
      const v = new Float32Array(cnt);
      if (t.dtype === "F32") for (let i = 0; i < cnt; i++) v[i] = raw.readFloatLE(4 * i);
      else if (t.dtype === "BF16") {
        const u = new Uint32Array(v.buffer);
        for (let i = 0; i < cnt; i++) u[i] = raw.readUInt16LE(2 * i) << 16;
      } else if (t.dtype === "F16") for (let i = 0; i < cnt; i++) v[i] = f16ToF32(raw.readUInt16LE(2 * i));
      else throw new Error(`${file}: ${name}: dtype ${t.dtype} (use f32/f16/bf16 checkpoints)`);
      out.set(name, { shape: t.shape, v });
    }
  }
  return out;
}
