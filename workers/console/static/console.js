// Pages marked data-refresh="N" fetch themselves again every N seconds and swap in the
// new content, unless the reader is using the page (focus inside it) or it is hidden.
(function () {
  "use strict";
  const main = document.getElementById("main");
  const every = main && Number(main.dataset.refresh);
  if (!every) return;
  async function refresh() {
    if (document.hidden || main.contains(document.activeElement)) return;
    let response;
    try {
      response = await fetch(location.href, { headers: { Accept: "text/html" } });
    } catch (error) {
      return; // offline for a moment: try again next time
    }
    if (response.redirected) { location.assign(response.url); return; } // signed out
    if (!response.ok) return;
    const page = new DOMParser().parseFromString(await response.text(), "text/html");
    const fresh = page.getElementById("main");
    if (fresh) main.innerHTML = fresh.innerHTML;
  }
  setInterval(refresh, every * 1000);
})();
