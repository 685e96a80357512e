// turbo-serve's realtime page: every edit sends a request over one WebSocket; the server always works on the
// newest one, so the picture follows the prompt as fast as the machine allows.
"use strict";

const $ = (id) => document.getElementById(id);
const DEBOUNCE_MS = 120;
const MAX_SEED = 4294967295;

let ws = null;
let info = null;
let nextId = 1;
let debounce = null;
let header = null; // the JSON header whose binary message comes next
let frameUrl = null;
let initImage = null; // data URL of the image-to-image input, at the model's size
const sentAt = new Map();

function setStatus(text, kind) {
  const el = $("status");
  el.textContent = text;
  el.className = `status ${kind}`;
}

function randomSeed() {
  return Math.floor(Math.random() * MAX_SEED);
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  ws = new WebSocket(`${scheme}://${location.host}/realtime`);
  ws.binaryType = "blob";
  setStatus("connecting", "connecting");
  ws.onopen = () => {
    const key = sessionStorage.getItem("turbo-api-key");
    if (key) ws.send(JSON.stringify({ type: "auth", key }));
  };
  ws.onmessage = (event) => {
    if (typeof event.data === "string") onMessage(JSON.parse(event.data));
    else onBinary(event.data);
  };
  ws.onclose = (event) => {
    ws = null;
    if (event.code === 1008) return; // wrong key: wait for the form
    setStatus("disconnected, retrying", "error");
    setTimeout(connect, 1500);
  };
}

function onMessage(msg) {
  if (msg.type === "hello") {
    info = msg;
    $("info").textContent =
      `${msg.model} · ${msg.backend} ${msg.device} ${msg.precision} · ${msg.width}×${msg.height}`;
    $("frame").style.aspectRatio = `${msg.width} / ${msg.height}`;
    $("steps").max = String(msg.max_steps);
    $("steps").value = String(msg.default_steps);
    $("key-form").hidden = true;
    setStatus("ready", "ready");
    $("message").textContent = "";
    if ($("prompt").value) send();
  } else if (msg.type === "frame" || msg.type === "png") {
    header = msg;
  } else if (msg.type === "error") {
    $("message").textContent = `${msg.status}: ${msg.message}`;
    if (msg.status === 401) {
      $("key-form").hidden = false;
      setStatus("API key needed", "error");
    }
  }
}

function onBinary(blob) {
  const msg = header;
  header = null;
  if (!msg) return;
  if (msg.type === "png") {
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = `turbo-${msg.seed}.png`;
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 1000);
    return;
  }
  if (frameUrl) URL.revokeObjectURL(frameUrl);
  frameUrl = URL.createObjectURL(blob);
  const img = $("frame");
  img.src = frameUrl;
  img.dataset.frameId = String(msg.id);
  img.dataset.seed = String(msg.seed);
  const roundTrip = performance.now() - (sentAt.get(msg.id) ?? performance.now());
  for (const id of sentAt.keys()) if (id <= msg.id) sentAt.delete(id);
  const t = msg.timings;
  const ms = (s) => `${Math.round((s ?? 0) * 1000)}`;
  const stages = [`text ${ms(t.text_encoder)}`, `unet ${ms(t.unet)}`, `decode ${ms(t.vae_decoder)}`];
  if (t.vae_encoder) stages.splice(1, 0, `encode ${ms(t.vae_encoder)}`);
  $("timing").textContent =
    `${Math.round(roundTrip)} ms per frame · server ${ms(t.total)} ms (${stages.join(" · ")}) · ` +
    `seed ${msg.seed} · ${msg.steps} step${msg.steps === 1 ? "" : "s"}`;
  $("download").disabled = false;
  setStatus("ready", "ready");
}

function send() {
  if (!ws || ws.readyState !== WebSocket.OPEN || !info) return;
  const id = nextId++;
  const msg = {
    type: "generate",
    id,
    prompt: $("prompt").value,
    seed: Number($("seed").value),
    steps: Number($("steps").value),
    format: "jpeg",
  };
  if (initImage) {
    msg.image = initImage;
    msg.strength = Number($("strength").value);
  }
  sentAt.set(id, performance.now());
  ws.send(JSON.stringify(msg));
  setStatus("generating", "busy");
}

function sendSoon() {
  clearTimeout(debounce);
  debounce = setTimeout(send, DEBOUNCE_MS);
}

// The image-to-image input is scaled to the model's size here, so each request carries a small JPEG.
function setInitImage(source, width, height) {
  const canvas = document.createElement("canvas");
  canvas.width = info ? info.width : width;
  canvas.height = info ? info.height : height;
  canvas.getContext("2d").drawImage(source, 0, 0, canvas.width, canvas.height);
  initImage = canvas.toDataURL("image/jpeg", 0.92);
  $("init-preview").src = initImage;
  $("init-preview").hidden = false;
  $("strength").disabled = false;
  $("clear-image").disabled = false;
  send();
}

async function loadFile(file) {
  try {
    const bitmap = await createImageBitmap(file);
    setInitImage(bitmap, bitmap.width, bitmap.height);
  } catch (err) {
    $("message").textContent = `cannot read ${file.name}: not a picture`;
  }
}

async function webcamStill() {
  const video = $("camera");
  let stream = null;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: true });
    video.srcObject = stream;
    await video.play();
    setInitImage(video, video.videoWidth, video.videoHeight);
  } catch (err) {
    $("message").textContent = `webcam: ${err.message}`;
  } finally {
    if (stream) stream.getTracks().forEach((track) => track.stop());
    video.srcObject = null;
  }
}

function clearImage() {
  initImage = null;
  $("image-file").value = "";
  $("init-preview").hidden = true;
  $("strength").disabled = true;
  $("clear-image").disabled = true;
  send();
}

$("seed").value = String(randomSeed());
$("prompt").addEventListener("input", sendSoon);
$("seed").addEventListener("input", sendSoon);
$("steps").addEventListener("input", sendSoon);
$("strength").addEventListener("input", () => {
  $("strength-value").textContent = Number($("strength").value).toFixed(2);
  sendSoon();
});
$("new-seed").addEventListener("click", () => {
  $("seed").value = String(randomSeed());
  send();
});
$("refine").addEventListener("click", () => {
  // Same prompt and seed at the next of 2, 3, 4 steps: the turbo models keep the layout and add detail.
  const steps = Number($("steps").value);
  $("steps").value = String(steps < 2 ? 2 : Math.min(steps + 1, Math.max(4, steps)));
  send();
});
$("image-file").addEventListener("change", (event) => {
  if (event.target.files.length) loadFile(event.target.files[0]);
});
$("webcam").addEventListener("click", webcamStill);
$("clear-image").addEventListener("click", clearImage);
$("download").addEventListener("click", () => {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "save" }));
});
$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem("turbo-api-key", $("key").value);
  if (ws) ws.close();
  else connect();
});
connect();
