// The face path of fer_core.serving, step for step, for the browser: YuNet's decoding and NMS, the five-point
// alignment to the FER2013 template, the light step and the models' input. Pure functions on typed arrays (no
// DOM, no ONNX Runtime): the worker and the parity test import this same file. Where the server uses OpenCV
// (gray conversion, YuNet's post-processing) this copies OpenCV's arithmetic; the alignment, warp and light
// step are fer_core.serving.align's own float64 arithmetic, which this repeats in the same order.

export const EMOTIONS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"];
const f32 = Math.fround;

/** Python's round(): half to even (the server rounds boxes with it). */
export function roundHalfEven(x) {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** RGBA bytes to gray, as cv2.cvtColor(RGB2GRAY) on 8-bit images (fixed point, 14 bits). */
export function gray(rgba, w, h) {
  const out = new Uint8Array(w * h);
  for (let i = 0, j = 0; i < out.length; i++, j += 4) {
    out[i] = (rgba[j] * 4899 + rgba[j + 1] * 9617 + rgba[j + 2] * 1868 + 8192) >> 14;
  }
  return out;
}

/** YuNet's input: the image padded (zeros, bottom and right) to multiples of 32, BGR planes, float32 0-255. */
export function yunetInput(rgba, w, h) {
  const pw = (Math.floor((w - 1) / 32) + 1) * 32, ph = (Math.floor((h - 1) / 32) + 1) * 32;
  const data = new Float32Array(3 * pw * ph), plane = pw * ph;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const s = (y * w + x) * 4, d = y * pw + x;
      data[d] = rgba[s + 2];
      data[plane + d] = rgba[s + 1];
      data[2 * plane + d] = rgba[s];
    }
  }
  return { data, width: pw, height: ph };
}

const STRIDES = [8, 16, 32];

/** YuNet's outputs to faces [x, y, w, h, 10 landmark coordinates, score], as OpenCV's FaceDetectorYN decodes
 * them (float32), then its NMS (cv::dnn::NMSBoxes on integer boxes). ``out(name)`` gives an output's data. */
export function yunetDecode(out, pw, ph, scoreThreshold, nmsThreshold, topK) {
  const faces = [];
  for (const stride of STRIDES) {
    const cols = Math.floor(pw / stride), rows = Math.floor(ph / stride);
    const cls = out(`cls_${stride}`), obj = out(`obj_${stride}`);
    const bbox = out(`bbox_${stride}`), kps = out(`kps_${stride}`);
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) {
        const i = r * cols + c;
        const cs = Math.max(Math.min(cls[i], 1), 0), os = Math.max(Math.min(obj[i], 1), 0);
        const score = f32(Math.sqrt(f32(cs * os)));
        if (score < scoreThreshold) continue;
        const cx = f32(f32(c + bbox[i * 4]) * stride), cy = f32(f32(r + bbox[i * 4 + 1]) * stride);
        const bw = f32(f32(Math.exp(bbox[i * 4 + 2])) * stride), bh = f32(f32(Math.exp(bbox[i * 4 + 3])) * stride);
        const face = [f32(cx - f32(bw / 2)), f32(cy - f32(bh / 2)), bw, bh];
        for (let n = 0; n < 5; n++) {
          face.push(f32(f32(kps[i * 10 + 2 * n] + c) * stride), f32(f32(kps[i * 10 + 2 * n + 1] + r) * stride));
        }
        face.push(score);
        faces.push(face);
      }
    }
  }
  if (faces.length <= 1) return faces;
  const rects = faces.map((f) => [Math.trunc(f[0]), Math.trunc(f[1]), Math.trunc(f[2]), Math.trunc(f[3])]);
  return nmsBoxes(rects, faces.map((f) => f[14]), scoreThreshold, nmsThreshold, topK).map((k) => faces[k]);
}

function rectIoU(a, b) {
  const x0 = Math.max(a[0], b[0]), y0 = Math.max(a[1], b[1]);
  const iw = Math.min(a[0] + a[2], b[0] + b[2]) - x0, ih = Math.min(a[1] + a[3], b[1] + b[3]) - y0;
  if (iw <= 0 || ih <= 0) return 0;
  const inter = iw * ih;
  return inter / (a[2] * a[3] + b[2] * b[3] - inter);
}

/** cv::dnn::NMSBoxes: candidates above the threshold by score (stable), each kept unless it overlaps a kept one
 * by more than ``nmsThreshold``. */
