// The request form: live purpose count and preview, server search, duration preview.
import { $, $$, post } from "./util.js";

export function requestForm(form) {
  const purpose = $("#purpose", form);
  const count = $("#purpose-count", form);
  const max = Number(purpose.dataset.max);
  const preview = $("#purpose-preview", form);
  const fmt = new Intl.NumberFormat("en");
  let timer = null;

  async function renderPreview() {
    const answer = await post(`${document.body.dataset.prefix || "/console"}/preview`, {
      purpose: purpose.value,
    });
    // The server renders with HTML disabled and unsafe links dropped (markdown-it-py).
    preview.innerHTML = answer.ok ? await answer.text() : "";
    preview.hidden = false;
  }
  function updateCount() {
    const n = purpose.value.length;
    count.textContent = `${fmt.format(n)} / ${fmt.format(max)}`;
    count.classList.toggle("over", n > max);
    if (!preview.hidden) {
      clearTimeout(timer);
      timer = setTimeout(renderPreview, 300);
    }
  }
  purpose.addEventListener("input", updateCount);
  $("#preview-button", form).addEventListener("click", renderPreview);
  updateCount();

  const search = $("#server-search", form);
  search.addEventListener("input", () => {
    const needle = search.value.trim().toLowerCase();
    for (const option of $$(".server-option", form)) {
      option.hidden = needle !== "" && !option.dataset.name.toLowerCase().includes(needle);
    }
  });

  // Port forwarding and the editor: say which selected servers do not offer them.
  function updateOffered() {
    const selected = $$('input[name="servers"]:checked', form);
    for (const note of $$("[data-not-offered]", form)) {
      const scope = note.dataset.notOffered;
      const wanted = $(`#scope-${scope}`, form).checked;
      const missing = selected
        .filter((box) => !box.dataset.features.split(" ").includes(scope))
        .map((box) => box.dataset.serverName);
      note.hidden = !wanted || missing.length === 0;
      note.textContent = missing.length ? `Not enabled on ${missing.join(", ")}` : "";
    }
  }
  form.addEventListener("change", updateOffered);
  updateOffered();

  const maxSeconds = Number(form.dataset.maxSeconds);
  const local = $("#starts-at-local", form);
  const hidden = $("#starts-at", form);
  if (hidden.value) {
    const d = new Date(hidden.value);
    if (!Number.isNaN(d.getTime())) {
      local.value = new Date(d.getTime() - d.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
    }
  }
  function updateDuration() {
    const custom = $("#mode-custom", form).checked;
    $("#preset-fields", form).hidden = custom;
    $("#custom-fields", form).hidden = !custom;
    const scheduled = custom && $("#start-scheduled", form).checked;
    local.hidden = !scheduled;
    let start = new Date();
    if (scheduled && local.value) {
      start = new Date(local.value);
      hidden.value = start.toISOString();
    } else if (!scheduled) {
      hidden.value = "";
    }
    let seconds;
    if (custom) {
      seconds = (Number($("#hours", form).value) || 0) * 3600 + (Number($("#minutes", form).value) || 0) * 60;
    } else {
      const preset = $('input[name="preset"]:checked', form);
      seconds = preset ? Number(preset.value.slice(0, -1)) * 3600 : 0;
    }
    const end = new Date(start.getTime() + seconds * 1000);
    $("#end-preview", form).textContent = seconds > 0 ? `Ends ${end.toLocaleString()}` : "";
    const error = $("#duration-error", form);
    error.hidden = seconds <= maxSeconds;
    error.textContent = seconds > maxSeconds ? "Longer than the workspace maximum." : "";
  }
  form.addEventListener("change", updateDuration);
  form.addEventListener("input", (e) => {
    if (["hours", "minutes", "starts-at-local"].includes(e.target.id)) updateDuration();
  });
  updateDuration();
  setInterval(updateDuration, 30000);
}
