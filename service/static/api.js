// The REST API as promises; an error answer becomes an ApiError carrying the error body's parts.

export class ApiError extends Error {
  constructor(status, code, message, fields = []) {
    super(message);
    this.status = status;
    this.code = code;
    this.fields = fields;
  }
}

export async function api(path, { method = "GET", body, headers = {} } = {}) {
  const init = { method, headers: { Accept: "application/json", ...headers } };
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
