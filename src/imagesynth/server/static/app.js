// imagesynth web page: plain JS over the same /api/v1 JSON API that scripts use.
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = { samplers: [], editSource: null, trainJob: null, trainRun: null, trainTimer: null };

function say(text, ok = false) {
  const m = $("#message");
  m.textContent = text;
  m.className = ok ? "ok" : "";
  m.hidden = !text;
}

async function api(path, options = {}) {
  const opts = { headers: {}, credentials: "same-origin", ...options };
  if (opts.body !== undefined && typeof opts.body !== "string") {
    opts.body = JSON.stringify(opts.body);
    opts.headers["Content-Type"] = "application/json";
  }
  const resp = await fetch(path, opts);
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    throw new Error(data.message || `${resp.status} ${resp.statusText}`);
  }
  return data;
}

// ----- tabs -------------------------------------------------------------------------------
function showTab(name) {
  document.querySelectorAll("#tabs button").forEach((b) => b.classList.toggle("active", b.dataset.tab === name));
  document.querySelectorAll(".tab").forEach((s) => { s.hidden = s.id !== `tab-${name}`; });
  if (name === "gallery") loadGallery();
  if (name === "train") loadRuns();
}

// ----- listings ---------------------------------------------------------------------------
function fill(select, items, value = (x) => x.name, label = (x) => x.name) {
  select.innerHTML = "";
  for (const it of items) {
    const o = document.createElement("option");
    o.value = value(it);
    o.textContent = label(it);
    select.appendChild(o);
  }
}

async function loadListings() {
  try {
    const [models, samplers, datasets, families, folders] = await Promise.all([
      api("/api/v1/models"), api("/api/v1/samplers"), api("/api/v1/datasets"),
      api("/api/v1/families"), api("/api/v1/folders"),
    ]);
    state.samplers = samplers;
    // generating models only (upscalers and restorers belong to the Tools tab)
    const generators = models.filter((m) => !["upscaler", "restorer"].includes(m.family));
    document.querySelectorAll(".model-select").forEach((s) =>
      fill(s, generators, (m) => m.name, (m) => `${m.name} (${m.family})`));
    document.querySelectorAll(".sampler-select").forEach((s) =>
      fill(s, samplers, (x) => x.name, (x) => x.label));
    $("#gen-sampler").value = "dpmpp-2m";
    const data = datasets.filter((d) => !d.takes_path).map((d) => ({ name: d.name }));
    for (const f of folders.folders) data.push({ name: `folder:${f}` });
    fill($("#train-data"), data);
    state.families = families;
    fill($("#train-family"), families);
    fillPresets();
  } catch (e) {
    say(`could not load listings: ${e.message}`);
  }
}

function fillPresets() {
  const fam = (state.families || []).find((f) => f.name === $("#train-family").value);
  fill($("#train-preset"), (fam ? fam.presets : []).map((p) => ({ name: p })));
}

// ----- jobs -------------------------------------------------------------------------------
// Submit a job and follow its events; ui = {progress, status, preview, results, cancel}.
async function runJob(kind, params, ui, onDone) {
  say("");
  let created;
  try {
    created = await api("/api/v1/jobs", { method: "POST", body: { kind, params } });
  } catch (e) {
    say(e.message);
    return null;
  }
  ui.status.textContent = created.position ? `queued (position ${created.position})` : "starting";
  if (ui.cancel) {
    ui.cancel.disabled = false;
    ui.cancel.onclick = () => api(`/api/v1/jobs/${created.id}/cancel`, { method: "POST" }).catch((e) => say(e.message));
  }
  const es = new EventSource(`/api/v1/jobs/${created.id}/events`);
  const finish = () => { es.close(); if (ui.cancel) ui.cancel.disabled = true; };
  es.addEventListener("started", () => { ui.status.textContent = "running"; });
  es.addEventListener("progress", (ev) => {
    const d = JSON.parse(ev.data);
    ui.progress.value = d.progress;
    const eta = d.eta_s != null ? `, ETA ${d.eta_s.toFixed(1)} s` : "";
    const loss = d.loss != null ? `, loss ${d.loss.toFixed(4)}` : "";
    ui.status.textContent = `step ${d.step} / ${d.total}${loss}${eta}`;
    if (d.preview && ui.preview) ui.preview.src = `data:image/png;base64,${d.preview}`;
    if (ui.onProgress) ui.onProgress(d);
  });
  es.addEventListener("done", (ev) => {
    const d = JSON.parse(ev.data);
    finish();
    ui.progress.value = 1;
    ui.status.textContent = "done";
    if (ui.results && d.result && d.result.images) showResults(ui.results, d.result.images);
    if (onDone) onDone(d.result, "done");
  });
  es.addEventListener("cancelled", (ev) => {
    finish();
    ui.status.textContent = "cancelled";
    if (onDone) onDone(JSON.parse(ev.data).result, "cancelled");
  });
  es.addEventListener("error", (ev) => {
    if (!ev.data) return;  // a dropped connection; EventSource retries by itself
    const d = JSON.parse(ev.data);
    finish();
    ui.status.textContent = "failed";
    say(d.error ? d.error.message : "the job failed");
    if (onDone) onDone(d.result, "failed");
  });
  es.addEventListener("state", (ev) => {
    const d = JSON.parse(ev.data);
    if (["failed", "interrupted"].includes(d.status)) { finish(); ui.status.textContent = d.status; }
  });
  return created.id;
}

