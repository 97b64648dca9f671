// The console's JSON API, with the bearer token the operator gave (kept in this tab only).

const TOKEN_KEY = "meshbreaker.console.token";

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

export function headers(extra = {}) {
  const result = {...extra};
  if (token()) result.Authorization = `Bearer ${token()}`;
  return result;
}

// A refusal: the server's gRPC code and its own message, shown as they are.
export class Refusal extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function answer(response) {
  let body = null;
  try {
    body = await response.json();
  } catch (error) {
    body = null;
  }
  if (!response.ok) {
    const code = body && typeof body.code === "string" ? body.code : `HTTP ${response.status}`;
    const message = body && typeof body.message === "string" ? body.message : response.statusText;
    throw new Refusal(response.status, code, message);
  }
  return body;
}

export async function get(path) {
  let response;
  try {
    response = await fetch(path, {headers: headers(), cache: "no-store"});
  } catch (error) {
    throw new Refusal(0, "UNAVAILABLE", "the control plane cannot be reached");
  }
  return answer(response);
}

export async function post(path, body) {
  let response;
  try {
    response = await fetch(path, {
      method: "POST",
      headers: headers({"Content-Type": "application/json"}),
      body: JSON.stringify(body),
      cache: "no-store",
    });
  } catch (error) {
    throw new Refusal(0, "UNAVAILABLE", "the control plane cannot be reached");
  }
  return answer(response);
}
