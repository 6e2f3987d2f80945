// Spindle status page: every few seconds, fetch this page again and swap its live sections in.
// The figures (rates included) are computed by Spindle; without this script the page is the same,
// as of when it was loaded.
(function () {
  "use strict";
  var every = 5000;
  var live = document.getElementById("live");
  function say(text) {
    if (live) { live.textContent = text; }
  }
  function swap(html) {
    var fresh = new DOMParser().parseFromString(html, "text/html");
    var parts = document.querySelectorAll("[data-live]");
    for (var i = 0; i < parts.length; i++) {
      var next = fresh.getElementById(parts[i].id);
      if (next) { parts[i].replaceWith(document.importNode(next, true)); }
    }
    var body = document.body;
    body.setAttribute("data-refreshes", String(Number(body.getAttribute("data-refreshes") || "0") + 1));
    say("Live: updated at " + new Date().toLocaleTimeString() + ", every " + every / 1000 + " s.");
  }
  function refresh() {
    if (document.hidden) { setTimeout(refresh, every); return; }
    fetch(location.href, { cache: "no-store", credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) {
        if (!r.ok) { throw new Error("HTTP " + r.status); }
        return r.text();
      })
      .then(swap, function (e) { say("Live refresh failed (" + e.message + "); showing the last figures."); })
      .then(function () { setTimeout(refresh, every); });
  }
  say("Live: refreshing every " + every / 1000 + " s.");
  // A first view has no earlier figures to compute rates from: come back sooner.
  setTimeout(refresh, document.body.hasAttribute("data-no-rates") ? 1500 : every);
})();