export function nmsBoxes(rects, scores, scoreThreshold, nmsThreshold, topK) {
  let order = scores.map((s, i) => [s, i]).filter(([s]) => s > scoreThreshold);
  order.sort((a, b) => b[0] - a[0] || a[1] - b[1]);
  if (topK > 0 && order.length > topK) order = order.slice(0, topK);
  const keep = [];
  for (const [, i] of order) {
    if (keep.every((k) => rectIoU(rects[i], rects[k]) <= nmsThreshold)) keep.push(i);
  }
  return keep;
}

/** Faces as fer_core's YuNetDetector returns them: best first, boxes clipped to the image and rounded. The
 * faces are in the pixels of an image ``sw`` x ``sh`` that stands for one ``w`` x ``h`` (a shrunk copy). */
export function detections(faces, w, h, sw = w, sh = h) {
  const fx = w / sw, fy = h / sh, out = [];
  const order = faces.map((f, i) => i).sort((a, b) => faces[b][14] - faces[a][14] || a - b);
  for (const k of order) {
    const f = faces[k];
    const x0 = Math.max(0, f[0] * fx), y0 = Math.max(0, f[1] * fy);
    const x1 = Math.min(w, (f[0] + f[2]) * fx), y1 = Math.min(h, (f[1] + f[3]) * fy);
    if (x1 - x0 < 2 || y1 - y0 < 2) continue;
    const box = [roundHalfEven(x0), roundHalfEven(y0), roundHalfEven(x1 - x0), roundHalfEven(y1 - y0)];
    const landmarks = [0, 1, 2, 3, 4].map((i) => [f[4 + 2 * i] * fx, f[5 + 2 * i] * fy]);
    out.push({ box, score: f[14], landmarks });
  }
  return out;
}

/** fer_core.serving.align.similarity: the least-squares rotation + scale + shift from src to dst points. */
export function similarity(src, dst) {
  const n = src.length;
  let msx = 0, msy = 0, mdx = 0, mdy = 0;
  for (let i = 0; i < n; i++) { msx += src[i][0]; msy += src[i][1]; mdx += dst[i][0]; mdy += dst[i][1]; }
  msx /= n; msy /= n; mdx /= n; mdy /= n;
  let v = 0, sc = 0, ss = 0;
  for (let i = 0; i < n; i++) {
    const ax = src[i][0] - msx, ay = src[i][1] - msy;
    v += ax * ax + ay * ay;
  }
  if (v / n < 1e-9) throw new Error("face landmarks coincide: cannot align");
  for (let i = 0; i < n; i++) {
    const ax = src[i][0] - msx, ay = src[i][1] - msy, bx = dst[i][0] - mdx, by = dst[i][1] - mdy;
    sc += ax * bx + ay * by;
    ss += ax * by - ay * bx;
  }
  const c = sc / v, s = ss / v;
  return [[c, -s, mdx - (c * msx - s * msy)], [s, c, mdy - (s * msx + c * msy)]];
}

export function invertAffine(m) {
  let d = m[0][0] * m[1][1] - m[0][1] * m[1][0];
  d = d !== 0 ? 1 / d : 0;
  const a11 = m[1][1] * d, a22 = m[0][0] * d, a12 = -m[0][1] * d, a21 = -m[1][0] * d;
  return [[a11, a12, -a11 * m[0][2] - a12 * m[1][2]], [a21, a22, -a21 * m[0][2] - a22 * m[1][2]]];
}

/** fer_core.serving.align.area_shrink on one plane (w x h values) to ow x oh, float64. */
export function areaShrink(src, w, h, ow, oh) {
  const axis = (data, n, m, nOut, stride, step) => {
    // shrink along an axis of n values, for m lines; element (i, line) at i * stride + line * step
    const k = nOut / n, res = new Float64Array(nOut * m), cs = new Float64Array(n + 1);
    const fl = new Int32Array(nOut + 1), frac = new Float64Array(nOut + 1);
    for (let j = 0; j <= nOut; j++) {
      const e = j / k;
      fl[j] = Math.min(Math.floor(e), n - 1);
      frac[j] = e - fl[j];
    }
    for (let line = 0; line < m; line++) {
      for (let i = 0; i < n; i++) cs[i + 1] = cs[i] + data[i * stride + line * step];
      let prev = cs[fl[0]] + frac[0] * data[fl[0] * stride + line * step];
      for (let j = 0; j < nOut; j++) {
        const cur = cs[fl[j + 1]] + frac[j + 1] * data[fl[j + 1] * stride + line * step];
        res[j * m + line] = (cur - prev) * k;
        prev = cur;
      }
    }
    return res; // (nOut, m) row-major
  };
  const rows = axis(src, h, w, oh, w, 1); // oh x w
  const cols = axis(rows, w, oh, ow, 1, w); // (ow, oh): element (j, line=y) at j * oh + y
  const out = new Float64Array(ow * oh);
  for (let y = 0; y < oh; y++) for (let x = 0; x < ow; x++) out[y * ow + x] = cols[x * oh + y];
  return out;
}

