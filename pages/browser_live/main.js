// FER Lab's "in your browser" live mode, a Streamlit (v1) component: the camera opens here, a worker runs YuNet
// and every selected model with ONNX Runtime Web, this page draws boxes, labels and bars. Only small stats
// messages (numbers, model names) go back to Python, once a second; no frame or image leaves this browser.
const $ = (id) => document.getElementById(id);
const video = $("video"), overlay = $("overlay"), statusEl = $("status"), barsEl = $("bars");
const CACHE = "fer-lab-models-v1";
const STATS_EVERY_MS = 1000;

let args = null, worker = null, workerKey = null, ready = false, inFlight = 0, stream = null;
// two frames in flight: the worker starts the next as soon as one is done, while this page grabs the one after
const IN_FLIGHT = 2;
let state = "starting", message = null, failed = [], frames = 0, roiFrames = 0, seq = 0, lastSent = 0, lastTracks = [];
const blobs = new Map(); // sha -> Uint8Array (models and detector)
const times = [], detectMs = [], totalMs = [], modelMs = {};
let requested = "";

function post(type, extra) {
  window.parent.postMessage({ isStreamlitMessage: true, apiVersion: 1, type, ...extra }, "*");
}
const setHeight = () => post("streamlit:setFrameHeight", { height: document.body.scrollHeight + 8 });
new ResizeObserver(setHeight).observe(document.body);

function say(text, problem = false) {
  statusEl.textContent = text;
  statusEl.className = problem ? "problem" : "";
}

function median(a) {
  if (!a.length) return null;
  const s = [...a].sort((x, y) => x - y);
  return s[Math.floor(s.length / 2)];
}
const push = (a, v, n = 60) => { a.push(v); if (a.length > n) a.shift(); };

function deviceLabel() {
  const ua = navigator.userAgentData;
  const brand = ua && ua.brands ? ua.brands.find((b) => !/Not.?A.?Brand/i.test(b.brand) && b.brand !== "Chromium") || ua.brands.find((b) => b.brand === "Chromium") : null;
  const browser = brand ? `${brand.brand} ${brand.version}` : (navigator.userAgent.match(/(Firefox|Chrome|Safari|Edg)\/[\d.]+/) || ["a browser"])[0];
  const platform = (ua && ua.platform) || navigator.platform || "unknown OS";
  return `${browser} on ${platform}, ${navigator.hardwareConcurrency || "?"} cores (WebAssembly, 1 thread)`;
}

function report(force = false) {
  const now = performance.now();
  if (!force && now - lastSent < STATS_EVERY_MS) return;
  lastSent = now;
  const fps = times.length > 1 ? (times.length - 1) / ((times[times.length - 1] - times[0]) / 1000) : 0;
  const largest = lastTracks[0] ? lastTracks[0].probs : {};
  post("streamlit:setComponentValue", {
    dataType: "json",
    value: {
      state, message, seq: ++seq, frames, roi_frames: roiFrames, faces: lastTracks.length, fps,
      detect_ms: median(detectMs), total_ms: median(totalMs),
      model_ms: Object.fromEntries(Object.entries(modelMs).map(([k, v]) => [k, median(v)])),
      largest, failed, device: deviceLabel(),
      have: [...blobs.keys()], need: missing(),
    },
  });
}

function fail(newState, text) {
  state = newState; message = text; say(text, true); report(true);
}

function missing() {
  if (!args) return [];
  return [args.detector.sha, ...args.models.map((m) => m.sha)].filter((s) => !blobs.has(s));
}

async function takeBlobs(a) {
  let cache = null;
  try { cache = await caches.open(CACHE); } catch (e) { cache = null; } // no Cache Storage: memory only
  for (const [k, v] of Object.entries(a)) {
    if (!k.startsWith("blob_")) continue;
    const sha = k.slice(5), bytes = v instanceof Uint8Array ? v : new Uint8Array(v);
    if (!blobs.has(sha)) {
      blobs.set(sha, bytes);
      if (cache) cache.put(`/fer-lab/blob/${sha}`, new Response(bytes)).catch(() => {});
    }
  }
  if (cache) {
    for (const sha of missing()) {
      const hit = await cache.match(`/fer-lab/blob/${sha}`);
      if (hit) blobs.set(sha, new Uint8Array(await hit.arrayBuffer()));
    }
  }
}

