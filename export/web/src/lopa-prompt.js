// lopa-prompt.js: the soft prompt Z of a lopa-fed prompt generator, computed in the browser.
//
//   import { LoPAPrompt } from "./lopa-prompt.js";
//   const prompt = await LoPAPrompt.load("./");            // the bundle directory (holds bundle.json)
//   const z = await prompt.z("a gorgeous, witty film");     // Float32Array, z.dims = [1, T, d]
//   const zp = await prompt.z("premise", "hypothesis");     // a sentence pair
//
// Everything is read from the bundle: the ONNX graph (onnxruntime-web, wasm backend), the
// tokenizer (transformers.js, offline: no model hub, no CDN) and the wasm binaries. Tokenisation
// equals the Python runtime's (export.runtime.PromptRuntime): the tokenizer.json pipeline with
// longest-first truncation to the encoder's max_length, no padding (batch 1).
import * as ort from "./vendor/ort.wasm.bundle.min.mjs";
import { AutoTokenizer, env } from "./vendor/transformers.web.min.js";

const BUNDLE_FILE = "bundle.json";

function directoryUrl(url) {
  const u = new URL(url ?? "./", globalThis.location?.href);
  if (!u.pathname.endsWith("/")) u.pathname += "/";
  return u;
}

// Token counts (n1, n2) kept by Hugging Face tokenizers' longest_first truncation of a pair
// to `target` tokens (special tokens excluded), the same arithmetic as its Rust implementation.
export function longestFirst(n1, n2, target) {
  if (n1 + n2 <= target) return [n1, n2];
  let [a, b] = n1 > n2 ? [n2, n1] : [n1, n2];
  const swap = n1 > n2;
  b = a > target ? a : Math.max(a, target - a);
  if (a + b > target) {
    a = Math.floor(target / 2);
    b = a + (target % 2);
  }
  const [k1, k2] = swap ? [b, a] : [a, b];
  return [Math.min(k1, n1), Math.min(k2, n2)];
}

// Apply a TemplateProcessing post-processor (tokenizer.json) to already truncated segment ids.
function applyTemplate(processor, idsA, idsB) {
  if (!processor || processor.type !== "TemplateProcessing") {
    throw new Error(`cannot truncate: post-processor ${processor?.type} is not TemplateProcessing`);
  }
  const out = [];
  for (const piece of idsB === null ? processor.single : processor.pair) {
    if (piece.Sequence) out.push(...(piece.Sequence.id === "A" ? idsA : idsB));
    else out.push(...processor.special_tokens[piece.SpecialToken.id].ids);
  }
  return out;
}

export class LoPAPrompt {
  /**
   * Load a bundle written by `lopa-fed export --web`.
   * @param {string} url  the bundle directory (default: the page's directory)
   * @param {{threads?: number}} options  wasm threads (default: all cores when the page is
   *   cross-origin isolated, else 1)
   * @returns {Promise<LoPAPrompt>}
   */
  static async load(url = "./", options = {}) {
    const base = directoryUrl(url);
    const res = await fetch(new URL(BUNDLE_FILE, base));
    if (!res.ok) throw new Error(`${new URL(BUNDLE_FILE, base)}: HTTP ${res.status}; is this a lopa-fed web bundle?`);
    const meta = await res.json();
    const vendor = new URL("vendor/", base).href;
    const isolated = Boolean(globalThis.crossOriginIsolated);
    const threads = options.threads ?? (isolated ? Math.min(navigator.hardwareConcurrency || 1, 4) : 1);
    ort.env.wasm.wasmPaths = vendor;
    ort.env.wasm.numThreads = threads;
    env.allowRemoteModels = false; // transformers.js: never the model hub
    env.allowLocalModels = true;
    // transformers.js reads "local" models by path on the page's origin (a full URL counts as remote)
    env.localModelPath = base.origin === globalThis.location?.origin ? base.pathname : base.href;
    env.backends.onnx.wasm.wasmPaths = vendor; // never a CDN
    const t0 = performance.now();
    let tokenizer = null;
    let processor = null;
    if (meta.tokenizer) {
      tokenizer = await AutoTokenizer.from_pretrained(meta.tokenizer.dir);
      const tj = await (await fetch(new URL(`${meta.tokenizer.dir}/tokenizer.json`, base))).json();
      processor = tj.post_processor;
    }
    const session = await ort.InferenceSession.create(new URL(meta.model.file, base).href, {
      executionProviders: ["wasm"],
      graphOptimizationLevel: meta.model.graph_optimization ?? "basic",
    });
    const loadMs = performance.now() - t0;
    return new LoPAPrompt(meta, tokenizer, processor, session, { threads, isolated, loadMs });
  }

