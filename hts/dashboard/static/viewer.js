// hts dashboard: the 3-D structure of a clicked candidate, drawn by 3Dmol.js.
//
// 3Dmol.js 2.5.5 (npm package 3dmol, build/3Dmol-min.js; BSD-3-Clause, see 3Dmol.LICENSE.txt) is
// vendored beside this file. The live dashboard loads it on the first click, from the package (no CDN);
// `hts report --html` inlines it, so the report needs nothing but itself. The structure is the stored,
// relaxed cell, as the CIF the page already offers for download: just the cell (no periodic images),
// so the viewer's atom count is the candidate's number of sites, written to #viewer's data-atoms.
"use strict";

const VIEWER = { viewer: null, model: null, lib: null, id: null }; // window.htsViewer, for tests

function load3Dmol() {
  if (window.$3Dmol) return Promise.resolve(window.$3Dmol);
  if (!VIEWER.lib) {
    VIEWER.lib = new Promise((resolve, reject) => {
      const s = document.createElement("script");
      s.src = "static/3Dmol-min.js";
      s.onload = () => resolve(window.$3Dmol);
      s.onerror = () => { VIEWER.lib = null; reject(new Error("could not load static/3Dmol-min.js")); };
      document.head.append(s);
    });
  }
  return VIEWER.lib;
}

// the candidate's CIF: embedded (a data URI) in a static report, else from the server
async function structureCif(id) {
  if (window.HTS_STATIC) {
    const uri = ((window.HTS_STATIC.structures || {})[id] || {}).cif;
    if (!uri) throw new Error("this report holds no structure for it");
    const bytes = Uint8Array.from(atob(uri.slice(uri.indexOf(",") + 1)), (c) => c.charCodeAt(0));
    return new TextDecoder().decode(bytes);
  }
  const r = await fetch(`structure/${encodeURIComponent(id)}.cif`, { cache: "no-store" });
  if (!r.ok) throw new Error(`the server answered ${r.status}`);
  return r.text();
}

function hexColor(c) {
  return `#${(typeof c === "number" ? c : 0xff1493).toString(16).padStart(6, "0")}`;
}

// the cell's centre in 3Dmol's Cartesian frame (a along x, b in the xy plane: its CIF convention)
function cellCentre(cr) {
  const rad = Math.PI / 180, [al, be, ga] = [cr.alpha * rad, cr.beta * rad, cr.gamma * rad];
  const u = Math.cos(be), v = (Math.cos(al) - Math.cos(be) * Math.cos(ga)) / Math.sin(ga);
  const w = Math.sqrt(Math.max(0, 1 - u * u - v * v));
  return [(cr.a + cr.b * Math.cos(ga) + cr.c * u) / 2, (cr.b * Math.sin(ga) + cr.c * v) / 2, (cr.c * w) / 2];
}

// a fallback palette (Tableau 10) for elements whose Jmol colours look alike
const DISTINCT = [0x4e79a7, 0xf28e2b, 0xe15759, 0x76b7b2, 0x59a14f, 0xedc948, 0xb07aa1, 0xff9da7, 0x9c755f, 0xbab0ac];

// colours an eye confuses: "redmean" weighted RGB distance (of ~765 at most); Sr/F and Ca/Cl are
// both green in Jmol's scheme, O/N or Li/Cl are far apart
function alike(p, q) {
  const [r1, r2] = [(p >> 16) & 255, (q >> 16) & 255];
  const [dr, dg, db] = [16, 8, 0].map((k) => ((p >> k) & 255) - ((q >> k) & 255));
  const rm = (r1 + r2) / 2;
  return Math.sqrt((2 + rm / 256) * dr * dr + 4 * dg * dg + (2 + (255 - rm) / 256) * db * db) < 280;
}

