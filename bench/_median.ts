/**
 * The median the benchmarks report: the middle value, or the mean of the two middle values of an
 * even count.
 *
 * @module
 */

/** The median of `xs` (not modified). */
export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}
