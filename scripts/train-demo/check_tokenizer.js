// Checks that tokenizer.json/tokenizer_config.json load in @huggingface/tokenizers (the library
// lib/model/tokenizer.ts uses, called the same way) and that it gives exactly the ids the
// Python encoder gave: node check_tokenizer.js <model dir> <text file> <ids.json>
// (<ids.json>: {"lines": [[ids of line 0], ...], "whole": [ids of the whole file]}).
const fs = require('fs');
const path = require('path');
const { Tokenizer } = require(path.join(__dirname, '../../node_modules/@huggingface/tokenizers'));
const [dir, textFile, idsFile] = process.argv.slice(2);
const json = JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer.json'), 'utf8'));
const config = JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer_config.json'), 'utf8'));
const t = new Tokenizer(json, config);
const text = fs.readFileSync(textFile, 'utf8');
const want = JSON.parse(fs.readFileSync(idsFile, 'utf8'));
const lines = text.split('\n');
let bad = 0;
lines.forEach((line, i) => {
  const got = t.encode(line, { add_special_tokens: false }).ids.map(Number);
  if (JSON.stringify(got) !== JSON.stringify(want.lines[i])) {
    if (bad++ < 5) console.error(`line ${i} differs: ${JSON.stringify(line)}\n js ${got}\n py ${want.lines[i]}`);
  }
  if (got.length > 0 && t.decode(got, { skip_special_tokens: true }) !== line) { // decode([]) throws in this library
    if (bad++ < 5) console.error(`line ${i} does not round-trip`);
  }
});
const whole = t.encode(text, { add_special_tokens: false }).ids.map(Number);
if (JSON.stringify(whole) !== JSON.stringify(want.whole)) { bad++; console.error('whole-file ids differ'); }
if (t.decode(whole, { skip_special_tokens: true }) !== text) { bad++; console.error('whole file does not round-trip'); }
const bos = json.added_tokens.find((a) => a.content === config.bos_token).id;
const withBos = t.encode('And God said', { add_special_tokens: false }).ids.map(Number);
if (t.decode([bos, ...withBos], { skip_special_tokens: true }) !== 'And God said') { bad++; console.error('BOS not skipped in decode'); }
console.log(`${lines.length} lines + whole file (${whole.length} tokens): ${bad === 0 ? 'identical ids, round-trip ok' : `${bad} MISMATCHES`}`);
process.exit(bad === 0 ? 0 : 1);
