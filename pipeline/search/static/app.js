// itmflow search page: plain JavaScript, no build step, no network beyond this server.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const state = { query: null, info: null, detail: null, match: null };

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "dataset") Object.assign(node.dataset, v);
    else if (k === "className") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

const fileUrl = (id) => `/api/images/${encodeURIComponent(id)}/file`;

async function api(path, body) {
  const opts = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const res = await fetch(path, opts);
  const data = await res.json().catch(() => ({ error: `HTTP ${res.status}` }));
  if (!res.ok) throw new Error(data.field ? `${data.error} (field: ${data.field})` : data.error);
  return data;
}

function showError(msg) {
  $("error").textContent = msg || "";
  $("error").hidden = !msg;
}

async function loadInfo() {
  try {
    const info = await api("/api/info");
    state.info = info;
    $("info").textContent = `${info.model} · ${info.images} images · ${info.captions} captions` +
      (info.regions ? ` · regions (${info.detector})` : " · no regions");
    $("banner").hidden = !info.random_weights;
    document.body.dataset.ready = "1";
  } catch (e) { showError(`cannot read /api/info: ${e.message}`); }
}

async function runQuery(query) {
  state.query = query;
  showError("");
  $("status").textContent = "searching…";
  const body = { [query.field]: query.value, target: query.target, k: query.k,
                 offset: query.offset, limit: query.limit };
  try {
    const t0 = performance.now();
    const data = await api("/api/search", body);
    const ms = Math.round(performance.now() - t0);
    render(data);
    const last = data.offset + data.results.length;
    $("status").textContent = data.results.length
      ? `${data.offset + 1}–${last} of ${data.total} ${data.target} (${ms} ms)`
      : `no results (${ms} ms)`;
  } catch (e) {
    $("status").textContent = "";
    showError(e.message);
  }
}

function render(data) {
  const grid = $("results"), list = $("caption-results");
  grid.replaceChildren();
  list.replaceChildren();
  grid.dataset.target = data.target;
  grid.hidden = data.target !== "images";
  list.hidden = data.target !== "captions";
  if (data.target === "images") {
    for (const hit of data.results) {
      const img = el("img", { src: fileUrl(hit.image_id), alt: hit.file || hit.image_id, loading: "lazy" });
      const card = el("div", { className: "result", tabindex: "0",
                               dataset: { id: hit.image_id, rank: hit.rank, score: hit.score } },
        img,
        el("div", { className: "meta" }, el("span", { className: "rank" }, `#${hit.rank}`),
           el("span", { className: "score" }, hit.score.toFixed(4))),
        el("div", { className: "id", title: hit.image_id }, hit.image_id));
      if (hit.match) card.append(el("div", { className: "match", title: "closest caption of this image" },
                                     `“${hit.match.text}”`));
      const open = () => openDetail(hit.image_id, hit.match ? hit.match.caption_id : null);
      card.addEventListener("click", open);
      card.addEventListener("keydown", (ev) => { if (ev.key === "Enter") open(); });
      grid.append(card);
    }
  } else {
    list.start = data.offset + 1;
    for (const hit of data.results) {
      const li = el("li", { className: "result-caption" + (hit.of_query_image ? " own" : ""),
                            dataset: { id: hit.caption_id, rank: hit.rank, score: hit.score,
                                       image: hit.image_id } },
        el("span", { className: "score" }, hit.score.toFixed(4)),
        el("span", { className: "text" }, hit.text),
        el("span", { className: "muted" }, `  (${hit.image_id})`));
      if (hit.image_embedded) li.addEventListener("click", () => openDetail(hit.image_id, hit.caption_id));
      list.append(li);
    }
  }
  const pages = data.total > data.limit;
  $("pager").hidden = !pages;
  $("prev").disabled = data.offset === 0;
  $("next").disabled = data.offset + data.limit >= data.total;
  $("page-label").textContent = `page ${Math.floor(data.offset / data.limit) + 1} of ${Math.ceil(data.total / data.limit)}`;
}

function regionLabel(r) {
  const conf = (v) => (v === null || v === undefined ? "?" : v.toFixed(2));
  const name = [r.attribute, r.object].filter(Boolean).join(" ") || `object ${r.object_id}`;
  return `${name} (${conf(r.object_conf)}${r.attribute ? `, attr ${conf(r.attribute_conf)}` : ""})`;
}

