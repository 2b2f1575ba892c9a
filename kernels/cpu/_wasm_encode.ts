/**
 * The LEB128 encoders under their former path; the encoder itself is `wasm/encode.ts`.
 *
 * @module
 */
export { sleb, uleb } from "../../wasm/encode.ts";
