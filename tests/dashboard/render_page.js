// Runs the scripts of a static `hts report` page in node against a minimal DOM and prints, as
// JSON, what the page shows: {ids: {id: {hidden, text}}, stats: {key: {value, label, bad}},
// rows: {tableId: [[cell texts]]}}.  No browser needed; tests/dashboard/test_economics.py uses it.
"use strict";
const fs = require("fs");
const vm = require("vm");

class Node {
  constructor(tag) {
    this.tagName = tag;
    this.children = [];
    this.attrs = {};
    this.dataset = {};
    this.style = {};
    this.hidden = false;
    this.className = "";
    this._text = "";
  }
  set textContent(v) { this.children = []; this._text = String(v); }
  get textContent() { return this._text + this.children.map((c) => c.textContent).join(" "); }
  append(...cs) {
    for (const c of cs) this.children.push(typeof c === "string" ? Object.assign(new Node("#text"), { _text: c }) : c);
  }
  replaceChildren(...cs) { this.children = []; this._text = ""; this.append(...cs); }
  setAttribute(k, v) { this.attrs[k] = String(v); if (k === "id") ids[v] = this; }
  addEventListener() {}
  walk(f) { f(this); for (const c of this.children) c.walk(f); }
}

const ids = {};
const document = {
  title: "",
  body: new Node("body"),
  createElement: (tag) => new Node(tag),
  getElementById: (id) => ids[id] || (ids[id] = new Node("div")),
};
const page = fs.readFileSync(process.argv[2], "utf8");
// the page's own hidden sections start hidden, as the browser would have them
for (const m of page.matchAll(/<([a-z0-9]+) [^>]*id="([^"]+)"[^>]*>/g)) {
  ids[m[2]] = Object.assign(new Node(m[1]), { hidden: /\shidden[\s>]/.test(m[0]) });
}
const scripts = [...page.matchAll(/<script>([\s\S]*?)<\/script>/g)].map((m) => m[1]);
const ctx = { document, console, setTimeout: () => 0, fetch: () => Promise.reject(new Error("offline")) };
ctx.window = ctx;
vm.createContext(ctx);
for (const js of scripts) vm.runInContext(js, ctx);

const out = { ids: {}, stats: {}, rows: {} };
for (const [id, n] of Object.entries(ids)) {
  out.ids[id] = { hidden: n.hidden, text: n.textContent.replace(/\s+/g, " ").trim() };
  if (n.tagName === "table") {
    out.rows[id] = n.children.map((tr) => tr.children.map((td) => td.textContent));
  }
}
for (const n of Object.values(ids)) {
  n.walk((c) => {
    if (c.dataset.key) {
      out.stats[c.dataset.key] = {
        value: c.children[0].textContent, label: c.children[1].textContent, bad: c.className.includes("bad"),
      };
    }
  });
}
process.stdout.write(JSON.stringify(out));