async function openCamera() {
  if (stream) return true;
  if (!window.isSecureContext || !navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    fail("insecure", "The camera needs a secure page: open the dashboard on https:// or on localhost (see the README's section on sharing the dashboard).");
    return false;
  }
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 640 }, height: { ideal: 480 } }, audio: false });
  } catch (e) {
    const refused = e && (e.name === "NotAllowedError" || e.name === "SecurityError");
    const none = e && (e.name === "NotFoundError" || e.name === "OverconstrainedError");
    fail(refused ? "refused" : none ? "no-camera" : "camera-error",
      refused ? "Camera permission was refused: allow the camera for this page in the browser's site settings." :
      none ? "No camera was found on this device." : `The camera did not open (${e && e.name}: ${e && e.message}).`);
    return false;
  }
  video.srcObject = stream;
  await video.play();
  return true;
}

function stopCamera() {
  if (stream) stream.getTracks().forEach((t) => t.stop());
  stream = null; video.srcObject = null; lastTracks = []; draw();
}

function startWorker() {
  const key = JSON.stringify([args.detector.sha, args.models.map((m) => m.sha)]);
  if (worker && workerKey === key) return;
  if (worker) worker.terminate();
  ready = false; inFlight = 0; workerKey = key; failed = [];
  worker = new Worker(new URL("./worker.js", import.meta.url), { type: "module" });
  worker.onmessage = onWorker;
  worker.onerror = (e) => fail("engine-error", `The in-browser engine stopped (${e.message || "worker error"}).`);
  const models = args.models.map((m) => ({ name: m.name, bytes: blobs.get(m.sha) }));
  worker.postMessage({ type: "init", detector: blobs.get(args.detector.sha), models, config: args.config });
  say("Loading ONNX Runtime and the models…");
}

function onWorker(e) {
  const m = e.data;
  if (m.type === "ready") {
    ready = true; failed = m.failed;
    if (failed.length) say(`Could not load in this browser: ${failed.map((f) => `${f.name} (${f.error})`).join("; ")}`, true);
    if (!m.loaded.length) { fail("model-failed", `No selected model loads in this browser: ${failed.map((f) => f.name).join(", ")}.`); return; }
    state = "streaming"; message = failed.length ? `${failed.length} model(s) failed to load` : null;
    report(true);
    pump();
  } else if (m.type === "result") {
    inFlight--; frames++;
    const now = performance.now();
    push(times, now, 30); push(detectMs, m.detect_ms); push(totalMs, m.total_ms);
    for (const [k, v] of Object.entries(m.model_ms)) push(modelMs[k] || (modelMs[k] = []), v);
    lastTracks = m.tracks; roiFrames = m.roi_frames;
    draw();
    report();
    pump();
  } else if (m.type === "error" && m.stage === "frame") {
    inFlight--; message = `a frame failed: ${m.error}`;
    report(); pump();
  } else if (m.type === "error") {
    inFlight = 0;
    if (m.code === "no-wasm") fail("no-wasm", "This browser cannot run WebAssembly, which the in-browser mode needs.");
    else fail("engine-error", `The in-browser engine failed: ${m.error}`);
  }
}

const grab = document.createElement("canvas");
const grabCtx = grab.getContext("2d", { willReadFrequently: true });

function tick() {
  requestAnimationFrame(tick);
  pump();
}

/** Send the camera's current frame to the worker while fewer than IN_FLIGHT are there. */
function pump() {
  while (ready && inFlight < IN_FLIGHT && stream && state === "streaming" && video.readyState >= 2 && video.videoWidth) grabOne();
}

function grabOne() {
  const w = video.videoWidth, h = video.videoHeight;
  if (grab.width !== w || grab.height !== h) { grab.width = w; grab.height = h; }
  grabCtx.drawImage(video, 0, 0, w, h);
  const img = grabCtx.getImageData(0, 0, w, h);
  inFlight++;
  worker.postMessage({ type: "frame", buffer: img.data.buffer, w, h, smoothing: args.smoothing, crop: args.crop, light: args.light }, [img.data.buffer]);
}

function short(name) {
  const p = name.split("-");
  return p.slice(0, 2).join("-") + (p[p.length - 2] === "onnx" ? "-" + p[p.length - 1] : "");
}

