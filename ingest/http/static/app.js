// The try-it page: photos go to the public API (POST /v1/detect?wait=true) and the faces are
// drawn on a canvas from the JSON answer, so what is shown is what any client gets.

import { drawFaces } from "./draw.js";
import { explain, prettyJson } from "./present.js";

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function loadImage(file) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    const url = URL.createObjectURL(file);
    img.onload = () => {
      URL.revokeObjectURL(url);
      resolve(img);
    };
    img.onerror = () => {
      URL.revokeObjectURL(url);
      reject(new Error("the browser cannot show this image"));
    };
    img.src = url;
  });
}

// The answer, indented, in a block that folds away.
function jsonBlock(result, label) {
  const block = element("details", "json");
  block.open = true;
  block.append(element("summary", "", label), element("pre", "", prettyJson(result)));
  return block;
}

async function readJson(response) {
  try {
    return await response.json();
  } catch {
    return null; // not JSON: a proxy's error page, say; the status still tells
  }
}

function showFailure(card, summary, failure, ms) {
  summary.textContent = `failed after ${ms} ms`;
  summary.classList.add("error");
  const problem = element("div", "problem");
  problem.append(element("p", "advice", failure.advice), element("p", "detail", failure.detail));
  summary.after(problem);
  card.dataset.error = failure.code;
}

async function detect(file) {
  const card = element("article", "card");
  card.append(element("h2", "", file.name));
  const summary = element("p", "summary", "detecting...");
  const canvas = element("canvas");
  card.append(summary, canvas);
  document.getElementById("results").prepend(card);
  const started = performance.now();
  try {
    const query = new URLSearchParams({ wait: "true", source: file.name.slice(0, 256) });
    const response = await fetch(`/v1/detect?${query}`, {
      method: "POST",
      headers: { "Content-Type": file.type || "application/octet-stream" },
      body: file,
    });
    const result = await readJson(response);
    const ms = Math.round(performance.now() - started);
    card.dataset.ms = String(ms);
    if (result !== null) card.append(jsonBlock(result, `JSON answer (HTTP ${response.status})`));
    if (!response.ok || result === null || result.error) {
      canvas.remove();
      const retry = response.headers.get("Retry-After");
      showFailure(card, summary, explain(response.status, result, retry), ms);
      return;
    }
    const faces = (result.faces || []).length;
    const origin = result.cached ? "from the cache" : "computed by a detector";
    summary.textContent = `${faces} face${faces === 1 ? "" : "s"} in ${ms} ms, ${origin}`;
    drawFaces(canvas, await loadImage(file), result);
    card.dataset.cached = String(Boolean(result.cached));
    card.dataset.faces = String(faces); // set last: the photo is drawn by now
  } catch (err) {
    summary.textContent = `failed: ${err.message}`;
    summary.classList.add("error");
    card.dataset.error = "client";
  }
}

async function sendAll(files) {
  for (const file of files) {
    await detect(file); // one at a time: the times shown are each photo's own
  }
}

async function refreshStatus() {
  const line = document.getElementById("status");
  try {
    const response = await fetch("/v1/status");
    const s = await response.json();
    if (!response.ok) throw new Error(s.error ? s.error.message : String(response.status));
    line.textContent =
      `detectors alive: ${s.detectors} · lag: ${s.lag} · pending: ${s.pending}` +
      (s.models.length ? ` · model: ${s.models.join(", ")}` : "") +
      (s.detectors === 0 ? " · " + explain(503, { error: { code: "no_detector" } }).advice : "");
    line.classList.toggle("bad", s.detectors === 0);
  } catch (err) {
    line.textContent = `service unavailable: ${err.message}`;
    line.classList.add("bad");
  }
}

const input = document.getElementById("files");
input.addEventListener("change", () => {
  const files = Array.from(input.files);
  input.value = ""; // so choosing the same photo again is a change too (a cache hit to see)
  sendAll(files);
});
const drop = document.getElementById("drop");
drop.addEventListener("dragover", (e) => {
  e.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  sendAll(Array.from(e.dataTransfer.files));
});
refreshStatus();
setInterval(refreshStatus, 3000);