/** Area-averaging weights shrinking n values to nOut: for each output, its first input and the weights. */
function areaWeights(n, nOut) {
  const k = nOut / n, out = [];
  for (let j = 0; j < nOut; j++) {
    const a = j / k, b = Math.min(n, (j + 1) / k), first = Math.floor(a), w = [];
    for (let i = first; i < b; i++) w.push((Math.min(i + 1, b) - Math.max(i, a)) * k);
    out.push({ first, w });
  }
  return out;
}

/** A region (x0, y0, rw x rh) of an RGBA frame (w wide) shrunk by area averaging to sw x sh, RGBA: the region
 * search's copy (the server shrinks it with OpenCV's INTER_AREA, which this matches to rounding). Two separable
 * passes over rows, in memory order. */
export function shrinkRegion(rgba, w, x0, y0, rw, rh, sw, sh) {
  const wx = areaWeights(rw, sw), wy = areaWeights(rh, sh);
  const rows = new Float32Array(rh * sw * 3);
  for (let y = 0; y < rh; y++) {
    const src = ((y0 + y) * w + x0) * 4, dst = y * sw * 3;
    for (let j = 0; j < sw; j++) {
      const { first, w: ws } = wx[j];
      let r = 0, g = 0, bl = 0;
      for (let t = 0; t < ws.length; t++) {
        const p = src + (first + t) * 4, v = ws[t];
        r += v * rgba[p]; g += v * rgba[p + 1]; bl += v * rgba[p + 2];
      }
      rows[dst + 3 * j] = r; rows[dst + 3 * j + 1] = g; rows[dst + 3 * j + 2] = bl;
    }
  }
  const small = new Uint8ClampedArray(sw * sh * 4), acc = new Float32Array(sw * 3);
  for (let i = 0; i < sh; i++) {
    acc.fill(0);
    const { first, w: ws } = wy[i];
    for (let t = 0; t < ws.length; t++) {
      const row = (first + t) * sw * 3, v = ws[t];
      for (let q = 0; q < sw * 3; q++) acc[q] += v * rows[row + q];
    }
    for (let j = 0; j < sw; j++) {
      const d = (i * sw + j) * 4;
      small[d] = Math.floor(acc[3 * j] + 0.5); small[d + 1] = Math.floor(acc[3 * j + 1] + 0.5);
      small[d + 2] = Math.floor(acc[3 * j + 2] + 0.5);
    }
  }
  return small;
}

function sample(src, w, h, x, y) {
  const x0 = Math.floor(x), y0 = Math.floor(y), fx = x - x0, fy = y - y0;
  const xa = Math.min(Math.max(x0, 0), w - 1), xb = Math.min(Math.max(x0 + 1, 0), w - 1);
  const ya = Math.min(Math.max(y0, 0), h - 1), yb = Math.min(Math.max(y0 + 1, 0), h - 1);
  const top = (1 - fx) * src[ya * w + xa] + fx * src[ya * w + xb];
  const bottom = (1 - fx) * src[yb * w + xa] + fx * src[yb * w + xb];
  return (1 - fy) * top + fy * bottom;
}

/** fer_core.serving.align.warp: the size x size crop of ``gray`` (w x h) under m (image -> crop pixels);
 * ``exact``: float64 levels, not rounded (what the models get), else uint8. */
