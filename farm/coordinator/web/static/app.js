// printfarm dashboard: draws the coordinator's snapshot (GET /api/dashboard) and redraws it from the
// event stream (/api/events) whenever the farm changes. Plain DOM, no build step, no innerHTML:
// every name shown is text, whoever chose it.
"use strict";

const $ = (id) => document.getElementById(id);
let me = null; // {name, role}
let last = null; // the last snapshot drawn
const armed = new Map(); // action key -> time it was armed: a second press within ARM_MS does it
const ARM_MS = 5000;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) {
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }
  return node;
}

// Timestamps come without a zone; they are UTC.
const when = (ts) => (ts ? new Date(/[zZ]|[+-]\d\d:\d\d$/.test(ts) ? ts : ts + "Z") : null);

function ago(ts) {
  const s = Math.max(0, (Date.now() - when(ts).getTime()) / 1000);
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
  return `${Math.round(s / 86400)} d`;
}

function eta(remaining) {
  if (remaining === null || remaining === undefined) return "";
  const h = Math.floor(remaining / 3600), m = Math.floor((remaining % 3600) / 60);
  const left = h ? `${h} h ${String(m).padStart(2, "0")} min` : m ? `${m} min` : `${remaining % 60} s`;
  const at = new Date(Date.now() + remaining * 1000);
  return `${left} left, ends ${at.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })}`;
}

// A filament colour as people name it ("Galaxy Black", "#ff8800", "red"): a CSS colour if any word is one.
function swatch(color) {
  const s = el("span", { class: "swatch", "aria-hidden": "true" });
  const words = color ? [color, ...color.toLowerCase().split(/\s+/).reverse()] : [];
  const css = words.find((w) => CSS.supports("color", w) && !/^(inherit|initial|unset|currentcolor|transparent)$/i.test(w));
  if (css) s.style.background = css;
  else s.classList.add("unknown");
  return s;
}

const canAct = () => me && (me.role === "admin" || me.role === "submitter");
const isAdmin = () => me && me.role === "admin";

async function api(method, path, body) {
  const init = { method, headers: {} };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  if (resp.status === 401) {
    signedOut();
    throw new Error("signed out");
  }
  const data = resp.status === 204 ? null : await resp.json().catch(() => null);
  if (!resp.ok) {
    const detail = data && data.detail;
    throw new Error(typeof detail === "string" ? detail : `${method} ${path}: HTTP ${resp.status}`);
  }
  return data;
}

function problem(message) {
  const p = $("problem");
  p.textContent = message || "";
  p.hidden = !message;
}

// A button whose action needs a second press (cancel, remove): the first arms it for ARM_MS.
function actionButton(key, label, confirmLabel, run, cls) {
  const isArmed = armed.has(key) && Date.now() - armed.get(key) < ARM_MS;
  return el("button", {
    type: "button",
    class: cls || null,
    "data-action": key,
    text: isArmed && confirmLabel ? confirmLabel : label,
    onclick: async (event) => {
      const button = event.currentTarget;
      if (confirmLabel && !(armed.has(key) && Date.now() - armed.get(key) < ARM_MS)) {
        armed.set(key, Date.now());
        button.textContent = confirmLabel;
        setTimeout(() => { if (armed.get(key) && Date.now() - armed.get(key) >= ARM_MS) { armed.delete(key); redraw(); } }, ARM_MS + 50);
        return;
      }
      armed.delete(key);
      button.disabled = true;
      try {
        await run();
        problem("");
        if (!stream.live) await refresh();
      } catch (exc) {
        problem(exc.message);
      } finally {
        button.disabled = false;
      }
    },
  });
}

// A submitter reads only its own builds' artifacts (farm/api/access.py); others' previews would be 403s.
const mayRead = (owner) => me && (me.role !== "submitter" || owner === me.name);

function preview(sha, alt, owner) {
  return sha && mayRead(owner)
    ? el("img", { class: "thumb", src: `/api/artifacts/${sha}`, alt, loading: "lazy", width: 48, height: 48 })
    : el("span", { class: "thumb" });
}