function showResults(box, images) {
  box.innerHTML = "";
  for (const im of images) {
    const img = document.createElement("img");
    img.src = im.url;
    img.alt = im.params.prompt || "generated image";
    img.className = "result";
    img.title = "open in the gallery";
    img.onclick = () => { showTab("gallery"); showDetail(im.id); };
    box.appendChild(img);
  }
}

// ----- generate ---------------------------------------------------------------------------
function num(sel) { return Number($(sel).value); }

$("#gen-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const params = {
    prompt: $("#prompt").value,
    negative_prompt: $("#negative").value,
    model: $("#gen-model").value || null,
    sampler: $("#gen-sampler").value,
    steps: num("#gen-steps"),
    cfg_scale: num("#gen-cfg"),
    seed: num("#gen-seed"),
    n: num("#gen-n"),
  };
  if ($("#gen-size").value) { params.width = num("#gen-size"); params.height = num("#gen-size"); }
  runJob("txt2img", params, {
    progress: $("#gen-progress"), status: $("#gen-status"), preview: $("#gen-preview"),
    results: $("#gen-results"), cancel: $("#gen-cancel"),
  });
});

// ----- edit: image + mask canvases ----------------------------------------------------------
const imgCanvas = $("#edit-image");
const maskCanvas = $("#edit-mask");
let painting = false;

function loadEditImage(src) {
  const img = new Image();
  img.onload = () => {
    // keep the pixels at a size the model takes: multiples of 16, at most 128 px a side
    const scale = Math.min(1, 128 / Math.max(img.width, img.height));
    const w = Math.max(16, Math.round((img.width * scale) / 16) * 16);
    const h = Math.max(16, Math.round((img.height * scale) / 16) * 16);
    const src2 = document.createElement("canvas");
    src2.width = w; src2.height = h;
    src2.getContext("2d").drawImage(img, 0, 0, w, h);
    state.editSource = src2;
    const ctx = imgCanvas.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.clearRect(0, 0, imgCanvas.width, imgCanvas.height);
    ctx.drawImage(src2, 0, 0, imgCanvas.width, imgCanvas.height);
    clearMask();
  };
  img.src = src;
}

function clearMask() { maskCanvas.getContext("2d").clearRect(0, 0, maskCanvas.width, maskCanvas.height); }

function paintAt(ev) {
  const r = maskCanvas.getBoundingClientRect();
  const x = ((ev.clientX - r.left) / r.width) * maskCanvas.width;
  const y = ((ev.clientY - r.top) / r.height) * maskCanvas.height;
  const radius = (num("#brush") / 64) * maskCanvas.width / 2;
  const ctx = maskCanvas.getContext("2d");
  ctx.fillStyle = "#ff2d55";
  ctx.beginPath();
  ctx.arc(x, y, radius, 0, Math.PI * 2);
  ctx.fill();
}