export function warp(grayImg, w, h, m, size = 48, exact = false) {
  const inv = invertAffine(m);
  const det = m[0][0] * m[1][1] - m[0][1] * m[1][0];
  const scale = Math.sqrt(Math.abs(det));
  let src = grayImg, sw = w, sh = h, kx = 1, ky = 1, ox = 0, oy = 0, shrunk = false;
  if (scale < 0.75) {
    const pad = 2.0 / scale, corners = [[0, 0], [size, 0], [0, size], [size, size]];
    const cx = corners.map(([a, b]) => inv[0][0] * a + inv[0][1] * b + inv[0][2]);
    const cy = corners.map(([a, b]) => inv[1][0] * a + inv[1][1] * b + inv[1][2]);
    const x0 = Math.max(0, Math.floor(Math.min(...cx) - pad)), y0 = Math.max(0, Math.floor(Math.min(...cy) - pad));
    const x1 = Math.min(w, Math.ceil(Math.max(...cx) + pad)), y1 = Math.min(h, Math.ceil(Math.max(...cy) + pad));
    if (x1 > x0 && y1 > y0) {
      const rw = x1 - x0, rh = y1 - y0;
      sw = Math.max(1, roundHalfEven(rw * scale));
      sh = Math.max(1, roundHalfEven(rh * scale));
      const roi = new Float64Array(rw * rh);
      for (let y = 0; y < rh; y++) for (let x = 0; x < rw; x++) roi[y * rw + x] = grayImg[(y0 + y) * w + x0 + x];
      src = areaShrink(roi, rw, rh, sw, sh);
      kx = sw / rw; ky = sh / rh; ox = x0; oy = y0; shrunk = true;
    }
  }
  const out = new Float64Array(size * size);
  for (let v = 0; v < size; v++) {
    for (let u = 0; u < size; u++) {
      let xs = inv[0][0] * u + inv[0][1] * v + inv[0][2], ys = inv[1][0] * u + inv[1][1] * v + inv[1][2];
      if (shrunk) { xs = (xs - ox + 0.5) * kx - 0.5; ys = (ys - oy + 0.5) * ky - 0.5; }
      out[v * size + u] = Math.min(255, Math.max(0, sample(src, sw, sh, xs, ys)));
    }
  }
  return exact ? out : toU8(out);
}

/** fer_core.serving.align.to_u8: rounded half up. */
export function toU8(crop) {
  if (crop instanceof Uint8Array) return crop;
  const out = new Uint8Array(crop.length);
  for (let i = 0; i < crop.length; i++) out[i] = Math.min(255, Math.max(0, Math.floor(crop[i] + 0.5)));
  return out;
}

export function alignFace(grayImg, w, h, landmarks, template, exact = false) {
  return warp(grayImg, w, h, similarity(landmarks, template.landmarks), 48, exact);
}

/** fer_core.serving.align.box_crop: a square on a YuNet box, placed as FER2013's crops are on its boxes. */
export function boxCrop(grayImg, w, h, box, template, exact = false) {
  const b = template.box, [x, y, bw, bh] = box, side = b.side * bh;
  const cx = x + bw / 2 + b.dx * bh, cy = y + bh / 2 + b.dy * bh, k = 48 / side;
  return warp(grayImg, w, h, [[k, 0, 48 / 2 - 0.5 - k * (cx - 0.5)], [0, k, 48 / 2 - 0.5 - k * (cy - 0.5)]], 48, exact);
}

/** cv2.equalizeHist on 8-bit pixels (a float crop is rounded first, as on the server). */
export function equalize(crop) {
  crop = toU8(crop);
  const hist = new Int32Array(256);
  for (const v of crop) hist[v]++;
  let i = 0;
  while (!hist[i]) i++;
  const out = new Uint8Array(crop.length);
  if (hist[i] === crop.length) return out.fill(i);
  const scale = f32(255 / (crop.length - hist[i])), lut = new Uint8Array(256);
  let sum = 0;
  for (lut[i++] = 0; i < 256; i++) {
    sum += hist[i];
    lut[i] = Math.min(255, Math.max(0, roundHalfEven(f32(sum * scale))));
  }
  for (let k = 0; k < crop.length; k++) out[k] = lut[crop[k]];
  return out;
}

/** fer_core.serving.align.relight: the crop's brightness and contrast brought to the training faces' (uint8 in,
 * uint8 out; a float crop stays float). */
