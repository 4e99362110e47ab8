// fashsdk shop page: browse the catalog, open an item (or upload a photo), change some of its
// attributes and see the matching items; "more like this" on one attribute. Plain JavaScript
// over the /v1 API: no framework, no build step.
"use strict";

const state = {
  schema: null,        // GET /v1/schema
  offset: 0,
  limit: 30,
  total: 0,
  where: {},           // catalog filters: {attribute: value}
  query: null,         // {kind: "id", id, item} or {kind: "photo", file, url, attributes}
};

const $ = (id) => document.getElementById(id);

function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of [].concat(children)) if (child) node.append(child);
  return node;
}

async function api(path, options = {}) {
  const init = { method: options.form || options.json ? "POST" : "GET", headers: {} };
  if (options.json) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(options.json);
  } else if (options.form) {
    init.body = options.form;
  }
  const response = await fetch(path, init);
  const body = await response.json().catch(() => ({ detail: `${response.status} ${response.statusText}` }));
  if (!response.ok) throw new Error(body.detail || `request failed (${response.status})`);
  return body;
}

function showError(error) {
  const box = $("error");
  box.textContent = error ? String(error.message || error) : "";
  box.hidden = !error;
}

async function guarded(node, work) {
  showError(null);
  node.classList.add("busy");
  try { return await work(); } catch (error) { showError(error); } finally { node.classList.remove("busy"); }
}

// ---- cards ------------------------------------------------------------------------------
function photo(url, alt) {
  if (!url) return el("div", { class: "photo" }, el("span", { class: "none", text: "no photo" }));
  return el("div", { class: "photo" }, el("img", { src: url, alt, loading: "lazy" }));
}

function chips(item, wanted = {}) {
  return el("div", { class: "chips" }, Object.entries(item.attributes).filter(([, v]) => v !== null).map(([name, value]) => {
    const guess = name in item.predicted;
    const hit = wanted[name] !== undefined && wanted[name].toLowerCase() === value.toLowerCase();
    const p = guess && item.predicted[name] !== null ? ` ${Math.round(100 * item.predicted[name])}%` : "";
    return el("span", { class: "chip" + (hit ? " hit" : guess ? " guess" : ""), title: `${name}${guess ? " (predicted)" : ""}`,
                        text: value + p });
  }));
}

function card(item, { small = false, wanted = {}, testid = "item" } = {}) {
  const meta = el("div", { class: "meta" }, [
    item.score !== null && item.score !== undefined ? el("span", { class: "score", text: item.score.toFixed(3) }) : null,
    el("b", { text: item.id }),
    small ? null : chips(item, wanted),
  ]);
  const node = el("div", { class: "card", "data-testid": testid, "data-id": item.id, title: describe(item),
                           onclick: () => openItem(item.id) }, [photo(item.image, item.id), meta]);
  if (state.query && state.query.kind === "id" && state.query.id === item.id) node.classList.add("current");
  return node;
}

function describe(item) {
  return `${item.id}: ` + Object.values(item.attributes).filter((v) => v !== null).join(", ");
}

// ---- catalog ----------------------------------------------------------------------------
async function loadSchema() {
  state.schema = await api("/v1/schema");
  const s = state.schema;
  $("about").textContent = `${s.catalog_items.toLocaleString()} items · ${s.family} · ${s.backend}`;
  const filters = $("filters");
  filters.replaceChildren(...s.attributes.map((a) => el("select", {
    "data-testid": `filter-${a.name}`, title: `only items with this ${a.name}`,
    onchange: (event) => {
      if (event.target.value) state.where[a.name] = event.target.value; else delete state.where[a.name];
      state.offset = 0;
      browse();
    },
  }, [el("option", { value: "", text: `${a.name}: any` }), ...a.values.map((v) => el("option", { value: v, text: v }))])));
}

async function browse() {
  await guarded($("catalog-grid"), async () => {
    const page = await api("/v1/browse", { json: { offset: state.offset, limit: state.limit, where: state.where } });
    state.total = page.total;
    $("catalog-grid").replaceChildren(...page.items.map((item) => card(item, { small: true, testid: "catalog-item" })));
    const last = Math.min(state.offset + page.items.length, page.total);
    $("catalog-count").textContent = `${page.total.toLocaleString()} items`;
    $("page").textContent = page.total ? `${state.offset + 1}-${last}` : "nothing matches";
    $("prev").disabled = state.offset === 0;
    $("next").disabled = last >= page.total;
  });
}

// ---- the query item ---------------------------------------------------------------------
async function openItem(id) {
  await guarded($("selected"), async () => {
    const item = await api(`/v1/items/${encodeURIComponent(id)}`);
    state.query = { kind: "id", id: item.id, item };
    renderSelected(item.image, `Item ${item.id}`, item.attributes, item.predicted);
    await runSearch();
    markCurrent();
  });
}