maskCanvas.addEventListener("pointerdown", (ev) => { painting = true; maskCanvas.setPointerCapture(ev.pointerId); paintAt(ev); });
maskCanvas.addEventListener("pointermove", (ev) => { if (painting) paintAt(ev); });
maskCanvas.addEventListener("pointerup", () => { painting = false; });
$("#mask-clear").addEventListener("click", clearMask);
$("#edit-file").addEventListener("change", (ev) => {
  const f = ev.target.files[0];
  if (f) loadEditImage(URL.createObjectURL(f));
});

function maskPNG(w, h) {
  // white where painted, black elsewhere, at the image's own size
  const c = document.createElement("canvas");
  c.width = w; c.height = h;
  const ctx = c.getContext("2d");
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, w, h);
  ctx.drawImage(maskCanvas, 0, 0, w, h);
  const px = ctx.getImageData(0, 0, w, h);
  let painted = 0;
  for (let i = 0; i < px.data.length; i += 4) {
    const on = px.data[i] > 40 || px.data[i + 1] > 40 || px.data[i + 2] > 40;
    px.data[i] = px.data[i + 1] = px.data[i + 2] = on ? 255 : 0;
    px.data[i + 3] = 255;
    painted += on;
  }
  ctx.putImageData(px, 0, 0);
  return { data: c.toDataURL("image/png"), painted };
}

$("#edit-btn").addEventListener("click", () => {
  if (!state.editSource) { say("load an image first (file, or Send to edit from the gallery)"); return; }
  const mode = $("#edit-mode").value;
  const src = state.editSource;
  const params = {
    prompt: $("#edit-prompt").value,
    image: src.toDataURL("image/png"),
    steps: num("#edit-steps"),
    seed: num("#edit-seed"),
    model: $("#edit-model").value || null,
  };
  if (mode === "img2img") params.strength = num("#edit-strength");
  if (mode === "inpaint") {
    const m = maskPNG(src.width, src.height);
    if (!m.painted) { say("paint the part to repaint on the image first"); return; }
    params.mask = m.data;
  }
  if (mode === "outpaint") {
    const pad = num("#edit-pad");
    Object.assign(params, { left: pad, right: pad, top: pad, bottom: pad });
  }
  runJob(mode, params, {
    progress: $("#edit-progress"), status: $("#edit-status"), preview: $("#edit-preview"),
    results: $("#edit-results"), cancel: $("#edit-cancel"),
  });
});

// ----- tools: upscale, style transfer, texture synthesis -----------------------------------
function readFile(input) {
  const f = input.files[0];
  if (!f) return Promise.resolve(null);
  return new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onload = () => resolve(r.result);  // a data: URL; the server takes it as base64
    r.onerror = () => reject(new Error(`could not read ${f.name}`));
    r.readAsDataURL(f);
  });
}

function showToolFields() {
  const kind = $("#tool-kind").value;
  document.querySelectorAll("#tab-tools label[class^=tool-], #tab-tools label[class*=' tool-']").forEach((l) => {
    l.hidden = !l.classList.contains(`tool-${kind}`);
  });
  $("#tool-file-label").textContent = { upscale: "Image", style: "Content image", texture: "Texture sample" }[kind];
}
$("#tool-kind").addEventListener("change", showToolFields);
showToolFields();

$("#tool-btn").addEventListener("click", async () => {
  const kind = $("#tool-kind").value;
  let image, styleImage;
  try {
    image = await readFile($("#tool-file"));
    styleImage = kind === "style" ? await readFile($("#tool-style-file")) : null;
  } catch (e) { say(e.message); return; }
  if (!image) { say("choose an image file first"); return; }
  let params;
  if (kind === "upscale") {
    params = { image, scale: num("#tool-scale"), method: $("#tool-method-up").value };
  } else if (kind === "style") {
    if (!styleImage) { say("choose a style image"); return; }
    params = { content: image, styles: [styleImage], size: num("#tool-size"), steps: num("#tool-steps"), seed: num("#tool-seed") };
  } else {
    params = { sample: image, method: $("#tool-method-tx").value, size: num("#tool-size"), steps: num("#tool-steps"), seed: num("#tool-seed") };
  }
  runJob(kind, params, {
    progress: $("#tool-progress"), status: $("#tool-status"), preview: $("#tool-preview"),
    results: $("#tool-results"), cancel: $("#tool-cancel"),
  });
});

