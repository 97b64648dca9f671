// The console page: the token, the live feed, and what it draws.

import {Refusal, get, setToken, token} from "./api.js";
import {el, tickAges} from "./dom.js";
import {Feed} from "./feed.js";
import {ExplainForm, ForceForm, PolicyForm} from "./forms.js";
import {eventItem, overrideText, renderBreakers, renderInstances, renderOverrides} from "./render.js";

const MAX_EVENTS = 500;
const $ = (id) => document.getElementById(id);

const page = {
  session: null,
  meshSeen: false, // the feed brought a mesh (newer than the first read's)
  lostSince: null,
  policiesTimer: null,
};

const forceForm = new ForceForm($("force-form"));
const explainForm = new ExplainForm($("explain-form"), $("explanation"));
const policyForm = new PolicyForm($("policy-form"), $("policy-delete"), $("policy-revision"), () => loadPolicies());

const feed = new Feed({
  hello(session) {
    page.session = session;
    showRole(session);
    if (session.since === 0) $("events").replaceChildren();
  },
  event(event) {
    const list = $("events");
    list.prepend(eventItem(event));
    while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
    if (event.kind === "policy_change") schedulePolicies();
  },
  mesh(mesh) {
    page.meshSeen = true;
    showMesh(mesh);
  },
  lost(info) {
    banner(`This page fell behind and missed ${info.events} events; the mesh view is current.`, "warn");
  },
  up() {
    const link = $("link");
    link.dataset.link = "live";
    link.textContent = "live";
    if (page.lostSince !== null) {
      const gone = Math.round((Date.now() - page.lostSince) / 1000);
      banner(`Back in touch with the control plane after ${gone}s; caught up.`, "ok");
      setTimeout(() => { if ($("banner").dataset.kind === "ok") banner(""); }, 4000);
      page.lostSince = null;
      loadPolicies();
    } else {
      banner("");
    }
  },
  down(reason) {
    const link = $("link");
    link.dataset.link = "lost";
    link.textContent = "lost the control plane";
    if (page.lostSince === null) page.lostSince = Date.now();
    const when = new Date(page.lostSince).toLocaleTimeString([], {hour12: false});
    banner(`Lost the control plane at ${when}: ${reason}. Reconnecting… What you see is as it was then.`, "lost");
  },
  denied(message) {
    askForToken(message);
  },
});

function showMesh(mesh) {
  if (mesh.error) {
    banner(`The control plane refused the mesh view: ${mesh.error.code}: ${mesh.error.message}`);
    return;
  }
  $("revision").textContent = `store revision ${mesh.revision}`;
  $("breakers-empty").hidden = mesh.groups.length > 0;
  const actions = {
    canWrite: Boolean(page.session && page.session.can_write),
    force: (selector, override) => forceForm.apply(selector, override),
    explain: (caller, method) => explainForm.explain(caller, method),
  };
  renderBreakers($("breakers"), mesh, actions);
  renderInstances($("instances").tBodies[0], mesh.instances);
  renderOverrides($("overrides").tBodies[0], mesh.overrides, actions);
  $("overrides").hidden = mesh.overrides.length === 0;
}

function banner(text, kind = "") {
  const node = $("banner");
  node.textContent = text;
  node.dataset.kind = kind;
  node.hidden = !text;
}

function showRole(session) {
  const role = $("role");
  const words = {admin: "admin", agent: "read-only (agent token)", open: "open (no tokens)"};
  role.textContent = words[session.role] || session.role;
  role.dataset.role = session.role;
  const note = $("write-note");
  note.hidden = session.can_write;
  note.textContent = session.can_write ? "" : "Read-only: this token cannot change the mesh. Enter the admin token to force methods and edit policies.";
  for (const form of [$("force-form"), $("policy-form")]) {
    form.querySelector("fieldset").disabled = !session.can_write;
  }
}

function askForToken(message) {
  feed.stop();
  const link = $("link");
  link.dataset.link = "denied";
  link.textContent = "needs a token";
  banner(`${message} Enter a token above (it stays in this tab only).`, "lost");
  $("token").focus();
}

function schedulePolicies() {
  clearTimeout(page.policiesTimer);
  page.policiesTimer = setTimeout(loadPolicies, 200);
}

async function loadPolicies() {
  let answer;
  try {
    answer = await get("/api/policies");
  } catch (error) {
    return; // the feed says what is wrong
  }
  policyForm.setRevision(answer.revision);
  const body = $("policies").tBodies[0];
  body.replaceChildren(...answer.policies.map((entry) => policyRow(entry)));
}

function policyRow(entry) {
  const stored = entry.document;
  // Every input the policy sets (a config field by its name), and each section it holds empty.
  const words = Object.entries(entry.form)
    .filter(([path]) => path !== "description")
    .map(([path, text]) => `${path.replace(/^config\./, "")}=${text}`);
  for (const path of entry.sections) {
    if (!Object.keys(entry.form).some((key) => key.startsWith(`${path}.`))) words.push(`${path}={}`);
  }
  const edit = el("button", {type: "button", text: "edit"});
  edit.addEventListener("click", () => policyForm.edit(entry));
  return el("tr", {data: {policy: stored.id}},
    el("td", {text: stored.id}),
    el("td", {text: stored.selector.caller || "*"}),
    el("td", {text: stored.selector.service || "*"}),
    el("td", {text: stored.selector.method || "*"}),
    el("td", {cls: "config", text: words.length ? words.join(" ") : "(override only)"}),
    el("td", {text: entry.override ? overrideText(entry.override) : ""}),
    el("td", {text: stored.description || ""}),
    el("td", {cls: "num", text: stored.revision}),
    el("td", {}, edit));
}

async function begin() {
  try {
    const schema = await get("/api/schema");
    policyForm.setSchema(schema, $("policy-fields"));
  } catch (error) {
    if (error instanceof Refusal && (error.status === 401 || error.status === 403)) {
      askForToken(error.message);
      return;
    }
  }
  page.meshSeen = false;
  feed.restart();
  loadPolicies();
  loadMesh();
}

// The mesh in one plain read, drawn unless the feed was quicker: the first paint does not wait
// for the stream (nor does a headless Chromium's --screenshot, which waits for fetches only).
async function loadMesh() {
  let mesh;
  try {
    mesh = await get("/api/mesh");
  } catch (error) {
    return; // the feed says what is wrong
  }
  if (!page.meshSeen) showMesh(mesh);
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  setToken($("token").value.trim());
  $("token").value = "";
  begin();
});
$("token-forget").addEventListener("click", () => {
  setToken("");
  begin();
});
// A link may carry the token in its fragment (never sent to a server): kept, then wiped.
const fragment = new URLSearchParams(location.hash.slice(1));
if (fragment.get("token")) {
  setToken(fragment.get("token"));
  history.replaceState(null, "", location.pathname + location.search);
}
if (token()) $("token").placeholder = "(token set)";
setInterval(() => tickAges(), 1000);
begin();
