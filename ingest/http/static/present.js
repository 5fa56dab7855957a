// What the page says: answers as readable JSON, failures as a sentence a person can act on.

const INLINE_CHARS = 96;

// JSON indented by two spaces, except that an array or object holding no object or array of
// objects stays on one line when it is short: a box, a landmark list, a meta map read as one.
export function prettyJson(value, indent = "") {
  const flat = JSON.stringify(value);
  if (value === null || typeof value !== "object" || flat === undefined) return String(flat);
  const nested = Object.values(value).some(
    (v) => v !== null && typeof v === "object" && !(Array.isArray(v) && isFlatArray(v)),
  );
  if (!nested && flat.length + indent.length <= INLINE_CHARS) return spaced(value);
  const inner = indent + "  ";
  const items = Array.isArray(value)
    ? value.map((v) => inner + prettyJson(v, inner))
    : Object.entries(value).map(([k, v]) => `${inner}${JSON.stringify(k)}: ${prettyJson(v, inner)}`);
  if (!items.length) return flat;
  const [open, close] = Array.isArray(value) ? ["[", "]"] : ["{", "}"];
  return `${open}\n${items.join(",\n")}\n${indent}${close}`;
}

function isFlatArray(v) {
  return v.every((x) => x === null || typeof x !== "object");
}

// One line, with a space after each comma and colon.
function spaced(value) {
  if (value === null || typeof value !== "object") return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map(spaced).join(", ")}]`;
  const pairs = Object.entries(value).map(([k, v]) => `${JSON.stringify(k)}: ${spaced(v)}`);
  return `{${pairs.join(", ")}}`;
}

// The gateway's error codes (ingest/publisher.py, ingest/http/app.py, ingest/http/ui_routes.py) and a
// result's (docs/contract.md), each with what it means for the person using the page.
const ADVICE = {
  no_detector:
    "No detector is running: start one with `facestream detector` or `facestream up`.",
  timeout:
    "No answer in time: the detectors are busy or slow. The photo is still processed; its " +
    "result is published to the results stream.",
  overloaded: "The service is overloaded: too many photos wait already. Try again shortly.",
  unavailable: "The service cannot reach its queue (Redis). Try again shortly.",
  redis_oom: "The service's queue (Redis) is full: nothing was queued. Try again shortly.",
  internal: "The service failed on this request (its log says why).",
  too_large: "The file is over the service's size limit (FACESTREAM_MAX_IMAGE_BYTES).",
  too_many_pixels:
    "The photo has more pixels than the service accepts (FACESTREAM_MAX_PIXELS): " +
    "scale it down and try again.",
  not_an_image: "This file is not a photo the service reads: send a JPEG, PNG, WebP or BMP.",
  unsupported_media_type:
    "This file is not a photo the service reads: send a JPEG, PNG, WebP or BMP.",
  undecodable: "The photo could not be decoded: it is corrupt, truncated or not an image.",
  too_complex:
    "The photo is encoded in more passes than the service decodes (FACESTREAM_MAX_JPEG_SCANS): " +
    "save it as a baseline JPEG or a PNG.",
  inference_failed: "The detector failed while running the model on this photo. Try again.",
  max_deliveries: "The detector gave up on this photo after several tries.",
  hash_mismatch: "The photo's bytes changed on the way (their checksum does not match).",
  bad_request: "The service refused the request.",
  bad_event: "The service refused the request.",
  not_found: "The page asked for an address the service does not have.",
  method_not_allowed: "The page asked the service in a way it does not answer.",
};

// {code, advice, detail} for a failed answer: `detail` is the server's own message (with the
// retry delay it asked for), never left out.
export function explain(status, body, retryAfter) {
  const err = body && typeof body === "object" && body.error ? body.error : null;
  const code = err && err.code ? String(err.code) : `http_${status}`;
  const advice = ADVICE[code] || `The service answered HTTP ${status}.`;
  let detail = err && err.message ? `${code}: ${err.message}` : `HTTP ${status}`;
  if (retryAfter) detail += ` (retry after ${retryAfter} s)`;
  return { code, advice, detail };
}
