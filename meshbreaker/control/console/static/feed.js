// The live feed: server-sent events read with fetch (so the bearer token goes in a header),
// reconnecting with backoff and catching up on the events missed meanwhile.

import {headers} from "./api.js";

export class Feed {
  // handlers: {hello(data), event(data), mesh(data), lost(data), up(), down(reason), denied(message)}
  constructor(handlers) {
    this.handlers = handlers;
    this.boot = "";
    this.since = 0;
    this.refresh = 2;
    this.controller = null;
    this.backoff = 0.25;
    this.stopped = false;
  }

  start() {
    this.stopped = false;
    this.connect();
  }

  stop() {
    this.stopped = true;
    if (this.controller) this.controller.abort();
  }

  restart() {
    this.stop();
    this.start();
  }

  async connect() {
    const controller = new AbortController();
    this.controller = controller;
    let reason = "the control plane closed the feed";
    try {
      const query = new URLSearchParams({since: String(this.since), boot: this.boot});
      const response = await fetch(`/api/stream?${query}`, {
        headers: headers(),
        cache: "no-store",
        signal: controller.signal,
      });
      if (response.status === 401 || response.status === 403) {
        const body = await response.json().catch(() => ({}));
        this.handlers.denied(typeof body.message === "string" ? body.message : "refused");
        return;
      }
      if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
      await this.read(response.body.getReader(), controller);
    } catch (error) {
      if (controller.signal.aborted && this.stopped) return;
      reason = controller.signal.aborted ? "the control plane stopped answering" : "the control plane cannot be reached";
    }
    if (this.stopped || this.controller !== controller) return;
    this.handlers.down(reason);
    const wait = this.backoff;
    this.backoff = Math.min(5, this.backoff * 2);
    setTimeout(() => {
      if (!this.stopped && this.controller === controller) this.connect();
    }, wait * 1000);
  }

  async read(reader, controller) {
    const decoder = new TextDecoder();
    let buffer = "";
    let watchdog = null;
    const arm = () => {
      clearTimeout(watchdog);
      // The server sends the mesh at least every `refresh` seconds: silence means it is gone.
      watchdog = setTimeout(() => controller.abort(), (this.refresh * 3 + 1) * 1000);
    };
    arm();
    try {
      for (;;) {
        const {value, done} = await reader.read();
        if (done) return;
        arm();
        buffer += decoder.decode(value, {stream: true});
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          this.dispatch(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
        }
      }
    } finally {
      clearTimeout(watchdog);
    }
  }

  dispatch(block) {
    let name = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith("event: ")) name = line.slice(7);
      else if (line.startsWith("data: ")) data.push(line.slice(6));
    }
    let value;
    try {
      value = JSON.parse(data.join("\n"));
    } catch (error) {
      return;
    }
    if (name === "hello") {
      if (value.boot !== this.boot) this.since = 0;
      this.boot = value.boot;
      this.refresh = Number(value.refresh) || 2;
      this.backoff = 0.25;
      this.handlers.hello(value);
      this.handlers.up();
    } else if (name === "event") {
      if (value.sequence <= this.since) return;
      this.since = value.sequence;
      this.handlers.event(value);
    } else if (name === "mesh") {
      this.handlers.mesh(value);
    } else if (name === "lost") {
      this.handlers.lost(value);
    }
  }
}
