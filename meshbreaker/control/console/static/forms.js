// The forms: force a method, put / edit / delete a policy, explain a breaker's config.
// Every write is validated by the control plane; its refusal is shown in the form as it came.

import {get, post} from "./api.js";
import {el} from "./dom.js";

function show(form, ok, message) {
  const output = form.elements.namedItem("result");
  output.textContent = message;
  output.dataset.ok = String(ok);
}

async function submit(form, work) {
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  try {
    return await work();
  } catch (error) {
    show(form, false, error.code ? `${error.code}: ${error.message}` : String(error.message || error));
    return null;
  } finally {
    button.disabled = false;
  }
}

function value(form, name) {
  return form.elements.namedItem(name).value.trim();
}

export class ForceForm {
  constructor(form) {
    this.form = form;
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      // One field for a method ("/pkg.Svc/M") or a whole gRPC service ("pkg.Svc").
      const target = value(form, "method");
      const selector = target.startsWith("/") ? {method: target} : {service: target};
      this.apply({caller: value(form, "caller"), ...selector}, value(form, "override"));
    });
  }

  // Force the breakers of `selector` {caller, service, method}: a row's button, an override's
  // "auto", or the form. The expiry and reason typed in the form go too.
  async apply(selector, override) {
    const form = this.form;
    const target = selector.method || selector.service || "";
    form.elements.namedItem("caller").value = selector.caller || "";
    form.elements.namedItem("method").value = target;
    form.elements.namedItem("override").value = override;
    const body = {...selector, override, reason: value(form, "reason")};
    const expiresIn = value(form, "expires_in");
    if (expiresIn && override !== "auto") body.expires_in = Number(expiresIn);
    const answer = await submit(form, () => post("/api/force", body));
    if (answer) {
      const who = selector.caller ? `${selector.caller}'s calls of ${target}` : target;
      let word = override === "auto" ? "back to automatic" : `forced ${override}`;
      if (body.expires_in !== undefined) word += ` for ${body.expires_in} s`;
      show(form, true, `${who}: ${word} (store revision ${answer.revision})`);
    }
  }
}

export class PolicyForm {
  constructor(form, deleteButton, revisionLabel, onChange) {
    this.form = form;
    this.revisionLabel = revisionLabel;
    this.revision = null;
    this.onChange = onChange;
    this.sections = [];
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.put();
    });
    form.addEventListener("reset", () => show(form, true, ""));
    // Typing in a section's input puts that section (and the ones it sits in) in the policy.
    form.addEventListener("input", (event) => {
      const section = event.target.dataset && event.target.dataset.section;
      if (section) this.include(section);
    });
    deleteButton.addEventListener("click", () => this.remove());
  }

  // The server's sections of a policy (/api/schema): the policy's own inputs, then one box per
  // message it may hold (config, outlier_detection, canary, canary.config...), each input
  // spelled as the policy file (and, for a BreakerConfig, its command-line flag) reads it.
  setSchema(schema, container) {
    this.sections = schema.sections;
    container.replaceChildren(...schema.sections.map((section) => {
      const inputs = section.fields.map((field) =>
        el("label", {title: field.help, cls: section.path ? "" : "wide"},
          el("span", {text: section.path ? field.name : field.path}),
          inputFor(field, section.path)));
      if (!section.path) return el("div", {cls: "row"}, ...inputs);
      const box = el("input", {type: "checkbox"});
      box.name = sectionBox(section.path);
      return el("fieldset", {cls: "section", data: {section: section.path}},
        el("legend", {}, el("label", {cls: "check", title: "unticked: the policy holds no " + section.path},
          box, el("span", {text: section.path}))),
        el("div", {cls: "config-fields"}, ...inputs));
    }));
  }

  include(path) {
    for (let at = path; at; at = parent(at)) {
      const box = this.form.elements.namedItem(sectionBox(at));
      if (box) box.checked = true;
    }
  }

  setRevision(revision) {
    this.revision = revision;
    this.revisionLabel.textContent = String(revision);
  }

  // The form filled from a stored policy: every input it sets, every section it holds.
  edit(entry) {
    const form = this.form;
    const stored = entry.document;
    form.reset();
    form.elements.namedItem("id").value = stored.id;
    for (const key of ["caller", "service", "method"]) {
      form.elements.namedItem(key).value = stored.selector[key] || "";
    }
    for (const section of this.sections) {
      if (section.path) form.elements.namedItem(sectionBox(section.path)).checked = entry.sections.includes(section.path);
      for (const field of section.fields) {
        form.elements.namedItem(field.path).value = entry.form[field.path] ?? "";
      }
    }
    form.scrollIntoView({block: "nearest"});
  }

  // A policy file entry: a section not ticked (or inside one not ticked) is sent as null, an
  // empty input as not given.
  policy() {
    const form = this.form;
    const policy = {
      id: value(form, "id"),
      selector: {caller: value(form, "caller"), service: value(form, "service"), method: value(form, "method")},
    };
    const held = (path) => !path || (form.elements.namedItem(sectionBox(path)).checked && held(parent(path)));
    for (const section of this.sections) {
      if (!held(parent(section.path))) continue;
      if (section.path) setAt(policy, section.path, held(section.path) ? {} : null);
      if (!held(section.path)) continue;
      for (const field of section.fields) {
        const text = value(form, field.path);
        if (text !== "") setAt(policy, field.path, text);
      }
    }
    return policy;
  }

  body(extra) {
    const body = {...extra};
    if (this.form.elements.namedItem("cas").checked && this.revision !== null) body.expected_revision = this.revision;
    return body;
  }

  async put() {
    const answer = await submit(this.form, () => post("/api/policies/put", this.body({policy: this.policy()})));
    if (answer) {
      show(this.form, true, `put ${answer.policy.document.id} at revision ${answer.revision}`);
      this.onChange();
    }
  }

  async remove() {
    const id = value(this.form, "id");
    const answer = await submit(this.form, () => post("/api/policies/delete", this.body({id})));
    if (answer) {
      show(this.form, true, `deleted ${id} at revision ${answer.revision}`);
      this.onChange();
    }
  }
}

