// capsd fleet page. Everything from the server is put in the page as text (textContent),
// never as markup: host records and keys come from an untrusted store.
"use strict";

const state = { revision: -1, hosts: [], sort: { key: "id", dir: 1 }, lastDomain: null };

// Control characters shown escaped (\u{1b}), so a value cannot fake lines or hide text.
function show(v) {
  if (v === null || v === undefined) return "";
  return String(v).replace(/[\u0000-\u001f\u007f-\u009f]/g,
    (c) => "\\u{" + c.charCodeAt(0).toString(16) + "}");
}
function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = show(text);
  if (cls) e.className = cls;
  return e;
}
function byId(id) { return document.getElementById(id); }
function setMessage(id, text, error) {
  const m = byId(id);
  m.textContent = show(text || "");
  m.classList.toggle("error", !!error);
}
function age(ms, now) {
  if (!ms) return "never";
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 120) return s + " s ago";
  if (s < 7200) return Math.round(s / 60) + " min ago";
  if (s < 172800) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " days ago";
}

async function api(path, options) {
  const r = await fetch(path, Object.assign({ credentials: "same-origin", cache: "no-store" }, options || {}));
  let body = null;
  try { body = await r.json(); } catch (e) { body = null; }
  if (!r.ok) {
    const msg = body && body.message ? body.message : (r.status + " " + r.statusText);
    const err = new Error(msg);
    err.status = r.status;
    throw err;
  }
  return body;
}

// --- Hosts ---
function hostRow(h, now) {
  const qemu = (h.qemu_versions || []).join(", ");
  const cpu = [h.cpu_vendor, h.cpu_model].filter((x) => x).join(" ");
  return {
    id: h.id, arch: h.arch || "", libvirt: h.libvirt_version || "", qemu: qemu, cpu: cpu,
    updated: h.updated_ms || 0, updatedText: age(h.updated_ms, now), documents: h.documents,
    damaged: h.damaged,
  };
}
function renderHosts() {
  const tbody = byId("hosts").querySelector("tbody");
  const filter = byId("host-filter").value.trim().toLowerCase();
  const { key, dir } = state.sort;
  const rows = state.hosts.filter((r) => !filter ||
    [r.id, r.arch, r.libvirt, r.qemu, r.cpu, r.damaged || ""].some((v) => String(v).toLowerCase().includes(filter)));
  rows.sort((a, b) => {
    const x = a[key], y = b[key];
    const c = typeof x === "number" ? x - y : String(x).localeCompare(String(y), undefined, { numeric: true });
    return c * dir || a.id.localeCompare(b.id);
  });
  tbody.replaceChildren(...rows.map((r) => {
    const tr = el("tr");
    tr.dataset.host = r.id;
    tr.append(el("td", r.id, "mono"));
    if (r.damaged) {
      const td = el("td", "record not usable: " + r.damaged, "damaged");
      td.colSpan = 6;
      tr.append(td);
      return tr;
    }
    tr.append(el("td", r.arch), el("td", r.libvirt || "—"), el("td", r.qemu || "—"), el("td", r.cpu || "—"));
    const u = el("td", r.updatedText);
    u.title = r.updated ? new Date(r.updated).toISOString() : "";
    tr.append(u, el("td", String(r.documents)));
    return tr;
  }));
  byId("host-count").textContent = "(" + rows.length + (rows.length !== state.hosts.length ? " of " + state.hosts.length : "") + ")";
  for (const th of byId("hosts").querySelectorAll("th")) {
    th.classList.toggle("asc", th.dataset.key === key && dir === 1);
    th.classList.toggle("desc", th.dataset.key === key && dir === -1);
  }
}
async function loadHosts() {
  const d = await api("api/hosts");
  state.hosts = d.hosts.map((h) => hostRow(h, d.now_ms));
  renderHosts();
  const arches = [...new Set(d.hosts.map((h) => h.arch).filter((a) => a))].sort();
  byId("arches").replaceChildren(...arches.map((a) => { const o = el("option"); o.value = a; return o; }));
  const list = byId("problems");
  list.replaceChildren(...d.problems.map((p) => {
    const li = el("li");
    li.append(el("code", p.key));
    li.append(document.createTextNode(show((p.host ? " (host " + p.host + ")" : "") + ": " + p.reason)));
    return li;
  }));
  byId("problem-count").textContent = "(" + d.problems.length + ")";
  return d;
}

