// @ts-check
/**
 * Attention: a WebAudio beep, a flashing document title, the unread count in the title,
 * and toasts (an aria-live region).
 */

/** @type {AudioContext | null} */
let audio = null;

/**
 * Browsers allow audio only after a user gesture: the context is made (or resumed) on the
 * first click or key press, so later beeps work while the tab is in the background.
 */
export function armAudio() {
  const unlock = () => {
    try {
      if (!audio) {
        const Ctor = window.AudioContext || /** @type {any} */ (window).webkitAudioContext;
        if (Ctor) audio = new Ctor();
      }
      if (audio && audio.state === 'suspended') void audio.resume();
    } catch {
      audio = null;
    }
  };
  window.addEventListener('pointerdown', unlock, { capture: true });
  window.addEventListener('keydown', unlock, { capture: true });
}

/** Two short tones. Silent when audio is unavailable. */
export function beep() {
  if (!audio) return;
  try {
    const t0 = audio.currentTime;
    for (const [offset, freq] of [[0, 880], [0.18, 1175]]) {
      const osc = audio.createOscillator();
      const gain = audio.createGain();
      osc.type = 'sine';
      osc.frequency.value = freq;
      gain.gain.setValueAtTime(0.0001, t0 + offset);
      gain.gain.exponentialRampToValueAtTime(0.2, t0 + offset + 0.02);
      gain.gain.exponentialRampToValueAtTime(0.0001, t0 + offset + 0.15);
      osc.connect(gain).connect(audio.destination);
      osc.start(t0 + offset);
      osc.stop(t0 + offset + 0.16);
    }
  } catch {
    /* best effort */
  }
}

const BASE_TITLE = 'Relaydesk Console';
let unreadTotal = 0;
/** @type {ReturnType<typeof setInterval> | null} */
let flashTimer = null;
/** @type {ReturnType<typeof setTimeout> | null} */
let flashStop = null;
let flashOn = false;
let flashText = '';

function baseTitle() {
  return unreadTotal > 0 ? `(${unreadTotal}) ${BASE_TITLE}` : BASE_TITLE;
}

/** @param {number} n total unread messages */
export function setUnreadTotal(n) {
  unreadTotal = n;
  if (!flashTimer) document.title = baseTitle();
}

/**
 * Alternates the title with `text` until `stopFlash()`; when the tab is visible it stops
 * by itself after a while (the toast and the list badge remain).
 * @param {string} text
 */
export function flashTitle(text) {
  flashText = text;
  if (!flashTimer) {
    flashTimer = setInterval(() => {
      flashOn = !flashOn;
      document.title = flashOn ? flashText : baseTitle();
    }, 1000);
    flashOn = true;
    document.title = flashText;
  }
  if (flashStop) clearTimeout(flashStop);
  flashStop = null;
  if (!document.hidden) flashStop = setTimeout(stopFlash, 15_000);
}

export function stopFlash() {
  if (flashTimer) clearInterval(flashTimer);
  if (flashStop) clearTimeout(flashStop);
  flashTimer = null;
  flashStop = null;
  flashOn = false;
  document.title = baseTitle();
}

document.addEventListener('visibilitychange', () => {
  if (!document.hidden && flashTimer && !flashStop) flashStop = setTimeout(stopFlash, 5_000);
});
window.addEventListener('focus', () => {
  if (flashTimer && !flashStop) flashStop = setTimeout(stopFlash, 5_000);
});

/**
 * A transient message in the toast region.
 * @param {string} text
 * @param {'info' | 'success' | 'error'} [tone]
 */
export function toast(text, tone = 'info') {
  const region = document.getElementById('toasts');
  if (!region) return;
  const el = document.createElement('div');
  el.className = `toast toast--${tone}`;
  el.setAttribute('role', tone === 'error' ? 'alert' : 'status');
  el.textContent = text;
  const close = document.createElement('button');
  close.type = 'button';
  close.className = 'toast__close';
  close.setAttribute('aria-label', 'Dismiss');
  close.textContent = '×';
  close.addEventListener('click', () => el.remove());
  el.append(close);
  region.append(el);
  setTimeout(() => el.remove(), tone === 'error' ? 8000 : 4500);
  while (region.children.length > 4) region.firstElementChild?.remove();
}
