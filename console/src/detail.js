// The session page: the live timeline and the recordings player.
import * as AsciinemaPlayer from "asciinema-player";
import { $, $$ } from "./util.js";

export function timeline(box) {
  let last = "";
  async function refresh() {
    try {
      // Asking for JSON too makes an expired login a 401 instead of the login page.
      const answer = await fetch(box.dataset.src, {
        credentials: "same-origin",
        headers: { Accept: "text/html, application/json;q=0.1" },
      });
      if (answer.ok) {
        const html = await answer.text();
        if (html !== last) {
          last = html;
          box.innerHTML = html; // our own server-rendered, escaped fragment
        }
      }
    } catch (_) {
      // offline for a moment: the next tick tries again
    }
  }
  refresh();
  setInterval(refresh, 2000);
}

export function recordings() {
  for (const row of $$(".recording")) {
    const button = $(".play", row);
    if (!button) continue;
    let player = null;
    const start = () => {
      if (player) player.dispose();
      const box = $(".player", row);
      box.innerHTML = "";
      player = AsciinemaPlayer.create(button.dataset.cast, box, {
        speed: Number($(".speed", row).value) || 1,
        idleTimeLimit: Number($(".idle", row).value) || undefined,
        autoPlay: true,
        controls: true,
        fit: "width",
      });
      row.dataset.playing = "1";
    };
    button.addEventListener("click", start);
    $(".speed", row).addEventListener("change", () => player && start());
    $(".idle", row).addEventListener("change", () => player && start());
  }
}

export function approvals(form) {
  const all = $("#select-all", form);
  all.addEventListener("change", () => {
    for (const box of $$(".pick", form)) box.checked = all.checked;
  });
}
