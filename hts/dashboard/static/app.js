// hts dashboard: polls the server's snapshot, or shows the one embedded by `hts report --html`.
"use strict";

const STATIC = window.HTS_STATIC || null; // {snapshot, plots: {name: dataURI}, structures: {id: {cif, extxyz}}, lab: {id: {png, csv, cif}}}
const POLL_MS = 2000;
let lastKey = null;
let sortState = { col: null, dir: 1 };
let current = null;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

// x to `digits` decimals; a value that rounds to zero prints as 0.000, never -0.000 (as hts.render.energy)
function fixed(x, digits) {
  const s = x.toFixed(digits);
  return /^-0(\.0*)?$/.test(s) ? s.slice(1) : s;
}

function fmt(x, digits = 3) {
  if (x === null || x === undefined || Number.isNaN(x)) return "";
  return typeof x === "number" ? fixed(x, digits) : String(x);
}

function hms(s) {
  if (!s && s !== 0) return "";
  s = Math.round(s);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  return `${h}:${String(m).padStart(2, "0")}:${String(r).padStart(2, "0")}`;
}

function renderHeader(s) {
  document.title = `hts — ${s.campaign}`;
  document.getElementById("title").textContent = `hts — ${s.campaign}`;
  document.getElementById("subtitle").textContent = `${s.description || ""}  ·  ${s.store}`;
  const st = document.getElementById("state");
  const finished = s.finalized;
  st.className = "state " + (finished ? "done" : "running");
  const when = s.updated_at ? new Date(s.updated_at * 1000).toLocaleTimeString() : "";
  st.textContent = (finished ? "finished" : "running") + (when ? ` · last commit ${when}` : "");
}

function renderFunnel(s) {
  const box = document.getElementById("funnel");
  box.replaceChildren();
  const rows = [{ label: "candidates stored", n: s.rows, nums: `${s.rows} candidates` }];
  for (const st of s.stages) {
    const name = { prefilter: "prefiltered", rescore: "rescored", validate: "DFT-validated" }[st.stage] || st.stage;
    rows.push({
      label: `${name} (${st.model || st.stage})`,
      n: st.kept,
      nums: `in ${st.in} · ok ${st.ok} · failed ${st.failed} · kept ${st.kept}`,
      stage: st.stage,
    });
  }
  const top = Math.max(1, ...rows.map((r) => r.n));
  for (const r of rows) {
    const bar = el("div", { class: "bar" });
    bar.style.width = `${(100 * r.n) / top}%`;
    const row = el("div", { class: "row" }, el("div", { class: "label", text: r.label }), el("div", {}, bar),
      el("div", { class: "nums", text: r.nums }));
    if (r.stage) row.dataset.stage = r.stage;
    row.dataset.count = r.n;
    box.append(row);
  }
  document.getElementById("rates").textContent =
    `${fmt(s.rate_overall, 2)} candidates/s over ${hms(s.wall_s)} of run time · ` +
    `${fmt(s.rate_last_minute, 2)} candidates/s in the last minute`;
  box.dataset.rows = s.rows;
}

// the audit, the economics and the warning: hts.audit's numbers (snapshot.funnel), only formatted here
function pct(x, digits = 1) {
  return x === null || x === undefined ? "–" : `${fixed(100 * x, digits)} %`;
}

function secs(x) {
  if (x === null || x === undefined) return "–";
  return x < 600 ? `${fixed(x, x < 10 ? 2 : 1)} s` : `${hms(x)} (${Math.round(x)} s)`;
}

function interval(ci, digits = 3) {
  return ci ? `[${fmt(ci[0], digits)}, ${fmt(ci[1], digits)}]` : "";
}

function stat(key, value, label, bad) {
  const d = el("div", { class: bad ? "stat bad" : "stat" }, el("div", { class: "v", text: value }),
    el("div", { class: "k", text: label }));
  d.dataset.key = key;
  return d;
}

