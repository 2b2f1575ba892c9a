import assert from "node:assert/strict";
import {
  activationBytes,
  bytesPerParam,
  countParams,
  estimateMemory,
  modelStateBytes,
  stageParamCounts,
  type ZeroStage,
} from "../../engine/estimate.ts";
import { gptParamSpecs } from "../../models/config.ts";

const GB = 1e9; // the paper's GB

// Table 1 of Rajbhandari et al., "ZeRO: Memory Optimizations Toward Training Trillion Parameter
// Models": per-device model-state memory in GB of a 7.5B model with K = 12, as printed.
const TABLE_1: Record<number, [string, string, string, string]> = {
  1: ["120", "120", "120", "120"],
  4: ["120", "52.5", "41.3", "30"],
  16: ["120", "35.6", "21.6", "7.5"],
  64: ["120", "31.4", "16.6", "1.88"],
  256: ["120", "30.4", "15.4", "0.47"],
  1024: ["120", "30.1", "15.1", "0.12"],
};

const decimals = (printed: string) => printed.split(".")[1]?.length ?? 0;

Deno.test("modelStateBytes() reproduces Table 1 of the ZeRO paper to its printed precision", () => {
  for (const [nd, row] of Object.entries(TABLE_1)) {
    row.forEach((printed, stage) => {
      const s = modelStateBytes(7.5e9, { dp: Number(nd), zeroStage: stage as ZeroStage });
      assert.equal((s.totalBytes / GB).toFixed(decimals(printed)), printed, `Nd=${nd} s=${stage}`);
      const e = estimateMemory({ params: 7.5e9, dp: Number(nd), zeroStage: stage as ZeroStage });
      assert.equal(e.modelStatesBytesPerRank, s.totalBytes);
    });
  }
});

Deno.test("modelStateBytes() keeps 4 + 4 + 8 bytes per parameter in fp32, partitioned by stage", () => {
  const fp32 = (zeroStage: ZeroStage) =>
    modelStateBytes(1000, { dp: 4, zeroStage, precision: "fp32" });
  assert.deepEqual(fp32(0), {
    params: 1000,
    paramsBytes: 4000,
    gradsBytes: 4000,
    optimizerBytes: 8000,
    totalBytes: 16000,
  });
  assert.equal(fp32(1).totalBytes, 4000 + 4000 + 8 * 250);
  assert.equal(fp32(2).totalBytes, 4000 + (4 + 8) * 250);
  assert.equal(fp32(3).totalBytes, (4 + 4 + 8) * 250);
  assert.deepEqual(bytesPerParam("fp32", "adamw"), { params: 4, grads: 4, optimizer: 8 });
  assert.deepEqual(bytesPerParam("bf16", "adamw"), { params: 2, grads: 2, optimizer: 12 });
  assert.deepEqual(bytesPerParam("fp16", "sgd"), { params: 2, grads: 2, optimizer: 8 });
  assert.deepEqual(bytesPerParam("fp32", "sgd"), { params: 4, grads: 4, optimizer: 4 });
  const sgd = modelStateBytes(1000, { dp: 4, zeroStage: 1, precision: "fp32", optimizer: "sgd" });
  assert.equal(sgd.totalBytes, 4000 + 4000 + 4 * 250);
});

Deno.test("modelStateBytes() pads a partition up to ceil(params / dp) elements", () => {
  assert.equal(modelStateBytes(10, { dp: 4, zeroStage: 3 }).totalBytes, 16 * 3);
  assert.equal(modelStateBytes(10, { dp: 4, zeroStage: 1 }).optimizerBytes, 12 * 3);
});

const small = { vocab: 65, ctx: 16, dim: 32, layers: 4, heads: 4 };

Deno.test("stageParamCounts() splits a small GPT over tp = 2 and pp = 2 as counted by hand", () => {
  const C = 32, F = 128, tp = 2;
  const wte = (66 / tp) * C; // vocabulary 65 padded to 66, split by rows
  const wpe = 16 * C; // replicated, first stage
  const block = 2 * C + // ln_1 (replicated)
    (C * 3 * C) / tp + (3 * C) / tp + // c_attn weight and bias (split)
    (C * C) / tp + C + // attn c_proj weight (split), bias (replicated)
    2 * C + // ln_2
    (C * F) / tp + F / tp + // c_fc weight and bias (split)
    (F * C) / tp + C; // mlp c_proj weight (split), bias (replicated)
  assert.equal(block, 6448);
  const lnf = 2 * C;
  assert.deepEqual(stageParamCounts(small, { tp: 2, pp: 2 }), [
    wte + wpe + 2 * block,
    2 * block + lnf + wte, // the tied head's own copy of wte
  ]);
  assert.deepEqual(stageParamCounts(small, { pp: 2 }), [
    65 * C + wpe + 2 * 12704,
    2 * 12704 + lnf + 65 * C,
  ]);
  assert.deepEqual(stageParamCounts({ ...small, tied: false }, { tp: 2, pp: 2 })[1], 14016);
  const e = estimateMemory({ shape: small, tp: 2, pp: 2, precision: "fp32" });
  assert.deepEqual(e.stages.map((s) => s.modelStates.params), [14464, 14016]);
  assert.equal(e.modelStates.params, 14464, "the largest rank is reported");
});

