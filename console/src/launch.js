// Launch: a browser terminal over the websh channel, file transfer over the files
// channel, and a command with streamed output. The login cookie authenticates the
// websockets (same origin only); every POST carries the CSRF token.
import { Terminal } from "@xterm/xterm";
import { FitAddon } from "@xterm/addon-fit";
import { sha256 } from "@noble/hashes/sha256";
import { bytesToHex } from "@noble/hashes/utils";
import { $, post, wsUrl } from "./util.js";

const CHUNK = 256 * 1024;
const MAX_BUFFERED = 4 * CHUNK; // keep the send queue bounded

export function launch(root) {
  const session = root.dataset.session;
  const prefix = document.body.dataset.prefix;
  const server = () => $("#server-pick").value;
  const account = () => $("#account").value.trim();
  if ($("#terminal")) terminal(root, session, prefix, server, account);
  if ($("#upload")) files(session, server, account);
  if ($("#run-command")) command(session, prefix, server, account);
}

function terminal(root, session, prefix, server, account) {
  const state = $("#terminal-state");
  const term = new Terminal({ cursorBlink: true, convertEol: false, scrollback: 5000 });
  const fit = new FitAddon();
  term.loadAddon(fit);
  const encoder = new TextEncoder();
  let ws = null;
  const key = () => `fleetgate.terminal.${session}.${server()}`;

  function attach(id, fresh) {
    const url = wsUrl(`/ws/websh/${id}/?rows=${term.rows}&cols=${term.cols}&term=xterm-256color`);
    const socket = new WebSocket(url);
    socket.binaryType = "arraybuffer";
    let opened = false;
    socket.onopen = () => {
      opened = true;
      ws = socket;
      $("#close-terminal").disabled = false;
    };
    socket.onmessage = (event) => {
      if (typeof event.data === "string") {
        const frame = JSON.parse(event.data);
        if (frame.type === "ready") {
          state.textContent = frame.reattached ? "reattached" : "connected";
          root.dataset.terminal = id;
        } else if (frame.type === "exit") {
          state.textContent = `ended (${frame.reason})`;
          sessionStorage.removeItem(key());
        } else if (frame.type === "error") {
          state.textContent = `refused: ${frame.message}`;
        }
      } else {
        term.write(new Uint8Array(event.data));
      }
    };
    socket.onclose = () => {
      ws = null;
      $("#close-terminal").disabled = true;
      if (!opened && !fresh) {
        // The stored terminal has ended (or is not ours any more): start a new one.
        sessionStorage.removeItem(key());
        create();
      } else if (!opened) {
        state.textContent = "refused: the terminal could not be opened";
      } else if (!state.textContent.startsWith("ended")) {
        state.textContent = "disconnected (reload or Open terminal to reattach)";
      }
    };
  }

  async function create() {
    state.textContent = "opening…";
    const answer = await post(`${prefix}/sessions/${session}/terminals`, {
      server: server(),
      username: account(),
      rows: term.rows,
      cols: term.cols,
    });
    const body = await answer.json();
    if (!answer.ok) {
      state.textContent = `refused: ${body.detail}`;
      return;
    }
    sessionStorage.setItem(key(), body.id);
    attach(body.id, true);
  }

  function open() {
    if (!term.element) {
      term.open($("#terminal"));
      fit.fit();
    }
    term.focus();
    if (ws) return;
    const stored = sessionStorage.getItem(key());
    if (stored) attach(stored, false);
    else create();
  }

  term.onData((data) => ws && ws.send(encoder.encode(data)));
  term.onResize(({ rows, cols }) => ws && ws.send(JSON.stringify({ type: "resize", rows, cols })));
  window.addEventListener("resize", () => term.element && fit.fit());
  $("#open-terminal").addEventListener("click", open);
  $("#close-terminal").addEventListener("click", () => {
    if (ws) ws.send(JSON.stringify({ type: "close" }));
  });
  // Reattach after a reload (within the agent's detach grace).
  if (sessionStorage.getItem(key())) open();
}