  constructor(meta, tokenizer, processor, session, info) {
    this.meta = meta;
    this.tokenizer = tokenizer;
    this.processor = processor;
    this.session = session;
    this.info = info;
    this.numTokens = meta.num_tokens;
    this.d = meta.d;
  }

  /**
   * Token ids of a text (or a sentence pair) exactly as the Python runtime makes them.
   * @returns {number[]}
   */
  encode(text, textPair = null) {
    if (typeof text !== "string" || text.length === 0) throw new Error("text must be a non-empty string");
    if (textPair !== null && textPair !== undefined && typeof textPair !== "string") {
      throw new Error("textPair must be a string or null");
    }
    const pair = textPair ?? null;
    if (!this.tokenizer) return [1]; // PT: the graph reads only the batch size
    const full = this.tokenizer.encode(text, { text_pair: pair, add_special_tokens: true });
    const max = this.meta.tokenizer.max_length;
    if (full.length <= max) return full;
    const a = this.tokenizer.encode(text, { add_special_tokens: false });
    const b = pair === null ? null : this.tokenizer.encode(pair, { add_special_tokens: false });
    const target = max - (full.length - a.length - (b ? b.length : 0));
    if (b === null) return applyTemplate(this.processor, a.slice(0, target), null);
    const [k1, k2] = longestFirst(a.length, b.length, target);
    return applyTemplate(this.processor, a.slice(0, k1), b.slice(0, k2));
  }

  /**
   * The soft prompt of one text (or pair).
   * @returns {Promise<Float32Array>} Z, row-major, with `dims` = [1, T, d]
   */
  async z(text, textPair = null) {
    const ids = this.encode(text, textPair);
    const n = ids.length;
    const feeds = {
      input_ids: new ort.Tensor("int64", BigInt64Array.from(ids, BigInt), [1, n]),
      attention_mask: new ort.Tensor("int64", new BigInt64Array(n).fill(1n), [1, n]),
    };
    const out = await this.session.run(feeds);
    const z = out.z;
    const data = new Float32Array(z.data);
    data.dims = z.dims.map(Number);
    if (typeof z.dispose === "function") z.dispose();
    return data;
  }

  /** Z as base64 of little-endian float32 bytes (the model host's wire format). */
  static toBase64(z) {
    const bytes = new Uint8Array(z.buffer, z.byteOffset, z.byteLength);
    let s = "";
    for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
    return btoa(s);
  }

  /**
   * Send Z and the text to a model host (`lopa-fed serve --cors-origin <this page's origin>`).
   * @returns {Promise<object>} the host's answer: label, index, probabilities, labels, timing
   */
  async classifyRemote(hostUrl, text, textPair, z, apiKey = null) {
    const body = { text, z: LoPAPrompt.toBase64(z), z_hash: this.meta.z_hash ?? undefined };
    if (textPair) body.text_pair = textPair;
    const headers = { "content-type": "application/json" };
    if (apiKey) headers.authorization = `Bearer ${apiKey}`;
    const res = await fetch(new URL("v1/classify", directoryUrl(hostUrl)), {
      method: "POST", headers, body: JSON.stringify(body),
    });
    const answer = await res.json();
    if (!res.ok) throw new Error(`model host: ${res.status} ${answer?.error?.message ?? JSON.stringify(answer)}`);
    return answer;
  }
}

export default LoPAPrompt;
