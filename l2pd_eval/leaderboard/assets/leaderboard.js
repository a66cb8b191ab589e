// l2pd-eval leaderboard: sort by any column, filter by text, kind and task. No library, no network.
(function () {
  "use strict";
  var table = document.getElementById("board");
  if (!table) { return; }
  var body = table.tBodies[0];
  var rows = Array.prototype.slice.call(body.rows);
  var headers = Array.prototype.slice.call(table.tHead.rows[0].cells);
  var filter = document.getElementById("filter");
  var kind = document.getElementById("kind");
  var task = document.getElementById("task");
  var count = document.getElementById("count");

  function value(row, index, type) {
    var text = row.cells[index].getAttribute("data-value");
    if (type === "number") { return text === "" ? null : parseFloat(text); }
    return row.cells[index].textContent.trim().toLowerCase();
  }

  function sortBy(index) {
    var th = headers[index];
    var type = th.getAttribute("data-type");
    var ascending = th.getAttribute("aria-sort") !== "ascending";
    headers.forEach(function (h) { h.setAttribute("aria-sort", "none"); });
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    var sorted = rows.slice().sort(function (a, b) {
      var x = value(a, index, type), y = value(b, index, type);
      if (x === null && y === null) { return 0; }
      if (x === null) { return 1; }   // missing values last, either direction
      if (y === null) { return -1; }
      var order = type === "number" ? x - y : x.localeCompare(y);
      return ascending ? order : -order;
    });
    sorted.forEach(function (r) { body.appendChild(r); });
  }

  function apply() {
    var words = filter.value.toLowerCase().split(/\s+/).filter(Boolean);
    var shown = 0;
    rows.forEach(function (r) {
      var text = r.textContent.toLowerCase();
      var ok = words.every(function (w) { return text.indexOf(w) >= 0; }) &&
        (!kind.value || r.getAttribute("data-kind") === kind.value) &&
        (!task.value || r.getAttribute("data-task") === task.value);
      r.hidden = !ok;
      if (ok) { shown += 1; }
    });
    count.textContent = shown + " of " + rows.length + " rows";
  }

  headers.forEach(function (th, index) {
    th.querySelector("button").addEventListener("click", function () { sortBy(index); });
  });
  [filter, kind, task].forEach(function (el) { el.addEventListener("input", apply); });
  kind.addEventListener("change", apply);
  task.addEventListener("change", apply);
})();
