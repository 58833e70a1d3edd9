// reddiff app page: no framework, no outbound calls; everything goes to the server that served the page.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { options: null, image: null, imageFile: null, sample: "", maskFile: null, painted: false,
                job: null, source: null, frames: [], drawing: false };
const editor = $("editor");
const ctx = editor.getContext("2d");
let mask = document.createElement("canvas");  // natural size; red where the user painted (= to fill)

function showError(text) { $("error").textContent = text || ""; }
function setStatus(text) { $("status").textContent = text || ""; }

async function getJSON(url, init) {
  const r = await fetch(url, init);
  let body = null;
  try { body = await r.json(); } catch (e) { body = { error: `the server answered ${r.status}` }; }
  if (!r.ok) throw new Error(body.error || `the server answered ${r.status}`);
  return body;
}

// -- options ------------------------------------------------------------------------------------------------------
async function init() {
  const o = await getJSON("/api/options");
  state.options = o;
  $("prior").textContent = o.prior || "the prior";
  $("max-side").textContent = o.limits.max_side;
  for (const t of o.tasks) $("task").add(new Option(t.name, t.name));
  $("task").value = "inpaint-mask";
  for (const s of o.samples) $("sample").add(new Option(s, s));
  for (const [name, s] of Object.entries(o.solvers)) $("solver").add(new Option(s.label, name));
  $("solver").value = "reddiff";
  await onTaskChange();
  if (o.samples.length) { $("sample").value = o.samples[0]; await loadSample(o.samples[0]); }
}

function taskString() {
  const name = $("task").value;
  const p = $("task-param").value.trim();
  return p ? `${name}:${p}` : name;
}

async function onTaskChange() {
  const t = state.options.tasks.find((x) => x.name === $("task").value);
  $("task-doc").textContent = t ? t.doc : "";
  $("mask-tools").style.display = $("task").value.startsWith("inpaint") ? "" : "none";
  await fillSettings();
}

async function fillSettings() {
  const name = $("solver").value;
  const solver = state.options.solvers[name];
  let preset = {};
  if (name === "reddiff") {
    try {
      const q = new URLSearchParams({ task: taskString(), sigma_y: $("sigma").value || "0" });
      preset = (await getJSON(`/api/preset?${q}`)).preset || {};
      showError("");
    } catch (e) { showError(e.message); }
  }
  $("preset-line").textContent = name !== "reddiff" ? "" : (Object.keys(preset).length
    ? `the prior's preset for this task: ${Object.entries(preset).map(([k, v]) => `${k} ${v}`).join(", ")}`
    : "no preset for this task with this prior: the paper's settings");
  const table = $("settings");
  table.innerHTML = "";
  for (const f of solver.fields) {
    const row = table.insertRow();
    const value = f.name in preset ? preset[f.name] : f.default;
    row.insertCell().textContent = f.name;
    const input = document.createElement("input");
    input.id = `field-${f.name}`;
    input.dataset.field = f.name;
    input.dataset.initial = value === null ? "" : Array.isArray(value) ? value.join(",")
      : typeof value === "object" ? (Object.keys(value).length ? JSON.stringify(value) : "") : String(value);
    input.value = input.dataset.initial;
    input.title = `${f.help}; ${f.accepted}`;
    row.insertCell().appendChild(input);
  }
}

function settingsJSON() {
  const out = {};
  for (const input of $("settings").querySelectorAll("input")) {
    if (input.value !== input.dataset.initial) out[input.dataset.field] = input.value;
  }
  if (state.options.solvers[$("solver").value].fields.some((f) => f.name === "steps")) {
    out.steps = $("field-steps").value;  // always sent: the server checks it against its limit
  }
  return JSON.stringify(out);
}

// -- image and mask -----------------------------------------------------------------------------------------------
function drawEditor() {
  if (!state.image) return;
  ctx.clearRect(0, 0, editor.width, editor.height);
  ctx.drawImage(state.image, 0, 0);
  ctx.globalAlpha = 0.55;
  ctx.drawImage(mask, 0, 0);
  ctx.globalAlpha = 1;
}

function useImage(img) {
  state.image = img;
  editor.width = img.naturalWidth;
  editor.height = img.naturalHeight;
  mask = document.createElement("canvas");
  mask.width = img.naturalWidth;
  mask.height = img.naturalHeight;
  state.painted = false;
  drawEditor();
}

function loadURL(url) {
  return new Promise((resolve) => {
    const img = new Image();
    img.onload = () => { useImage(img); resolve(true); };
    img.onerror = () => { resolve(false); };
    img.src = url;
  });
}