export function relight(crop, mode, light) {
  if (mode === "none") return crop;
  if (mode === "equalize") return equalize(crop);
  const n = crop.length;
  let sum = 0;
  for (const v of crop) sum += v;
  const mean = sum / n;
  let sq = 0;
  for (const v of crop) sq += (v - mean) * (v - mean);
  const sd = Math.sqrt(sq / n);
  let newMean, newSd;
  if (mode === "match") {
    newMean = light.mean.p50; newSd = light.std.p50;
  } else {
    newMean = Math.min(Math.max(mean, light.mean.p10), light.mean.p90);
    newSd = Math.min(Math.max(sd, light.std.p10), light.std.p90);
    if (newMean === mean && newSd === sd) return crop;
  }
  const k = newSd / Math.max(sd, 1.0), out = new Float64Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.min(255, Math.max(0, (crop[i] - mean) * k + newMean));
  return crop instanceof Uint8Array ? toU8(out) : out;
}

/** The models' input for a batch of 48x48 crops: float32 (N, 1, 48, 48), level * (2/255) - 1 in float32
 * (fer_core.data.augment.normalize). */
export function modelInput(crops) {
  const k = f32(2 / 255), out = new Float32Array(crops.length * 2304);
  crops.forEach((c, n) => { for (let i = 0; i < 2304; i++) out[n * 2304 + i] = f32(f32(f32(c[i]) * k) - 1); });
  return out;
}

export function softmax(logits, offset = 0, n = 7) {
  let max = -Infinity;
  for (let i = 0; i < n; i++) max = Math.max(max, logits[offset + i]);
  const e = [];
  let sum = 0;
  for (let i = 0; i < n; i++) { e.push(Math.exp(logits[offset + i] - max)); sum += e[i]; }
  return e.map((v) => v / sum);
}

/** The 48x48 input for one detection, as fer_core.serving.inference.face_input (YuNet always has landmarks):
 * float64 levels, not rounded. */
export function faceInput(grayImg, w, h, det, crop, light, template) {
  const face = crop === "aligned" ? alignFace(grayImg, w, h, det.landmarks, template, true) : boxCrop(grayImg, w, h, det.box, template, true);
  return relight(face, light, template.light);
}

// Tracking and smoothing, as fer_core.serving.live: IoU matching, an exponential moving average per track.
export function iou(a, b) {
  const iw = Math.max(0, Math.min(a[0] + a[2], b[0] + b[2]) - Math.max(a[0], b[0]));
  const ih = Math.max(0, Math.min(a[1] + a[3], b[1] + b[3]) - Math.max(a[1], b[1]));
  const inter = iw * ih, union = a[2] * a[3] + b[2] * b[3] - inter;
  return union > 0 ? inter / union : 0;
}

export class Tracker {
  constructor(matchIoU = 0.3, maxMissed = 5) {
    this.matchIoU = matchIoU; this.maxMissed = maxMissed; this.tracks = []; this.nextId = 1;
  }

  /** Detections (with per-model probabilities) in, the tracks seen now (largest first) out, smoothed. */
  advance(faces, smoothing) {
    const pairs = [];
    this.tracks.forEach((t, ti) => faces.forEach((f, bi) => pairs.push([iou(t.box, f.box), ti, bi])));
    pairs.sort((a, b) => b[0] - a[0] || b[1] - a[1] || b[2] - a[2]);
    const owner = faces.map(() => null), used = new Set();
    for (const [score, ti, bi] of pairs) {
      if (score < this.matchIoU) break;
      if (used.has(ti) || owner[bi] !== null) continue;
      owner[bi] = ti; used.add(ti);
    }
    const seen = [];
    faces.forEach((f, bi) => {
      let t;
      if (owner[bi] === null) {
        t = { id: this.nextId++, box: f.box, probs: {}, missed: 0, seen: 1 };
        this.tracks.push(t);
      } else {
        t = this.tracks[owner[bi]];
        t.box = f.box; t.missed = 0; t.seen++;
      }
      for (const [name, p] of Object.entries(f.probs)) {
        const old = t.probs[name];
        t.probs[name] = !old || smoothing <= 0 ? p : p.map((v, i) => smoothing * old[i] + (1 - smoothing) * v);
      }
      t.landmarks = f.landmarks;
      seen.push(t);
    });
    for (const t of this.tracks) if (!seen.includes(t)) t.missed++;
    this.tracks = this.tracks.filter((t) => t.missed <= this.maxMissed);
    return seen.sort((a, b) => b.box[2] * b.box[3] - a.box[2] * a.box[3]);
  }
}
