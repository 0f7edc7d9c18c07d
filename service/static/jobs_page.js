// The jobs list (#/jobs): newest first, filtered by status, polled while a job is live.

import { api, callerRights } from "./api.js";
import { JOB_STATUSES } from "/status-words.js";
import { view, FINISHED_JOB, POLL_MS, generation, h, badge, chip, bestValue, bestHorizon, when, progressCounts, stackedBar, every } from "./ui.js";

export async function jobsPage() {
  const mine = generation;
  const rights = await callerRights();
  if (mine !== generation) return;
  const state = { cursors: [null], status: "" };
  const body = h("tbody");
  const pageInfo = h("span", { class: "muted small" });
  const older = h("button", { "data-testid": "older" }, "Older →");
  const newer = h("button", { "data-testid": "newer" }, "← Newer");
  const statusFilter = h(
    "select",
    { "aria-label": "status filter" },
    h("option", { value: "" }, "all statuses"),
    JOB_STATUSES.map((s) => h("option", { value: s }, s)),
  );
  view.replaceChildren(
    h("div", { class: "pagehead" },
      h("div", {}, h("h1", {}, "Jobs"), h("div", { class: "meta" }, "Schedule searches, newest first")),
      h("div", { class: "spacer" }),
      h("div", { class: "filters" }, statusFilter,
        rights.has("submit") ? h("a", { class: "button primary", href: "#/new", "data-testid": "new-job" }, "New job") : null)),
    h("div", { class: "card" },
      h("table", { "data-testid": "jobs-table" },
        h("thead", {}, h("tr", {}, ["ID", "Name", "Workload", "Status", "Progress", "Best so far", "Created"].map((c) => h("th", {}, c)))),
        body),
      h("div", { class: "pager" }, pageInfo, newer, older)),
  );

  async function load() {
    const cursor = state.cursors[state.cursors.length - 1];
    const params = new URLSearchParams({ limit: "25" });
    if (cursor) params.set("cursor", cursor);
    if (state.status) params.set("status", state.status);
    const page = await api(`/v1/jobs?${params}`);
    if (mine !== generation) return;
    body.replaceChildren(...page.items.map(jobRow));
    if (!page.items.length) body.append(h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No jobs yet: submit one with “New job” or `lrtune submit job.yaml`.")));
    older.disabled = !page.next_cursor;
    older.onclick = () => { state.cursors.push(page.next_cursor); load(); };
    newer.disabled = state.cursors.length < 2;
    pageInfo.textContent = `page ${state.cursors.length}`;
    state.live = page.items.some((job) => !FINISHED_JOB.has(job.status));
  }
  newer.onclick = () => { state.cursors.pop(); load(); };
  statusFilter.onchange = () => { state.status = statusFilter.value; state.cursors = [null]; load(); };
  await load();
  every(POLL_MS, () => { if (state.live) load().catch(() => {}); });
}

function jobRow(job) {
  const { done, total } = progressCounts(job.progress);
  const best = job.best
    ? h("span", { "data-testid": "best" }, h("b", {}, bestValue(job.best)), " ", chip(job.best.policy), bestHorizon(job))
    : h("span", { class: "muted" }, "–");
  return h("tr", { "data-job-id": job.id },
    h("td", {}, h("a", { href: `#/jobs/${job.id}` }, `#${job.id}`)),
    h("td", {}, h("a", { href: `#/jobs/${job.id}` }, job.name || "(unnamed)")),
    h("td", {}, job.spec.workload.name || job.spec.workload.entrypoint || "–"),
    h("td", {}, badge(job.status)),
    h("td", {}, h("div", { class: "row" }, stackedBar(job.progress), h("span", { class: "small muted" }, `${done}/${total}`))),
    h("td", {}, best),
    h("td", { class: "small" }, when(job.created_at)),
  );
}