Deno.test("countParams() follows gptParamSpecs: 12 C^2 + 13 C per block plus embeddings and ln_f", () => {
  const C = 32;
  assert.equal(countParams(small), 65 * C + 16 * C + 4 * (12 * C * C + 13 * C) + 2 * C);
  for (const shape of [small, { ...small, tied: false, hidden: 96 }]) {
    const specs = gptParamSpecs(shape);
    const n = specs.reduce((a, s) => a + s.shape.reduce((x, y) => x * y, 1), 0);
    assert.equal(countParams(shape), n);
    assert.deepEqual(stageParamCounts(shape), [n]);
  }
});

Deno.test("estimateMemory() with params alone gives a rank params / (tp * pp), no activations", () => {
  const e = estimateMemory({ params: 1000, tp: 2, pp: 2, dp: 2, zeroStage: 2 });
  assert.equal(e.stages.length, 2);
  assert.equal(e.modelStates.params, 250);
  assert.equal(e.modelStatesBytesPerRank, 2 * 250 + (2 + 12) * 125);
  assert.equal(e.activationsBytesPerRank, null);
  assert.equal(e.totalBytesPerRank, e.modelStatesBytesPerRank);
});

Deno.test("activationBytes() sums a block's parts as models/blocks.ts keeps them", () => {
  const B = 2, T = 16, C = 32, F = 128, H = 4, V = 65, N = B * T;
  const a = activationBytes(small, { microBatch: B, precision: "fp32" });
  const st = a.stages[0]!;
  const blockBytes = Object.values(st.block).reduce((x, y) => x + y, 0);
  assert.equal(blockBytes, 4 * (N * (10 * C + 2 * F + 4) + B * H * T * T));
  assert.deepEqual(st.perMicroBatch, {
    input: 4 * N, // token ids
    embedding: 4 * N * C,
    blocks: 4 * blockBytes,
    head: 4 * 2 * N + 4 * (N * C + 2 * N + 2 * N * V + 1),
  });
  assert.equal(st.inFlight, 1);
  assert.equal(st.once.recompute, 0);
  assert.equal(st.once.scratch, 4 * (N * (C + 3 * C + F + 3 * C + F) + 2 * N * C));
  assert.equal(st.totalBytes, st.perMicroBatchBytes + st.once.scratch);
  const half = activationBytes(small, { microBatch: B, precision: "bf16" });
  assert.equal(half.elementBytes, 2);
  assert.equal(half.stages[0]!.block.ln1, 2 * N * C + 4 * 2 * N, "mean and rstd stay f32");
  assert.ok(half.maxBytes < a.maxBytes);
});

Deno.test("activationBytes() with checkpointing every k-th block keeps less than without", () => {
  const shape = { vocab: 256, ctx: 256, dim: 128, layers: 8, heads: 4 };
  const full = activationBytes(shape, { microBatch: 4, precision: "fp32" }).maxBytes;
  let last = 0;
  for (const k of [1, 2, 4]) {
    const a = activationBytes(shape, {
      microBatch: 4,
      precision: "fp32",
      checkpointActivations: k,
    });
    const st = a.stages[0]!;
    const blockBytes = Object.values(st.block).reduce((x, y) => x + y, 0);
    // Blocks 0, k, 2k, ... keep only their output; the others keep every part.
    const kept = 8 / k;
    assert.equal(
      st.perMicroBatch.blocks,
      kept * 4 * 4 * 256 * 128 + (8 - kept) * blockBytes,
      `k=${k}: one tensor per checkpointed block`,
    );
    assert.equal(st.once.recompute, blockBytes);
    assert.ok(a.maxBytes < full, `k=${k}: ${a.maxBytes} < ${full}`);
    assert.ok(a.maxBytes > last);
    last = a.maxBytes;
  }
  const e = estimateMemory({ shape, microBatch: 4, checkpointActivations: 1 });
  assert.ok(
    e.activationsBytesPerRank! < estimateMemory({ shape, microBatch: 4 }).activationsBytesPerRank!,
  );
});

Deno.test("activationBytes() holds pp - s micro-batches in flight on stage s under 1F1B", () => {
  const a = activationBytes(small, { pp: 4, microBatch: 2 });
  assert.deepEqual(a.stages.map((s) => s.inFlight), [4, 3, 2, 1]);
  const capped = activationBytes(small, { pp: 4, microBatch: 2, microBatches: 2 });
  assert.deepEqual(capped.stages.map((s) => s.inFlight), [2, 2, 2, 1]);
  const s1 = a.stages[1]!;
  assert.equal(s1.perMicroBatch.embedding, 0);
  assert.equal(s1.perMicroBatch.head, 0);
  assert.equal(s1.perMicroBatch.input, 2 * 2 * 16 * 32, "the received activations");
  assert.equal(s1.totalBytes, 3 * s1.perMicroBatchBytes + s1.once.scratch);
  assert.equal(a.maxBytes, Math.max(...a.stages.map((s) => s.totalBytes)));
});

