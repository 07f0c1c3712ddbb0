// Drive a lopa-fed web bundle in the system's headless Chromium (puppeteer-core, no browser download).
//
//   node export/web/driver.mjs --url http://127.0.0.1:PORT/web/ --inputs in.json --out out.json \
//        [--browser /usr/bin/chromium-headless-shell] [--threads N] [--repeats R] [--blank PATH]
//
// in.json: [{"text": "...", "pair": "..." | null}, ...]. The page at --blank (an empty HTML page of
// the same origin, default "<url>blank.html") imports <url>lopa-prompt.js, loads the bundle, and for
// every input returns its token ids and Z (base64 little-endian float32, dims [1, T, d]). With
// --repeats R it then times R rounds of text → Z over all inputs (ms per call). out.json also holds
// the load time, the time to first Z, the wasm thread count and whether the page was cross-origin
// isolated. With --demo it instead opens <url>index.html, types the first input, optionally a model host
// URL (--host), clicks "Compute Z" and returns what the page shows (--screenshot saves a PNG).
// puppeteer-core is read from $LOPA_FED_NODE_MODULES or the node_modules beside this file.
import { readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

const { values: opt } = parseArgs({
  options: {
    url: { type: "string" },
    inputs: { type: "string" },
    out: { type: "string" },
    browser: { type: "string", default: process.env.LOPA_FED_BROWSER || "/usr/bin/chromium-headless-shell" },
    threads: { type: "string" },
    repeats: { type: "string", default: "0" },
    blank: { type: "string" },
    timeout: { type: "string", default: "120000" },
    demo: { type: "boolean", default: false },
    host: { type: "string" },
    screenshot: { type: "string" },
  },
});
if (!opt.url || !opt.inputs || !opt.out) {
  console.error("usage: driver.mjs --url URL --inputs in.json --out out.json [--threads N] [--repeats R]");
  process.exit(2);
}
const modules = process.env.LOPA_FED_NODE_MODULES || join(fileURLToPath(new URL(".", import.meta.url)), "node_modules");
const require = createRequire(join(modules, "noop.js"));
const puppeteer = require("puppeteer-core");

const base = opt.url.endsWith("/") ? opt.url : `${opt.url}/`;
const inputs = JSON.parse(readFileSync(opt.inputs, "utf8"));
const browser = await puppeteer.launch({
  executablePath: opt.browser,
  headless: "shell",
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage"],
  protocolTimeout: Number(opt.timeout),
});
const logs = [];

// The demo page: type, (host), click, read what it shows.
async function runDemo(page) {
  await page.goto(`${base}index.html`, { waitUntil: "load" });
  await page.waitForSelector("#go:not([disabled])", { timeout: Number(opt.timeout) });
  const { text, pair } = inputs[0];
  await page.$eval("#text", (el, v) => { el.value = v; }, text);
  await page.$eval("#pair", (el, v) => { el.value = v; }, pair ?? "");
  await page.$eval("#host", (el, v) => { el.value = v; }, opt.host ?? "");
  await page.click("#go");
  await page.waitForFunction(
    (wantHost) => {
      const t = document.getElementById("out").textContent;
      return t.startsWith("Error") || (t.includes("Z shape") && (!wantHost || t.includes("model host:")));
    },
    { timeout: Number(opt.timeout) }, Boolean(opt.host),
  );
  const about = await page.$eval("#about", (el) => el.textContent);
  const out = await page.$eval("#out", (el) => el.textContent);
  if (opt.screenshot) await page.screenshot({ path: opt.screenshot, fullPage: true });
  return { demo: { about, out } };
}

// The module on a blank page: ids and Z of every input, then timed rounds.
async function runInputs(page) {
  await page.goto(opt.blank || `${base}blank.html`, { waitUntil: "load" });
  return page.evaluate(
    async (base, inputs, threads, repeats) => {
      const t0 = performance.now();
      const { LoPAPrompt } = await import(`${base}lopa-prompt.js`);
      const prompt = await LoPAPrompt.load(base, threads ? { threads } : {});
      const first = await prompt.z(inputs[0].text, inputs[0].pair);
      const firstZMs = performance.now() - t0;
      const items = [];
      for (const { text, pair } of inputs) {
        const ids = prompt.encode(text, pair);
        const z = await prompt.z(text, pair);
        items.push({ ids, dims: z.dims, z: LoPAPrompt.toBase64(z) });
      }
      const times = [];
      for (let r = 0; r < repeats; r++) {
        for (const { text, pair } of inputs) {
          const s = performance.now();
          await prompt.z(text, pair);
          times.push(performance.now() - s);
        }
      }
      return {
        load_ms: prompt.info.loadMs, first_z_ms: firstZMs, first_dims: first.dims, threads: prompt.info.threads,
        isolated: prompt.info.isolated, cores: navigator.hardwareConcurrency, user_agent: navigator.userAgent,
        items, times_ms: times,
      };
    },
    base, inputs, opt.threads ? Number(opt.threads) : null, Number(opt.repeats),
  );
}

try {
  const page = await browser.newPage();
  page.on("console", (m) => logs.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => logs.push(`pageerror: ${e.message}`));
  page.on("requestfailed", (r) => logs.push(`requestfailed: ${r.url()} ${r.failure()?.errorText}`));
  const result = opt.demo ? await runDemo(page) : await runInputs(page);
  result.version = await browser.version();
  result.logs = logs;
  writeFileSync(opt.out, JSON.stringify(result));
} catch (err) {
  console.error(`driver: ${err.message}\n${logs.join("\n")}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
