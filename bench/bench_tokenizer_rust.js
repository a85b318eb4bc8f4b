// Times HF's Rust tokenizers (Node bindings) on the same text as
// bench_tokenizer.c: load, then the best of N single-call encodes.
// Usage: node bench_tokenizer_rust.js TOKENIZER_JSON TEXT_FILE [N]
// Prints one JSON line: {"load_s", "encode_s", "ids"}.
'use strict';
const fs = require('fs');
const { Tokenizer } = require('@anush008/tokenizers');
(async () => {
  const [tokPath, textPath, nArg] = process.argv.slice(2);
  const text = fs.readFileSync(textPath, 'utf8');
  let t0 = process.hrtime.bigint();
  const tok = Tokenizer.fromFile(tokPath);
  const loadS = Number(process.hrtime.bigint() - t0) / 1e9;
  let best = Infinity, ids = 0;
  for (let r = 0; r < Number(nArg || 3); r++) {
    t0 = process.hrtime.bigint();
    const enc = await tok.encode(text, null, { addSpecialTokens: true });
    const s = Number(process.hrtime.bigint() - t0) / 1e9;
    ids = enc.getLength();
    if (s < best) best = s;
  }
  console.log(JSON.stringify({ load_s: loadS, encode_s: best, ids }));
})().catch((e) => { console.error(e); process.exit(1); });