// element -> colour: Jmol's, unless an element already shown looks alike (Ca and Cl are both green)
function elementColours(lib, elems) {
  const out = {};
  for (const e of elems) {
    const jmol = lib.elementColors.Jmol[e] ?? lib.elementColors.defaultColor;
    const taken = Object.values(out);
    out[e] = taken.some((c) => alike(c, jmol)) ? DISTINCT.find((c) => !taken.some((t) => alike(t, c))) ?? jmol : jmol;
  }
  return out;
}

function drawLegend(colours, atoms) {
  const legend = document.getElementById("viewer-legend");
  const counts = new Map();
  for (const a of atoms) counts.set(a.elem, (counts.get(a.elem) || 0) + 1);
  legend.replaceChildren();
  for (const [elem, n] of [...counts].sort((x, y) => (x[0] < y[0] ? -1 : 1))) {
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = hexColor(colours[elem]);
    const item = document.createElement("span");
    item.className = "item";
    item.dataset.elem = elem;
    item.append(swatch, `${elem} ×${n}`);
    legend.append(item);
  }
}

function closeStructure() {
  document.getElementById("viewer-panel").hidden = true;
  VIEWER.id = null;
  document.querySelectorAll("tr.selected").forEach((tr) => tr.classList.remove("selected"));
}

// c: {id, formula, info}: draws the candidate's relaxed cell in the panel, rotatable by mouse
async function showStructure(c) {
  const panel = document.getElementById("viewer-panel");
  const box = document.getElementById("viewer");
  const info = document.getElementById("viewer-info");
  panel.hidden = false;
  VIEWER.id = c.id;
  document.getElementById("viewer-title").textContent = `${c.formula || ""} (${c.id})`;
  info.textContent = c.info || "";
  box.dataset.id = c.id;
  box.dataset.state = "loading";
  delete box.dataset.atoms;
  document.querySelectorAll("tr[data-id]").forEach((tr) => tr.classList.toggle("selected", tr.dataset.id === c.id));
  try {
    const [lib, cif] = await Promise.all([load3Dmol(), structureCif(c.id)]);
    if (VIEWER.id !== c.id) return; // another candidate was clicked meanwhile
    if (!VIEWER.viewer) VIEWER.viewer = lib.createViewer(box, { backgroundColor: "white" });
    const v = VIEWER.viewer;
    v.clear();
    const m = v.addModel(cif, "cif");
    const atoms = m.selectedAtoms({});
    const colours = elementColours(lib, [...new Set(atoms.map((a) => a.elem))].sort());
    m.setStyle({}, { sphere: { scale: 0.4, colorscheme: { prop: "elem", map: colours } } });
    v.addUnitCell(m, { box: { color: "black" }, alabel: "a", blabel: "b", clabel: "c" });
    v.resize();
    v.zoomTo(); // fits atoms and cell; then centre on the cell, not on the atoms' extent
    const cr = m.getCrystData();
    if (cr) {
      const view = v.getView();
      const [x, y, z] = cellCentre(cr);
      view[0] = -x; view[1] = -y; view[2] = -z;
      v.setView(view);
      v.rotate(-20, "x"); // tilted off the c axis, so the cell reads as 3-D at first sight
      v.rotate(30, "y");
      v.zoom(1.3); // zoomTo leaves a wide margin around a small cell
      info.textContent = `${c.info ? c.info + " · " : ""}a, b, c ${[cr.a, cr.b, cr.c].map((q) => q.toFixed(3)).join(", ")} Å` +
        ` · α, β, γ ${[cr.alpha, cr.beta, cr.gamma].map((q) => q.toFixed(1)).join(", ")}° · drag to rotate, scroll to zoom`;
    }
    v.render();
    drawLegend(colours, atoms);
    VIEWER.model = m;
    box.dataset.atoms = String(atoms.length);
    box.dataset.state = "drawn";
  } catch (err) {
    if (VIEWER.id !== c.id) return;
    box.dataset.state = "error";
    info.textContent = `could not draw the structure: ${err.message}`;
  }
}

window.htsViewer = VIEWER;
