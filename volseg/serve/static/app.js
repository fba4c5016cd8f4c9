// volseg serve: the click page.  Plain JavaScript and canvas; everything it needs comes from this server.
// The server keeps the Session; the page shows one slice per view (or the frame) and, after a click,
// gets back only the overlays of the views on screen.
"use strict";

// object k is drawn in PALETTE[(k - 1) % 8] (the same table as volseg/serve/render.py)
const PALETTE = ["#ff4040", "#40a0ff", "#50dc50", "#ffc800", "#c850ff", "#00dcdc", "#ff8000", "#ff60c8"];
const PRESETS = {"soft tissue": [400, 40], "lung": [1500, -600], "bone": [1800, 400]};
const $ = (id) => document.getElementById(id);

const S = {sid: null, info: null, views: [], cursor: null, object: 1, objects: [1], clicks: [],
           suggestion: null, window: [255, 127.5], busy: false, pending: 0};
// for the browser test and for anyone curious: click -> overlay drawn, in ms
window.volseg = {latencies: [], exactLatencies: [], version: 0, drawn: 0, state: S};

function message(text, kind) {
  const m = $("message");
  m.textContent = text || "";
  m.className = kind || "";
}

async function api(path, body) {
  const init = body === undefined ? {} : {method: "POST", headers: {"Content-Type": "application/json"},
                                          body: JSON.stringify(body)};
  const r = await fetch(path, init);
  const type = r.headers.get("Content-Type") || "";
  const data = type.includes("json") ? await r.json() : null;
  if (!r.ok) {
    const err = new Error((data && data.error) || `${r.status} ${r.statusText}`);
    err.status = r.status;
    throw err;
  }
  return data;
}

function loadImage(src) {
  const img = new Image();
  img.src = src;
  return img.decode().then(() => img);
}

// -- files ------------------------------------------------------------------------------------------
async function listFiles() {
  try {
    const data = await api("/api/files");
    const sel = $("file");
    sel.innerHTML = "";
    for (const f of data.files) {
      const o = document.createElement("option");
      o.value = f.path;
      o.textContent = `${f.path} (${f.kind})`;
      sel.appendChild(o);
    }
    if (!data.files.length) message(`no images, volumes or videos under ${data.root}`, "error");
    const wanted = new URLSearchParams(location.search).get("file");
    if (wanted && data.files.some((f) => f.path === wanted)) { sel.value = wanted; openFile(); }
  } catch (e) { message(e.message, "error"); }
}

async function openFile() {
  const path = $("file").value;
  if (!path) return;
  closeSession();
  message(`opening ${path} (computing its features) ...`, "busy");
  $("open").disabled = true;
  try {
    const info = await api("/api/open", {path});
    S.sid = info.id; S.info = info; S.clicks = info.clicks; S.suggestion = null;
    S.objects = [1]; S.object = 1;
    setupTools(info);
    buildViews(info);
    await Promise.all(S.views.map((v) => refresh(v)));
    document.body.dataset.ready = "1";
    message(`${info.name}: ${info.kind} ${info.shape.join("x")}` +
            (info.frames ? `, ${info.frames} frames` : "") + `; features ${info.feature_seconds} s`);
  } catch (e) {
    message(e.message, "error");
  } finally { $("open").disabled = false; }
}

function closeSession() {
  if (S.sid) navigator.sendBeacon(`/api/s/${S.sid}/close`);
  S.sid = null;
  document.body.dataset.ready = "";
}

// -- tools --------------------------------------------------------------------------------------------
function setupTools(info) {
  $("tools").hidden = false;
  $("propagate").hidden = info.kind !== "video";
  $("window-box").hidden = info.kind !== "volume";
  $("download").hidden = true;
  const preset = info.kind === "volume" && info.window.ct ? "soft tissue" : "auto";
  $("window").value = preset;
  S.window = preset === "auto" ? info.window.auto : PRESETS[preset];
  if (info.kind === "image" && info.channels >= 3) S.window = [255, 127.5];
  fillObjects();
}

function fillObjects() {
  const sel = $("object");
  sel.innerHTML = "";
  for (const k of S.objects) {
    const o = document.createElement("option");
    o.value = k; o.textContent = `object ${k}`;
    sel.appendChild(o);
  }
  sel.value = S.object;
  $("swatch").style.background = PALETTE[(S.object - 1) % PALETTE.length];
}

