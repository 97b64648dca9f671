// Drawing the mesh, the events and the instances from what the feed pushed.

import {age, clock, count, el, liveAge, methodOf, percent, svg} from "./dom.js";

const STATE_WORDS = {
  CLOSED: "closed",
  OPEN: "open",
  HALF_OPEN: "half-open",
  FORCED_OPEN: "forced open",
  FORCED_CLOSED: "forced closed",
};

// One breaker group per row, grouped by caller service.
// actions: {canWrite, force(caller, method, override), explain(caller, method)}
export function renderBreakers(container, mesh, actions) {
  const byService = new Map();
  for (const group of mesh.groups) {
    if (!byService.has(group.service)) byService.set(group.service, []);
    byService.get(group.service).push(group);
  }
  const sections = [];
  for (const [service, groups] of byService) {
    const body = el("tbody");
    for (const group of groups) body.append(breakerRow(group, actions));
    sections.push(
      el("div", {cls: "service", data: {service}},
        el("h3", {text: `${service} calls`}),
        el("table", {cls: "grid breakers"},
          el("thead", {}, el("tr", {},
            ...["breaker", "instances", "failure rate", "slow calls", "rejected", "calls · failures", "latency", ""]
              .map((name) => el("th", {text: name})))),
          body)));
  }
  container.replaceChildren(...sections);
}

function breakerRow(group, actions) {
  const worst = worstState(group.states);
  const row = el("tr", {cls: "breaker", data: {name: group.name, service: group.service, state: worst}});
  const threshold = firstThreshold(group.members, "failure_rate_threshold");
  const slowThreshold = firstThreshold(group.members, "slow_call_rate_threshold");
  row.append(
    el("td", {cls: "name"}, el("span", {text: group.name}),
      group.shadow ? el("span", {cls: "tag", text: "shadow", title: "instances running this breaker in shadow mode never reject"}) : null),
    el("td", {}, el("div", {cls: "members"}, ...group.members.map(memberChip))),
    el("td", {}, rateMeter(group.failure_rate, threshold)),
    el("td", {}, rateMeter(group.slow_call_rate, slowThreshold)),
    el("td", {cls: "num", text: count(group.rejected), title: `${group.throttled} throttled`}),
    el("td", {}, sparkline(group.history)),
    el("td", {}, histogram(group.members)),
    el("td", {cls: "actions"}, ...rowActions(group, actions)));
  return row;
}

function memberChip(member) {
  const word = STATE_WORDS[member.state] || member.state;
  const since = member.state_age + member.report_age;
  const details = [
    `${member.instance}: ${word} for ${age(since)}`,
    member.open_remaining !== null ? `next probe in ${age(member.open_remaining)}` : "",
    `window: ${member.window_calls} calls, failure rate ${percent(member.failure_rate)}`,
    `applied revision ${member.applied_revision}, reported ${age(member.report_age)} ago`,
  ].filter(Boolean).join("\n");
  return el("span", {cls: "chip", data: {state: member.state, instance: member.instance}, title: details},
    el("span", {cls: "instance", text: member.instance}),
    el("span", {cls: "word", text: word}),
    liveAge(since));
}

function rowActions(group, actions) {
  const method = methodOf(group.name);
  if (!method) return [];
  const buttons = [el("button", {type: "button", cls: "explain", text: "explain"})];
  buttons[0].addEventListener("click", () => actions.explain(group.service, method));
  if (actions.canWrite) {
    for (const [override, label] of [["open", "force open"], ["closed", "force closed"], ["auto", "auto"]]) {
      const button = el("button", {type: "button", cls: `force force-${override}`, text: label});
      button.addEventListener("click", () => actions.force({caller: group.service, method}, override));
      buttons.push(button);
    }
  }
  return buttons;
}

function worstState(states) {
  for (const state of ["OPEN", "FORCED_OPEN", "HALF_OPEN", "FORCED_CLOSED", "CLOSED"]) {
    if (states[state] > 0) return state;
  }
  return "CLOSED";
}