// --- Matrix ---
function cellClass(v) {
  if (v === null || v === undefined) return "c-unstated";
  if (v === "yes") return "c-yes";
  if (v === "no") return "c-no";
  return "";
}
function cellText(v) {
  if (v === null || v === undefined) return "—";
  if (v === "yes") return "✓";
  if (v === "no") return "✗";
  return v;
}
async function loadMatrix() {
  const q = new URLSearchParams({
    virttype: byId("m-virttype").value, arch: byId("m-arch").value.trim(), machine: byId("m-machine").value.trim(),
  });
  let d;
  try {
    d = await api("api/matrix?" + q.toString());
  } catch (e) {
    setMessage("matrix-message", e.message, true);
    return;
  }
  setMessage("matrix-message", d.groups.length ? "" : "No host publishes a document for this query.", false);
  const table = byId("matrix");
  const head = el("tr");
  head.append(el("th", "Fact"));
  d.groups.forEach((g, i) => {
    const th = el("th");
    th.dataset.group = String(i);
    th.dataset.hosts = JSON.stringify(g.hosts);
    const shown = g.hosts.slice(0, 6).join(", ") + (g.hosts.length > 6 ? " +" + (g.hosts.length - 6) + " more" : "");
    th.textContent = show(shown);
    th.title = show(g.hosts.join(", ") + "\n" + g.query + "\n" + g.hash);
    head.append(th);
  });
  table.querySelector("thead").replaceChildren(head);
  const filter = byId("matrix-filter").value.trim().toLowerCase();
  const body = [];
  let section = null;
  for (const r of d.rows) {
    if (filter && !(r.section + " " + r.item).toLowerCase().includes(filter)) continue;
    if (r.section !== section) {
      section = r.section;
      const tr = el("tr", null, "section");
      const th = el("th", section);
      th.colSpan = d.groups.length + 1;
      tr.append(th);
      body.push(tr);
    }
    const tr = el("tr");
    tr.dataset.path = r.path;
    tr.dataset.section = r.section;
    tr.append(el("td", r.item || r.section));
    r.cells.forEach((v, i) => {
      const td = el("td", cellText(v), "cell " + cellClass(v));
      td.dataset.value = v === null ? "" : v;
      td.dataset.group = String(i);
      td.title = v === null ? "not stated by this document" : show(v);
      tr.append(td);
    });
    body.push(tr);
  }
  table.querySelector("tbody").replaceChildren(...body);
  byId("matrix-missing").replaceChildren(...d.missing.map((m) => el("li", m.host + ": " + m.why)));
  table.dataset.revision = String(d.revision);
}

// --- Where can this VM run? ---
async function runCheck(text) {
  const strict = byId("strict").checked;
  setMessage("check-message", "checking…", false);
  let d;
  try {
    d = await api("api/check" + (strict ? "?strict=1" : ""), {
      method: "POST", headers: { "Content-Type": "application/xml" }, body: text,
    });
  } catch (e) {
    byId("check-table").hidden = true;
    byId("check-summary").textContent = "";
    setMessage("check-message", e.message, true);
    return;
  }
  state.lastDomain = text;
  setMessage("check-message", "", false);
  const s = d.summary;
  byId("check-summary").textContent = show(d.can_run.length + " host(s) can run it: " +
    (d.can_run.join(", ") || "none") + " (" + s.supported + " supported, " + s.unsupported + " unsupported, " +
    s.unknown + " unknown)");
  const tbody = byId("check-table").querySelector("tbody");
  tbody.replaceChildren(...d.hosts.map((h) => {
    const tr = el("tr");
    tr.dataset.host = h.host;
    tr.dataset.verdict = h.verdict;
    tr.append(el("td", h.host, "mono"), el("td", h.verdict, "v-" + h.verdict), el("td", h.query || "—", "mono"));
    const why = el("td");
    if (h.finding) {
      tr.dataset.finding = h.finding.path;
      why.append(el("code", h.finding.path + " = " + h.finding.value));
      why.append(document.createTextNode(" by "));
      why.append(el("code", h.finding.capability));
      if (h.finding.note) why.append(document.createTextNode(": " + show(h.finding.note)));
    }
    if (h.note) why.append(document.createTextNode((h.finding ? " " : "") + show(h.note)));
    tr.append(why);
    return tr;
  }));
  const t = byId("check-table");
  t.hidden = false;
  t.dataset.revision = String(d.revision);
}

// --- Following the fleet ---
async function refresh() {
  try {
    const d = await loadHosts();
    state.revision = d.revision;
    await loadMatrix();
    if (state.lastDomain !== null) await runCheck(state.lastDomain);
    setStatus(d.error ? "etcd: " + d.error + " (showing revision " + d.revision + ")" : "revision " + d.revision + ", live", !!d.error);
  } catch (e) {
    setStatus(e.status === 401 ? "not signed in: open this page once as /?token=TOKEN" : e.message, true);
    throw e;
  }
}
function setStatus(text, error) {
  const s = byId("status");
  s.textContent = show(text);
  s.classList.toggle("error", error);
  document.body.dataset.revision = String(state.revision);
}
async function follow() {
  for (;;) {
    try {
      const w = await api("api/wait?after=" + encodeURIComponent(state.revision));
      if (w.revision > state.revision) {
        await refresh();
      } else if (w.error) {
        setStatus("etcd: " + w.error + " (showing revision " + state.revision + ")", true);
      } else {
        setStatus("revision " + state.revision + ", live", false);
      }
    } catch (e) {
      if (e.status === 401) { setStatus("not signed in: open this page once as /?token=TOKEN", true); return; }
      setStatus("server unreachable: " + e.message + "; retrying", true);
      await new Promise((r) => setTimeout(r, 3000));
    }
  }
}

function setup() {
  for (const th of byId("hosts").querySelectorAll("th")) {
    th.addEventListener("click", () => {
      const key = th.dataset.key;
      state.sort = { key, dir: state.sort.key === key ? -state.sort.dir : 1 };
      renderHosts();
    });
  }
  byId("host-filter").addEventListener("input", renderHosts);
  byId("matrix-filter").addEventListener("input", loadMatrix);
  byId("m-show").addEventListener("click", loadMatrix);
  byId("check-button").addEventListener("click", () => runCheck(byId("domain").value));
  byId("domain-file").addEventListener("change", async (ev) => {
    const f = ev.target.files[0];
    if (!f) return;
    if (f.size > 4 * 1024 * 1024) {
      setMessage("check-message", f.name + ": " + f.size + " bytes, larger than the 4 MiB a domain definition may have", true);
      return;
    }
    const text = await f.text();
    byId("domain").value = text;
    runCheck(text);
  });
  refresh().then(follow, () => follow());
}
document.addEventListener("DOMContentLoaded", setup);
