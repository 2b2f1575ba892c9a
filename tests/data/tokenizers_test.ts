import assert from "node:assert/strict";
import { CharTokenizer, loadGpt2Tokenizer, tokenizerFromJSON } from "../../data/mod.ts";

Deno.test("CharTokenizer round-trips text with multi-byte characters through its saved form", async () => {
  const text = "naïve café, 東京 🙂\nline two";
  const tok = CharTokenizer.fromText(text);
  assert.equal(tok.vocabSize, new Set([...text]).size);
  assert.equal(tok.decode(tok.encode(text)), text);
  const again = await tokenizerFromJSON(JSON.parse(JSON.stringify(tok.toJSON())));
  assert.deepEqual(Array.from(again.encode(text)), Array.from(tok.encode(text)));
  assert.throws(() => tok.encode("xyz!"), /not in this tokenizer's vocabulary/);
  assert.throws(() => tok.decode([tok.vocabSize]), /outside/);
});

Deno.test("the GPT-2 tokenizer gives GPT-2's ids and round-trips text", async () => {
  const tok = await loadGpt2Tokenizer();
  assert.equal(tok.vocabSize, 50257);
  assert.deepEqual(Array.from(tok.encode("Hello world")), [15496, 995]);
  const text = "Loom trains GPT-2 in TypeScript: naïve café 🙂.";
  assert.equal(tok.decode(tok.encode(text)), text);
  for (const id of tok.encode(text)) assert.ok(id >= 0 && id < tok.vocabSize);
});