function firstThreshold(members, field) {
  const member = members.find((item) => item[field] !== null && item[field] !== undefined);
  return member ? member[field] : null;
}

// A rate against its threshold: a bar that turns red at the threshold.
function rateMeter(rate, threshold) {
  const label = threshold === null ? percent(rate) : `${percent(rate)} / ${percent(threshold)}`;
  const bar = el("span", {cls: "fill"});
  bar.style.width = `${Math.min(100, Math.max(0, rate * 100))}%`;
  const meter = el("span", {cls: "meter", data: {over: threshold !== null && rate >= threshold}}, bar);
  if (threshold !== null) {
    const mark = el("span", {cls: "mark"});
    mark.style.left = `${Math.min(100, threshold * 100)}%`;
    meter.append(mark);
  }
  return el("span", {cls: "rate", title: threshold === null ? "no threshold reported" : "rate / threshold"}, meter, el("span", {text: label}));
}

// Calls (grey) and failures (red) per sample over the last minutes.
function sparkline(history) {
  const width = 120;
  const height = 26;
  if (!history || history.calls.length === 0) return el("span", {cls: "muted", text: "collecting…"});
  const calls = history.calls.map((value) => value ?? 0);
  const failures = history.failures.map((value) => value ?? 0);
  const top = Math.max(1, ...calls);
  const step = width / Math.max(1, calls.length - 1);
  const points = (values) => values
    .map((value, index) => `${(index * step).toFixed(1)},${(height - 1 - (value / top) * (height - 2)).toFixed(1)}`)
    .join(" ");
  const minutes = Math.round((history.step * calls.length) / 60);
  const total = calls.reduce((a, b) => a + b, 0);
  const failed = failures.reduce((a, b) => a + b, 0);
  const title = svg("title");
  title.textContent = `last ${minutes} min: ${total} calls, ${failed} failures (every ${history.step}s)`;
  return svg("svg", {class: "spark", width, height, viewBox: `0 0 ${width} ${height}`, role: "img"},
    title,
    svg("line", {class: "base", x1: 0, y1: height - 0.5, x2: width, y2: height - 0.5}),
    svg("polyline", {class: "calls", points: points(calls)}),
    // No failures, no red line: a red stroke along the base reads as trouble at a glance.
    failed > 0 ? svg("polyline", {class: "failures", points: points(failures)}) : null);
}

// Call durations summed over the instances that report the same buckets.
function histogram(members) {
  const reported = members.map((member) => member.histogram).filter(Boolean);
  if (reported.length === 0) return el("span", {cls: "muted", text: "—"});
  const bounds = reported[0].bounds;
  const counts = new Array(bounds.length + 1).fill(0);
  for (const item of reported) {
    if (item.bounds.length !== bounds.length || item.bounds.some((bound, i) => bound !== bounds[i])) continue;
    item.counts.forEach((value, index) => { counts[index] += value; });
  }
  const width = 120;
  const height = 26;
  const top = Math.max(1, ...counts);
  const barWidth = width / counts.length;
  const bars = counts.map((value, index) => {
    const barHeight = value === 0 ? 0 : Math.max(1, (value / top) * (height - 1));
    const upper = index < bounds.length ? `≤ ${formatSeconds(bounds[index])}` : `> ${formatSeconds(bounds[bounds.length - 1])}`;
    const bar = svg("rect", {x: (index * barWidth).toFixed(1), y: (height - barHeight).toFixed(1), width: Math.max(1, barWidth - 1).toFixed(1), height: barHeight.toFixed(1)});
    const title = svg("title");
    title.textContent = `${upper}: ${value} calls`;
    bar.append(title);
    return bar;
  });
  return svg("svg", {class: "histogram", width, height, viewBox: `0 0 ${width} ${height}`, role: "img"}, ...bars);
}

function formatSeconds(seconds) {
  return seconds < 1 ? `${Math.round(seconds * 1000)} ms` : `${seconds} s`;
}