function renderEconomics(s) {
  const f = s.funnel || { audit: null, economics: null, warning: null };
  const banner = document.getElementById("audit-warning");
  banner.hidden = !f.warning;
  banner.textContent = f.warning ? `Warning: ${f.warning}` : "";
  const box = document.getElementById("audit");
  const hint = document.getElementById("audit-hint");
  box.replaceChildren();
  const a = f.audit;
  if (!a) {
    box.hidden = true;
    hint.textContent = "No audit in this campaign: set stages.prefilter.audit (e.g. 0.02) to send a " +
      "random share of the prefilter's rejects to the teacher and measure what the prefilter misses.";
  } else {
    box.hidden = false;
    hint.textContent = `Audit: ${pct(a.share)} of the prefilter's ${a.rejected} rejects go to the teacher too; ` +
      `recall of teacher-stable candidates ${a.stable_kept} / (${a.stable_kept} + miss rate × ${a.rejected}), ` +
      "95 % Clopper–Pearson intervals" +
      (a.target_recall !== null && a.target_recall !== undefined ? `; target recall ${fmt(a.target_recall, 2)}` : "") +
      (a.scored ? "." : "; no audited reject scored by the teacher yet.");
    box.append(
      stat("audited", String(a.audited), "rejects audited"),
      stat("scored", String(a.scored), "scored by the teacher"),
      stat("missed", String(a.missed), "missed (teacher-stable)"),
      stat("miss_rate", fmt(a.miss_rate) || "–", `miss rate ${interval(a.miss_rate_ci)}`),
      stat("recall", fmt(a.recall) || "–", `recall, 95 % CI ${interval(a.recall_ci)}`, a.below_target),
      stat("enrichment", a.enrichment === null || a.enrichment === undefined ? "–" : `${fmt(a.enrichment, 1)}×`,
        "enrichment over random"));
  }
  const e = f.economics;
  const t = document.getElementById("economics");
  const totals = document.getElementById("economics-totals");
  totals.replaceChildren();
  if (!e) { t.replaceChildren(); return; }
  t.replaceChildren(el("tr", {}, ...["stage", "in", "kept", "discovery rate (kept / screened)", "worker time",
    "s per candidate"].map((h) => el("th", { text: h }))));
  for (const st of e.stages) {
    const tr = el("tr", {}, el("td", { text: st.stage }), el("td", { class: "num", text: st.in }),
      el("td", { class: "num", text: st.kept }), el("td", { class: "num", text: pct(st.discovery_rate, 2) }),
      el("td", { class: "num", text: secs(st.worker_s) }),
      el("td", { class: "num", text: st.s_per_candidate === null ? "–" : fmt(st.s_per_candidate, 3) }));
    tr.dataset.stage = st.stage;
    t.append(tr);
  }
  totals.append(stat("screened", String(e.screened), "candidates screened"),
    stat("worker_s", secs(e.worker_s), "worker time, all stages"));
  if ("s_per_stable_hit" in e) totals.append(stat("s_per_stable_hit", secs(e.s_per_stable_hit), "worker time per teacher-stable hit"));
  if ("s_per_dft_hit" in e) totals.append(stat("s_per_dft_hit", secs(e.s_per_dft_hit), `worker time per DFT-confirmed hit (${e.dft_confirmed})`));
  if ("teacher_saved_s" in e) {
    totals.append(stat("teacher_saved_s", secs(e.teacher_saved_s),
      `teacher time saved (${pct(e.teacher_saved_share)} of ${secs(e.teacher_only_s)} for the teacher alone)`));
  }
  if ("audit_teacher_s" in e) totals.append(stat("audit_teacher_s", secs(e.audit_teacher_s), "the audit's teacher time"));
}

function renderTimes(s) {
  const t = document.getElementById("stage-times");
  t.replaceChildren(el("tr", {}, el("th", { text: "stage" }), el("th", { text: "candidates" }),
    el("th", { text: "mean s/candidate" }), el("th", { text: "worker time" })));
  for (const [st, v] of Object.entries(s.time_per_stage)) {
    t.append(el("tr", {}, el("td", { text: st }), el("td", { class: "num", text: v.n }),
      el("td", { class: "num", text: fmt(v.mean_s, 2) }), el("td", { class: "num", text: hms(v.total_s) })));
  }
}

function renderFailures(s) {
  const t = document.getElementById("failures");
  t.replaceChildren(el("tr", {}, el("th", { text: "count" }), el("th", { text: "reason" }), el("th", { text: "example ids" })));
  if (!s.failures.length) t.append(el("tr", {}, el("td", { colspan: 3, text: "none" })));
  for (const f of s.failures) {
    t.append(el("tr", {}, el("td", { class: "num", text: f.count }), el("td", { text: f.reason }),
      el("td", { class: "ids", text: f.ids.join(", ") })));
  }
}