// -- views --------------------------------------------------------------------------------------------
function buildViews(info) {
  const main = $("views");
  main.innerHTML = "";
  const n = info.shape;
  const fit = info.views.length > 1 ? 380 : Math.min(900, window.innerWidth - 40);
  S.cursor = n.map((s) => Math.floor(s / 2));
  S.views = info.views.map((d) => {
    const rows = n[d.rows.axis], cols = n[d.cols.axis];
    const count = d.axis === null ? (info.frames || 1) : n[d.axis];
    const h = rows * d.row_spacing, w = cols * d.col_spacing;   // millimetres: the physical aspect ratio
    const scale = Math.min(fit / w, (info.views.length > 1 ? fit : 700) / h);
    const v = {d, rows, cols, count, index: d.axis === null ? 0 : S.cursor[d.axis], base: null, overlay: null,
               heat: null, token: 0};
    const box = document.createElement("section");
    box.className = "view";
    box.id = `view-${d.name}`;
    const title = document.createElement("h2");
    v.label = document.createElement("span");
    title.append(d.name, v.label);
    const stage = document.createElement("div");
    stage.className = "stage";
    const canvas = document.createElement("canvas");
    canvas.width = Math.max(1, Math.round(w * scale));
    canvas.height = Math.max(1, Math.round(h * scale));
    stage.appendChild(canvas);
    for (const side of ["top", "bottom", "left", "right"]) {
      if (!d.letters[side]) continue;
      const l = document.createElement("span");
      l.className = `letter ${side}`;
      l.textContent = d.letters[side];
      stage.appendChild(l);
    }
    const slider = document.createElement("input");
    slider.type = "range"; slider.min = 0; slider.max = count - 1; slider.value = v.index;
    slider.hidden = count <= 1;
    slider.addEventListener("input", () => setIndex(v, Number(slider.value)));
    box.append(title, stage, slider);
    main.appendChild(box);
    v.canvas = canvas; v.ctx = canvas.getContext("2d"); v.slider = slider;
    canvas.addEventListener("contextmenu", (e) => e.preventDefault());
    canvas.addEventListener("mousedown", (e) => onMouse(v, e));
    canvas.addEventListener("wheel", (e) => { e.preventDefault(); setIndex(v, v.index + Math.sign(e.deltaY)); },
                            {passive: false});
    return v;
  });
}

function shown() {
  const out = {};
  for (const v of S.views) out[v.d.name] = v.index;
  return out;
}

function frame() { return S.info.kind === "video" ? S.views[0].index : null; }

async function setIndex(v, index) {
  index = Math.max(0, Math.min(v.count - 1, index));
  if (index === v.index) return;
  v.index = index;
  v.slider.value = index;
  if (v.d.axis !== null) S.cursor[v.d.axis] = index;
  draw();
  await refresh(v);
}

// screen pixel -> array index of the voxel under it
function toIndex(v, e) {
  const r = Math.floor(e.offsetY / v.canvas.clientHeight * v.rows);
  const c = Math.floor(e.offsetX / v.canvas.clientWidth * v.cols);
  const rr = Math.min(v.rows - 1, Math.max(0, r)), cc = Math.min(v.cols - 1, Math.max(0, c));
  const idx = S.cursor.slice();
  idx[v.d.rows.axis] = v.d.rows.flip ? v.rows - 1 - rr : rr;
  idx[v.d.cols.axis] = v.d.cols.flip ? v.cols - 1 - cc : cc;
  if (v.d.axis !== null) idx[v.d.axis] = v.index;
  return idx;
}

// array index -> screen pixel centre in the view (or null when the voxel is not on the shown slice)
function toScreen(v, idx) {
  if (v.d.axis !== null && Math.round(idx[v.d.axis]) !== v.index) return null;
  let r = idx[v.d.rows.axis], c = idx[v.d.cols.axis];
  if (v.d.rows.flip) r = v.rows - 1 - r;
  if (v.d.cols.flip) c = v.cols - 1 - c;
  return [(c + 0.5) * v.canvas.width / v.cols, (r + 0.5) * v.canvas.height / v.rows];
}

async function onMouse(v, e) {
  if (!S.sid || e.button === 1) return;
  e.preventDefault();
  const idx = toIndex(v, e);
  if (e.ctrlKey || e.metaKey) { moveCursor(idx); return; }
  const positive = e.button === 0 && !e.shiftKey;
  await click(idx, positive);
}

function moveCursor(idx) {
  S.cursor = idx.slice();
  for (const v of S.views) {
    if (v.d.axis !== null && v.index !== idx[v.d.axis]) {
      v.index = idx[v.d.axis]; v.slider.value = v.index; refresh(v);
    }
  }
  draw();
}

