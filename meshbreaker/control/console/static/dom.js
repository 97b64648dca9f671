// Building the page: elements are made with createElement and filled with textContent only.
// Nothing a remote process sent (breaker names, reasons, descriptions) is ever parsed as HTML.

const SVG = "http://www.w3.org/2000/svg";

// el("td", {cls: "num", text: "3", data: {state: "OPEN"}, title: "..."}, child, ...)
export function el(tag, options = {}, ...children) {
  const node = document.createElement(tag);
  return fill(node, options, children);
}

export function svg(tag, attributes = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  for (const child of children) if (child !== null) node.append(child);
  return node;
}

function fill(node, options, children) {
  if (options.cls) node.className = options.cls;
  if (options.text !== undefined && options.text !== null) node.textContent = String(options.text);
  if (options.title) node.title = String(options.title);
  if (options.type) node.type = options.type;
  for (const [name, value] of Object.entries(options.data || {})) node.dataset[name] = String(value);
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

export function percent(rate) {
  return Number.isFinite(rate) ? `${(rate * 100).toFixed(rate > 0 && rate < 0.1 ? 1 : 0)}%` : "?";
}

export function count(value) {
  if (!Number.isFinite(value)) return "?";
  if (value >= 1e6) return `${(value / 1e6).toFixed(1)}M`;
  if (value >= 1e4) return `${(value / 1e3).toFixed(0)}k`;
  return String(value);
}

export function age(seconds) {
  if (!Number.isFinite(seconds) || seconds < 0) return "?";
  if (seconds < 60) return `${Math.floor(seconds)}s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m${String(Math.floor(seconds % 60)).padStart(2, "0")}s`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)}h${String(Math.floor((seconds % 3600) / 60)).padStart(2, "0")}m`;
  return `${Math.floor(seconds / 86400)}d`;
}

// An age that keeps counting: the element shows `seconds` plus the time since it was made.
export function liveAge(seconds, prefix = "") {
  const node = el("span", {cls: "age", text: prefix + age(Math.abs(seconds))});
  node.dataset.base = String(seconds);
  node.dataset.at = String(performance.now());
  node.dataset.prefix = prefix;
  return node;
}

export function tickAges(root = document) {
  const now = performance.now();
  for (const node of root.querySelectorAll("span.age")) {
    const seconds = Number(node.dataset.base) + (now - Number(node.dataset.at)) / 1000;
    // A countdown is an age from minus its time left: it shows what is left, down to 0.
    node.textContent = node.dataset.prefix + age(node.dataset.countdown ? Math.max(0, -seconds) : seconds);
  }
}

export function clock(epochSeconds) {
  const date = new Date(epochSeconds * 1000);
  return date.toLocaleTimeString([], {hour12: false});
}

// "/pkg.Svc/Method" of a breaker name "[target]/pkg.Svc/Method", or "" when it is no gRPC name.
export function methodOf(name) {
  const parts = String(name).split("/");
  return parts.length >= 3 ? `/${parts.slice(-2).join("/")}` : "";
}
