// The live path off the page's thread: each frame the page posts is detected, cut, classified by every model
// and smoothed here; the page gets back boxes, labels and timings. Frames never leave this browser.
import * as P from "./pipeline.js";
import { Engine } from "./engine.js";

let engine = null, tracker = null, frames = 0, roiFrames = 0;

async function onFrame(msg) {
  const { w, h, smoothing } = msg;
  const rgba = new Uint8ClampedArray(msg.buffer);
  const c = engine.config, t0 = performance.now();
  // as fer_core.serving.live: around the tracked faces when there are some, the whole frame every few frames
  const known = tracker.tracks.filter((t) => t.missed === 0).map((t) => t.box);
  let dets = null;
  if (known.length && frames % c.full_detect_every !== 0) {
    dets = await engine.detectAround(rgba, w, h, known);
    if (dets) roiFrames++;
  }
  if (!dets) dets = await engine.detect(rgba, w, h);
  dets = dets.slice(0, c.max_faces);
  const g = P.gray(rgba, w, h);
  const crops = dets.map((d) => P.faceInput(g, w, h, d, msg.crop, msg.light, c.template));
  const t1 = performance.now();
  const models = await engine.classify(crops);
  const t2 = performance.now();
  frames++;
  const faces = dets.map((d, i) => ({
    box: d.box, landmarks: d.landmarks,
    probs: Object.fromEntries(Object.entries(models).map(([n, r]) => [n, r.probs[i]])),
  }));
  const tracks = tracker.advance(faces, smoothing);
  const perModel = Object.fromEntries(Object.entries(models).map(([n, r]) => [n, r.ms_per_face]));
  return {
    type: "result", id: msg.id, buffer: msg.buffer,
    tracks: tracks.map((t) => ({ id: t.id, box: t.box, probs: t.probs })),
    detect_ms: t1 - t0, classify_ms: t2 - t1, model_ms: perModel, total_ms: t2 - t0, roi_frames: roiFrames,
  };
}

self.onmessage = async (e) => {
  const msg = e.data;
  try {
    if (msg.type === "init") {
      engine = await Engine.create(msg.detector, msg.models, msg.config);
      tracker = new P.Tracker(msg.config.match_iou, msg.config.max_missed);
      frames = 0;
      self.postMessage({ type: "ready", loaded: engine.sessions.map((s) => s.name), failed: engine.failed });
    } else if (msg.type === "frame" && engine) {
      const out = await onFrame(msg);
      self.postMessage(out, [out.buffer]);
    }
  } catch (err) {
    // a frame that fails is reported and the stream goes on (as the server's LiveProcessor.process); a failed
    // start stops the mode
    const error = String((err && err.message) || err);
    self.postMessage({ type: "error", stage: msg.type, id: msg.id, code: err.code || "error", error });
  }
};
