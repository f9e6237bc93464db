// Letterbird webmail: the few behaviours that need script. Everything else is plain HTML forms.
(function () {
  "use strict";

  // "Select all" checkbox of a message list.
  document.addEventListener("change", function (e) {
    var t = e.target;
    if (t && t.matches && t.matches("[data-select-all]")) {
      document.querySelectorAll('input[name="uid"]').forEach(function (box) { box.checked = t.checked; });
    }
  });

  // Confirmation for destructive buttons (no inline handlers: the page CSP forbids them).
  document.addEventListener("click", function (e) {
    var b = e.target && e.target.closest ? e.target.closest("[data-confirm]") : null;
    if (b && !window.confirm(b.getAttribute("data-confirm"))) { e.preventDefault(); }
  });

  // Live updates: server-sent events say which folder changed; refresh what shows it.
  var source = document.body.getAttribute("data-events");
  if (!source || !window.EventSource) { return; }
  var pending = null;
  function refresh() {
    pending = null;
    if (!window.htmx) { return; }
    var nav = document.getElementById("nav");
    var list = document.getElementById("msglist");
    var current = list ? list.getAttribute("data-mailbox") : "";
    if (nav) { htmx.ajax("GET", "/nav?current=" + encodeURIComponent(current || ""), { target: "#nav", swap: "innerHTML" }); }
    if (list) {
      var busy = document.querySelector('input[name="uid"]:checked') || document.activeElement && document.activeElement.closest && document.activeElement.closest("#msglist");
      if (!busy) { htmx.ajax("GET", list.getAttribute("data-list-url"), { target: "#msglist", swap: "outerHTML" }); }
    }
  }
  function soon() { if (!pending) { pending = setTimeout(refresh, 150); } }
  var es = new EventSource(source);
  var opened = false;
  es.addEventListener("change", soon);
  // After a reconnect, changes may have been missed: refresh once.
  es.addEventListener("open", function () { if (opened) { soon(); } opened = true; });
})();