function structureLinks(id) {
  const span = el("span");
  for (const fmtName of ["cif", "extxyz"]) {
    let href = `structure/${id}.${fmtName}`;
    if (STATIC) {
      const s = (STATIC.structures || {})[id];
      if (!s) continue;
      href = s[fmtName];
    }
    span.append(el("a", { class: "dl", href, download: `${id}.${fmtName}`, text: fmtName }));
  }
  return span;
}

function bestColumns(s) {
  const cols = [
    { key: "id", label: "id" },
    { key: "formula", label: "formula" },
    { key: "prototype", label: "prototype" },
    { key: "formation_energy", label: "E_form (eV/atom)", num: true },
  ];
  for (const st of s.stage_names) cols.push({ key: `hull:${st}`, label: `E_hull ${st}`, num: true });
  cols.push({ key: "stage", label: "deepest stage" }, { key: "kept", label: "kept" });
  return cols;
}

function cell(b, key) {
  if (key.startsWith("hull:")) return b.e_above_hull_by_stage[key.slice(5)];
  return b[key];
}

// -- the clicked candidate's structure (drawn by viewer.js) ----------------------------------

function pickClass(id, extra = "") {
  return `pick${VIEWER.id === id ? " selected" : ""}${extra ? " " + extra : ""}`;
}

// what the page knows of a candidate, from whichever table lists it
function candidateInfo(id) {
  const s = current || {};
  const b = (s.best || []).find((x) => x.id === id);
  if (b) {
    return { formula: b.formula, info: `${b.stage}: E_hull ${fmt(b.e_above_hull)} eV/atom · E_form ${fmt(b.formation_energy)} eV/atom` };
  }
  const l = ((s.lab || {}).candidates || []).find((x) => x.id === id);
  if (l) return { formula: l.formula, info: l.error ? "" : `${l.space_group} (${l.space_group_number}) · E_hull ${fmt(l.e_above_hull)} eV/atom` };
  const d = ((s.dft || {}).candidates || []).find((x) => x.id === id);
  if (d) return { formula: d.formula, info: `DFT: E_hull ${fmt(d.e_above_hull.validate)} eV/atom · E_form ${fmt(d.formation_energy.validate)} eV/atom` };
  return { formula: "", info: "" };
}

function pickable(container) {
  container.addEventListener("click", (e) => {
    if (e.target.closest("a, summary, details, th")) return; // downloads, patterns, sorting
    const tr = e.target.closest("tr[data-id]");
    if (tr) showStructure({ id: tr.dataset.id, ...candidateInfo(tr.dataset.id) });
  });
}

function renderBest(s) {
  const t = document.getElementById("best");
  const cols = bestColumns(s);
  const head = el("tr");
  cols.forEach((c, i) => {
    const th = el("th", { text: c.label });
    if (sortState.col === i) th.className = sortState.dir > 0 ? "asc" : "desc";
    th.addEventListener("click", () => {
      sortState = { col: i, dir: sortState.col === i ? -sortState.dir : 1 };
      renderBest(current);
    });
    head.append(th);
  });
  head.append(el("th", { text: "structure" }));
  t.replaceChildren(head);
  let rows = s.best.slice();
  if (sortState.col !== null) {
    const c = cols[sortState.col];
    rows.sort((a, b) => {
      const x = cell(a, c.key), y = cell(b, c.key);
      if (x === null || x === undefined) return 1;
      if (y === null || y === undefined) return -1;
      return (x < y ? -1 : x > y ? 1 : 0) * sortState.dir;
    });
  }
  for (const b of rows) {
    const tr = el("tr", { class: pickClass(b.id) });
    tr.dataset.id = b.id;
    for (const c of cols) {
      const v = cell(b, c.key);
      tr.append(el("td", { class: c.num ? "num" : "", text: c.key === "kept" ? (v ? "yes" : "") : c.num ? fmt(v) : v ?? "" }));
    }
    tr.append(el("td", {}, structureLinks(b.id)));
    t.append(tr);
  }
}