async function openPhoto(file) {
  await guarded($("selected"), async () => {
    const form = new FormData();
    form.append("image", file);
    form.append("top", "1");
    const prediction = await api("/v1/predict/image", { form });
    const attributes = {}, predicted = {};
    for (const [name, values] of Object.entries(prediction.attributes)) {
      attributes[name] = values.length ? values[0].value : null;
      if (values.length) predicted[name] = values[0].probability;
    }
    if (state.query && state.query.url) URL.revokeObjectURL(state.query.url);
    state.query = { kind: "photo", file, url: URL.createObjectURL(file), attributes };
    renderSelected(state.query.url, "Your photo", attributes, predicted);
    await runSearch();
    markCurrent();
  });
}

function renderSelected(image, title, attributes, predicted) {
  $("welcome").hidden = true;
  $("selected").hidden = false;
  $("query-img").src = image || "";
  $("query-title").textContent = title;
  $("query-attrs").replaceChildren(...Object.entries(attributes).flatMap(([name, value]) => [
    el("dt", { text: name }),
    el("dd", { text: (value ?? "unknown") + (name in predicted ? ` (predicted${predicted[name] !== null ? ", " +
      Math.round(100 * predicted[name]) + "%" : ""})` : "") }),
  ]));
  $("changes").replaceChildren(...state.schema.attributes.map((a) => el("label", {}, [
    a.name,
    el("select", { "data-testid": `change-${a.name}`, "data-attribute": a.name,
                   onchange: (event) => event.target.classList.toggle("changed", !!event.target.value) },
       [el("option", { value: "", text: `keep ${attributes[a.name] ?? "as is"}` }),
        ...a.values.filter((v) => v !== attributes[a.name]).map((v) => el("option", { value: v, text: `→ ${v}` }))]),
  ])));
  $("similar").replaceChildren(...state.schema.attributes.map((a) => el("button", {
    type: "button", text: a.name, "data-testid": `similar-${a.name}`, onclick: (event) => runSimilar(a.name, event.target),
  })));
}

function wantedChanges() {
  const change = {};
  for (const select of $("changes").querySelectorAll("select")) if (select.value) change[select.dataset.attribute] = select.value;
  return change;
}

function markCurrent() {
  for (const node of document.querySelectorAll("#catalog-grid .card")) {
    node.classList.toggle("current", !!state.query && state.query.kind === "id" && node.dataset.id === state.query.id);
  }
}

// ---- searching ----------------------------------------------------------------------------
async function runSearch() {
  const q = state.query;
  if (!q) return;
  const change = wantedChanges(), k = Number($("k").value);
  let response;
  if (q.kind === "id") {
    response = await api("/v1/search", { json: { id: q.id, change, k } });
  } else {
    const form = new FormData();
    form.append("image", q.file);
    form.append("change", JSON.stringify(change));
    form.append("k", String(k));
    response = await api("/v1/search/image", { form });
  }
  const what = Object.entries(change).map(([a, v]) => `${a} → ${v}`).join(", ");
  const subject = q.kind === "id" ? `item ${q.id}` : "your photo";
  showResults(what ? `Like ${subject}, with ${what}` : `Looks like ${subject}`, response, change);
}

async function runSimilar(attribute, button) {
  const q = state.query;
  if (!q) return;
  await guarded($("results"), async () => {
    const k = Number($("k").value);
    let response;
    if (q.kind === "id") {
      response = await api("/v1/similar", { json: { id: q.id, attribute, k } });
    } else {
      const form = new FormData();
      form.append("image", q.file);
      form.append("attribute", attribute);
      form.append("k", String(k));
      response = await api("/v1/similar/image", { form });
    }
    for (const b of $("similar").querySelectorAll("button")) b.classList.toggle("active", b === button);
    const subject = q.kind === "id" ? `item ${q.id}` : "your photo";
    showResults(`Same ${attribute} as ${subject}, whatever else`, response, {});
  });
}

function showResults(title, response, wanted) {
  $("results-head").hidden = false;
  $("results-title").textContent = title;
  const t = response.timings;
  $("results-time").textContent = `${response.results.length} results · search ${t.search_ms.toFixed(1)} ms` +
    (t.encode_ms ? ` · encode ${t.encode_ms.toFixed(1)} ms` : "");
  $("results").replaceChildren(...response.results.map((item) => card(item, { wanted, testid: "result-item" })));
}

// ---- wiring ------------------------------------------------------------------------------
function wire() {
  $("prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - state.limit); browse(); });
  $("next").addEventListener("click", () => { state.offset += state.limit; browse(); });
  $("find").addEventListener("submit", (event) => {
    event.preventDefault();
    const id = $("find-id").value.trim();
    if (id) openItem(id);
  });
  $("upload").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) openPhoto(file);
    event.target.value = "";
  });
  $("search").addEventListener("click", () => guarded($("results"), runSearch));
  $("reset").addEventListener("click", () => {
    for (const select of $("changes").querySelectorAll("select")) { select.value = ""; select.classList.remove("changed"); }
    guarded($("results"), runSearch);
  });
}

async function start() {
  wire();
  for (let attempt = 0; ; attempt++) {  // the server may still be loading its index
    try { await loadSchema(); break; } catch (error) {
      showError(error);
      if (attempt > 60) return;
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }
  showError(null);
  await browse();
}

start();