function drawRegions() {
  const d = state.detail, svg = $("overlay");
  svg.replaceChildren();
  if (!d || !d.regions) { $("region-count").textContent = ""; return; }
  const img = $("detail-img");
  const w = d.width || img.naturalWidth || 1, h = d.height || img.naturalHeight || 1;
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.setAttribute("preserveAspectRatio", "none");
  const min = parseFloat($("conf").value);
  let shown = 0;
  d.regions.forEach((r, i) => {
    const conf = r.object_conf === null ? 1 : r.object_conf;
    if (conf < min) return;
    shown += 1;
    const [x1, y1, x2, y2] = r.box;
    const g = document.createElementNS(SVG, "g");
    const rect = document.createElementNS(SVG, "rect");
    for (const [k, v] of Object.entries({ x: x1, y: y1, width: Math.max(1, x2 - x1),
                                          height: Math.max(1, y2 - y1) })) rect.setAttribute(k, v);
    rect.setAttribute("class", "region");
    rect.dataset.index = i;
    rect.dataset.conf = conf;
    const label = regionLabel(r);
    const title = document.createElementNS(SVG, "title");
    title.textContent = label;
    rect.append(title);
    rect.addEventListener("mousemove", (ev) => {
      const hl = $("hover-label"), box = $("stage").getBoundingClientRect();
      hl.textContent = label;
      hl.style.left = `${ev.clientX - box.left + 12}px`;
      hl.style.top = `${ev.clientY - box.top + 12}px`;
      hl.hidden = false;
    });
    rect.addEventListener("mouseleave", () => { $("hover-label").hidden = true; });
    const text = document.createElementNS(SVG, "text");
    text.setAttribute("x", x1 + 3);
    text.setAttribute("y", y1 + 14 * (h / Math.max(1, $("stage").clientHeight || h)));
    text.setAttribute("font-size", `${12 * (h / Math.max(1, $("stage").clientHeight || h))}`);
    text.textContent = label;
    g.append(rect, text);
    svg.append(g);
  });
  svg.classList.toggle("no-labels", !$("show-labels").checked);
  svg.classList.toggle("no-regions", !$("show-regions").checked);
  $("region-count").textContent = `${shown} of ${d.regions.length} regions`;
}

async function openDetail(imageId, matchCaptionId) {
  showError("");
  let d;
  try { d = await api(`/api/images/${encodeURIComponent(imageId)}`); }
  catch (e) { showError(e.message); return; }
  state.detail = d;
  state.match = matchCaptionId;
  $("detail-title").textContent = `${d.image_id}${d.file && d.file !== d.image_id ? ` — ${d.file}` : ""}`;
  $("no-regions").hidden = d.regions !== null;
  const ul = $("captions");
  ul.replaceChildren();
  for (const c of d.captions) {
    const li = el("li", { dataset: { id: c.caption_id } }, c.text);
    if (c.caption_id === matchCaptionId) li.className = "match";
    ul.append(li);
  }
  const img = $("detail-img");
  $("overlay").replaceChildren();
  img.onload = drawRegions;
  img.onerror = () => { $("region-count").textContent = "the image file cannot be shown"; drawRegions(); };
  img.src = fileUrl(d.image_id);
  img.alt = d.file || d.image_id;
  $("detail").hidden = false;
  if (img.complete && img.naturalWidth) drawRegions();
}

function closeDetail() {
  $("detail").hidden = true;
  state.detail = null;
}

function submitFromForm(offset = 0) {
  const [field, target] = $("mode").value.split(":");
  runQuery({ field, target, value: $("query").value, offset,
             k: parseInt($("k").value, 10) || 100, limit: parseInt($("limit").value, 10) || 20 });
}

document.addEventListener("DOMContentLoaded", () => {
  loadInfo();
  $("query-form").addEventListener("submit", (ev) => { ev.preventDefault(); submitFromForm(0); });
  $("prev").addEventListener("click", () => {
    const q = state.query; if (q) runQuery({ ...q, offset: Math.max(0, q.offset - q.limit) });
  });
  $("next").addEventListener("click", () => {
    const q = state.query; if (q) runQuery({ ...q, offset: q.offset + q.limit });
  });
  $("close").addEventListener("click", closeDetail);
  $("detail").addEventListener("click", (ev) => { if (ev.target === $("detail")) closeDetail(); });
  document.addEventListener("keydown", (ev) => { if (ev.key === "Escape") closeDetail(); });
  $("conf").addEventListener("input", () => {
    $("conf-value").textContent = parseFloat($("conf").value).toFixed(2); drawRegions();
  });
  $("show-labels").addEventListener("change", drawRegions);
  $("show-regions").addEventListener("change", drawRegions);
  $("find-captions").addEventListener("click", () => {
    if (!state.detail) return;
    $("mode").value = "image_id:captions"; $("query").value = state.detail.image_id;
    closeDetail(); submitFromForm(0);
  });
  $("find-images").addEventListener("click", () => {
    if (!state.detail) return;
    $("mode").value = "image_id:images"; $("query").value = state.detail.image_id;
    closeDetail(); submitFromForm(0);
  });
  window.addEventListener("resize", drawRegions);
});
