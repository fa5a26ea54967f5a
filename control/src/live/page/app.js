// The live view: reads /v1/live/stream (Server-Sent Events) with the operator's token as a
// bearer header (fetch, not EventSource, so the token never goes in a URL) and redraws.
"use strict";

const KEY = "strait.token";
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElementNS(
    tag === "svg" || ["g", "rect", "line", "text", "title"].includes(tag)
      ? "http://www.w3.org/2000/svg" : "http://www.w3.org/1999/xhtml", tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c);
  return node;
}

function row(cells, attrs) {
  const tr = el("tr", attrs);
  for (const c of cells) tr.append(el("td", {}, c));
  return tr;
}

function fill(id, rows) {
  const body = $(id).querySelector("tbody");
  body.replaceChildren(...rows);
}

const percent = (x) => (x * 100).toFixed(1) + "%";

function circuitOf(service) {
  return service.circuit ? service.circuit.state : "none";
}

function drawGraph(view) {
  const svg = $("graph");
  const sources = [...new Set(view.edges.map((e) => e.source))].sort();
  const services = [...new Set(view.services.map((s) => s.name)
    .concat(view.edges.map((e) => e.destination)))].sort();
  const open = new Set(view.services.filter((s) => circuitOf(s) === "open").map((s) => s.name));
  const height = Math.max(sources.length, services.length, 1) * 60 + 20;
  svg.setAttribute("height", height);
  const at = {};
  const nodes = [];
  sources.forEach((name, i) => {
    at["p:" + name] = [170, 40 + i * 60];
    nodes.push(["proxy", name, 20, 20 + i * 60]);
  });
  services.forEach((name, i) => {
    at["s:" + name] = [600, 40 + i * 60];
    nodes.push(["service", name, 600, 20 + i * 60]);
  });
  const children = [];
  for (const e of view.edges) {
    const [x1, y1] = at["p:" + e.source];
    const [x2, y2] = at["s:" + e.destination];
    const label = `${e.rps.toFixed(1)} rps · ${percent(e.successRate)} · p99 ${e.p99Ms == null ? "–" : e.p99Ms + " ms"}`;
    children.push(el("g", {
      class: "edge" + (e.successRate < 0.95 ? " failing" : ""),
      "data-source": e.source, "data-destination": e.destination, "data-route": e.route,
      "data-rps": e.rps.toFixed(3),
    }, el("line", { x1, y1, x2, y2 }),
      el("text", { x: (x1 + x2) / 2 - 90, y: (y1 + y2) / 2 - 6 }, label)));
  }
  for (const [kind, name, x, y] of nodes) {
    const cls = "node " + kind + (kind === "service" && open.has(name) ? " circuit-open" : "");
    children.push(el("g", { class: cls, "data-name": name, "data-kind": kind },
      el("rect", { x, y, width: 150, height: 40, rx: 6 }),
      el("text", { x: x + 10, y: y + 25 }, name)));
  }
  svg.replaceChildren(...children);
}

function draw(view) {
  $("window").textContent = `(rates over the last ${view.windowSeconds} s)`;
  drawGraph(view);
  fill("edges", view.edges.map((e) => row([
    e.source, e.destination, e.route, e.rps.toFixed(1), percent(e.successRate),
    e.p99Ms == null ? "–" : e.p99Ms + " ms",
  ], { "data-source": e.source, "data-destination": e.destination })));
  fill("services", view.services.map((s) => {
    const state = circuitOf(s);
    const endpoints = (s.endpoints || []).map((ep) =>
      `${ep.address} ${ep.available ? "up" : "out"}${ep.healthy ? "" : " unhealthy"}${ep.ejected ? " ejected" : ""}`
    ).join(", ");
    const tr = row([s.name, s.node, "", endpoints], {
      "data-service": s.name, "data-node": s.node, "data-circuit": state,
    });
    tr.children[2].append(el("span", { class: "circuit circuit-" + state }, state));
    return tr;
  }));
  fill("proxies", view.proxies.map((p) => row([
    p.node, p.connected ? "yes" : "no", String(p.appliedVersion ?? "–"),
    p.lastAck ? "v" + p.lastAck[0] : "–",
    p.lastNack ? `v${p.lastNack[0]}: ${p.lastNack[1]}` : "–",
  ], { "data-node": p.node })));
  $("events").replaceChildren(...view.events.map((e) => el("li", { "data-topic": e.topic },
    `${e.publishedAt} ${e.topic} ${e.source || ""} ${JSON.stringify(e.data)}`)));
}

function status(state, text) {
  $("status").dataset.state = state;
  $("status").textContent = text;
}

async function follow(token) {
  const resp = await fetch("/v1/live/stream", { headers: { Authorization: "Bearer " + token } });
  if (resp.status === 401 || resp.status === 403) {
    sessionStorage.removeItem(KEY);
    status("error", "token refused");
    return login();
  }
  if (!resp.ok || !resp.body) throw new Error("status " + resp.status);
  $("login").hidden = true;
  $("view").hidden = false;
  $("forget").hidden = false;
  status("live", "live");
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) throw new Error("stream ended");
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const message = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = message.split("\n").filter((l) => l.startsWith("data: "))
        .map((l) => l.slice(6)).join("\n");
      if (data) draw(JSON.parse(data));
    }
  }
}

async function connect(token) {
  for (;;) {
    try {
      return await follow(token);
    } catch (e) {
      status("error", "reconnecting (" + e.message + ")");
      await new Promise((r) => setTimeout(r, 2000));
    }
  }
}

function login() {
  $("login").hidden = false;
  $("view").hidden = true;
}

$("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const token = $("token").value.trim();
  $("token").value = "";
  sessionStorage.setItem(KEY, token);
  connect(token);
});
$("forget").addEventListener("click", () => {
  sessionStorage.removeItem(KEY);
  location.reload();
});

const saved = sessionStorage.getItem(KEY);
if (saved) connect(saved); else login();