Deno.test("activationBytes() divides the parallel regions by tp, and the layernorms with sp", () => {
  const one = activationBytes(small, { microBatch: 2 }).stages[0]!.block;
  const tp = activationBytes(small, { microBatch: 2, tp: 2 }).stages[0]!.block;
  const sp = activationBytes(small, { microBatch: 2, tp: 2, sequenceParallel: true }).stages[0]!
    .block;
  for (const k of ["qkv", "attentionProbs", "attentionOut", "mlpHidden", "gelu"] as const) {
    assert.equal(tp[k], one[k] / 2, k);
    assert.equal(sp[k], one[k] / 2, k);
  }
  for (const k of ["ln1", "residual", "ln2", "output"] as const) {
    assert.equal(tp[k], one[k], k);
    assert.equal(sp[k], one[k] / 2, k);
  }
  // Sequence parallelism keeps the gathered inputs of c_attn and c_fc (linear.ts xfull).
  assert.equal(tp.qkvInput, 0);
  assert.equal(sp.qkvInput, one.residual);
});

Deno.test("estimateMemory() rejects bad input with TypeError or RangeError", () => {
  assert.throws(() => estimateMemory({}), TypeError);
  assert.throws(() => estimateMemory({ params: 10, shape: small }), TypeError);
  assert.throws(() => estimateMemory({ params: 10, dp: 0 }), RangeError);
  assert.throws(() => estimateMemory({ params: 10, zeroStage: 4 as ZeroStage }), RangeError);
  assert.throws(() => estimateMemory({ params: 10, seqLen: 8 }), TypeError);
  assert.throws(() => estimateMemory({ shape: small, tp: 3 }), /heads/);
  assert.throws(() => estimateMemory({ shape: small, pp: 3 }), /layers/);
  assert.throws(() => estimateMemory({ shape: small, seqLen: 17 }), RangeError);
  assert.throws(() => estimateMemory({ shape: small, tp: 4, sequenceParallel: true, seqLen: 6 }));
});

const PLAN = new URL("../../plan.ts", import.meta.url).href;

async function plan(...args: string[]): Promise<{ code: number; out: string; err: string }> {
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", PLAN, ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: r.code, out: dec.decode(r.stdout), err: dec.decode(r.stderr) };
}

Deno.test("plan.ts --json prints one JSON object per layout with the paper's figures", async () => {
  const r = await plan("--params", "7.5e9", "--dp", "64", "--zero-stage", "0,1,2,3", "--json");
  assert.equal(r.code, 0, r.err);
  const lines = r.out.trim().split("\n").map((l) => JSON.parse(l));
  assert.equal(lines.length, 4);
  const printed = TABLE_1[64]!;
  lines.forEach((o, stage) => {
    assert.equal(o.params, 7.5e9);
    assert.equal(o.dp, 64);
    assert.equal(o.tp, 1);
    assert.equal(o.pp, 1);
    assert.equal(o.zero_stage, stage);
    assert.equal(o.precision, "fp16");
    assert.equal(o.checkpoint_activations, 0);
    assert.equal(o.params_bytes + o.grads_bytes + o.optimizer_bytes, o.model_states_bytes_per_rank);
    const gb = (o.model_states_bytes_per_rank / GB).toFixed(decimals(printed[stage]!));
    assert.equal(gb, printed[stage]);
    assert.equal(o.activations_bytes_per_rank, null);
  });
  const s = await plan(
    ...["--vocab", "65", "--ctx", "16", "--dim", "32", "--layers", "4", "--heads", "4"],
    ...["--tp", "2", "--pp", "2", "--checkpoint-activations", "1", "--json"],
  );
  assert.equal(s.code, 0, s.err);
  const o = JSON.parse(s.out);
  assert.deepEqual(o.stages.map((x: { params: number }) => x.params), [14464, 14016]);
  assert.equal(o.precision, "fp32");
  assert.equal(o.checkpoint_activations, 1);
  assert.ok(o.activations_bytes_per_rank > 0);
  assert.equal(
    o.total_bytes_per_rank,
    Math.max(...o.stages.map((x: { total_bytes: number }) => x.total_bytes)),
  );
});

Deno.test("plan.ts prints a GiB table by default", async () => {
  const r = await plan("--params", "7.5e9", "--dp", "64", "--zero-stage", "2");
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /zero\s+dp\s+tp\s+pp/);
  assert.match(r.out, /15\.50\s*$/m, "16.6 GB = 15.50 GiB");
});

Deno.test("plan.ts exits with code 2 and a message for a bad flag", async () => {
  for (
    const [args, message] of [
      [["--params", "7.5e9", "--zero-stage", "4"], /--zero-stage/],
      [["--params", "7.5e9", "--bogus"], /Unknown option '--bogus'/],
      [["--dp", "4"], /--params/],
      [["--params", "lots"], /--params expects a number/],
    ] as const
  ) {
    const r = await plan(...args);
    assert.equal(r.code, 2, args.join(" "));
    assert.match(r.err, /^error: /);
    assert.match(r.err, message);
    assert.equal(r.out, "");
  }
});
