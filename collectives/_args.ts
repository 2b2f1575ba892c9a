/**
 * Argument checks the message-passing transports (TCP, MPI) share, so that a bad call gets the
 * same error whichever transport runs it.
 *
 * @module
 */
import type { CollectiveBuffer, ReduceOp } from "./communicator.ts";

const REDUCE_OPS = new Set(["sum", "max", "min", "avg"]);

/** Refuse an unknown reduce op. */
export function checkOp(op: ReduceOp): void {
  if (!REDUCE_OPS.has(op)) {
    throw new TypeError(`Unknown reduce op "${op}": use "sum", "max", "min" or "avg"`);
  }
}

/** Refuse a timeout that is not a positive, finite number of milliseconds. */
export function checkTimeout(ms: number): void {
  if (!(ms > 0) || !Number.isFinite(ms)) {
    throw new RangeError(`timeoutMs must be a positive number of milliseconds, got ${ms}`);
  }
}

/** Refuse a tag outside 0..2^31-1. */
export function checkTag(tag: number): void {
  if (!Number.isInteger(tag) || tag < 0 || tag > 0x7fffffff) {
    throw new RangeError(`tag must be an integer in 0..2^31-1, got ${tag}`);
  }
}

/** Refuse an input and an output of different array types. */
export function sameType(a: CollectiveBuffer, b: CollectiveBuffer, op: string): void {
  if (a.constructor !== b.constructor) {
    throw new TypeError(
      `${op}: input is a ${a.constructor.name} but output is a ${b.constructor.name}: ` +
        `use the same array type for both`,
    );
  }
}

/** Refuse a reduce-scatter whose input is not `size` x its output. */
export function checkScatterShape(input: CollectiveBuffer, m: number, size: number): void {
  if (input.length !== m * size) {
    throw new RangeError(
      `reduceScatter: input has ${input.length} elements but needs size x output = ` +
        `${size} x ${m} = ${size * m}: pad the input or size the output to input/size`,
    );
  }
}

/** Refuse an all-gather whose output is not `size` x its input. */
export function checkGatherShape(output: CollectiveBuffer, m: number, size: number): void {
  if (output.length !== m * size) {
    throw new RangeError(
      `allGather: output has ${output.length} elements but needs size x input = ` +
        `${size} x ${m} = ${size * m}`,
    );
  }
}