function progressBar(value, label) {
  const pct = Math.max(0, Math.min(100, value || 0));
  const bar = el("div", { class: "progress", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": Math.round(pct), "aria-label": label });
  const fill = el("span");
  fill.style.width = `${pct}%`;
  bar.append(fill);
  return bar;
}

function printerCard(p) {
  const job = p.current;
  const needsClear = p.state === "awaiting_clear" || (!p.bed_clear && !job);
  const bad = p.state === "attention" || p.state === "failed";
  const card = el("article", { class: `card${needsClear ? " needs" : ""}${bad ? " bad" : ""}`, "data-printer": p.name, "aria-label": `printer ${p.name}` });
  card.append(
    el("h3", {}, p.name, el("span", { class: `state ${p.state}`, "data-state": p.state, text: p.state.replace("_", " ") })),
    el("div", { class: "meta" }, [p.model, p.protocol, p.location, p.power_group && `power group ${p.power_group}`, ...(p.tags || []).map((t) => `#${t}`)].filter(Boolean).join(" · ")),
  );
  if (bad || (p.message && p.state !== "printing" && p.state !== "idle")) {
    if (p.message) card.append(el("p", { class: "reason", text: p.message }));
  }
  card.append(el("div", { class: "material" }, swatch(p.color), [p.material, p.color].filter(Boolean).join(" "), el("span", { class: "meta", text: `${p.nozzle} mm` })));
  if (job) {
    const progress = job.progress ?? p.progress;
    card.append(
      el("div", { class: "job" },
        job.preview && mayRead(job.owner) ? preview(job.preview, `preview of ${job.source || "job " + job.id}`, job.owner) : null,
        el("div", { class: "what" },
          el("div", { class: "name", title: job.source || "" }, `#${job.id} ${job.source || ""}`),
          el("div", { class: "meta" }, `${job.state}${progress !== null && progress !== undefined ? ` · ${progress.toFixed(0)}%` : ""}${job.remaining_s !== null && job.remaining_s !== undefined ? " · " + eta(job.remaining_s) : ""}`),
          progressBar(progress, `progress of job ${job.id}`),
        ),
      ),
    );
  }
  // The camera's latest still (print start, end, failure, or asked for): a new id, a new image.
  if (p.snapshot) {
    card.append(el("figure", { class: "still" },
      el("img", { src: `/api/printers/${encodeURIComponent(p.name)}/snapshot?id=${p.snapshot}`, alt: `camera still of ${p.name}`, width: 320, height: 240, "data-snapshot": p.snapshot })));
  }
  if (p.snapshot_error) card.append(el("p", { class: "hint", "data-snapshot-error": "", text: `No snapshot: ${p.snapshot_error}` }));
  if (needsClear) {
    card.append(el("div", { class: "clear-bed", role: "status" }, "Bed needs clearing",
      canAct() ? actionButton(`clear:${p.name}`, "Bed is clear", null, () => api("POST", `/api/printers/${encodeURIComponent(p.name)}/clear`), "primary") : null));
  }
  const actions = el("div", { class: "actions" });
  if (job && canAct()) actions.append(actionButton(`cancel:${job.id}`, "Cancel job", "Really cancel?", () => api("POST", `/api/jobs/${job.id}/cancel`), "danger"));
  // The agent answers on its next call (a few seconds); the still then comes with the event stream.
  if (canAct()) actions.append(actionButton(`snapshot:${p.name}`, p.snapshot_wanted ? "Taking snapshot…" : "Take snapshot", null, () => api("POST", `/api/printers/${encodeURIComponent(p.name)}/snapshot`)));
  if (isAdmin()) actions.append(el("button", { type: "button", "data-action": `settings:${p.name}`, text: "Settings", onclick: () => openSettings(p) }));
  if (isAdmin() && !job) actions.append(actionButton(`remove:${p.name}`, "Take out of farm", "Really remove?", () => api("DELETE", `/api/printers/${encodeURIComponent(p.name)}`), "danger"));
  if (actions.childElementCount) card.append(actions);
  return card;
}

function explainDetails(job) {
  const details = el("details", { "data-explain": job.id });
  const body = el("pre", { text: "…" });
  details.append(el("summary", { text: "Which printers can take it?" }), body);
  details.addEventListener("toggle", async () => {
    if (!details.open) return;
    openExplain.add(job.id);
    try {
      const data = await api("GET", `/api/jobs/${job.id}/explain`);
      body.textContent = data.printers.map((v) => v.eligible
        ? `${v.printer}: can take it${v.position ? `, number ${v.position} in its queue` : ""}`
        : `${v.printer}: ${v.reasons.join("; ")}`).join("\n") || "no printers";
    } catch (exc) {
      body.textContent = exc.message;
    }
  });
  details.addEventListener("toggle", () => { if (!details.open) openExplain.delete(job.id); });
  if (openExplain.has(job.id)) details.open = true;
  return details;
}
const openExplain = new Set();

function jobLabel(j) {
  return [j.printer_model || "any model", [j.material, j.color].filter(Boolean).join(" "), j.copies > 1 ? `${j.copies} per plate` : null,
    (j.tags || []).length ? j.tags.map((t) => `#${t}`).join(" ") : null, j.pinned_printer ? `only on ${j.pinned_printer}` : null,
    j.owner ? `by ${j.owner}` : null].filter(Boolean).join(" · ");
}

let stopViewer = null;
// `kind` "3mf": each object in its own colour, named in a list under the view; otherwise one STL.
async function openViewer(sha, title, kind) {
  const dialog = $("viewer");
  $("viewer-h").textContent = title;
  $("viewer-problem").textContent = "";
  $("viewer-objects").replaceChildren();
  if (stopViewer) stopViewer();
  if (!dialog.open) dialog.showModal();
  const canvas = $("viewer-canvas");
  delete canvas.dataset.triangles;
  delete canvas.dataset.objects;
  try {
    const resp = await fetch(`/api/artifacts/${sha}`);
    if (!resp.ok) throw new Error(`the part's mesh: HTTP ${resp.status}`);
    const buffer = await resp.arrayBuffer();
    const meshes = kind === "3mf" ? await FarmViewer.parse3MF(buffer) : [FarmViewer.parseSTL(buffer)];
    if (meshes.length > 1) {
      $("viewer-objects").replaceChildren(...meshes.map((m, i) => {
        const dot = el("span", { class: "swatch", "aria-hidden": "true" });
        dot.style.background = `rgb(${FarmViewer.colorOf(m, i).map((c) => Math.round(c * 255)).join(" ")})`;
        return el("li", { "data-object": m.name }, dot, m.name);
      }));
    }
    stopViewer = FarmViewer.show(canvas, meshes);
    canvas.focus();
  } catch (exc) {
    $("viewer-problem").textContent = exc.message;
  }
}

function viewButton(sha, owner, title) {
  return sha && mayRead(owner)
    ? el("button", { type: "button", "data-action": `view:${sha}`, text: "3D", "aria-label": `show ${title} in 3D`, onclick: () => openViewer(sha, title) })
    : null;
}

// A build's page (a dialog over the farm): the error first if a stage failed, then the pipeline,
// the provenance, the estimates per printer model and the artifacts.
function buildButton(id) {
  return el("button", { type: "button", "data-action": `build:${id}`, text: "Build", "aria-label": `build ${id}: pipeline, provenance, artifacts`, onclick: () => openBuild(id) });
}

async function openBuild(id) {
  const dialog = $("build"), body = $("build-body");
  $("build-h").textContent = `Build ${id}`;
  body.replaceChildren(el("p", { class: "hint", text: "…" }));
  if (!dialog.open) dialog.showModal();
  try {
    const b = await api("GET", `/api/builds/${id}`);
    $("build-h").textContent = `Build ${b.id}: ${b.source}`;
    body.replaceChildren(...buildDetail(b));
    dialog.dataset.build = String(b.id);
  } catch (exc) {
    body.replaceChildren(el("p", { class: "err", role: "alert", text: exc.message }));
  }
}

function duration(s) {
  if (s === null || s === undefined) return "–";
  const h = Math.floor(s / 3600), m = Math.round((s % 3600) / 60);
  return h ? `${h} h ${String(m).padStart(2, "0")} min` : `${m} min`;
}

function cadState(b) {
  if (b.stage === "queued") return "waiting for a CAD worker";
  if (b.stage === "cad") return `running${b.cad_worker ? ` on ${b.cad_worker}` : ""}`;
  if (!b.stl) return b.stage === "failed" ? "failed" : b.stage;
  return `done${b.cad_seconds !== null ? ` in ${b.cad_seconds.toFixed(1)} s` : ""}${b.objects ? `, ${b.objects} object${b.objects > 1 ? "s" : ""}` : ""}`;
}

function facts(rows) {
  return el("dl", { class: "facts" }, rows.filter(([, v]) => v !== null && v !== undefined && v !== "")
    .flatMap(([k, v]) => [el("dt", { text: k }), el("dd", {}, v)]));
}

function buildDetail(b) {
  const out = [];
  const failures = [
    b.error ? [b.stl ? "build" : b.kind === "cad" ? "CAD" : "build", b.error] : null,
    ...b.slices.filter((s) => s.error).map((s) => [`slicing for ${s.printer_model}`, s.error]),
    ...b.jobs.filter((j) => j.error).map((j) => [`job #${j.id}`, j.error]),
  ].filter(Boolean);
  if (failures.length) {
    out.push(el("section", { class: "failure", "data-part": "errors", role: "alert" }, el("h3", { text: "What went wrong" }),
      ...failures.map(([stage, error]) => el("div", {}, el("strong", { text: stage }), el("pre", { class: "err", text: error })))));
  }
  const steps = el("ol", { class: "pipeline", "data-part": "pipeline" },
    el("li", { "data-step": "source", "data-state": "done" }, `Source: ${b.source} (${b.kind === "cad" ? "a .py design" : b.kind})`),
    b.kind === "cad" ? el("li", { "data-step": "cad", "data-state": b.stl ? "done" : b.stage }, `CAD: ${cadState(b)}`) : null,
    ...b.slices.map((s) => el("li", { "data-step": "slice", "data-state": s.state },
      `Slice for ${s.printer_model}${s.copies > 1 ? `, ${s.copies} per plate` : ""}: ${s.state === "pending" && s.worker ? "being sliced" : s.state}${s.seconds ? ` in ${s.seconds.toFixed(1)} s` : ""}`)),
    ...b.jobs.map((j) => el("li", { "data-step": "job", "data-state": j.state },
      `Job #${j.id}${j.copies > 1 ? ` (${j.copies} parts)` : ""}: ${j.state}${j.printer ? ` on ${j.printer}` : j.printer_model ? `, for a ${j.printer_model}` : ""}`)),
    b.preview_only ? el("li", { "data-step": "preview" }, "A preview: no jobs. Submit the design to print it.") : null);
  out.push(el("h3", { text: "Pipeline" }), steps);
  const params = Object.entries(b.params || {}).map(([k, v]) => `${k} = ${JSON.stringify(v)}`).join(", ");
  const settings = Object.entries(b.slicer_settings || {}).map(([k, v]) => `${k} = ${v}`).join(", ");
  const size = b.bbox ? b.bbox[1].map((hi, k) => (hi - b.bbox[0][k]).toFixed(1)).join(" × ") + " mm" : null;
  out.push(el("h3", { text: "Provenance" }), el("div", { "data-part": "provenance" }, facts([
    ["Source", b.source],
    ["Source SHA-256", b.source_sha256 ? el("code", { text: b.source_sha256 }) : null],
    ["Git", b.git ? [b.git.url, b.git.ref && `ref ${b.git.ref}`, `commit ${b.git.commit}`].filter(Boolean).join(" · ") : null],
    ["Entry point", b.entry],
    ["Parameters", params || (b.kind === "cad" ? "the defaults" : null)],
    ["Material, quality", `${b.material}, ${b.quality}`],
    ["Slicer settings", settings || "the profile's"],
    ["Cache", b.use_cache ? null : "not used (no_cache)"],
    ["Size", size],
    ["By", b.owner],
    ["Submitted", b.created_at && when(b.created_at).toLocaleString()],
  ])));
  if (b.skipped && b.skipped.length) {
    out.push(el("h3", { text: "Shown by the design, not printed" }), el("ul", { "data-part": "skipped" }, b.skipped.map((s) => el("li", { text: s }))));
  }
  const sliced = b.slices.filter((s) => s.state === "done" || s.print_time_s !== null);
  if (sliced.length) {
    out.push(el("h3", { text: "Estimates" }), el("table", { class: "estimates", "data-part": "estimates" },
      el("thead", {}, el("tr", {}, ["printer model", "per plate", "print time", "filament"].map((h) => el("th", { scope: "col", text: h })))),
      el("tbody", {}, sliced.map((s) => el("tr", {}, el("th", { scope: "row", text: s.printer_model }), el("td", { text: String(s.copies) }),
        el("td", { text: duration(s.print_time_s) }),
        el("td", { text: s.filament_g !== null ? `${s.filament_g.toFixed(1)} g${s.filament_mm ? `, ${(s.filament_mm / 1000).toFixed(2)} m` : ""}` : "–" }))))));
  }
  const stem = b.source.replace(/\.[^.]+$/, "");
  const files = [["source", b.source_sha256, b.source], ["STL", b.stl, `${stem}.stl`], ["3MF", b.threemf, `${stem}.3mf`],
    ["STEP", b.step, `${stem}.step`], ["preview", b.preview, `${stem}.png`],
    ...b.slices.filter((s) => s.gcode).map((s) => [`G-code for ${s.printer_model}`, s.gcode, `${stem}-${s.printer_model}.gcode`])]
    .filter(([, sha], i, all) => sha && all.findIndex(([, other]) => other === sha) === i);
  if (files.length && mayRead(b.owner)) {
    const mesh = b.threemf ? [b.threemf, "3mf"] : b.stl ? [b.stl, "stl"] : null;
    out.push(el("h3", { text: "Artifacts" }), el("div", { class: "artifacts", "data-part": "artifacts" },
      b.preview ? el("img", { src: `/api/artifacts/${b.preview}`, alt: `preview of ${b.source}`, width: 128, height: 128 }) : null,
      el("ul", {}, files.map(([label, sha, name]) => el("li", {}, el("a", { href: `/api/artifacts/${sha}`, download: name, text: label }), ` ${name}`))),
      mesh ? el("button", { type: "button", "data-action": `view3d:${b.id}`, text: "Show in 3D", onclick: () => openViewer(mesh[0], `build ${b.id} ${b.source}`, mesh[1]) }) : null));
  }
  return out;
}

function queueRow(j, index) {
  const mine = isAdmin() || (canAct() && j.owner === me.name);
  const prio = el("span", { class: "prio" },
    mine ? actionButton(`down:${j.id}`, "−", null, () => api("PATCH", `/api/jobs/${j.id}`, { priority: Math.max(-100, j.priority - 1) })) : null,
    el("output", { title: "priority", "aria-label": `priority ${j.priority}`, text: j.priority }),
    mine ? actionButton(`up:${j.id}`, "+", null, () => api("PATCH", `/api/jobs/${j.id}`, { priority: Math.min(100, j.priority + 1) })) : null);
  prio.querySelectorAll("button")[0]?.setAttribute("aria-label", `lower priority of job ${j.id}`);
  prio.querySelectorAll("button")[1]?.setAttribute("aria-label", `raise priority of job ${j.id}`);
  return el("li", { class: "row", "data-job": j.id },
    el("span", { class: "pos", text: `${index + 1}.` }),
    preview(j.preview, "", j.owner),
    el("div", { class: "main" },
      el("div", { class: "name" }, `#${j.id} ${j.source || ""}`),
      el("div", { class: "meta" }, jobLabel(j), ` · queued ${ago(j.created_at)}`, j.starving ? el("span", { class: "starving", text: " · waited past the limit: goes first" }) : null)),
    el("div", { class: "actions" }, viewButton(j.stl, j.owner, `#${j.id} ${j.source || ""}`), buildButton(j.build), prio, mine ? actionButton(`cancel:${j.id}`, "Cancel", "Really cancel?", () => api("POST", `/api/jobs/${j.id}/cancel`), "danger") : null),
    explainDetails(j));
}

function waitingRow(b) {
  return el("li", { class: "row", "data-build": b.id },
    el("span", { class: "pos", text: b.stage === "cad" ? "CAD" : b.stage }),
    preview(b.preview, "", b.owner),
    el("div", { class: "main" }, el("div", { class: "name" }, `build ${b.id} ${b.source}`),
      el("div", { class: "meta" }, `${b.stage === "queued" ? "waiting for a CAD worker" : b.stage === "cad" ? "CAD running" : "slicing"} for ${ago(b.since)}${b.owner ? ` · by ${b.owner}` : ""}`)),
    el("div", { class: "actions" }, viewButton(b.stl, b.owner, `build ${b.id} ${b.source}`), buildButton(b.id)));
}

function failedRow(j) {
  const mine = isAdmin() || (canAct() && j.owner === me.name);
  return el("li", { class: "row", "data-job": j.id },
    el("span", { class: "pos", text: "✕" }),
    preview(j.preview, "", j.owner),
    el("div", { class: "main" }, el("div", { class: "name" }, `#${j.id} ${j.source || ""}`),
      el("div", { class: "meta" }, jobLabel(j), ` · attempt ${j.attempts} of ${j.max_attempts}`),
      el("div", { class: "err", text: j.error || "failed" })),
    el("div", { class: "actions" }, buildButton(j.build), mine ? actionButton(`retry:${j.id}`, "Retry", null, () => api("POST", `/api/jobs/${j.id}/retry`)) : null));
}

// History: finished, failed and cancelled jobs with the form's filters, and their totals.
let historyDone = null; // jobs done when history was last drawn: a new one redraws it
function historyQuery() {
  const form = new FormData($("history-form"));
  const params = new URLSearchParams({ limit: "50" });
  for (const key of ["printer", "material", "owner", "state"]) if (form.get(key)) params.set(key, form.get(key).trim());
  if (form.get("since")) params.set("since", form.get("since"));
  if (form.get("until")) {  // "To" is a whole day: the API's until is the moment after it
    const next = new Date(`${form.get("until")}T00:00:00Z`);
    next.setUTCDate(next.getUTCDate() + 1);
    params.set("until", next.toISOString());
  }
  return params;
}

function totalsRows(rows, key) {
  return rows.map((r) => el("tr", {}, el("th", { scope: "row", text: r[key] }),
    ...["done", "failed", "cancelled", "hours", "filament_g"].map((k) => el("td", { text: String(r[k]) }))));
}

async function loadHistory() {
  const data = await api("GET", `/api/history?${historyQuery()}`);
  const all = data.totals.all;
  $("history-totals").textContent = `${all.done} done · ${all.failed} failed · ${all.cancelled} cancelled · ${all.hours} h printing · ${all.filament_g} g of filament`;
  $("history-printers").tBodies[0].replaceChildren(...totalsRows(data.totals.by_printer, "printer"));
  $("history-materials").tBodies[0].replaceChildren(...totalsRows(data.totals.by_material, "material"));
  $("history").replaceChildren(...data.jobs.map((j) => el("li", { class: "row", "data-history": j.id },
    el("span", { class: "pos", text: j.state === "done" ? "✓" : "✕" }),
    preview(j.preview, "", j.owner),
    el("div", { class: "main" }, el("div", { class: "name" }, `#${j.id} ${j.source || ""}`),
      el("div", { class: "meta" }, [j.state, j.printer, j.material, j.finished_at && `ended ${when(j.finished_at).toLocaleString()}`, j.owner && `by ${j.owner}`].filter(Boolean).join(" · ")),
      j.error ? el("div", { class: "err", text: j.error }) : null),
    el("div", { class: "actions" }, buildButton(j.build)))));
}

function setupHistory() {
  $("history-sec").hidden = false;
  $("history-form").addEventListener("submit", (event) => {
    event.preventDefault();
    loadHistory().then(() => problem("")).catch((exc) => problem(exc.message));
  });
  loadHistory().catch((exc) => problem(exc.message));
}

// One dialog for every printer's settings, outside the cards: a card is redrawn at each report.
let editing = null;
function openSettings(p) {
  editing = p.name;
  const form = $("settings-form");
  $("settings-h").textContent = `Settings of ${p.name}`;
  form.material.value = p.material || "";
  form.color.value = p.color || "";
  form.nozzle.value = p.nozzle;
  form.tags.value = (p.tags || []).join(", ");
  form.power_group.value = p.power_group || "";
  form.location.value = p.location || "";
  form.auto_eject.checked = p.auto_eject;
  $("settings-problem").textContent = "";
  $("settings").showModal();
}

function setupSettings() {
  const form = $("settings-form");
  $("settings-cancel").addEventListener("click", () => $("settings").close());
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = {
      material: form.material.value.trim(), color: form.color.value.trim(), nozzle: Number(form.nozzle.value),
      tags: form.tags.value.split(",").map((t) => t.trim()).filter(Boolean),
      power_group: form.power_group.value.trim(), location: form.location.value.trim(), auto_eject: form.auto_eject.checked,
    };
    try {
      await api("PATCH", `/api/printers/${encodeURIComponent(editing)}`, body);
      $("settings").close();
      document.querySelector(`[data-action="settings:${CSS.escape(editing)}"]`)?.focus();
      if (!stream.live) await refresh();
    } catch (exc) {
      $("settings-problem").textContent = exc.message;
    }
  });
}

