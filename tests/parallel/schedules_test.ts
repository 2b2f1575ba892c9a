import assert from "node:assert/strict";
import {
  buildSchedule,
  chooseSchedule,
  type PipelineSchedule,
  type PipelineStep,
  renderTimeline,
  type ScheduleName,
  simulateSchedule,
} from "../../parallel/mod.ts";

const PP = [1, 2, 4, 8];
const M = [1, 2, 3, 4, 8, 16];
const V = [1, 2, 4];

/** Every (schedule, pp, m, v) the property tests cover, skipping combinations that are invalid. */
function* layouts(): Generator<PipelineSchedule> {
  for (const name of ["none", "gpipe", "1f1b", "interleaved"] as ScheduleName[]) {
    for (const pp of PP) {
      for (const m of M) {
        for (const v of V) {
          if (name === "none" && (pp !== 1 || v !== 1)) continue;
          if ((name === "gpipe" || name === "1f1b") && v !== 1) continue;
          if (name === "interleaved" && (pp < 2 || v < 2 || m % pp !== 0)) continue;
          yield buildSchedule(name, { pp, m, v });
        }
      }
    }
  }
}

Deno.test("every micro-batch runs forward before backward on every stage and chunk", () => {
  let count = 0;
  for (const s of layouts()) {
    count++;
    for (const steps of s.stages) {
      const fwd = new Set<string>();
      const bwd = new Set<string>();
      for (const st of steps) {
        if (st.kind === "p2p") continue;
        const id = `${st.mb}:${st.chunk}`;
        if (st.kind === "forward") {
          assert.ok(!fwd.has(id), `${s.name} runs forward ${id} twice`);
          fwd.add(id);
        } else {
          assert.ok(fwd.has(id), `${s.name} pp=${s.pp} m=${s.m}: backward ${id} before forward`);
          bwd.add(id);
        }
      }
      assert.equal(fwd.size, s.m * s.v);
      assert.equal(bwd.size, s.m * s.v);
    }
  }
  assert.ok(count > 50, `only ${count} layouts covered`);
});

Deno.test("sends match receives, in the same order, and blocking execution never deadlocks", () => {
  for (const s of layouts()) {
    let sends = 0;
    let recvs = 0;
    for (const steps of s.stages) {
      for (const st of steps) {
        if (st.kind !== "p2p") continue;
        for (const o of st.ops) o.op === "send" ? sends++ : recvs++;
      }
    }
    assert.equal(sends, recvs);
    assert.equal(sends, 2 * s.m * (s.pp * s.v - 1));
    simulateSchedule(s); // throws on deadlock, unmatched transfers or out-of-order compute
  }
});

Deno.test("1F1B holds at most pp micro-batches per stage, GPipe holds all m", () => {
  for (const pp of PP) {
    for (const m of M) {
      const f = simulateSchedule(buildSchedule("1f1b", { pp, m }));
      const g = simulateSchedule(buildSchedule("gpipe", { pp, m }));
      f.stages.forEach((st, s) => {
        assert.ok(st.peakInFlight <= pp, `1f1b pp=${pp} m=${m} stage ${s}: ${st.peakInFlight}`);
        assert.equal(st.peakInFlight, Math.min(pp - s, m));
      });
      for (const st of g.stages) assert.equal(st.peakInFlight, m);
    }
  }
});

Deno.test("GPipe and 1F1B take (m + pp - 1) step times; interleaving shrinks the bubble", () => {
  for (const pp of [2, 4, 8]) {
    for (const m of [8, 16]) {
      for (const name of ["gpipe", "1f1b"] as const) {
        const sim = simulateSchedule(buildSchedule(name, { pp, m }));
        assert.equal(sim.makespan, (m + pp - 1) * 3, `${name} pp=${pp} m=${m}`);
        assert.ok(Math.abs(sim.bubbleFraction - (pp - 1) / (m + pp - 1)) < 1e-12);
      }
      const one = simulateSchedule(buildSchedule("1f1b", { pp, m })).bubbleFraction;
      for (const v of [2, 4]) {
        const il = simulateSchedule(buildSchedule("interleaved", { pp, m, v }));
        const theory = ((pp - 1) / v) / (m + (pp - 1) / v);
        assert.ok(il.bubbleFraction < one, `interleaved v=${v} pp=${pp} m=${m}`);
        assert.ok(Math.abs(il.bubbleFraction - theory) < 1e-9, `${il.bubbleFraction} ${theory}`);
      }
    }
  }
});