async function loadSample(name) {
  state.imageFile = null;
  state.sample = name;
  $("image-file").value = "";
  await loadURL(`/api/sample/${encodeURIComponent(name)}`);
}

$("image-file").addEventListener("change", async () => {
  const f = $("image-file").files[0];
  if (!f) return;
  state.imageFile = f;
  state.sample = "";
  $("sample").value = "";
  showError("");
  const url = URL.createObjectURL(f);
  const ok = await loadURL(url);
  if (!ok) {
    // the server decides what it accepts; the page says when the browser cannot show the file
    state.image = null;
    ctx.clearRect(0, 0, editor.width, editor.height);
    setStatus(`${f.name} cannot be shown here; the server will check it`);
  }
});
$("sample").addEventListener("change", () => { if ($("sample").value) loadSample($("sample").value); });
$("mask-file").addEventListener("change", () => { state.maskFile = $("mask-file").files[0] || null; });
$("task").addEventListener("change", onTaskChange);
$("task-param").addEventListener("change", fillSettings);
$("sigma").addEventListener("change", fillSettings);
$("solver").addEventListener("change", fillSettings);
$("clear-mask").addEventListener("click", () => {
  mask.getContext("2d").clearRect(0, 0, mask.width, mask.height);
  state.painted = false;
  drawEditor();
});

function paintAt(ev, start) {
  // a stroke from the previous point, so a fast pointer still paints a continuous line
  const r = editor.getBoundingClientRect();
  const x = (ev.clientX - r.left) * (editor.width / r.width);
  const y = (ev.clientY - r.top) * (editor.height / r.height);
  const from = start || !state.last ? [x, y] : state.last;
  const m = mask.getContext("2d");
  m.globalCompositeOperation = $("erase").checked ? "destination-out" : "source-over";
  m.strokeStyle = m.fillStyle = "rgb(255, 0, 0)";
  m.lineCap = m.lineJoin = "round";
  m.lineWidth = Number($("brush").value) * (editor.width / r.width);
  m.beginPath();
  m.moveTo(from[0], from[1]);
  m.lineTo(x + 0.01, y);
  m.stroke();
  state.last = [x, y];
  if (!$("erase").checked) state.painted = true;
  drawEditor();
}
editor.addEventListener("pointerdown", (ev) => { state.drawing = true; paintAt(ev, true); });
editor.addEventListener("pointermove", (ev) => { if (state.drawing) paintAt(ev, false); });
window.addEventListener("pointerup", () => { state.drawing = false; state.last = null; });

function maskBlob() {
  // white = kept, black = painted (to fill): the CLI's mask convention
  const out = document.createElement("canvas");
  out.width = mask.width;
  out.height = mask.height;
  const o = out.getContext("2d");
  o.fillStyle = "#fff";
  o.fillRect(0, 0, out.width, out.height);
  const painted = mask.getContext("2d").getImageData(0, 0, mask.width, mask.height);
  const px = o.getImageData(0, 0, out.width, out.height);
  for (let i = 0; i < painted.data.length; i += 4) {
    if (painted.data[i + 3] > 0) { px.data[i] = px.data[i + 1] = px.data[i + 2] = 0; }
  }
  o.putImageData(px, 0, 0);
  return new Promise((resolve) => out.toBlob(resolve, "image/png"));
}

// -- running ------------------------------------------------------------------------------------------------------
function resetView() {
  state.frames = [];
  $("live").removeAttribute("src");
  $("live").dataset.frames = "0";
  for (const id of ["res-measurement", "res-estimate", "res-clean"]) $(id).removeAttribute("src");
  for (const id of ["dl-estimate", "dl-run", "dl-grid"]) $(id).removeAttribute("href");
  $("res-caption").textContent = "estimate";
  drawPlot();
}

async function run() {
  showError("");
  resetView();
  const form = new FormData();
  if (state.imageFile) form.append("image", state.imageFile, state.imageFile.name);
  else if (state.sample) form.append("sample", state.sample);
  const task = taskString();
  if ($("task").value.startsWith("inpaint")) {
    if (state.maskFile) form.append("mask", state.maskFile, state.maskFile.name);
    else if (state.painted) form.append("mask", await maskBlob(), "mask.png");
  }
  form.append("task", task);
  form.append("sigma_y", $("sigma").value);
  form.append("seed", $("seed").value);
  form.append("frames", $("frames").value);
  form.append("solver", $("solver").value);
  form.append("settings", settingsJSON());
  if ($("downscale").checked) form.append("downscale", "1");
  let answer;
  try {
    answer = await getJSON("/api/run", { method: "POST", body: form });
  } catch (e) {
    showError(e.message);
    setStatus("");
    return;
  }
  state.job = answer.job;
  $("run").disabled = true;
  $("cancel").disabled = false;
  setStatus(answer.position > 1 ? `queued: position ${answer.position - 1}` : "starting");
  listen(answer.job);
}