// The submit form: a design's entry points and parameters come from POST /api/inspect (the source
// is read, not run), each parameter a field with its default, bounds and choices (a Literal or an
// Enum: a list); the rest are the submit options. A zipped project is repacked here as the tar.gz
// a submit takes (`farm submit` packs a folder the same way), its .py files offered as entry files.
let design = null; // {entries} of the chosen .py, or of the project's entry file
let project = null; // {blob, name, files} of a chosen .zip
function paramField(p) {
  const c = p.constraints || {};
  const bounds = [c.ge !== undefined ? `≥ ${c.ge}` : c.gt !== undefined ? `> ${c.gt}` : null,
    c.le !== undefined ? `≤ ${c.le}` : c.lt !== undefined ? `< ${c.lt}` : null].filter(Boolean);
  const about = [p.annotation, ...bounds].filter(Boolean).join(", ");
  const label = `${p.name}${about ? ` (${about})` : ""}`;
  const hint = p.description ? el("small", { class: "hint", text: p.description }) : null;
  const choices = Array.isArray(p.choices) ? p.choices
    : (p.annotation || p.type) === "bool" || typeof p.default === "boolean" ? [true, false] : null;
  if (choices) {
    // A value a design gave as an expression (`Finish.glossy`) is not known here: "default" sends none.
    const known = choices.some((v) => v === p.default);
    const select = el("select", { name: `param:${p.name}`, "data-kind": "json", required: p.has_default === false });
    if (!known) select.append(el("option", { value: "", text: p.has_default === false ? "choose one" : `default${p.default_source ? ` (${p.default_source})` : ""}` }));
    select.append(...choices.map((v) => el("option", { value: JSON.stringify(v), text: String(v) })));
    select.value = known ? JSON.stringify(p.default) : "";
    return el("label", {}, label, select, hint);
  }
  const type = p.annotation || p.type; // p.type: an unannotated parameter's default's
  const numeric = ["float", "int"].includes(type) || typeof p.default === "number";
  const integer = type === "int" || (Number.isInteger(p.default) && !["float", "number"].includes(type));
  const input = el("input", { name: `param:${p.name}`, "data-kind": integer ? "int" : numeric ? "float" : "str",
    type: numeric ? "number" : "text", step: numeric ? (integer ? 1 : "any") : null,
    placeholder: p.has_default === false ? "required" : null, required: p.has_default === false,
    min: numeric ? c.ge ?? c.gt ?? null : null, max: numeric ? c.le ?? c.lt ?? null : null,
    minlength: numeric ? null : c.min_length ?? null, maxlength: numeric ? null : c.max_length ?? null });
  if (p.default !== undefined && p.default !== null) input.value = String(p.default);
  return el("label", {}, label, input, hint);
}