function renderDft(s) {
  const box = document.getElementById("dft");
  box.replaceChildren();
  if (!s.dft) return;
  const d = s.dft;
  const mlip = Object.keys(d.mae);
  const model = Object.fromEntries(s.stages.map((st) => [st.stage, st.model]));
  box.append(el("h2", { text: `MLIP against DFT (${d.code})` }));
  // the error of each MLIP stage, over the candidates it can be measured on
  const te = el("table", { id: "dft-errors" });
  te.append(el("tr", {}, ...["stage", "model", "candidates", "formation energy MAE (meV/atom)", "e_above_hull MAE (meV/atom)"]
    .map((h) => el("th", { text: h }))));
  for (const st of mlip) {
    const m = d.mae[st];
    const tr = el("tr", {}, el("td", { text: st }), el("td", { text: model[st] || "" }),
      el("td", { class: "num", text: m.n }),
      el("td", { class: "num", text: m.n ? fmt(1000 * m.formation_energy, 0) : "" }),
      el("td", { class: "num", text: m.n ? fmt(1000 * m.e_above_hull, 0) : "" }));
    tr.dataset.stage = st;
    tr.dataset.n = m.n;
    te.append(tr);
  }
  box.append(te);
  // where the teacher and DFT disagree on stability: what a user looks at first
  const dis = d.disagreements || [];
  const limit = d.threshold === null || d.threshold === undefined ? "its keep rule" : `e_above_hull ≤ ${d.threshold} eV/atom`;
  const flags = el("div", { id: "dft-disagreements" });
  if (!d.teacher) {
    flags.append(el("p", { class: "hint", text: "no MLIP stage before DFT: nothing to compare" }));
  } else if (!dis.length) {
    flags.append(el("p", { class: "hint", text: `the teacher (${d.teacher}) and DFT agree on the stability of every validated candidate (DFT: ${limit})` }));
  } else {
    flags.append(el("p", { class: "warn", text: `${dis.length} candidate(s) where the teacher (${d.teacher}) and DFT disagree on stability (DFT stable: ${limit}); look at these first` }));
    const ul = el("ul");
    for (const x of dis) {
      const li = el("li", { text: `${x.formula} (${x.id}): ${x.kind} — e_above_hull teacher ${fmt(x.teacher_e_above_hull)}, DFT ${fmt(x.dft_e_above_hull)} eV/atom` });
      li.dataset.id = x.id;
      ul.append(li);
    }
    flags.append(ul);
  }
  box.append(flags);
  const t = el("table", { id: "dft-table" });
  const head = el("tr");
  for (const h of ["id", "formula", "prototype", ...mlip.map((m) => `E_form ${m}`), "E_form DFT", "E_hull DFT", "teacher vs DFT", "converged", "time", "status"])
    head.append(el("th", { text: h }));
  t.append(head);
  for (const c of d.candidates) {
    const tr = el("tr", { class: pickClass(c.id, c.disagreement ? "flag" : "") });
    tr.dataset.id = c.id;
    tr.append(el("td", { class: "ids", text: c.id }), el("td", { text: c.formula }), el("td", { text: c.prototype }));
    for (const m of mlip) tr.append(el("td", { class: "num", text: fmt(c.formation_energy[m]) }));
    tr.append(el("td", { class: "num", text: fmt(c.formation_energy.validate) }),
      el("td", { class: "num", text: fmt(c.e_above_hull.validate) }),
      el("td", { text: c.disagreement || "" }),
      el("td", { text: c.converged ? "yes" : "no" }), el("td", { text: hms(c.time_s) }),
      el("td", { text: c.status === "ok" ? "ok" : c.reason }));
    t.append(tr);
  }
  box.append(t);
}

const labOpen = new Set(); // candidates whose pattern is unfolded, kept across redraws

function labHref(id, kind) {
  if (STATIC) return ((STATIC.lab || {})[id] || {})[kind];
  return `xrd/${id}.${kind}`;
}

