// The lrtune dashboard: a hash router (#/jobs, #/jobs/ID, #/trials/ID, #/new) over its page modules.

import { jobPage } from "./job_page.js";
import { jobsPage } from "./jobs_page.js";
import { newJobPage } from "./new_job_page.js";
import { trialPage } from "./trial_page.js";
import { errorBox, h, leavePage, view } from "./ui.js";

const routes = [
  [/^#\/jobs\/(\d+)$/, (m) => jobPage(Number(m[1]))],
  [/^#\/trials\/(\d+)$/, (m) => trialPage(Number(m[1]))],
  [/^#\/new$/, () => newJobPage()],
  [/^#\/jobs$/, () => jobsPage()],
];

async function route() {
  leavePage();
  const hash = location.hash || "#/jobs";
  for (const link of document.querySelectorAll("[data-nav]")) {
    link.classList.toggle("active", hash.startsWith(`#/${link.dataset.nav}`));
  }
  const found = routes.find(([pattern]) => pattern.test(hash));
  if (!found) {
    location.hash = "#/jobs";
    return;
  }
  view.replaceChildren(h("p", { class: "muted" }, "Loading…"));
  try {
    await found[1](hash.match(found[0]));
  } catch (error) {
    view.replaceChildren(errorBox(error));
  }
}

window.addEventListener("hashchange", route);
route();
