// The gateway's APIs as the console uses them: the session (login, CSRF
// token), JSON reads and writes, and what a missing endpoint looks like.

/** session is the answer of GET /dashboard/session, kept current. */
export const session = {logged_in: false, can_write: false, read_only: true, protect_reads: false, csrf_token: ''};

const listeners = new Set();

/** onSession calls fn with the session now and after every change. */
export function onSession(fn) {
  listeners.add(fn);
  fn(session);
}

/** loadSession reads GET /dashboard/session. */
export async function loadSession() {
  const r = await fetch('/dashboard/session', {credentials: 'same-origin', cache: 'no-store'});
  if (r.ok) Object.assign(session, {logged_in: false, can_write: false, read_only: false, protect_reads: false, csrf_token: ''}, await r.json());
  for (const fn of listeners) fn(session);
  return session;
}

/** login posts the admin token; the gateway answers with an HttpOnly cookie. */
export async function login(token) {
  const r = await fetch('/dashboard/login', {
    method: 'POST', credentials: 'same-origin',
    headers: {'Content-Type': 'application/json'}, body: JSON.stringify({token}),
  });
  if (r.status === 204 || r.ok) {
    await loadSession();
    return '';
  }
  if (r.status === 401) return 'Wrong token.';
  if (r.status === 403) return 'This gateway has no admin token configured: it is read-only.';
  return `Login failed (${r.status}).`;
}

/** logout ends the session. */
export async function logout() {
  await fetch('/dashboard/logout', {method: 'POST', credentials: 'same-origin', headers: {'X-CSRF-Token': session.csrf_token}});
  await loadSession();
}

/**
 * Answer is what call returns: the status, the JSON body (or null) and,
 * when the route is not served by this gateway, missing = true.
 */
export class Answer {
  constructor(status, body, text) {
    this.status = status;
    this.body = body;
    this.text = text;
    this.ok = status >= 200 && status < 300;
    this.missing = status === 404 || status === 405 || status === 501;
  }

  /** problem is a one-line description of a failed answer. */
  problem() {
    const b = this.body || {};
    if (this.status === 401 || this.status === 403) return 'Log in with the admin token to do this.';
    return b.detail || b.title || b.error || this.text || `HTTP ${this.status}`;
  }
}

/** call makes a request; writes carry the session's CSRF token. */
export async function call(method, url, body, contentType) {
  const headers = {};
  if (method !== 'GET' && method !== 'HEAD') headers['X-CSRF-Token'] = session.csrf_token;
  if (body !== undefined) headers['Content-Type'] = contentType || 'application/json';
  let r;
  try {
    r = await fetch(url, {method, headers, credentials: 'same-origin', cache: 'no-store',
      body: body === undefined ? undefined : (typeof body === 'string' ? body : JSON.stringify(body))});
  } catch (e) {
    return new Answer(0, null, `the gateway cannot be reached (${e.message})`);
  }
  // The session ended (expired, the gateway restarted): read it again, so
  // that the page stops saying "Logged in".
  if (r.status === 401 && session.logged_in) loadSession().catch(() => {});
  const text = await r.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { /* not JSON */ }
  // A route the gateway does not serve may fall through to the page itself.
  const html = (r.headers.get('Content-Type') || '').startsWith('text/html');
  return new Answer(html && method === 'GET' && url.startsWith('/api/') ? 404 : r.status, json, json ? '' : text.slice(0, 300));
}

/** get reads JSON. */
export const get = (url) => call('GET', url);