function sectionBox(path) {
  return `section:${path}`;
}

// "canary" of "canary.config"; "" of "config".
function parent(path) {
  return path.includes(".") ? path.slice(0, path.lastIndexOf(".")) : "";
}

function setAt(target, path, item) {
  const names = path.split(".");
  let node = target;
  for (const name of names.slice(0, -1)) node = node[name];
  node[names[names.length - 1]] = item;
}

function inputFor(field, section) {
  const input = el("input", {data: section ? {section} : {}});
  input.name = field.path;
  input.placeholder = field.metavar;
  input.autocomplete = "off";
  return input;
}

export class ExplainForm {
  constructor(form, target) {
    this.form = form;
    this.target = target;
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.explain(value(form, "caller"), value(form, "method"));
    });
  }

  async explain(caller, method) {
    const form = this.form;
    form.elements.namedItem("caller").value = caller;
    form.elements.namedItem("method").value = method;
    const query = new URLSearchParams({caller, method});
    const answer = await submit(form, () => get(`/api/explain?${query}`));
    if (!answer) return;
    if (answer.error) {
      show(form, false, answer.error);
      this.target.replaceChildren();
      return;
    }
    const lagging = answer.instances.filter((item) => item.differs.length).length;
    show(form, lagging === 0,
      `${method} called by ${caller} at revision ${answer.revision}: ${answer.instances.length} instances report it` +
      (lagging ? `, ${lagging} with another config` : ""));
    this.target.replaceChildren(explanationTable(answer));
  }
}

function explanationTable(answer) {
  const instances = answer.instances;
  const head = el("tr", {}, el("th", {text: "field"}), el("th", {text: "layered"}), el("th", {text: "from"}),
    ...instances.map((item) => el("th", {text: item.instance, title: `applied revision ${item.applied_revision}`})));
  const rows = answer.fields.map((name) => {
    const layered = answer.layered.config[name];
    return el("tr", {data: {field: name}},
      el("td", {text: name}),
      el("td", {text: describe(layered.value)}),
      el("td", {cls: "muted", text: layered.from}),
      ...instances.map((item) => el("td", {
        text: item.config[name],
        cls: item.differs.includes(name) ? "bad" : "",
        title: item.differs.includes(name) ? "differs from the layered policies over this instance's defaults" : "",
      })));
  });
  const override = answer.layered.override ? `${answer.layered.override} (from ${answer.layered.override_from})` : "none";
  return el("div", {}, el("table", {cls: "grid explanation"}, el("thead", {}, head), el("tbody", {}, ...rows)),
    el("p", {text: `override: ${override}`}));
}

function describe(value) {
  if (value === null) return "off";
  if (Array.isArray(value)) return value.join(",");
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}
