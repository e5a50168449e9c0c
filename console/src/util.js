// Small helpers shared by the pages.
export const $ = (sel, root = document) => root.querySelector(sel);
export const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

export function csrf() {
  const meta = $('meta[name="csrf-token"]');
  return meta ? meta.content : "";
}

// A state-changing call: form-encoded body, the CSRF token in its header.
export function post(url, data) {
  return fetch(url, {
    method: "POST",
    body: new URLSearchParams(data),
    headers: { "X-CSRF-Token": csrf() },
    credentials: "same-origin",
  });
}

export function wsUrl(path) {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  return `${proto}//${location.host}${path}`;
}