Deno.test("exchanges carry the verbs of Megatron's steady 1F1B state", () => {
  const s = buildSchedule("1f1b", { pp: 4, m: 8 });
  const verbs = s.stages[1]!.filter((x) => x.kind === "p2p").map((x) => x.verb);
  assert.equal(verbs[0], "recvForward");
  assert.ok(verbs.includes("sendForwardRecvBackward"));
  assert.ok(verbs.includes("sendBackwardRecvForward"));
  assert.equal(verbs.at(-1), "sendBackward");
  const none = buildSchedule("none", { pp: 1, m: 2 });
  assert.deepEqual(none.stages[0]!.map((x) => x.kind), [
    "forward",
    "backward",
    "forward",
    "backward",
  ]);
});

Deno.test("chooseSchedule() picks none, 1f1b or interleaved and explains impossible requests", () => {
  assert.equal(chooseSchedule({ pp: 1, m: 4 }).name, "none");
  assert.equal(chooseSchedule({ pp: 4, m: 4 }).name, "1f1b");
  assert.equal(chooseSchedule({ pp: 2, m: 4, v: 2 }).name, "interleaved");
  assert.equal(chooseSchedule({ pp: 2, m: 4, requested: "gpipe" }).name, "gpipe");
  assert.throws(() => chooseSchedule({ pp: 4, m: 6, v: 2 }), /multiple of\s+pp=4/);
  assert.throws(() => buildSchedule("none", { pp: 2, m: 2 }), /one stage/);
  assert.throws(() => buildSchedule("1f1b", { pp: 2, m: 2, v: 2 }), /interleaved/);
  assert.throws(() => buildSchedule("1f1b", { pp: 2, m: 0 }), RangeError);
});

Deno.test("renderTimeline() draws one row per stage with idle cells", () => {
  const text = renderTimeline(simulateSchedule(buildSchedule("1f1b", { pp: 2, m: 2 })));
  const lines = text.split("\n");
  assert.equal(lines.length, 3);
  assert.match(lines[0]!, /1f1b pp=2 m=2 v=1: bubble 33\.3%/);
  assert.match(lines[1]!, /^stage 0 \| F0 F1 \. {2}\. {2}B0 - {2}\. {2}B1 - /);
  assert.match(lines[2]!, /^stage 1 \| \. {2}F0 B0 - {2}F1 B1 - /);
});

Deno.test("simulateSchedule() rejects receives in another order than the peer sends", () => {
  // Stage 0 posts both activations at once; stage 1 takes micro-batch 1 first. Matching by tag
  // would run, but on an in-order transport the first message would be the wrong one.
  const F = (mb: number) => ({ kind: "forward", mb, chunk: 0 }) as const;
  const B = (mb: number) => ({ kind: "backward", mb, chunk: 0 }) as const;
  const op = (o: "send" | "recv", dir: "forward" | "backward", mb: number, peer: number) => ({
    op: o,
    dir,
    mb,
    chunk: 0,
    peer,
  });
  const x = (...ops: ReturnType<typeof op>[]) => ({ kind: "p2p", verb: "exchange", ops }) as const;
  const stages: PipelineStep[][] = [
    [F(0), F(1), x(op("send", "forward", 0, 1), op("send", "forward", 1, 1))],
    [x(op("recv", "forward", 1, 0)), F(1), x(op("recv", "forward", 0, 0)), F(0)],
  ];
  stages[0]!.push(x(op("recv", "backward", 0, 1)), B(0), x(op("recv", "backward", 1, 1)), B(1));
  stages[1]!.push(B(0), x(op("send", "backward", 0, 0)), B(1), x(op("send", "backward", 1, 0)));
  assert.throws(
    () => simulateSchedule({ name: "gpipe", pp: 2, m: 2, v: 1, stages }),
    /send and receive in different orders/,
  );
});

Deno.test("simulateSchedule() rejects a send of data the stage has not computed yet", () => {
  const s = buildSchedule("gpipe", { pp: 2, m: 2 });
  const st0 = [...s.stages[0]!];
  const early = [st0[1]!, st0[0]!, ...st0.slice(2)];
  assert.throws(
    () => simulateSchedule({ ...s, stages: [early, s.stages[1]!] }),
    /before computing/,
  );
});

Deno.test("interleaved 1F1B holds at most its warm-up plus one chunk's activations per stage", () => {
  for (const pp of [2, 4, 8]) {
    for (const m of M.filter((x) => x % pp === 0)) {
      for (const v of [2, 4]) {
        const sim = simulateSchedule(buildSchedule("interleaved", { pp, m, v }));
        sim.stages.forEach((st, s) => {
          const warm = m === pp ? m * v : Math.min((pp - s - 1) * 2 + (v - 1) * pp, m * v);
          assert.ok(st.peakInFlight <= Math.min(warm + 1, m * v), `pp=${pp} m=${m} v=${v}`);
        });
      }
    }
  }
});
