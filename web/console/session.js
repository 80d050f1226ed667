// @ts-check
/**
 * The agent's session (kept in sessionStorage so a reload stays logged in), the shared
 * client library (loaded once), and the HTTP helper every module calls through.
 */

/**
 * @typedef {{ id: string, name: string, email?: string, role: string, kind?: string,
 *             max_concurrent?: number, status?: string }} Agent
 * @typedef {{ tenant: string, token: string, agent: Agent }} Session
 * @typedef {(apiBase: string, token: string | null, method: string, path: string, body?: unknown) => Promise<any>} ApiFn
 * @typedef {{ RelaydeskClient: any, api: ApiFn, newClientId?: () => string }} ClientLib
 */

const SESSION_KEY = 'relaydesk.console.session';

/** @returns {Session | null} */
export function loadSession() {
  try {
    const raw = sessionStorage.getItem(SESSION_KEY);
    if (!raw) return null;
    const s = JSON.parse(raw);
    if (s && typeof s.token === 'string' && s.agent && typeof s.agent.id === 'string') return s;
  } catch {
    /* a corrupt entry is no session */
  }
  return null;
}

/** @param {Session} s */
export function saveSession(s) {
  try {
    sessionStorage.setItem(SESSION_KEY, JSON.stringify(s));
  } catch {
    /* storage full or disabled: the session lasts until reload */
  }
}

export function clearSession() {
  try {
    sessionStorage.removeItem(SESSION_KEY);
  } catch {
    /* nothing stored */
  }
}

/** @type {Promise<ClientLib | null> | null} */
let libPromise = null;

/**
 * The shared client library (`/client/relaydesk.js`). Loaded dynamically so that the
 * login screen and the REST parts of the console still work if it fails to load.
 * @returns {Promise<ClientLib | null>}
 */
export function loadClientLib() {
  if (!libPromise) {
    libPromise = import('/client/relaydesk.js').then(
      (m) => /** @type {ClientLib} */ (m),
      (err) => {
        console.error('relaydesk console: could not load /client/relaydesk.js', err);
        return null;
      },
    );
  }
  return libPromise;
}

/**
 * The same contract as the library's `api` (JSON in and out; throws an Error with
 * `.status` and `.code`, and `.retryAfter` in seconds when the answer says when to
 * retry), for use before or without the library.
 * @type {ApiFn}
 */
export async function fallbackApi(apiBase, token, method, path, body) {
  /** @type {Record<string, string>} */
  const headers = { Accept: 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let res;
  try {
    res = await fetch(apiBase + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    const err = /** @type {any} */ (new Error('The server cannot be reached'));
    err.status = 0;
    err.code = 'unavailable';
    err.cause = e;
    throw err;
  }
  const text = await res.text();
  /** @type {any} */
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!res.ok) {
    const err = /** @type {any} */ (
      new Error(data?.error?.message || `${method} ${path} failed with ${res.status}`)
    );
    err.status = res.status;
    err.code = data?.error?.code || 'internal';
    const retryAfter = Number(res.headers.get('Retry-After'));
    if (Number.isFinite(retryAfter) && retryAfter > 0) err.retryAfter = retryAfter;
    throw err;
  }
  return data;
}

/**
 * An Error's HTTP status, if it has one.
 * @param {unknown} e
 * @returns {number | undefined}
 */
export function statusOf(e) {
  const s = /** @type {any} */ (e)?.status;
  return typeof s === 'number' ? s : undefined;
}

/**
 * An Error's `Retry-After`, in seconds, if the answer had one.
 * @param {unknown} e
 * @returns {number | undefined}
 */
export function retryAfterOf(e) {
  const s = /** @type {any} */ (e)?.retryAfter;
  return typeof s === 'number' ? s : undefined;
}

/**
 * A human message for an API error.
 * @param {unknown} e
 */
export function messageOf(e) {
  if (e instanceof Error && e.message) return e.message;
  return String(e);
}

/**
 * A bound API caller for this session. A 401 calls `onUnauthorized` (the console returns
 * to the login screen) before rethrowing.
 * @param {Session} session
 * @param {() => void} onUnauthorized
 * @returns {(method: string, path: string, body?: unknown) => Promise<any>}
 */
export function makeCaller(session, onUnauthorized) {
  return async (method, path, body) => {
    const lib = await loadClientLib();
    const api = lib?.api ?? fallbackApi;
    try {
      return await api(location.origin, session.token, method, path, body);
    } catch (e) {
      if (statusOf(e) === 401) onUnauthorized();
      throw e;
    }
  };
}

/**
 * `POST /v1/auth/login`.
 * @param {string} tenant
 * @param {string} email
 * @param {string} password
 * @returns {Promise<Session>}
 */
export async function login(tenant, email, password) {
  // Plain fetch: no credential yet, and the login screen works even without the library.
  const res = await fallbackApi(location.origin, null, 'POST', '/v1/auth/login', {
    tenant,
    email,
    password,
  });
  if (!res || typeof res.token !== 'string' || !res.agent) {
    throw new Error('Unexpected answer from the server');
  }
  return { tenant, token: res.token, agent: res.agent };
}
