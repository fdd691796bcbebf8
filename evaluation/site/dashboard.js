// Filter box for the evaluation dashboard: everything is in the HTML already; this only hides what does not
// match. Rows and figures carry data-name, data-group and data-status (see evaluation/dashboard_html.py).
"use strict";
(function () {
  const PROBLEMS = new Set(["regression", "failed", "missing", "incomplete", "incomparable", "no baseline"]);

  function apply(text, problemsOnly) {
    const needle = text.trim().toLowerCase();
    document.querySelectorAll("main [data-name]").forEach(function (el) {
      const hay = (el.dataset.name + " " + (el.dataset.group || "")).toLowerCase();
      const status = el.dataset.status;
      const textOk = !needle || hay.includes(needle);
      // Rows without a status (average rows of the matrix) follow the text filter only.
      const statusOk = !problemsOnly || status === undefined || PROBLEMS.has(status);
      el.hidden = !(textOk && statusOk);
    });
  }

  function controls() {
    const box = document.getElementById("controls");
    if (!box) return;
    const search = document.createElement("input");
    search.type = "search";
    search.id = "filter";
    search.placeholder = "filter: dataset or group";
    search.setAttribute("aria-label", "filter datasets or groups");
    const label = document.createElement("label");
    const problems = document.createElement("input");
    problems.type = "checkbox";
    problems.id = "problems-only";
    label.append(problems, " only regressions, failures and gaps");
    box.append(search, label);
    const update = function () { apply(search.value, problems.checked); };
    search.addEventListener("input", update);
    problems.addEventListener("change", update);
    document.documentElement.dataset.js = "ready";
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", controls);
  } else {
    controls();
  }
})();
