// Faces drawn on a canvas from a result: boxes, the five landmarks, and score labels placed
// where they cover no other face's box and no other label.

export const BOX = "#00ff66";
// Left eye, right eye, nose, left and right mouth corner: the colours of common/imaging/drawing.py
// and of the page's legend (style.css, .lm-0 to .lm-4).
export const LANDMARKS = ["#ff4040", "#4080ff", "#ffff00", "#ff00ff", "#00ffff"];
// Label text height on screen, in CSS pixels: readable whatever the photo's size.
const LABEL_CSS_PX = 13;

function overlap(a, b) {
  const w = Math.min(a.x + a.w, b.x + b.w) - Math.max(a.x, b.x);
  const h = Math.min(a.y + a.h, b.y + b.h) - Math.max(a.y, b.y);
  return w > 0 && h > 0 ? w * h : 0;
}

// Where a label may go, best first: above the box, just inside its top, below it, just inside
// its bottom, then down the inside of the box; each flush with the box's left edge, then with
// its right edge. Positions off the image are left out.
function candidates(box, w, h, width, height) {
  const [x1, y1, x2, y2] = box;
  const ys = [y1 - h, y1, y2, y2 - h];
  const step = Math.max(2, h / 4);
  for (let y = y1 + step; y < y2 - h; y += step) ys.push(y);
  const xs = [x1, x2 - w].map((x) => Math.min(Math.max(0, x), width - w));
  const out = [];
  for (const y of ys) {
    if (y < 0 || y + h > height) continue;
    for (const x of xs) out.push({ x, y, w, h });
  }
  return out;
}

// Each face's label rectangle, in canvas pixels: the first candidate that overlaps no other
// face's box (widened by the line, so a label never touches one either) and no label placed
// before it; when every candidate overlaps something, the one that overlaps least.
export function placeLabels(boxes, sizes, width, height, margin) {
  const areas = boxes.map(([x1, y1, x2, y2]) => ({
    x: x1 - margin,
    y: y1 - margin,
    w: x2 - x1 + 2 * margin,
    h: y2 - y1 + 2 * margin,
  }));
  const placed = [];
  boxes.forEach((box, i) => {
    const { w, h } = sizes[i];
    const others = areas.filter((_, j) => j !== i).concat(placed);
    let best = null;
    let bestCost = Infinity;
    for (const rect of candidates(box, w, h, width, height)) {
      const cost = others.reduce((sum, other) => sum + overlap(rect, other), 0);
      if (cost < bestCost) {
        best = rect;
        bestCost = cost;
      }
      if (cost === 0) break;
    }
    // A label larger than the photo has no candidate: its top-left corner, clipped.
    placed.push({ ...(best || { x: 0, y: 0, w, h }), face: i, clear: bestCost === 0 });
  });
  return placed;
}

// How many canvas pixels one CSS pixel covers once the canvas is laid out: the canvas is
// shown scaled down (to the page's width, capped to the viewport height), never up.
function displayScale(canvas) {
  const shown = canvas.getBoundingClientRect().width;
  return shown > 0 ? Math.max(1, canvas.width / shown) : 1;
}

export function drawFaces(canvas, img, result) {
  // Coordinates are in the photo's pixels, EXIF orientation applied: the browser shows it
  // the same way, so the canvas takes the result's size and the image is scaled onto it.
  const width = result.width || img.naturalWidth;
  const height = result.height || img.naturalHeight;
  canvas.width = width;
  canvas.height = height;
  const scale = displayScale(canvas);
  const ctx = canvas.getContext("2d");
  ctx.drawImage(img, 0, 0, width, height);
  const line = Math.max(2, Math.round(2 * scale));
  const font = Math.round(LABEL_CSS_PX * scale);
  const pad = Math.max(2, Math.round(3 * scale));
  const faces = result.faces || [];
  ctx.lineWidth = line;
  for (const face of faces) {
    const [x1, y1, x2, y2] = face.box;
    ctx.strokeStyle = BOX;
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    (face.kps || []).forEach(([x, y], i) => {
      ctx.fillStyle = LANDMARKS[i % LANDMARKS.length];
      ctx.beginPath();
      ctx.arc(x, y, line + 1, 0, 2 * Math.PI);
      ctx.fill();
    });
  }
  // Labels last, so no box or landmark is drawn over one.
  ctx.font = `${font}px sans-serif`;
  ctx.textBaseline = "top";
  const texts = faces.map((face) => face.score.toFixed(2));
  const sizes = texts.map((text) => ({
    w: Math.ceil(ctx.measureText(text).width) + 2 * pad,
    h: font + 2 * pad,
  }));
  const labels = placeLabels(
    faces.map((f) => f.box),
    sizes,
    width,
    height,
    line,
  );
  labels.forEach((rect, i) => {
    ctx.fillStyle = BOX;
    ctx.fillRect(rect.x, rect.y, rect.w, rect.h);
    ctx.fillStyle = "#000";
    ctx.fillText(texts[i], rect.x + pad, rect.y + pad);
  });
  // What was drawn where, for anyone checking the page (tests read it).
  canvas.dataset.labels = JSON.stringify(labels);
  canvas.dataset.line = String(line);
  canvas.dataset.font = String(font);
}
