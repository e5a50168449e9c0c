// The console's scripts: each page's behaviour, chosen by the elements it has.
import { requestForm } from "./request.js";
import { approvals, recordings, timeline } from "./detail.js";
import { launch } from "./launch.js";
import { $ } from "./util.js";

function start() {
  const form = $("#request-form");
  if (form) requestForm(form);
  const box = $("#timeline");
  if (box) timeline(box);
  if ($(".recording")) recordings();
  const pending = $("#approvals-form");
  if (pending) approvals(pending);
  const root = $("#launch");
  if (root) launch(root);
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
else start();
