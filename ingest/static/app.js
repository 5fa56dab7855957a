// The try-it page: photos go to the public API (POST /v1/detect?wait=true) and the faces are
// drawn on a canvas from the JSON answer, so what is shown is what any client gets.
"use strict";

const BOX = "#00ff66";
// Left eye, right eye, nose, mouth corners: the colours of ingest/drawing.py.
const LANDMARKS = ["#ff4040", "#4080ff", "#ffff00", "#ff00ff", "#00ffff"];

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function loadImage(file) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the browser cannot show this image"));
    img.src = URL.createObjectURL(file);
  });
}

function drawFaces(canvas, img, result) {
  // Coordinates are in the photo's pixels, EXIF orientation applied: the browser shows it
  // the same way, so the canvas takes the result's size and the image is scaled onto it.
  const width = result.width || img.naturalWidth;
  const height = result.height || img.naturalHeight;
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(img, 0, 0, width, height);
  const line = Math.max(2, Math.round(Math.min(width, height) / 320));
  ctx.lineWidth = line;
  ctx.font = `${Math.max(10, line * 6)}px sans-serif`;
  for (const face of result.faces || []) {
    const [x1, y1, x2, y2] = face.box;
    ctx.strokeStyle = BOX;
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    (face.kps || []).forEach(([x, y], i) => {
      ctx.fillStyle = LANDMARKS[i % LANDMARKS.length];
      ctx.beginPath();
      ctx.arc(x, y, line + 1, 0, 2 * Math.PI);
      ctx.fill();
    });
    const label = face.score.toFixed(2);
    const labelHeight = line * 6 + 2 * line;
    const top = y1 - labelHeight >= 0 ? y1 - labelHeight : y1;
    ctx.fillStyle = BOX;
    ctx.fillRect(x1, top, ctx.measureText(label).width + 2 * line, labelHeight);
    ctx.fillStyle = "#000";
    ctx.textBaseline = "top";
    ctx.fillText(label, x1 + line, top + line);
  }
}

async function detect(file) {
  const card = element("article", "card");
  card.append(element("h2", "", file.name));
  const summary = element("p", "summary", "detecting...");
  const canvas = element("canvas");
  const json = element("pre", "json");
  card.append(summary, canvas, json);
  document.getElementById("results").prepend(card);
  const started = performance.now();
  try {
    const query = new URLSearchParams({ wait: "true", source: file.name.slice(0, 256) });
    const response = await fetch(`/v1/detect?${query}`, {
      method: "POST",
      headers: { "Content-Type": file.type || "application/octet-stream" },
      body: file,
    });
    const result = await response.json();
    const ms = Math.round(performance.now() - started);
    json.textContent = JSON.stringify(result, null, 2);
    card.dataset.ms = String(ms);
    if (!response.ok || result.error) {
      const why = result.error ? `${result.error.code}: ${result.error.message}` : response.status;
      summary.textContent = `failed after ${ms} ms (${why})`;
      summary.classList.add("error");
      card.dataset.error = result.error ? result.error.code : String(response.status);
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
      (s.models.length ? ` · model: ${s.models.join(", ")}` : "");
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