function renderLab(s) {
  const sec = document.getElementById("lab-section");
  const lab = s.lab;
  if (!lab || !lab.candidates.length) { sec.hidden = true; return; }
  sec.hidden = false;
  const what = lab.stage === "validate" ? "DFT-validated candidates" : `final survivors (kept at ${lab.stage})`;
  const shown = lab.candidates.length < lab.total ? `the ${lab.candidates.length} most stable of ${lab.total} ` : "";
  document.getElementById("lab-hint").textContent =
    `${shown}${what}: simulated powder pattern (Cu Kα), space group and conventional cell, to check a synthesis against. ` +
    "hts export writes the same as files (OUT/xrd/).";
  const t = document.getElementById("lab");
  t.replaceChildren(el("tr", {}, ...["id", "formula", "E_hull (eV/atom)", "space group", "crystal system",
    "a, b, c (Å)", "α, β, γ (°)", "strongest lines: 2θ (hkl) I", "files", "pattern"].map((h) => el("th", { text: h }))));
  for (const c of lab.candidates) {
    const tr = el("tr", { class: pickClass(c.id) });
    tr.dataset.id = c.id;
    if (c.error) {
      tr.append(el("td", { class: "ids", text: c.id }), el("td", { text: c.formula }), el("td", { colspan: 8, text: c.error }));
      t.append(tr);
      continue;
    }
    const files = el("span");
    for (const [kind, label] of [["csv", "peaks"], ["cif", "cell"]]) {
      const href = labHref(c.id, kind);
      if (href) files.append(el("a", { class: "dl", href, download: kind === "cif" ? `${c.id}_conventional.cif` : `${c.id}_xrd.csv`, text: label }));
    }
    const det = el("details");
    det.append(el("summary", { text: "show" }));
    const img = el("img", { class: "plot", alt: `powder pattern of ${c.formula}` });
    det.append(img);
    const load = () => { if (!img.src && labHref(c.id, "png")) img.src = labHref(c.id, "png"); };
    if (labOpen.has(c.id)) { det.open = true; load(); }
    det.addEventListener("toggle", () => { if (det.open) { labOpen.add(c.id); load(); } else labOpen.delete(c.id); });
    tr.append(el("td", { class: "ids", text: c.id }), el("td", { text: c.formula }),
      el("td", { class: "num", text: fmt(c.e_above_hull) }),
      el("td", { text: `${c.space_group} (${c.space_group_number})` }),
      el("td", { text: c.crystal_system }),
      el("td", { class: "num", text: [c.a, c.b, c.c].map((x) => fmt(x, 3)).join(", ") }),
      el("td", { class: "num", text: [c.alpha, c.beta, c.gamma].map((x) => fmt(x, 1)).join(", ") }),
      el("td", { text: c.strongest_peaks }),
      el("td", {}, files), el("td", {}, det));
    t.append(tr);
  }
}

function renderParsl(s) {
  const sec = document.getElementById("parsl-section");
  const box = document.getElementById("parsl");
  if (!s.parsl) { sec.hidden = true; return; }
  sec.hidden = false;
  box.replaceChildren();
  const p = s.parsl;
  if (p.error) { box.append(el("p", { text: p.error })); return; }
  const states = Object.entries(p.task_states).map(([k, v]) => `${k} ${v}`).join(" · ");
  box.append(el("p", { text: `run ${p.run_id} · began ${p.began} · tasks: ${states}` }));
  const tb = el("table");
  tb.append(el("tr", {}, ...["executor", "block", "job id", "status", "at"].map((h) => el("th", { text: h }))));
  for (const b of p.blocks) tb.append(el("tr", {}, ...[b.executor, b.block, b.job_id ?? "", b.status, b.at].map((v) => el("td", { text: v }))));
  const tw = el("table");
  tw.append(el("tr", {}, ...["host", "block", "workers", "cpus", "active", "heartbeat"].map((h) => el("th", { text: h }))));
  for (const w of p.workers) tw.append(el("tr", {}, ...[w.host, w.block, w.workers, w.cpus, w.active ? "yes" : "no", w.heartbeat].map((v) => el("td", { text: v }))));
  box.append(el("h2", { text: "blocks" }), tb, el("h2", { text: "workers" }), tw);
}

function renderPlots(key) {
  for (const name of ["throughput", "hull", "parity"]) {
    const img = document.getElementById(`plot-${name}`);
    img.src = STATIC ? STATIC.plots[name] : `plot/${name}.svg?v=${encodeURIComponent(key)}`;
  }
}

function render(s) {
  current = s;
  renderHeader(s);
  renderFunnel(s);
  renderEconomics(s);
  renderTimes(s);
  renderFailures(s);
  renderBest(s);
  renderDft(s);
  renderLab(s);
  renderParsl(s);
  const key = `${s.rows}-${s.updated_at}-${s.finalized}`;
  if (key !== lastKey) {
    renderPlots(key);
    lastKey = key;
  }
  document.body.dataset.rows = s.rows;
}

async function poll() {
  try {
    const r = await fetch("api/snapshot", { cache: "no-store" });
    if (r.ok) render(await r.json());
  } catch (e) {
    document.getElementById("state").textContent = "server not reachable; retrying";
  }
  setTimeout(poll, POLL_MS);
}

for (const id of ["best", "lab", "dft"]) pickable(document.getElementById(id));
document.getElementById("viewer-close").addEventListener("click", closeStructure);
if (STATIC) render(STATIC.snapshot);
else poll();