async function click(idx, positive) {
  if (S.busy) return;
  S.busy = true;
  const t0 = performance.now();
  const position = S.info.kind === "video" ? idx.slice(0, 2) : idx;
  try {
    const sent = shown();
    const r = await api(`/api/s/${S.sid}/click`, {position, positive, object: S.object, frame: frame(),
                                                  shown: sent});
    await applyOverlays(r, sent);
    const ms = performance.now() - t0;
    window.volseg.latencies.push(ms);
    $("timing").textContent = `last click: ${r.seconds.toFixed(2)} s GP update, ` +
                              `${(ms / 1000).toFixed(2)} s to the overlay`;
    message("");
    if (!r.exact) refreshExact(t0);   // not awaited: the next click need not wait for it
    else if ($("suggest").checked) suggest();
  } catch (e) {
    message(e.message, "error");
  } finally { S.busy = false; }
}

// a large volume: the whole-volume mask (connected parts, filled holes) replaces the first overlay
async function refreshExact(t0) {
  S.pending = (S.pending || 0) + 1;
  try {
    await Promise.all(S.views.map((v) => refresh(v, {baseToo: false})));
    if (t0 !== undefined) window.volseg.exactLatencies.push(performance.now() - t0);
    if ($("suggest").checked) await suggest();
  } finally { S.pending -= 1; }
}

async function applyOverlays(r, sent) {
  S.clicks = r.clicks;
  for (const k of r.objects) if (!S.objects.includes(k)) S.objects.push(k);
  // a view scrolled while the request ran gets its own overlay below, not the one for its old slice
  const moved = sent ? S.views.filter((v) => sent[v.d.name] !== v.index) : [];
  const loads = S.views.filter((v) => r.overlays[v.d.name] && !moved.includes(v)).map(async (v) => {
    v.overlay = await loadImage(r.overlays[v.d.name]);
    v.heat = $("uncertainty").checked ? await loadImage(layerUrl(v, "uncertainty")) : null;
  });
  await Promise.all(loads);
  S.suggestion = null;
  draw();
  window.volseg.version = r.version;
  window.volseg.drawn += 1;
  document.body.dataset.version = r.version;
  moved.forEach((v) => refresh(v, {baseToo: false}));
}

function layerUrl(v, layer) {
  return `/api/s/${S.sid}/overlay?view=${v.d.name}&index=${v.index}&layer=${layer}&v=${window.volseg.version}`;
}

async function refresh(v, {baseToo = true} = {}) {
  if (!S.sid) return;
  const token = ++v.token;
  const version = window.volseg.version;
  const [w, l] = S.window;
  try {
    const jobs = [baseToo ? loadImage(`/api/s/${S.sid}/image?view=${v.d.name}&index=${v.index}&width=${w}&level=${l}`)
                          : Promise.resolve(v.base),
                  loadImage(layerUrl(v, "mask")),
                  $("uncertainty").checked ? loadImage(layerUrl(v, "uncertainty")) : Promise.resolve(null)];
    const [base, overlay, heat] = await Promise.all(jobs);
    if (token !== v.token) return;   // a later slice was asked for meanwhile
    v.base = base;
    // a click since this was asked for has brought newer overlays already
    if (version === window.volseg.version) Object.assign(v, {overlay, heat});
    draw();
  } catch (e) {
    message(`could not load the ${v.d.name} view: ${e.message || "image error"}`, "error");
  }
}

// -- drawing ----------------------------------------------------------------------------------------
function draw() {
  const opacity = Number($("opacity").value);
  for (const v of S.views) {
    const {ctx, canvas} = v;
    ctx.imageSmoothingEnabled = false;
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    if (v.base) ctx.drawImage(v.base, 0, 0, canvas.width, canvas.height);
    if (v.heat) { ctx.globalAlpha = 0.55; ctx.drawImage(v.heat, 0, 0, canvas.width, canvas.height); }
    if (v.overlay) { ctx.globalAlpha = opacity; ctx.drawImage(v.overlay, 0, 0, canvas.width, canvas.height); }
    ctx.globalAlpha = 1;
    if (S.views.length > 1 && S.cursor) {   // the crosshair: where the other views' slices cut this one
      const p = toScreen(v, Object.assign(S.cursor.slice(), v.d.axis === null ? {} : {[v.d.axis]: v.index}));
      if (p) {
        ctx.strokeStyle = "rgba(255, 230, 80, 0.6)";
        ctx.setLineDash([4, 4]);
        ctx.beginPath();
        ctx.moveTo(p[0], 0); ctx.lineTo(p[0], canvas.height);
        ctx.moveTo(0, p[1]); ctx.lineTo(canvas.width, p[1]);
        ctx.stroke();
        ctx.setLineDash([]);
      }
    }
    for (const c of S.clicks) {
      if (S.info.kind === "video" && c.frame !== v.index) continue;
      const p = toScreen(v, c.position.map(Math.round));
      if (!p) continue;
      ctx.beginPath();
      ctx.arc(p[0], p[1], 5, 0, 2 * Math.PI);
      ctx.fillStyle = c.label === "positive" ? "#3f3" : "#f33";
      ctx.fill();
      ctx.lineWidth = 2;
      ctx.strokeStyle = PALETTE[(c.object - 1) % PALETTE.length];
      ctx.stroke();
    }
    if (S.suggestion && (S.suggestion.frame === null || S.suggestion.frame === v.index)) {
      const p = toScreen(v, S.suggestion.position);
      if (p) {
        ctx.strokeStyle = "#ff0"; ctx.lineWidth = 2;
        ctx.beginPath(); ctx.arc(p[0], p[1], 10, 0, 2 * Math.PI); ctx.stroke();
        ctx.font = "bold 14px sans-serif"; ctx.fillStyle = "#ff0"; ctx.fillText("?", p[0] + 11, p[1] - 8);
      }
    }
    v.label.textContent = v.count > 1 ? `${S.info.kind === "video" ? "frame" : "slice"} ${v.index + 1}/${v.count}` : "";
  }
}

