// fuse-export.js: a fuse-export model in the browser, on ONNX Runtime Web (written by `fuse-export web`).
//
//   <script src="ort.wasm.min.js"></script>                  (ONNX Runtime Web: the global `ort`)
//   <script type="module">
//     import { load } from "./fuse-export.js";
//     const model = await load("model.onnx");   // reads model.json, checks the model's sha256, makes the session
//     const out = await model.predict(fileOrBlob);  // or an ImageBitmap, <img>, <canvas>, <video>, ImageData, URL
//     // out: {label, index, probabilities, confidence, logits, ms, preprocessMs}
//     model.runtime  // {threads, simd, crossOriginIsolated, version}: what ONNX Runtime Web actually runs with
//   </script>
//
// `probabilities` and `logits` are arrays in `model.classNames` order; `confidence` is the SCN importance weight
// alpha in (0, 1); `ms` is the time of `session.run` alone, `preprocessMs` that of decoding and preprocessing.
// Everything the preprocessing needs (size, colour mode, geometry, mean/std, class names, tensor names) comes
// from model.json, written from the export's verified artifact; nothing is typed in here twice. The steps are
// those of fuse_export/preprocess.py: EXIF orientation, colour mode (gray: PIL's convert("L") luma), geometry
// ("squash", or "resize-crop" with torchvision's crop rounding) with a port of Pillow's bilinear resampling
// (antialiased, the same fixed-point arithmetic), x/255, (x - mean)/std in float32, NCHW. Only the decoding is
// the browser's own (JPEG decoders may differ by a level; transparent pixels are composited over white).

const PRECISION_BITS = 22; // Pillow's Resample.c: 32 - 8 - 2
const MAX_THREADS = 4; // the cap of ONNX Runtime Web's own default (env.wasm.numThreads)
// ONNX Runtime Web's probe for WebAssembly SIMD (a function using v128 ops): its wasm builds all need SIMD.
const SIMD_PROBE = new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 1, 4, 1, 96, 0, 0, 3, 2, 1, 0, 10, 30, 1, 28, 0,
  65, 0, 253, 15, 253, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 253, 186, 1, 26, 11]);
let runtimeInfo = null; // set by the first session: the wasm runtime starts once per page

/** The wasm threads `load` asks for by default: every logical core up to MAX_THREADS on a cross-origin-isolated
 * page (`fuse-export web-serve` sends the headers), else 1. Threads need SharedArrayBuffer, which only an isolated
 * page has; ONNX Runtime Web's own default, half the cores, would run 1 thread on a 2-core machine. */
export function defaultThreads() {
  if (!globalThis.crossOriginIsolated) return 1;
  return Math.max(1, Math.min(globalThis.navigator?.hardwareConcurrency || 1, MAX_THREADS));
}

/** What the wasm runtime started with, read after the first session: ONNX Runtime Web lowers numThreads to 1
 * where threads are unavailable, and runs SIMD code only (it refuses to start without SIMD). */
function runtimeOf(ort) {
  let simd = false;
  try { simd = WebAssembly.validate(SIMD_PROBE); } catch { simd = false; }
  return { threads: ort.env.wasm.numThreads, simd, crossOriginIsolated: Boolean(globalThis.crossOriginIsolated),
    version: ort.env.versions?.web ?? "" };
}

export class IntegrityError extends Error {
  constructor(message) { super(message); this.name = "IntegrityError"; }
}

async function fetchOk(url) {
  const res = await fetch(url);
  if (!res.ok) throw new Error(`${url}: HTTP ${res.status} ${res.statusText}`);
  return res;
}

/** Load a model written by `fuse-export web`: its model.json (same folder, same stem), then the model itself,
 * refused with an IntegrityError unless its sha256 is the one in model.json. Options: numThreads (default
 * defaultThreads(); fixed by the page's first load), executionProviders (default ["wasm"]), metadata
 * (model.json's URL), ort (default: the global `ort`). The model's `runtime` says what actually ran. */