function showParams() {
  const entry = design && design.entries.find((e) => e.name === $("submit-entry").value);
  $("submit-params").replaceChildren(...((entry && entry.params) || []).map(paramField));
}

// A tar archive (ustar: sorted names, no times or owners) of [{name, data}].
function tar(files) {
  const enc = new TextEncoder(), blocks = [];
  const field = (header, at, len, text) => header.set(enc.encode(text).subarray(0, len), at);
  for (const f of files) {
    let name = f.name, prefix = "";
    if (enc.encode(name).length > 100) { // ustar: the folders in `prefix` (155), the rest in `name` (100)
      const cut = [...name].map((ch, i) => (ch === "/" ? i : -1)).filter((i) => i >= 0)
        .find((i) => enc.encode(name.slice(0, i)).length <= 155 && enc.encode(name.slice(i + 1)).length <= 100);
      if (cut === undefined) throw new Error(`${f.name}: the name is too long for a project archive`);
      prefix = name.slice(0, cut);
      name = name.slice(cut + 1);
    }
    const header = new Uint8Array(512);
    field(header, 0, 100, name);
    field(header, 100, 8, "0000644\0");
    field(header, 108, 8, "0000000\0");
    field(header, 116, 8, "0000000\0");
    field(header, 124, 12, f.data.length.toString(8).padStart(11, "0") + "\0");
    field(header, 136, 12, "00000000000\0");
    field(header, 148, 8, "        ");
    field(header, 156, 1, "0");
    field(header, 257, 8, "ustar\x0000");
    field(header, 345, 155, prefix);
    const sum = header.reduce((a, b) => a + b, 0);
    field(header, 148, 8, sum.toString(8).padStart(6, "0") + "\0 ");
    blocks.push(header, f.data, new Uint8Array((512 - (f.data.length % 512)) % 512));
  }
  blocks.push(new Uint8Array(1024));
  return new Blob(blocks);
}