// ----- gallery ----------------------------------------------------------------------------
let selected = null;

async function loadGallery() {
  try {
    const data = await api("/api/v1/images?limit=100");
    const box = $("#gallery");
    box.innerHTML = "";
    for (const im of data.images) {
      const img = document.createElement("img");
      img.src = im.url;
      img.alt = im.params.prompt || "image";
      img.dataset.id = im.id;
      img.onclick = () => showDetail(im.id);
      box.appendChild(img);
    }
    $("#gallery-count").textContent = `${data.total} images`;
  } catch (e) { say(e.message); }
}

async function showDetail(id) {
  try {
    selected = await api(`/api/v1/images/${id}/info`);
  } catch (e) { say(e.message); return; }
  $("#gallery-detail").hidden = false;
  $("#detail-image").src = selected.url;
  $("#detail-params").textContent = JSON.stringify(selected.params, null, 2);
  $("#detail-download").href = selected.url;
}

function samplerName(label) {
  const s = state.samplers.find((x) => x.label === label || x.name === label);
  return s ? s.name : "dpmpp-2m";
}

$("#send-generate").addEventListener("click", () => {
  if (!selected) return;
  const p = selected.params;
  $("#prompt").value = p.prompt || "";
  $("#negative").value = p.negative_prompt || "";
  if (p.steps) $("#gen-steps").value = p.steps;
  if (p.cfg_scale != null) $("#gen-cfg").value = p.cfg_scale;
  if (p.seed != null) $("#gen-seed").value = p.seed;
  if (p.sampler) $("#gen-sampler").value = samplerName(p.sampler);
  if (p.model) {
    const opt = [...$("#gen-model").options].find((o) => o.value === p.model);
    if (opt) $("#gen-model").value = p.model;
  }
  $("#gen-n").value = 1;
  showTab("generate");
  say("parameters sent to the form", true);
});

$("#send-edit").addEventListener("click", () => {
  if (!selected) return;
  loadEditImage(selected.url);
  $("#edit-prompt").value = selected.params.prompt || "";
  showTab("edit");
});

$("#detail-delete").addEventListener("click", async () => {
  if (!selected) return;
  try {
    await api(`/api/v1/images/${selected.id}`, { method: "DELETE" });
    $("#gallery-detail").hidden = true;
    loadGallery();
  } catch (e) { say(e.message); }
});
$("#gallery-refresh").addEventListener("click", loadGallery);

// ----- training ---------------------------------------------------------------------------
function drawLoss(stats) {
  const c = $("#loss-plot");
  const ctx = c.getContext("2d");
  ctx.clearRect(0, 0, c.width, c.height);
  const pts = stats.filter((s) => Number.isFinite(s.loss));
  ctx.fillStyle = "#6b7480";
  ctx.font = "11px sans-serif";
  if (pts.length < 1) { ctx.fillText("no loss yet", 10, 20); return; }
  const xs = pts.map((s) => s.step), ys = pts.map((s) => s.loss);
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1);
  const y0 = Math.min(...ys), y1 = Math.max(...ys, y0 + 1e-6);
  const L = 40, R = 8, T = 8, B = 20;
  const X = (v) => L + ((v - x0) / (x1 - x0)) * (c.width - L - R);
  const Y = (v) => T + (1 - (v - y0) / (y1 - y0)) * (c.height - T - B);
  ctx.strokeStyle = "#c8ced6";
  ctx.strokeRect(L, T, c.width - L - R, c.height - T - B);
  ctx.fillText(y1.toPrecision(3), 2, T + 8);
  ctx.fillText(y0.toPrecision(3), 2, c.height - B);
  ctx.fillText(`step ${x1}`, c.width - 70, c.height - 5);
  ctx.strokeStyle = "#2f6fdf";
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  pts.forEach((s, i) => { if (i) ctx.lineTo(X(s.step), Y(s.loss)); else ctx.moveTo(X(s.step), Y(s.loss)); });
  ctx.stroke();
  c.dataset.points = String(pts.length);
}