function channel(params) {
  const query = new URLSearchParams(params);
  const socket = new WebSocket(wsUrl(`/ws/files/?${query}`));
  socket.binaryType = "arraybuffer";
  return socket;
}

function files(session, server, account) {
  const progress = $("#transfer-progress");
  const state = $("#transfer-state");
  const show = (done, total) => {
    progress.max = Math.max(total, 1);
    progress.value = done;
  };

  $("#upload").addEventListener("click", () => {
    const file = $("#upload-file").files[0];
    if (!file) {
      state.textContent = "Choose a file first.";
      return;
    }
    const socket = channel({
      server: server(),
      op: "upload",
      path: $("#upload-dir").value.trim(),
      name: file.name,
      user: account(),
      size: file.size,
      work_session: session,
    });
    let settled = false;
    state.textContent = "uploading…";
    socket.onmessage = async (event) => {
      const frame = JSON.parse(event.data);
      if (frame.type === "ready") {
        const hash = sha256.create();
        let sent = 0;
        while (sent < file.size) {
          const part = new Uint8Array(await file.slice(sent, sent + CHUNK).arrayBuffer());
          hash.update(part);
          if (sent >= frame.offset) socket.send(part);
          sent += part.length;
          show(sent, file.size);
          while (socket.bufferedAmount > MAX_BUFFERED) {
            await new Promise((resolve) => setTimeout(resolve, 20));
          }
        }
        socket.send(JSON.stringify({ type: "end", size: file.size, sha256: bytesToHex(hash.digest()) }));
      } else if (frame.type === "done") {
        settled = true;
        state.textContent = `uploaded ${frame.size} bytes to ${frame.path || ""}`;
        socket.close();
      } else if (frame.type === "error") {
        settled = true;
        state.textContent = `refused: ${frame.code}: ${frame.message}`;
      }
    };
    socket.onclose = () => {
      if (!settled) state.textContent = "refused: the transfer could not be opened";
    };
  });

  $("#download").addEventListener("click", () => {
    const path = $("#download-path").value.trim();
    const socket = channel({ server: server(), op: "download", path, user: account(), work_session: session });
    const parts = [];
    let size = 0;
    let got = 0;
    let settled = false;
    state.textContent = "downloading…";
    socket.onmessage = (event) => {
      if (typeof event.data !== "string") {
        parts.push(event.data);
        got += event.data.byteLength;
        show(got, size);
        return;
      }
      const frame = JSON.parse(event.data);
      if (frame.type === "ready") {
        size = frame.size || 0;
      } else if (frame.type === "done") {
        settled = true;
        const link = document.createElement("a");
        link.href = URL.createObjectURL(new Blob(parts));
        link.download = path.split("/").pop() || "download";
        link.click();
        state.textContent = `downloaded ${frame.size} bytes`;
      } else if (frame.type === "error") {
        settled = true;
        state.textContent = `refused: ${frame.code}: ${frame.message}`;
      }
    };
    socket.onclose = () => {
      if (!settled) state.textContent = "refused: the transfer could not be opened";
    };
  });
}

function command(session, prefix, server, account) {
  const output = $("#command-output");
  const result = $("#command-result");
  const decoder = new TextDecoder();
  $("#run-command").addEventListener("click", async () => {
    output.textContent = "";
    result.textContent = "running…";
    const answer = await post(`${prefix}/sessions/${session}/commands`, {
      server: server(),
      line: $("#command-line").value,
      username: account(),
    });
    if (!answer.ok) {
      const body = await answer.json();
      result.textContent = `refused: ${body.detail}`;
      return;
    }
    const reader = answer.body.getReader();
    let pending = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      pending += decoder.decode(value, { stream: true });
      let newline;
      while ((newline = pending.indexOf("\n")) >= 0) {
        const line = pending.slice(0, newline);
        pending = pending.slice(newline + 1);
        if (!line.trim()) continue;
        const event = JSON.parse(line);
        if (event.event === "output") output.textContent += event.content;
        else if (event.event === "finished") {
          const c = event.command;
          result.textContent = `finished: exit ${c.exit_code}`;
          result.dataset.exitCode = String(c.exit_code);
        }
      }
    }
  });
}
