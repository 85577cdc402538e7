(function () {
  "use strict";
  var poll = document.querySelector("[data-poll]");
  if (poll) {
    var tick = function () {
      fetch(poll.getAttribute("data-poll"), {credentials: "same-origin", headers: {"Accept": "application/json"}})
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (d) {
          if (!d) return;
          d.rows.forEach(function (row) {
            var tr = document.querySelector('[data-inbox="' + CSS.escape(row.inbox_id) + '"]');
            if (!tr) return;
            Object.keys(row.cells).forEach(function (k) {
              var el = tr.querySelector('[data-cell="' + k + '"]');
              if (el && el.innerHTML !== row.cells[k]) el.innerHTML = row.cells[k];
            });
          });
        }).catch(function () {}).then(function () { setTimeout(tick, 1500); });
    };
    setTimeout(tick, 1500);
  }
  var form = document.getElementById("connect-form");
  if (!form) return;
  var presets = JSON.parse(document.getElementById("presets-data").textContent);
  var $ = function (name) { return form.elements.namedItem(name); };
  var show = function (id, on) { var el = document.getElementById(id); if (el) el.hidden = !on; };
  var authKind = function () { var r = form.querySelector('input[name="auth"]:checked'); return r ? r.value : "password"; };
  var sync = function () {
    show("oauth2-fields", authKind() === "oauth2");
    show("password-fields", authKind() !== "oauth2");
    show("smtp-credentials", !$("smtp_same_credentials").checked);
  };
  form.addEventListener("change", function (e) {
    if (e.target.name === "provider") {
      var p = presets[e.target.value];
      var note = document.getElementById("preset-note");
      if (note) note.textContent = p ? (p.notes || "") : "";
      if (p) {
        ["imap", "smtp"].forEach(function (s) {
          $(s + ".host").value = p[s].host; $(s + ".port").value = p[s].port; $(s + ".security").value = p[s].security;
        });
        if (p.oauth2) { $("oauth2.token_endpoint").value = p.oauth2.token_endpoint; $("oauth2.scope").value = p.oauth2.scope || ""; }
        var oauthOnly = p.auth_methods.indexOf("oauth2") >= 0 && p.auth_methods.length === 1;
        form.querySelector('input[name="auth"][value="' + (oauthOnly ? "oauth2" : "password") + '"]').checked = true;
      }
    }
    sync();
  });
  sync();
  form.addEventListener("submit", function (e) {
    var op = e.submitter && e.submitter.value;
    if (op !== "test") return;  // saving and discovery reload the page
    e.preventDefault();
    var body = new URLSearchParams(new FormData(form)); body.set("op", "test");
    var out = document.getElementById("test-result");
    out.setAttribute("aria-busy", "true"); out.innerHTML = "<p>Testing the connection…</p>";
    fetch(form.action, {method: "POST", body: body, credentials: "same-origin"})
      .then(function (r) { return r.text(); })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.getElementById("test-result");
        out.innerHTML = fresh ? fresh.innerHTML : "<p class=err>The test could not run.</p>";
        Array.prototype.forEach.call(form.querySelectorAll("[name]"), function (el) {
          var twin = doc.querySelector('#connect-form [name="' + el.name + '"]');
          if (!twin || el.type === "radio" || el.type === "checkbox" || el.type === "hidden") return;
          ["aria-invalid", "aria-describedby"].forEach(function (a) {
            if (twin.hasAttribute(a)) el.setAttribute(a, twin.getAttribute(a)); else el.removeAttribute(a);
          });
          if (el.type !== "password" && twin.value && !el.value) el.value = twin.value;
          var err = document.getElementById("err-" + el.id), twinErr = doc.getElementById("err-" + el.id);
          if (err) err.textContent = twinErr ? twinErr.textContent : "";
        });
        out.removeAttribute("aria-busy");
        var first = form.querySelector('[aria-invalid="true"]');
        if (first) first.focus(); else out.focus();
      });
  });
})();
