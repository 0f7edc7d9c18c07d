// The REST API as promises; an error answer becomes an ApiError carrying the error body's parts.

export class ApiError extends Error {
  constructor(status, code, message, fields = []) {
    super(message);
    this.status = status;
    this.code = code;
    this.fields = fields;
  }
}

// With LRTUNE_AUTH=on the API answers 401 until a bearer token is sent: ask for one (made with
// `lrtune token create`), keep it in this browser, and send it with every request.
const TOKEN_KEY = "lrtune.token";

function askForToken(message) {
  const token = window.prompt(`${message}\n\nThis lrtune server needs an API token:`);
  if (token && token.trim()) {
    localStorage.setItem(TOKEN_KEY, token.trim());
    return true;
  }
  return false;
}

export async function api(path, options = {}) {
  const sent = localStorage.getItem(TOKEN_KEY);
  try {
    return await request(path, options);
  } catch (error) {
    if (!(error instanceof ApiError) || error.status !== 401) throw error;
    // Requests made at the same time all fail: ask once, the others retry with the new token.
    const current = localStorage.getItem(TOKEN_KEY);
    if (current && current !== sent) return await request(path, options);
    localStorage.removeItem(TOKEN_KEY);
    if (askForToken(error.message)) return await request(path, options);
    throw error;
  }
}

async function request(path, { method = "GET", body, headers = {} } = {}) {
  const init = { method, headers: { Accept: "application/json", ...headers } };
  const token = localStorage.getItem(TOKEN_KEY);
  if (token) init.headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    throw new ApiError(0, "unreachable", `cannot reach the lrtune service: ${error.message}`);
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const detail = data && data.error;
    if (detail) throw new ApiError(response.status, detail.code, detail.message, detail.fields || []);
    throw new ApiError(response.status, "http_error", `HTTP ${response.status} ${response.statusText}`);
  }
  return data;
}

// What the caller may do (GET /v1/whoami): the scope's rights as a Set ("read", "submit", "code"),
// so a read-only token is not offered a form or a button the API would refuse.
export async function callerRights() {
  const caller = await api("/v1/whoami");
  return new Set(caller.rights);
}

// Like api(), but a 404 answers null: for views whose endpoint may not exist (yet) for a job.
export async function apiOptional(path) {
  try {
    return await api(path);
  } catch (error) {
    if (error instanceof ApiError && (error.status === 404 || error.status === 405)) return null;
    throw error;
  }
}

// Metric values may come as "NaN", "Infinity", "-Infinity"; charts want finite numbers or null.
export function finite(value) {
  const number = typeof value === "string" ? Number(value) : value;
  return typeof number === "number" && Number.isFinite(number) ? number : null;
}
