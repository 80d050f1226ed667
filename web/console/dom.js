// @ts-check
/**
 * Small DOM and formatting helpers shared by the console's modules. No framework: elements
 * are built with `h()` and lists are kept in order by `reconcile()`, which moves only the
 * elements that are out of place (so focus and scroll survive a re-render).
 */

/**
 * @typedef {string | number | Node | null | undefined | false} Child
 * @typedef {Record<string, any>} Attrs
 */

/**
 * Creates an element. Attributes: `class`, `dataset` (object), `on<event>` (listener),
 * boolean values toggle the attribute, everything else is set with `setAttribute`.
 * Text children become text nodes (never HTML).
 * @template {keyof HTMLElementTagNameMap} K
 * @param {K} tag
 * @param {Attrs | null} [attrs]
 * @param {...(Child | Child[])} children
 * @returns {HTMLElementTagNameMap[K]}
 */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  if (attrs) {
    for (const [name, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (name === 'class') el.className = String(value);
      else if (name === 'dataset') Object.assign(el.dataset, value);
      else if (name.startsWith('on') && typeof value === 'function') {
        el.addEventListener(name.slice(2), value);
      } else if (name === 'value' && 'value' in el) {
        /** @type {any} */ (el).value = value;
      } else if (value === true) el.setAttribute(name, '');
      else el.setAttribute(name, String(value));
    }
  }
  append(el, children);
  return el;
}

/**
 * @param {Element} el
 * @param {(Child | Child[])[]} children
 */
function append(el, children) {
  for (const c of children) {
    if (Array.isArray(c)) append(el, c);
    else if (c === null || c === undefined || c === false) continue;
    else if (c instanceof Node) el.append(c);
    else el.append(document.createTextNode(String(c)));
  }
}

/**
 * The element with this id; throws when the markup lacks it.
 * @template {HTMLElement} T
 * @param {string} id
 * @param {new (...a: any[]) => T} [type]
 * @returns {T}
 */
export function byId(id, type) {
  const el = document.getElementById(id);
  if (!el) throw new Error(`#${id} is missing from index.html`);
  if (type && !(el instanceof type)) throw new Error(`#${id} is not a ${type.name}`);
  return /** @type {T} */ (el);
}

/**
 * Keeps `container`'s children equal to `items` rendered, in order. Each element is
 * rebuilt only when `sig(item)` changed since it was made; elements already in place are
 * not moved.
 * @template T
 * @param {HTMLElement} container
 * @param {T[]} items
 * @param {(item: T) => string} key
 * @param {(item: T) => HTMLElement} render
 * @param {(item: T) => string} sig
 */
export function reconcile(container, items, key, render, sig) {
  /** @type {Map<string, HTMLElement>} */
  const existing = new Map();
  for (const child of Array.from(container.children)) {
    const k = /** @type {HTMLElement} */ (child).dataset.key;
    if (k !== undefined) existing.set(k, /** @type {HTMLElement} */ (child));
    else child.remove();
  }
  let index = 0;
  for (const item of items) {
    const k = key(item);
    const s = sig(item);
    let el = existing.get(k);
    existing.delete(k);
    if (!el || el.dataset.sig !== s) {
      const fresh = render(item);
      fresh.dataset.key = k;
      fresh.dataset.sig = s;
      if (el) {
        const hadFocus = el.contains(document.activeElement);
        el.replaceWith(fresh);
        if (hadFocus) {
          const target = fresh.querySelector('button, [tabindex]');
          if (target instanceof HTMLElement) target.focus({ preventScroll: true });
        }
      }
      el = fresh;
    }
    const at = container.children[index];
    if (at !== el) container.insertBefore(el, at ?? null);
    index++;
  }
  for (const stale of existing.values()) stale.remove();
}

/** @param {number | null | undefined} ms */
export function clockTime(ms) {
  if (!ms) return '';
  const d = new Date(ms);
  const now = new Date();
  const sameDay = d.toDateString() === now.toDateString();
  return sameDay
    ? d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })
    : d.toLocaleString([], { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' });
}

/** @param {number | null | undefined} ms */
export function dateTime(ms) {
  if (!ms) return '—';
  return new Date(ms).toLocaleString([], {
    year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit',
  });
}

/**
 * A duration, short: "45s", "12m", "3h 5m", "2d".
 * @param {number} ms
 */
export function duration(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m`;
  const hrs = Math.floor(m / 60);
  if (hrs < 24) return m % 60 ? `${hrs}h ${m % 60}m` : `${hrs}h`;
  return `${Math.floor(hrs / 24)}d`;
}

/**
 * "3m ago" for a past time.
 * @param {number | null | undefined} ms
 */
export function ago(ms) {
  if (!ms) return '';
  const d = Date.now() - ms;
  return d < 45_000 ? 'just now' : `${duration(d)} ago`;
}

/**
 * The first characters of an id, for display when no name is known.
 * @param {string | null | undefined} id
 */
export function shortId(id) {
  return id ? String(id).slice(0, 8) : '';
}

/**
 * Whether a keyboard event comes from somewhere the user types.
 * @param {EventTarget | null} target
 */
export function isTypingTarget(target) {
  if (!(target instanceof HTMLElement)) return false;
  if (target.isContentEditable) return true;
  const tag = target.tagName;
  if (tag === 'TEXTAREA' || tag === 'SELECT') return true;
  if (tag === 'INPUT') {
    const type = /** @type {HTMLInputElement} */ (target).type;
    return !['button', 'submit', 'checkbox', 'radio', 'reset'].includes(type);
  }
  return false;
}

/** @param {string} s */
export function capitalize(s) {
  return s ? s[0].toUpperCase() + s.slice(1) : s;
}

/**
 * Display label of a key such as `refund_issued` → "Refund issued".
 * @param {string} key
 */
export function humanize(key) {
  return capitalize(String(key).replace(/[_-]+/g, ' '));
}
