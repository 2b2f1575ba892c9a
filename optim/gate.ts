/**
 * The gate a layer passes through before and after it runs: how ZeRO stage 3 reaches the
 * layers without the models knowing it. A model calls `acquire` just before a layer's forward or
 * backward and `release` just after; the stage-3 optimizer gathers the layer's parameters in
 * `acquire` and frees them in `release` (and learns there that a layer's gradients are
 * complete). A layer is passed as what it declares, its parameter specs, so an implementation
 * needs nothing from `models/` or `parallel/`.
 *
 * @module
 */
import type { ParamSpec } from "./layout.ts";

/** What the gate is told about a layer: the parameters it uses. */
export interface GatedLayer {
  /** The layer's parameters (a tied weight appears in each layer that uses it). */
  readonly specs: readonly ParamSpec[];
}

/** Hooks around each layer's forward and backward. */
export interface LayerGate {
  /**
   * Before `layer` runs `phase`.
   *
   * @param layer the layer about to run
   * @param phase which pass
   * @param next the layers that run after it in this pass, nearest first (to fetch ahead)
   */
  acquire(
    layer: GatedLayer,
    phase: "forward" | "backward",
    next?: readonly GatedLayer[],
  ): void | Promise<void>;
  /**
   * After `layer` has run `phase` (its gradients are complete after its last backward).
   *
   * @param layer the layer that ran
   * @param phase which pass
   */
  release(layer: GatedLayer, phase: "forward" | "backward"): void | Promise<void>;
}