// A .zip of a project as a tar.gz: a folder that holds everything ("tray/main.py") is left out,
// and so are macOS's __MACOSX copies; a name with "..", or from "/", is refused.
async function zipToProject(file) {
  const all = (await FarmViewer.unzipAll(await file.arrayBuffer()))
    .filter((f) => !f.name.startsWith("__MACOSX/") && !f.name.endsWith("/.DS_Store") && f.name !== ".DS_Store");
  if (!all.length) throw new Error("the zip holds no files");
  const bad = all.find((f) => f.name.startsWith("/") || f.name.split("/").includes(".."));
  if (bad) throw new Error(`${bad.name}: a name outside the project`);
  const top = all[0].name.split("/")[0];
  const wrapped = all.every((f) => f.name.startsWith(`${top}/`));
  const files = all.map((f) => ({ name: wrapped ? f.name.slice(top.length + 1) : f.name, data: f.data }))
    .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const gz = new Blob([await new Response(tar(files).stream().pipeThrough(new CompressionStream("gzip"))).arrayBuffer()]);
  return { blob: gz, name: `${file.name.replace(/\.zip$/i, "") || "project"}.tar.gz`,
    files: files.map((f) => f.name).filter((n) => n.endsWith(".py")) };
}

async function inspectDesign() {
  const body = new FormData();
  if (project) {
    body.append("file", project.blob, project.name);
    body.append("entry_file", $("submit-entry-file").value);
  } else {
    body.append("file", $("submit-file").files[0]);
  }
  const resp = await fetch("/api/inspect", { method: "POST", body });
  const data = await resp.json();
  if (!resp.ok) throw new Error(typeof data.detail === "string" ? data.detail : `HTTP ${resp.status}`);
  design = data;
  $("submit-entry").replaceChildren(...data.entries.map((e) => el("option", { value: e.name, text: `${e.name} (${e.kind})` })));
  $("submit-entry").closest("label").hidden = !data.entries.length;
  $("design").hidden = !data.entries.length && !project;
  showParams();
}