function draw() {
  const w = video.videoWidth || 640, h = video.videoHeight || 480;
  if (overlay.width !== w || overlay.height !== h) { overlay.width = w; overlay.height = h; }
  const g = overlay.getContext("2d");
  g.clearRect(0, 0, w, h);
  const size = Math.max(12, Math.round(w / 45));
  g.font = `${size}px sans-serif`; g.lineWidth = 2;
  const names = args ? args.models.map((m) => m.name) : [];
  for (const t of lastTracks) {
    const [x, y, bw, bh] = t.box;
    g.strokeStyle = "rgb(40,200,40)"; g.strokeRect(x, y, bw, bh);
    const lines = names.filter((n) => t.probs[n]).map((n) => {
      const p = t.probs[n], k = p.indexOf(Math.max(...p));
      return `${short(n)}: ${args.config.emotions[k]} ${Math.round(p[k] * 100)}%`;
    });
    lines.reverse().forEach((text, i) => {
      const ty = Math.max(size, y - 6 - i * (size + 4));
      g.fillStyle = "rgba(0,0,0,0.6)"; g.fillRect(x, ty - size, g.measureText(text).width + 6, size + 4);
      g.fillStyle = "rgb(40,220,40)"; g.fillText(text, x + 3, ty);
    });
  }
  const fps = times.length > 1 ? (times.length - 1) / ((times[times.length - 1] - times[0]) / 1000) : 0;
  if (state === "streaming") {
    const per = names.filter((n) => modelMs[n]).map((n) => `${short(n)} ${median(modelMs[n]).toFixed(1)} ms`).join(" · ");
    say(`in your browser · ${fps.toFixed(1)} fps · detect ${(median(detectMs) || 0).toFixed(1)} ms · per face: ${per} · faces: ${lastTracks.length}`);
  }
  barsEl.replaceChildren(...(lastTracks[0] ? names.filter((n) => lastTracks[0].probs[n]).map((n) => bars(n, lastTracks[0].probs[n])) : []));
}

function bars(name, p) {
  const box = document.createElement("div");
  box.className = "model";
  const k = p.indexOf(Math.max(...p));
  box.innerHTML = `<b></b> <code></code>`;
  box.querySelector("b").textContent = args.config.emotions[k];
  box.querySelector("code").textContent = name;
  args.config.emotions.forEach((e, i) => {
    const row = document.createElement("div");
    row.className = "bar";
    row.innerHTML = `<span></span><i></i><span></span>`;
    row.children[0].textContent = e;
    row.children[1].style.width = `${Math.round(p[i] * 160)}px`;
    row.children[2].textContent = `${(p[i] * 100).toFixed(1)}%`;
    box.appendChild(row);
  });
  return box;
}

async function onRender(a) {
  args = a;
  await takeBlobs(a);
  if (!a.running) {
    if (worker) { worker.terminate(); worker = null; workerKey = null; ready = false; }
    const was = state;
    stopCamera(); state = "stopped"; message = null; say("Turn on Live video: each face gets a box and every selected model's label, computed in this browser.");
    // nothing to tell before the first start: a message reruns the page's fragment, for nothing on every visit to
    // the page, and a fragment rerun beside a photo's upload can lose the upload
    if (was !== "starting" && was !== "stopped") report(true);
    return;
  }
  if (typeof WebAssembly !== "object") { fail("no-wasm", "This browser cannot run WebAssembly, which the in-browser mode needs."); return; }
  const need = missing();
  if (need.length) {
    const key = need.join(",");
    if (key !== requested) { requested = key; state = "loading"; say("Fetching the models from the dashboard (once; then this browser keeps them)…"); report(true); }
    return;
  }
  if (!(await openCamera())) return;
  if (state !== "streaming") state = "loading";
  startWorker();
}

window.addEventListener("message", (e) => {
  if (e.data && e.data.type === "streamlit:render") onRender(e.data.args).catch((err) => fail("error", `The in-browser mode failed: ${err.message || err}`));
});
post("streamlit:componentReady", {});
// a stats message can be lost while the page reruns for something else: ask again until the models arrive
setInterval(() => { if (args && args.running && missing().length) report(true); }, 2000);
requestAnimationFrame(tick);
// for the tests: what this page knows (no frames)
window.ferLive = { models: () => (args ? args.models : []), state: () => state, frames: () => frames, roiFrames: () => roiFrames, detectMs: () => [...detectMs], tracks: () => lastTracks, argKeys: () => Object.keys(args || {}), blobs: () => [...blobs.keys()], need: () => missing() };