// -- actions ------------------------------------------------------------------------------------------
async function edit(action) {
  if (!S.sid || S.busy) return;
  S.busy = true;
  try {
    const sent = shown();
    const r = await api(`/api/s/${S.sid}/${action}`, {shown: sent});
    await applyOverlays(r, sent);
    if (!r.exact) refreshExact();
    message(`${action}: ${r.clicks.length} clicks left`);
  } catch (e) { message(e.message, "error"); } finally { S.busy = false; }
}

async function suggest() {
  try {
    const g = await api(`/api/s/${S.sid}/suggest`, {frame: frame()});
    S.suggestion = g;
    draw();
    const where = g.frame === null ? g.position.join(", ") : `frame ${g.frame}, ${g.position.join(", ")}`;
    message(`suggested next click at (${where}): ${g.label ? "inside, maybe remove" : "outside, maybe add"}`);
    if (S.info.kind === "volume") moveCursor(g.position);
  } catch (e) { message(e.message, "error"); }
}

async function propagate() {
  if (S.busy) return;
  S.busy = true;
  $("propagate").disabled = true;
  message("propagating ...", "busy");
  try {
    const sent = shown();
    const r = await api(`/api/s/${S.sid}/propagate`, {shown: sent});
    await applyOverlays(r, sent);
    message(`propagated to ${r.frames} frames in ${r.seconds} s`);
  } catch (e) { message(e.message, "error"); } finally { S.busy = false; $("propagate").disabled = false; }
}

async function save() {
  if (!S.sid) return;
  $("save").disabled = true;
  message("saving (as volseg segment would) ...", "busy");
  try {
    const r = await api(`/api/s/${S.sid}/save`, {});
    const a = $("download");
    a.href = r.download; a.hidden = false;
    a.download = r.mask.split("/").pop();
    message(`saved ${r.mask} and ${r.sidecar}`);
    document.body.dataset.saved = r.mask;
  } catch (e) { message(e.message, "error"); } finally { $("save").disabled = false; }
}

// -- wiring ---------------------------------------------------------------------------------------------
$("open").addEventListener("click", openFile);
$("undo").addEventListener("click", () => edit("undo"));
$("reset").addEventListener("click", () => edit("reset"));
$("save").addEventListener("click", save);
$("propagate").addEventListener("click", propagate);
$("opacity").addEventListener("input", draw);
$("uncertainty").addEventListener("change", () => S.views.forEach((v) => refresh(v, {baseToo: false})));
$("suggest").addEventListener("change", () => {
  if ($("suggest").checked) suggest();
  else { S.suggestion = null; draw(); }
});
$("object").addEventListener("change", () => { S.object = Number($("object").value); fillObjects(); });
$("new-object").addEventListener("click", () => {
  S.object = Math.max(...S.objects) + 1; S.objects.push(S.object); fillObjects();
});
$("window").addEventListener("change", () => {
  const p = $("window").value;
  S.window = p === "auto" ? S.info.window.auto : PRESETS[p];
  S.views.forEach((v) => refresh(v));
});
document.addEventListener("keydown", (e) => {
  if ((e.ctrlKey || e.metaKey) && e.key === "z") { e.preventDefault(); edit("undo"); }
});
window.addEventListener("pagehide", closeSession);
// a heartbeat keeps an open tab's session; a closed tab stops it and the server frees the session
setInterval(() => { if (S.sid) api(`/api/s/${S.sid}/ping`, {}).catch((e) => {
  if (e.status === 404) message("this session expired; open the file again", "error"); }); }, 30000);
listFiles();