async function chooseFile(file) {
  design = null;
  project = null;
  $("design").hidden = true;
  $("entry-file").hidden = true;
  const name = file ? file.name.toLowerCase() : "";
  const code = name.endsWith(".py") || name.endsWith(".zip");
  $("preview-button").hidden = !code;
  $("submit-result").textContent = "";
  if (!code) return;
  try {
    if (name.endsWith(".zip")) {
      const made = await zipToProject(file);
      if (!made.files.length) throw new Error("the project has no .py file");
      const main = ["main.py", "design.py", "part.py"].find((n) => made.files.includes(n)) || made.files[0];
      $("submit-entry-file").replaceChildren(...made.files.map((n) => el("option", { value: n, text: n })));
      $("submit-entry-file").value = main;
      $("entry-file").hidden = false;
      project = made;
    }
    await inspectDesign();
  } catch (exc) {
    design = null;
    $("submit-result").textContent = `cannot read ${file.name}: ${exc.message}`;
  }
}

function setupSubmit() {
  $("submit-sec").hidden = false;
  const form = $("submit-form"), input = $("submit-file"), drop = $("drop");
  input.addEventListener("change", () => chooseFile(input.files[0]));
  $("submit-entry").addEventListener("change", showParams);
  $("submit-entry-file").addEventListener("change", () => inspectDesign().catch((exc) => { $("submit-result").textContent = exc.message; }));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    input.files = e.dataTransfer.files;
    chooseFile(input.files[0]);
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    send(false);
  });
  $("preview-button").addEventListener("click", () => {
    if (form.reportValidity()) send(true);
  });
}