// "forced open until 12:00:05, fleet decision, open period 1, probers tx-0: reason"
export function overrideText(override) {
  let text = STATE_WORDS[override.state] || override.state;
  if (override.expires_at !== null) text += ` until ${clock(override.expires_at)}`;
  if (override.fleet) text += `, ${fleetText(override.fleet)}`;
  if (override.reason) text += `: ${override.reason}`;
  return text;
}

// In the words of `meshbreaker events`: the decider's open period and who probes in it.
function fleetText(fleet) {
  return `fleet decision, open period ${fleet.period}, probers ${fleet.probers.join(",") || "none"}`;
}

// The overrides in force; `auto` (admin) lifts one through ForceState.
export function renderOverrides(body, overrides, actions) {
  body.replaceChildren(...overrides.map((item) => {
    const target = item.method || item.service;
    const lift = el("button", {type: "button", cls: "force-auto", text: "auto"});
    const selector = {caller: item.caller, service: item.service, method: item.method};
    lift.addEventListener("click", () => actions.force(selector, "auto"));
    return el("tr", {data: {policy: item.policy_id}},
      el("td", {text: item.policy_id}),
      el("td", {text: item.caller || "*"}),
      el("td", {text: target}),
      el("td", {}, el("span", {cls: "chip", data: {state: item.state}, text: STATE_WORDS[item.state] || item.state})),
      el("td", {}, item.remaining === null ? el("span", {text: "until set back"}) : liveCountdown(item.remaining)),
      el("td", {text: item.fleet ? `${fleetText(item.fleet)}${item.reason ? `; ${item.reason}` : ""}` : item.reason}),
      el("td", {}, actions.canWrite && !item.fleet ? lift : null));
  }));
}

function liveCountdown(seconds) {
  const node = liveAge(-seconds);
  node.dataset.countdown = "true";
  return node;
}

export function renderInstances(body, instances) {
  body.replaceChildren(...instances.map((instance) => {
    const config = instance.store_mismatch
      ? el("span", {cls: "bad", text: `store mismatch: ${instance.store_mismatch}`})
      : instance.nack
        ? el("span", {cls: "bad", text: `NACK of revision ${instance.nack.revision}: ${instance.nack.reason}`})
        : el("span", {cls: "good", text: "applied"});
    return el("tr", {data: {instance: instance.instance}},
      el("td", {text: instance.instance}),
      el("td", {text: instance.service}),
      el("td", {cls: "num", text: instance.applied_revision}),
      el("td", {}, liveAge(instance.report_age, "", ), el("span", {text: " ago"})),
      el("td", {cls: "num", text: instance.breakers}),
      el("td", {}, config));
  }));
}

// One line per event, newest first; kinds this page does not know show their fields as text.
export function eventItem(event) {
  const when = el("time", {text: clock(event.time)});
  let text;
  let kind = event.kind;
  if (event.kind === "transition") {
    text = `${event.service} · ${event.instance}: ${event.name} ${STATE_WORDS[event.from_state] || "new"} → ${STATE_WORDS[event.to_state] || event.to_state}`;
    kind = `transition to-${event.to_state}`;
  } else if (event.kind === "policy_change") {
    const override = event.override ? ` (${overrideText(event.override)})` : event.fleet_ended ? " (fleet decision ended)" : "";
    text = `policy ${event.policy_id} ${event.change === "delete" ? "deleted" : "put"}${override} at revision ${event.revision} by ${event.actor}`;
    if (event.description) text += ` — ${event.description}`;
  } else if (event.kind === "nack") {
    text = `${event.service} · ${event.instance} refused revision ${event.revision}: ${event.reason}`;
  } else {
    const detail = event.detail ? JSON.stringify(event.detail) : "";
    text = `${event.kind || "event"} ${detail}`;
  }
  return el("li", {cls: `event ${kind}`, data: {sequence: event.sequence}}, when, el("span", {text}));
}