async function refreshRun(name) {
  if (!name) return;
  try {
    const run = await api(`/api/v1/runs/${encodeURIComponent(name)}`);
    drawLoss(run.stats);
    if (run.samples.length) {
      const last = run.samples[run.samples.length - 1];
      if (!$("#train-sample").src.endsWith(last)) $("#train-sample").src = last;
      $("#train-sample-caption").textContent = `${run.name}: ${last.split("/").pop()}`;
    }
  } catch (e) { /* the run directory may not exist yet */ }
}

function followTraining(params) {
  clearInterval(state.trainTimer);
  state.trainTimer = setInterval(() => refreshRun(state.trainRun), 1500);
  $("#train-stop").disabled = false;
  runJob("train", params, {
    progress: $("#train-progress"), status: $("#train-status"), cancel: $("#train-stop"),
    onProgress: (d) => { if (d.run) state.trainRun = d.run; },
  }, (result) => {
    clearInterval(state.trainTimer);
    if (result && result.run) state.trainRun = result.run;
    refreshRun(state.trainRun);
    loadRuns();
    loadListings();
  });
}

$("#train-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  followTraining({
    data: $("#train-data").value, family: $("#train-family").value, preset: $("#train-preset").value,
    size: num("#train-size"), steps: num("#train-steps"), batch: num("#train-batch"),
  });
});

$("#estimate-btn").addEventListener("click", async () => {
  // the estimator's name for this family + preset (estimator/families.py)
  const family = $("#train-family").value, preset = $("#train-preset").value;
  const named = { diffusion: preset, gan: `gan:${preset}`, vae: `vae:${preset}`,
    upscaler: `upscaler:${preset}`, pixelcnn: "pixelcnn", vqvae: "vqvae", restorer: "restorer" };
  const model = named[family];
  if (!model) { say(`the ${family} family is estimated from a model directory: use the CLI`); return; }
  try {
    const r = await api("/api/v1/estimate", {
      method: "POST", body: { model, task: "train", size: num("#train-size"), batch: num("#train-batch") },
    });
    const total = r.report.seconds_per_step * num("#train-steps");
    $("#estimate-out").textContent =
      `about ${total.toFixed(0)} s for ${num("#train-steps")} steps ` +
      `(${r.report.seconds_per_step.toFixed(3)} s/step), peak memory ` +
      `${(r.report.memory.total / 2 ** 20).toFixed(0)} MiB, ${r.report.fits ? "fits" : "does NOT fit"}\n\n${r.text}`;
  } catch (e) { say(e.message); }
});

$("#train-family").addEventListener("change", fillPresets);

async function loadRuns() {
  try {
    const runs = await api("/api/v1/runs");
    const body = $("#runs tbody");
    body.innerHTML = "";
    for (const r of runs) {
      const tr = document.createElement("tr");
      for (const v of [r.name, r.family, r.data, r.steps]) {
        const td = document.createElement("td");
        td.textContent = v;
        tr.appendChild(td);
      }
      const td = document.createElement("td");
      const view = document.createElement("button");
      view.type = "button"; view.textContent = "view";
      view.onclick = () => { state.trainRun = r.name; refreshRun(r.name); };
      const resume = document.createElement("button");
      resume.type = "button"; resume.textContent = "resume"; resume.className = "resume";
      resume.onclick = () => {
        state.trainRun = r.name;
        followTraining({ resume: r.name, steps: Math.max(num("#train-steps"), r.steps || 0) });
      };
      td.append(view, resume);
      tr.appendChild(td);
      body.appendChild(tr);
    }
  } catch (e) { say(e.message); }
}

// ----- evaluation -------------------------------------------------------------------------
$("#eval-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  $("#eval-out").textContent = "";
  runJob("eval", {
    model: $("#eval-model").value, ref: $("#eval-ref").value, metrics: $("#eval-metrics").value,
    n: num("#eval-n"), steps: num("#eval-steps"),
  }, { progress: $("#eval-progress"), status: $("#eval-status") }, (result) => {
    if (result && result.text) $("#eval-out").textContent = result.text;
  });
});

// ----- start --------------------------------------------------------------------------------
document.querySelectorAll("#tabs button").forEach((b) => b.addEventListener("click", () => showTab(b.dataset.tab)));
loadListings();