function finish(text) {
  $("run").disabled = false;
  $("cancel").disabled = true;
  if (state.source) state.source.close();
  state.source = null;
  setStatus(text);
}

function listen(job) {
  const es = new EventSource(`/api/jobs/${job}/events`);
  state.source = es;
  es.onmessage = (msg) => {
    const e = JSON.parse(msg.data);
    if (e.type === "queued") setStatus(e.position > 0 ? `queued: position ${e.position}` : "starting");
    else if (e.type === "started") setStatus(`running ${e.label}, ${e.steps} steps`);
    else if (e.type === "measurement") {
      $("res-measurement").src = e.image;
      $("res-clean").src = e.clean;
    } else if (e.type === "frame") {
      $("live").src = e.image;
      state.frames.push(e);
      $("live").dataset.frames = String(state.frames.length);
      drawPlot();
      setStatus(`step ${e.step} of ${e.num_steps}` + (e.psnr != null ? `, PSNR ${e.psnr.toFixed(2)} dB` : ""));
    } else if (e.type === "done") {
      $("res-estimate").src = e.estimate;
      $("res-caption").textContent = e.psnr != null ? `estimate: ${e.psnr.toFixed(2)} dB` : "estimate";
      const base = `/api/jobs/${job}/files/`;
      $("dl-estimate").href = base + "estimate.png";
      $("dl-run").href = base + "run.json";
      $("dl-grid").href = base + "grid.png";
      finish(`done in ${e.seconds.toFixed(1)} s` + (e.psnr != null ? `: PSNR ${e.psnr.toFixed(2)} dB` : "")
             + (e.ssim != null ? `, SSIM ${e.ssim.toFixed(3)}` : ""));
      $("results").dataset.done = job;
    } else if (e.type === "error") { showError(e.message); finish("failed"); }
    else if (e.type === "cancelled") finish(e.message);
  };
  es.onerror = () => { if (state.source === es && es.readyState === EventSource.CLOSED) finish("connection lost"); };
}

$("run").addEventListener("click", run);
$("cancel").addEventListener("click", async () => {
  if (!state.job) return;
  try { await getJSON(`/api/jobs/${state.job}/cancel`, { method: "POST" }); } catch (e) { showError(e.message); }
});

// -- the plot: the loss (log scale) and PSNR against steps ----------------------------------------------------------
function drawPlot() {
  const c = $("plot");
  const g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  g.strokeStyle = "#ccc";
  g.strokeRect(0.5, 0.5, c.width - 1, c.height - 1);
  const f = state.frames;
  if (f.length < 1) return;
  const n = f[f.length - 1].num_steps;
  const x = (e) => 4 + (c.width - 8) * (e.step / n);
  const series = (values, colour) => {
    const v = values.filter((p) => Number.isFinite(p[1]));
    if (!v.length) return;
    const lo = Math.min(...v.map((p) => p[1])), hi = Math.max(...v.map((p) => p[1]));
    const y = (val) => c.height - 6 - (c.height - 12) * (hi > lo ? (val - lo) / (hi - lo) : 0.5);
    g.strokeStyle = colour;
    g.beginPath();
    v.forEach((p, i) => (i ? g.lineTo(x(p[0]), y(p[1])) : g.moveTo(x(p[0]), y(p[1]))));
    g.stroke();
  };
  // each loss term on its own log scale (their sizes differ by orders of magnitude), PSNR on a linear one
  const colours = ["#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2"];
  const keys = Object.keys(f[f.length - 1].losses);
  keys.forEach((k, i) => series(f.filter((e) => e.losses[k] > 0).map((e) => [e, Math.log10(e.losses[k])]),
                                colours[i % colours.length]));
  series(f.filter((e) => e.psnr != null).map((e) => [e, e.psnr]), "#ff7f0e");
  const legend = $("plot-legend");
  legend.textContent = "";
  [...keys.map((k, i) => [`■ ${k} (log)  `, colours[i % colours.length]]), ["■ PSNR dB", "#ff7f0e"]]
    .forEach(([text, colour]) => {
      const span = document.createElement("span");
      span.textContent = text;
      span.style.color = colour;
      legend.appendChild(span);
    });
}

init().catch((e) => showError(e.message));
