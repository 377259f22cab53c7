// The API client both faces use: same-origin JSON over fetch, a time-out on every call,
// problem+json kept as it came (the page shows its `detail`), and the server's clock.

const TIMEOUT_MS = 15000;

// The server's clock as an offset from the device's. Phones are often minutes off, so the
// countdown and the claim button follow this, never Date.now() alone. `server_time` in a
// body is exact; the HTTP Date header only says which second it was, so from it we keep a
// lower bound that is never ahead of the server (the button may open up to a second late,
// never early) and tighten it with every answer.
export const clock = {
  offset: null,
  exact: false,
  now() { return Date.now() + (this.offset ?? 0); },
  learn(sentAt, receivedAt, headers, body) {
    const stated = body && typeof body === 'object' ? body.server_time : undefined;
    const ms = typeof stated === 'number' ? stated : (stated ? Date.parse(stated) : NaN);
    if (!Number.isNaN(ms)) {
      this.offset = ms - (sentAt + receivedAt) / 2;
      this.exact = true;
      return;
    }
    if (this.exact) return;
    const date = Date.parse(headers.get('date') || '');
    if (Number.isNaN(date)) return;
    // The server read its clock between sentAt and receivedAt, at or after `date`.
    const lower = date - receivedAt;
    if (this.offset === null || lower > this.offset) this.offset = lower;
  },
};

export class Problem extends Error {
  constructor(status, body, headers) {
    super(body?.detail || body?.title || `HTTP ${status}`);
    this.status = status;
    this.code = body?.code || (status === 0 ? 'network' : 'http');
    this.body = body || {};
    this.headers = headers;
  }
}

// One call: resolves with { status, body, headers } on 2xx, rejects with a Problem.
export async function call(method, path, { token, json, body, headers = {}, raw = false } = {}) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), TIMEOUT_MS);
  const init = { method, headers: { accept: 'application/json', ...headers }, signal: controller.signal, cache: 'no-store' };
  if (token) init.headers.authorization = `Bearer ${token}`;
  if (json !== undefined) {
    init.headers['content-type'] = 'application/json';
    init.body = JSON.stringify(json);
  } else if (body !== undefined) {
    init.body = body;
  }
  const sentAt = Date.now();
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    clearTimeout(timer);
    throw new Problem(0, { code: 'network', detail: null });
  }
  try {
    const receivedAt = Date.now();
    if (raw && response.ok) {
      clock.learn(sentAt, receivedAt, response.headers, null);
      return { status: response.status, body: await response.blob(), headers: response.headers };
    }
    const text = await response.text();
    let parsed = null;
    if (text) {
      try { parsed = JSON.parse(text); } catch { parsed = { detail: text.slice(0, 300) }; }
    }
    clock.learn(sentAt, receivedAt, response.headers, parsed);
    if (!response.ok) throw new Problem(response.status, parsed, response.headers);
    return { status: response.status, body: parsed, headers: response.headers };
  } catch (e) {
    if (e instanceof Problem) throw e;
    throw new Problem(0, { code: 'network', detail: null });
  } finally {
    clearTimeout(timer);
  }
}

// A random key for Idempotency-Key (crypto.randomUUID needs a secure context; this not).
export function randomKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

// The session: the token from POST /api/sessions, kept in localStorage under a key per
// face so a reload or a new tab stays logged in, dropped when it expires or on log out.
export function session(key) {
  return {
    get() {
      try {
        const s = JSON.parse(localStorage.getItem(key) || 'null');
        if (!s || !s.token) return null;
        if (s.expires_at && Date.parse(s.expires_at) <= clock.now()) { localStorage.removeItem(key); return null; }
        return s;
      } catch { return null; }
    },
    set(value) { localStorage.setItem(key, JSON.stringify(value)); },
    clear() { localStorage.removeItem(key); },
  };
}

// The claims of a JWT, read only to decide what to show (the server checks the signature).
export function tokenClaims(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), '=')));
  } catch { return {}; }
}
