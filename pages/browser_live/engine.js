// One frame in, every face and every model's probabilities out, with ONNX Runtime Web (WebAssembly) running
// YuNet and the models. Used by the worker (live video) and by the parity test page (single images).
import * as P from "./pipeline.js";

const ORT_URL = new URL("./vendor/onnxruntime-web/ort.wasm.bundle.min.mjs", import.meta.url);
const WASM_URL = new URL("./vendor/onnxruntime-web/ort-wasm-simd-threaded.wasm.gz", import.meta.url);

let ortPromise = null;

/** ONNX Runtime Web, loaded once: the vendored module and its WebAssembly binary (shipped gzipped, 3.7 MB instead
 * of 14 MB, and unpacked here with the browser's own DecompressionStream). One thread: threads need a
 * cross-origin-isolated page, which Streamlit does not serve. */
export function loadOrt() {
  if (!ortPromise) {
    ortPromise = (async () => {
      if (typeof WebAssembly !== "object") throw Object.assign(new Error("this browser has no WebAssembly"), { code: "no-wasm" });
      const ort = await import(ORT_URL.href);
      const res = await fetch(WASM_URL.href);
      if (!res.ok) throw new Error(`ONNX Runtime's WebAssembly file did not load (HTTP ${res.status})`);
      const unpacked = res.body.pipeThrough(new DecompressionStream("gzip"));
      ort.env.wasm.wasmBinary = new Uint8Array(await new Response(unpacked).arrayBuffer());
      ort.env.wasm.numThreads = 1;
      ort.env.wasm.proxy = false;
      return ort;
    })();
  }
  return ortPromise;
}

function firstLine(e) {
  return String((e && e.message) || e).split("\n").find((l) => l.trim()) || "unknown error";
}

export class Engine {
  /** config: what fer_core.serving.browser.pipeline_config() sends (template, thresholds, limits). */
  static async create(detectorBytes, models, config) {
    const ort = await loadOrt();
    const opts = { executionProviders: ["wasm"], graphOptimizationLevel: "all" };
    const detector = await ort.InferenceSession.create(detectorBytes, opts);
    const sessions = [], failed = [];
    for (const m of models) {
      try {
        sessions.push({ name: m.name, session: await ort.InferenceSession.create(m.bytes, opts) });
      } catch (e) {
        failed.push({ name: m.name, error: firstLine(e) });
      }
    }
    return new Engine(ort, detector, sessions, failed, config);
  }

  constructor(ort, detector, sessions, failed, config) {
    Object.assign(this, { ort, detector, sessions, failed, config });
  }

  /** YuNet on an RGBA image sw x sh, faces in the pixels of the w x h image it stands for (fer_core's
   * YuNetDetector.detect: a shrunk copy is searched, the boxes come back in the original's pixels). */
  async detect(rgba, sw, sh, w = sw, h = sh) {
    const inp = P.yunetInput(rgba, sw, sh);
    const tensor = new this.ort.Tensor("float32", inp.data, [1, 3, inp.height, inp.width]);
    const out = await this.detector.run({ [this.detector.inputNames[0]]: tensor });
    const c = this.config;
    return P.detections(P.yunetDecode((n) => out[n].data, inp.width, inp.height, c.score, c.nms, c.top_k), w, h, sw, sh);
  }

  /** Every model on a batch of 48x48 crops: per model, its probabilities per face and its ms per face. */
  async classify(crops) {
    const result = {};
    if (!crops.length) return result;
    const x = P.modelInput(crops);
    for (const { name, session } of this.sessions) {
      const t = performance.now();
      const tensor = new this.ort.Tensor("float32", x, [crops.length, 1, 48, 48]);
      const out = await session.run({ [session.inputNames[0]]: tensor });
      const logits = out[session.outputNames[0]].data;
      const probs = crops.map((_, i) => P.softmax(logits, i * 7));
      result[name] = { probs, ms_per_face: (performance.now() - t) / crops.length };
    }
    return result;
  }

  /** fer_core.serving.live's search around tracked faces: the region holding the known boxes (grown by
   * roi_margin of their size), shrunk so the smallest is about roi_face_px high; faces in the frame's pixels,
   * or null when it finds none (then the whole frame is searched). */
  async detectAround(rgba, w, h, known) {
    const c = this.config, m = c.roi_margin;
    const x0 = Math.max(0, Math.trunc(Math.min(...known.map((b) => b[0] - m * b[2]))));
    const y0 = Math.max(0, Math.trunc(Math.min(...known.map((b) => b[1] - m * b[3]))));
    const x1 = Math.min(w, Math.trunc(Math.max(...known.map((b) => b[0] + (1 + m) * b[2]))));
    const y1 = Math.min(h, Math.trunc(Math.max(...known.map((b) => b[1] + (1 + m) * b[3]))));
    const rw = x1 - x0, rh = y1 - y0;
    if (rw < 8 || rh < 8) return null;
    const smallest = Math.trunc(0.7 * Math.min(...known.map((b) => Math.max(b[2], b[3]))));
    const s = Math.min(1, c.roi_face_px / Math.max(1, smallest));
    const sw = Math.max(1, P.roundHalfEven(rw * s)), sh = Math.max(1, P.roundHalfEven(rh * s));
    const small = P.shrinkRegion(rgba, w, x0, y0, rw, rh, sw, sh);
    const found = await this.detect(small, sw, sh, rw, rh);
    if (!found.length) return null;
    return found.map((d) => ({
      box: [d.box[0] + x0, d.box[1] + y0, d.box[2], d.box[3]], score: d.score,
      landmarks: d.landmarks.map(([x, y]) => [x + x0, y + y0]),
    }));
  }

  /** fer_core.serving.inference.predict on one RGBA image: faces with crops and each model's probabilities. */
  async predict(rgba, w, h, crop = "aligned", light = "clamp") {
    const t0 = performance.now();
    const dets = (await this.detect(rgba, w, h)).slice(0, this.config.max_faces_image);
    const g = P.gray(rgba, w, h);
    const crops = dets.map((d) => P.faceInput(g, w, h, d, crop, light, this.config.template));
    const t1 = performance.now();
    const models = await this.classify(crops);
    const faces = dets.map((d, i) => ({
      ...d, crop: crops[i],
      probs: Object.fromEntries(Object.entries(models).map(([n, r]) => [n, r.probs[i]])),
    }));
    return { faces, detect_ms: t1 - t0, models, total_ms: performance.now() - t0 };
  }
}