export async function load(url = "model.onnx", options = {}) {
  const ort = options.ort ?? globalThis.ort;
  if (!ort) throw new Error("ONNX Runtime Web is not loaded: include ort.wasm.min.js before fuse-export.js");
  const base = globalThis.location?.href;
  const modelUrl = new URL(url, base).href;
  const metaUrl = options.metadata ? new URL(options.metadata, base).href
    : modelUrl.replace(/\.onnx(?=$|[?#])/, ".json");
  const meta = await (await fetchOk(metaUrl)).json();
  if (meta.format !== "fuse-export-web-model") throw new Error(`${metaUrl}: not a model.json written by fuse-export web`);
  const bytes = new Uint8Array(await (await fetchOk(modelUrl)).arrayBuffer());
  const digest = await sha256Hex(bytes);
  if (digest !== meta.sha256) {
    throw new IntegrityError(`${meta.model}: its sha256 ${digest.slice(0, 16)}… differs from ${meta.sha256.slice(0, 16)}… `
      + "in model.json (changed or corrupted after `fuse-export web`): refused, not run");
  }
  if (!runtimeInfo) ort.env.wasm.numThreads = options.numThreads || defaultThreads();
  const session = await ort.InferenceSession.create(bytes, {
    executionProviders: options.executionProviders ?? ["wasm"], graphOptimizationLevel: "all" });
  runtimeInfo ??= runtimeOf(ort);
  const missing = [...meta.io.inputs, ...meta.io.outputs].map((t) => t.name)
    .filter((n) => !session.inputNames.includes(n) && !session.outputNames.includes(n));
  if (missing.length) throw new IntegrityError(`${meta.model}: has no tensor ${missing.join(", ")} that model.json names`);
  return new Model(ort, session, meta, digest, runtimeInfo);
}

export class Model {
  constructor(ort, session, meta, sha256, runtime = null) {
    this.ort = ort; this.session = session; this.meta = meta; this.sha256 = sha256; this.runtime = runtime;
    this.pre = meta.preprocessing;
    this.classNames = meta.class_names;
    this.input = meta.io.inputs[0];
    this.layout = meta.io.layout; // "float-nchw" (normalized here) or "uint8-nhwc" (the graph normalizes)
    this._queue = Promise.resolve(); // one session.run at a time
  }

  /** An image -> the model's input for one image: Float32Array NCHW (float-nchw) or Uint8Array NHWC (uint8-nhwc). */
  async preprocess(source) {
    const img = await decode(source);
    const pixels = modelPixels(img.data, img.width, img.height, this.pre);
    return this.layout === "uint8-nhwc" ? pixels : normalize(pixels, this.pre);
  }

  async predict(source) {
    const t0 = performance.now();
    const data = await this.preprocess(source);
    const out = await this.predictTensor(data);
    out.preprocessMs = performance.now() - t0 - out.ms;
    return out;
  }

  /** One preprocessed image (what `preprocess` returns) through the session. */
  predictTensor(data) {
    const run = this._queue.then(() => this._run(data));
    this._queue = run.catch(() => {});
    return run;
  }

  async _run(data) {
    const dims = [1, ...this.input.shape.slice(1)];
    const tensor = new this.ort.Tensor(this.input.dtype, data, dims);
    const t0 = performance.now();
    const res = await this.session.run({ [this.input.name]: tensor });
    const ms = performance.now() - t0;
    const probabilities = Array.from(res.probabilities.data);
    let index = 0;
    probabilities.forEach((p, i) => { if (p > probabilities[index]) index = i; });
    return { label: this.classNames[index], index, probabilities, confidence: res.confidence.data[0],
      logits: Array.from(res.logits.data), ms };
  }
}

/** Hex sha256 of bytes: WebCrypto where the page is a secure context (https, localhost, 127.0.0.1), else a
 * plain-JS digest (a page served over http from a LAN address has no crypto.subtle). */
export async function sha256Hex(bytes, { subtle = true } = {}) {
  if (subtle && globalThis.crypto?.subtle) {
    return hex(new Uint8Array(await crypto.subtle.digest("SHA-256", bytes)));
  }
  return hex(sha256Js(bytes));
}

function hex(bytes) { return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join(""); }

const K = new Uint32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
  0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
  0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
  0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
  0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
  0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
  0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
  0xc67178f2]);

function sha256Js(bytes) {
  const n = bytes.length, padded = new Uint8Array(Math.ceil((n + 9) / 64) * 64);
  padded.set(bytes); padded[n] = 0x80;
  const view = new DataView(padded.buffer);
  view.setUint32(padded.length - 8, Math.floor(n / 2 ** 29)); view.setUint32(padded.length - 4, (n << 3) >>> 0);
  const h = new Uint32Array([0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19]);
  const w = new Uint32Array(64), rot = (x, r) => (x >>> r) | (x << (32 - r));
  for (let off = 0; off < padded.length; off += 64) {
    for (let i = 0; i < 16; i++) w[i] = view.getUint32(off + 4 * i);
    for (let i = 16; i < 64; i++) {
      const s0 = rot(w[i - 15], 7) ^ rot(w[i - 15], 18) ^ (w[i - 15] >>> 3);
      const s1 = rot(w[i - 2], 17) ^ rot(w[i - 2], 19) ^ (w[i - 2] >>> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    let [a, b, c, d, e, f, g, hh] = h;
    for (let i = 0; i < 64; i++) {
      const t1 = hh + (rot(e, 6) ^ rot(e, 11) ^ rot(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
      const t2 = (rot(a, 2) ^ rot(a, 13) ^ rot(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
      hh = g; g = f; f = e; e = (d + t1) >>> 0; d = c; c = b; b = a; a = (t1 + t2) >>> 0;
    }
    [a, b, c, d, e, f, g, hh].forEach((v, i) => { h[i] = h[i] + v; });
  }
  const out = new Uint8Array(32), outView = new DataView(out.buffer);
  h.forEach((v, i) => outView.setUint32(4 * i, v));
  return out;
}

/** Any image source -> {data: RGBA bytes, width, height}, upright (EXIF orientation applied to files and blobs,
 * as the browser shows them), transparent pixels over white, no colour-profile conversion (as Pillow). */
export async function decode(source) {
  if (typeof source === "string" || source instanceof URL) source = await (await fetchOk(source)).blob();
  if (globalThis.ImageData && source instanceof ImageData) {
    return { data: source.data, width: source.width, height: source.height };
  }
  let bitmap = source, close = false;
  if (source instanceof Blob) {
    bitmap = await createImageBitmap(source, { imageOrientation: "from-image", colorSpaceConversion: "none",
      premultiplyAlpha: "none" });
    close = true;
  } else if (globalThis.HTMLImageElement && source instanceof HTMLImageElement && !source.complete) {
    await source.decode();
  }
  const width = bitmap.naturalWidth || bitmap.videoWidth || bitmap.width;
  const height = bitmap.naturalHeight || bitmap.videoHeight || bitmap.height;
  if (!width || !height) throw new Error("the image has no pixels (not loaded yet?)");
  const canvas = typeof OffscreenCanvas !== "undefined" ? new OffscreenCanvas(width, height)
    : Object.assign(document.createElement("canvas"), { width, height });
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, width, height);
  ctx.drawImage(bitmap, 0, 0, width, height);
  if (close) bitmap.close();
  return { data: ctx.getImageData(0, 0, width, height).data, width, height };
}

/** RGBA bytes -> uint8 HWC with 3 channels at the model's size: colour mode, then geometry (preprocess.py's
 * model_pixel). `pre` is model.json's preprocessing. */
export function modelPixels(rgba, width, height, pre) {
  const gray = pre.color_mode === "gray", c = gray ? 1 : 3, n = width * height;
  let a = new Uint8Array(n * c);
  for (let i = 0; i < n; i++) {
    const r = rgba[4 * i], g = rgba[4 * i + 1], b = rgba[4 * i + 2];
    if (gray) a[i] = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >>> 16; // PIL's convert("L")
    else { a[3 * i] = r; a[3 * i + 1] = g; a[3 * i + 2] = b; }
  }
  const size = pre.image_size;
  const [w, h] = pre.geometry === "squash" ? [size, size] : resizeCropSize(width, height, pre.resize_size);
  if (w !== width || h !== height) a = resampleBilinear(a, width, height, c, w, h);
  if (pre.geometry !== "squash") a = centerCrop(a, w, h, c, size);
  if (c === 3) return a;
  const out = new Uint8Array(size * size * 3);
  for (let i = 0; i < size * size; i++) out[3 * i] = out[3 * i + 1] = out[3 * i + 2] = a[i];
  return out;
}

/** torchvision's Resize(int): the short side to `size`, the long one scaled and truncated. */
export function resizeCropSize(width, height, size) {
  const [short, long] = width <= height ? [width, height] : [height, width];
  const newLong = Math.trunc(size * long / short);
  return width <= height ? [size, newLong] : [newLong, size];
}

function roundHalfEven(x) { // Python's round()
  const f = Math.floor(x), d = x - f;
  return d < 0.5 ? f : d > 0.5 ? f + 1 : (f % 2 === 0 ? f : f + 1);
}

/** torchvision's center_crop: zero padding (top/left get the floor half) when smaller, offsets rounded as Python. */
export function centerCrop(a, w, h, c, size) {
  const padX = Math.max(size - w, 0), padY = Math.max(size - h, 0);
  const pw = w + padX, ph = h + padY;
  const top = roundHalfEven((ph - size) / 2) - Math.floor(padY / 2);
  const left = roundHalfEven((pw - size) / 2) - Math.floor(padX / 2);
  const out = new Uint8Array(size * size * c);
  for (let y = 0; y < size; y++) {
    const sy = y + top;
    if (sy < 0 || sy >= h) continue;
    for (let x = 0; x < size; x++) {
      const sx = x + left;
      if (sx < 0 || sx >= w) continue;
      for (let k = 0; k < c; k++) out[(y * size + x) * c + k] = a[(sy * w + sx) * c + k];
    }
  }
  return out;
}

function coefficients(inSize, outSize) { // Pillow's precompute_coeffs + normalize_coeffs_8bpc, BILINEAR
  const scale = inSize / outSize, filterscale = Math.max(scale, 1.0), support = filterscale;
  const ksize = Math.ceil(support) * 2 + 1, bounds = new Int32Array(outSize * 2);
  const kk = new Int32Array(outSize * ksize), k = new Float64Array(ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale, ss = 1.0 / filterscale;
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const xmax = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    let ww = 0.0;
    for (let x = 0; x < xmax; x++) {
      const t = Math.abs((x + xmin - center + 0.5) * ss);
      k[x] = t < 1.0 ? 1.0 - t : 0.0;
      ww += k[x];
    }
    for (let x = 0; x < xmax; x++) {
      const v = ww !== 0.0 ? k[x] / ww : k[x];
      kk[xx * ksize + x] = Math.trunc(v < 0 ? -0.5 + v * 2 ** PRECISION_BITS : 0.5 + v * 2 ** PRECISION_BITS);
    }
    bounds[2 * xx] = xmin; bounds[2 * xx + 1] = xmax;
  }
  return { ksize, bounds, kk };
}

function clip8(v) {
  if (v >= 2 ** (PRECISION_BITS + 8)) return 255;
  return v <= 0 ? 0 : Math.floor(v / 2 ** PRECISION_BITS);
}

/** Pillow's Image.resize(..., BILINEAR) on uint8 HWC data with `c` channels, bit-identical: the two passes in
 * Pillow 13's order (vertical first when the height shrinks by more than twice what the width does), each rounded
 * to uint8, in its fixed-point arithmetic. (Older Pillows always went horizontal first: a level apart on a few
 * pixels of such images.) */
export function resampleBilinear(src, w, h, c, outW, outH) {
  const needH = outW !== w, needV = outH !== h;
  const vert = needV ? coefficients(h, outH) : null, horiz = needH ? coefficients(w, outW) : null;
  if (h - outH > 0 && h - outH > (w - outW) * 2) {
    const tmp = needV ? verticalPass(src, w, c, vert, outH, 0) : src;
    return needH ? horizontalPass(tmp, w, c, 0, outH, horiz, outW) : tmp;
  }
  let first = 0, rows = h;
  if (needV && needH) { // only the source rows the vertical pass reads
    first = vert.bounds[0];
    rows = vert.bounds[2 * outH - 2] + vert.bounds[2 * outH - 1] - first;
  }
  const tmp = needH ? horizontalPass(src, w, c, first, rows, horiz, outW) : src;
  return needV ? verticalPass(tmp, outW, c, vert, outH, needH ? first : 0) : tmp;
}

function horizontalPass(src, w, c, first, rows, { ksize, bounds, kk }, outW) {
  const out = new Uint8Array(rows * outW * c);
  for (let y = 0; y < rows; y++) {
    const rowIn = (y + first) * w * c;
    for (let xx = 0; xx < outW; xx++) {
      const xmin = bounds[2 * xx], xmax = bounds[2 * xx + 1], kOff = xx * ksize;
      for (let ch = 0; ch < c; ch++) {
        let ss = 2 ** (PRECISION_BITS - 1);
        for (let x = 0; x < xmax; x++) ss += src[rowIn + (x + xmin) * c + ch] * kk[kOff + x];
        out[(y * outW + xx) * c + ch] = clip8(ss);
      }
    }
  }
  return out;
}

function verticalPass(src, width, c, { ksize, bounds, kk }, outH, shift) {
  const stride = width * c, out = new Uint8Array(outH * stride);
  for (let yy = 0; yy < outH; yy++) {
    const ymin = bounds[2 * yy] - shift, ymax = bounds[2 * yy + 1], kOff = yy * ksize;
    for (let i = 0; i < stride; i++) {
      let ss = 2 ** (PRECISION_BITS - 1);
      for (let y = 0; y < ymax; y++) ss += src[(y + ymin) * stride + i] * kk[kOff + y];
      out[yy * stride + i] = clip8(ss);
    }
  }
  return out;
}

/** uint8 HWC3 -> float32 NCHW: x/255, then (x - mean)/std, every step rounded to float32 as numpy does. */
export function normalize(pixels, pre) {
  const hw = pixels.length / 3, out = new Float32Array(pixels.length), f = Math.fround;
  for (let ch = 0; ch < 3; ch++) {
    const mean = f(pre.mean[ch]), std = f(pre.std[ch]);
    for (let i = 0; i < hw; i++) out[ch * hw + i] = f(f(f(pixels[3 * i + ch] / 255) - mean) / std);
  }
  return out;
}