// The form's choices as submit options (farm/api/builds.py SubmitOptions).
function submitOptions(form) {
  const options = { material: form.material.value.trim() || "PLA", copies: Number(form.copies.value),
    per_plate: Number(form.per_plate.value), priority: Number(form.priority.value) };
  if (project) options.entry_file = form.entry_file.value;
  if (form.printer_model.value.trim()) options.printer_model = form.printer_model.value.trim();
  if (form.color.value.trim()) options.color = form.color.value.trim();
  if (design && design.entries.length) {
    const entry = design.entries.find((e) => e.name === form.entry.value);
    if (entry && ["function", "artifact", "customizable"].includes(entry.kind)) options.entry = entry.name;
    options.params = {};
    for (const field of form.querySelectorAll("[name^='param:']")) {
      if (field.value === "") continue;
      const kind = field.dataset.kind;
      options.params[field.name.slice(6)] = kind === "json" ? JSON.parse(field.value)
        : kind === "int" ? parseInt(field.value, 10) : kind === "float" ? Number(field.value) : field.value;
    }
  }
  return options;
}

// Preview: the same submit with `preview: true`: the CAD worker builds the part (its sandbox, its
// limits, its cache) and no job is made; the 3D view opens once the build is ready. "Submit" then
// sends the same choices, and the worker finds the part in its cache.
let previewing = null; // the preview build awaited
async function send(preview) {
  const form = $("submit-form"), result = $("submit-result");
  const options = submitOptions(form);
  if (preview) options.preview = true;
  const body = new FormData();
  if (project) body.append("file", project.blob, project.name);
  else body.append("file", $("submit-file").files[0]);
  body.append("options", JSON.stringify(options));
  try {
    const resp = await fetch("/api/builds", { method: "POST", body });
    const data = await resp.json();
    if (!resp.ok) throw new Error(typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail));
    if (preview) {
      result.textContent = `preview ${data.id}: building the part…`;
      result.dataset.preview = data.id;
      previewing = data.id;
      await previewReady();
      // The event stream says when the farm changes; this only covers a stream that is down.
      const check = setInterval(() => {
        if (previewing !== data.id) clearInterval(check);
        else if (!stream.live) previewReady().catch(() => {});
      }, 3000);
    } else {
      result.textContent = `build ${data.id} submitted: ${data.jobs.length} job(s)`;
      result.dataset.build = data.id;
    }
  } catch (exc) {
    result.textContent = `${preview ? "no preview" : "not submitted"}: ${exc.message}`;
  }
}

// Asked when the farm changes (the event stream) and once at the start: is the preview made yet?
async function previewReady() {
  const id = previewing;
  if (id === null) return;
  const b = await api("GET", `/api/builds/${id}`);
  if (previewing !== id || (b.stage !== "ready" && b.stage !== "failed")) return;
  previewing = null;
  const result = $("submit-result");
  if (b.stage === "failed") {
    result.textContent = `preview ${id} failed: ${b.error || "no mesh"}`;
    return;
  }
  result.textContent = `preview ${id}: ${b.objects || 1} object(s)${b.skipped.length ? `; not printed: ${b.skipped.join(", ")}` : ""}. Submit prints it.`;
  await openViewer(b.threemf || b.stl, `preview of ${b.source}`, b.threemf ? "3mf" : "stl");
}

// Replaces only the children whose data changed, so focus and open details survive a redraw.
function reconcile(container, items, keyOf, render) {
  const old = new Map([...container.children].map((c) => [c.dataset.key, c]));
  const focused = document.activeElement;
  const focusedAction = focused && container.contains(focused) ? focused.dataset.action : null;
  const nodes = items.map((item, i) => {
    const key = String(keyOf(item));
    const sig = JSON.stringify([item, i, me && me.role, Math.floor(Date.now() / 30000), [...armed.keys()].filter((k) => k.endsWith(`:${key}`))]);
    const prev = old.get(key);
    if (prev && prev.dataset.sig === sig) return prev;
    const node = render(item, i);
    node.dataset.key = key;
    node.dataset.sig = sig;
    return node;
  });
  container.replaceChildren(...nodes);
  if (focusedAction && !container.contains(focused)) {
    container.querySelector(`[data-action="${CSS.escape(focusedAction)}"]`)?.focus();
  }
}

// Cards under a heading per model, power group, location or tag (a printer with two tags shows
// under both); printers without one come last.
function grouped(printers, by) {
  if (!by) return printers.map((p) => ({ key: p.name, p }));
  const groups = new Map();
  for (const p of printers) {
    const values = by === "tags" ? (p.tags.length ? p.tags : [""]) : [p[by] || ""];
    for (const g of values) {
      if (!groups.has(g)) groups.set(g, []);
      groups.get(g).push(p);
    }
  }
  const names = [...groups.keys()].sort((a, b) => (a === "" ? 1 : b === "" ? -1 : a.localeCompare(b)));
  const label = { model: "model", power_group: "power group", location: "location", tags: "tag" }[by];
  return names.flatMap((g) => [
    { key: `group:${g}`, heading: g ? (by === "tags" ? `#${g}` : g) : `no ${label}` },
    ...groups.get(g).map((p) => ({ key: `${g}/${p.name}`, p })),
  ]);
}

function printerMatches(p, text) {
  if (!text) return true;
  const hay = [p.name, p.model, p.protocol, p.state, p.material, p.color, p.location, p.power_group, ...(p.tags || [])].join(" ").toLowerCase();
  return text.toLowerCase().split(/\s+/).every((w) => hay.includes(w));
}

function draw(snap) {
  last = snap;
  const s = snap.status;
  const count = (o, k) => (o && o[k]) || 0;
  $("summary").textContent = `${s.printer_count} printers · ${count(s.jobs, "printing")} printing · ${snap.queue_total} ready · ${count(s.printers, "awaiting_clear")} beds to clear`;
  for (const id of ["printers-sec", "queue-sec"]) $(id).hidden = false;
  const printers = snap.printers.filter((p) => printerMatches(p, $("filter").value.trim()));
  reconcile($("printers"), grouped(printers, $("group").value), (item) => item.key,
    (item) => (item.heading !== undefined ? el("h3", { class: "group", text: item.heading }) : printerCard(item.p)));
  const models = [...new Set(snap.printers.map((p) => p.model))].sort();
  if ($("models").childElementCount !== models.length) $("models").replaceChildren(...models.map((m) => el("option", { value: m })));
  $("queue-count").textContent = snap.queue_total > snap.queue.length ? `(first ${snap.queue.length} of ${snap.queue_total})` : `(${snap.queue_total})`;
  reconcile($("queue"), snap.queue, (j) => j.id, queueRow);
  $("waiting-sec").hidden = !snap.waiting.length;
  reconcile($("waiting"), snap.waiting, (b) => b.id, waitingRow);
  $("failed-sec").hidden = !snap.failed.length;
  reconcile($("failed"), snap.failed, (j) => j.id, failedRow);
  const done = count(s.jobs, "done") + count(s.jobs, "failed") + count(s.jobs, "cancelled");
  if (historyDone !== null && done !== historyDone) loadHistory().catch(() => {});
  historyDone = done;
  if (previewing !== null && !snap.waiting.some((b) => b.id === previewing)) previewReady().catch((exc) => problem(exc.message));
  document.body.dataset.drawn = String(Number(document.body.dataset.drawn || 0) + 1);
}

function redraw() {
  if (last) draw(last);
}

async function refresh() {
  draw(await api("GET", "/api/dashboard"));
}

async function loadTokens() {
  const tokens = await api("GET", "/api/tokens");
  reconcile($("tokens"), tokens.filter((t) => !t.revoked_at), (t) => t.name, (t) => el("li", { class: "row", "data-token": t.name },
    el("span", { class: "pos", text: t.role }), el("span", { class: "thumb" }),
    el("div", { class: "main" }, el("div", { class: "name", text: t.name }),
      el("div", { class: "meta" }, [t.printer && `printer ${t.printer}`, `made ${ago(t.created_at)} ago`, t.expires_at && `expires ${when(t.expires_at).toLocaleString()}`].filter(Boolean).join(" · "))),
    el("div", { class: "actions" }, t.name === me.name ? null : actionButton(`revoke:${t.name}`, "Revoke", "Really revoke?", async () => { await api("DELETE", `/api/tokens/${encodeURIComponent(t.name)}`); await loadTokens(); }, "danger"))));
}

function setupTokens() {
  $("tokens-sec").hidden = false;
  $("token-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = new FormData(event.target);
    const body = { name: form.get("name"), role: form.get("role") };
    if (form.get("printer")) body.printer = form.get("printer");
    try {
      const made = await api("POST", "/api/tokens", body);
      const shown = $("new-token");
      shown.textContent = `Token for ${made.name} (${made.role}), shown only now: ${made.token}`;
      shown.hidden = false;
      event.target.reset();
      problem("");
      await loadTokens();
    } catch (exc) {
      problem(exc.message);
    }
  });
  loadTokens().catch((exc) => problem(exc.message));
}

// The event stream: the whole snapshot again whenever the farm changes (and on connecting).
const stream = { source: null, live: false };
function connect() {
  const source = new EventSource("/api/events");
  stream.source = source;
  source.addEventListener("farm", (event) => {
    stream.live = true;
    $("live").textContent = "● live";
    $("live").classList.add("on");
    draw(JSON.parse(event.data));
  });
  source.addEventListener("error", async () => {
    stream.live = false;
    $("live").textContent = "○ reconnecting";
    $("live").classList.remove("on");
    // EventSource retries by itself; a 401 (the session ended) closes it for good.
    if (source.readyState === EventSource.CLOSED) {
      try { await api("GET", "/api/me"); setTimeout(connect, 2000); } catch { /* signed out */ }
    }
  });
}

function signedOut() {
  me = null;
  if (stream.source) stream.source.close();
  for (const id of ["printers-sec", "submit-sec", "queue-sec", "waiting-sec", "failed-sec", "history-sec", "tokens-sec", "signout"]) $(id).hidden = true;
  $("signed-out").hidden = false;
  $("who").textContent = "";
  $("live").textContent = "";
}

async function start() {
  // Both at once: the first screen waits for one round trip, not two.
  const first = fetch("/api/dashboard").then((r) => (r.ok ? r.json() : null)).catch(() => null);
  try {
    me = await api("GET", "/api/me");
  } catch {
    return;
  }
  $("who").textContent = `${me.name} (${me.role})`;
  $("signout").hidden = false;
  $("signout").addEventListener("click", async () => { await fetch("/api/signout", { method: "POST" }); signedOut(); });
  $("filter").addEventListener("input", redraw);
  $("group").addEventListener("change", redraw);
  if (canAct()) setupSubmit();
  setupHistory();
  if (isAdmin()) {
    setupTokens();
    setupSettings();
  }
  const snap = await first;
  if (snap) draw(snap);
  else await refresh().catch((exc) => problem(exc.message));
  connect();
  setInterval(() => { if (last) redraw(); }, 30000); // ages and ETAs move on with the clock
}

start();
