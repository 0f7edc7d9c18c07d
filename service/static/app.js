// The lrtune dashboard: a hash router (#/jobs, #/jobs/ID, #/trials/ID, #/new) and its views.

import { api, apiOptional, finite } from "./api.js";
import { lineChart, policyColour, withAlpha } from "./charts.js";

const view = document.getElementById("view");
const FINISHED_JOB = new Set(["succeeded", "failed", "cancelled"]);
const TRIAL_STATES = ["completed", "pruned", "diverged", "failed", "running", "pending"];
const POLL_MS = 3000;
let timers = [];
let generation = 0; // bumped on every navigation: late answers of a left view are dropped

// ---- small DOM helpers -------------------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "style") el.style.cssText = value;
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function badge(status, testid = "status") {
  return h("span", { class: `badge ${status}`, "data-testid": testid }, status);
}

// What early stopping did at a rung: continue (promoted), stop (pruned), or nothing yet.
function decisionBadge(decision) {
  return decision ? badge(decision, "decision") : h("span", { class: "muted" }, "–");
}

function chip(policy) {
  return h("span", { class: "chip", style: `--chip: ${policyColour(policy)}` }, policy);
}

function fmt(value, digits = 4) {
  if (value === null || value === undefined) return "–";
  const number = typeof value === "string" ? Number(value) : value;
  if (!Number.isFinite(number)) return String(value);
  if (Number.isInteger(number) && Math.abs(number) < 1e6) return String(number);
  const abs = Math.abs(number);
  return abs !== 0 && (abs < 1e-3 || abs >= 1e5) ? number.toExponential(2) : number.toPrecision(digits);
}

function when(iso) {
  if (!iso) return "–";
  const date = new Date(iso);
  return date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

function duration(start, end) {
  if (!start) return "";
  const seconds = Math.max(0, ((end ? new Date(end) : new Date()) - new Date(start)) / 1000);
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

function errorBox(error) {
  const box = h("div", { class: "error-box", role: "alert", "data-testid": "error" }, error.message);
  if (error.fields && error.fields.length > 1) {
    box.append(h("ul", {}, error.fields.map((f) => h("li", {}, `${f.path}: ${f.message}`))));
  }
  return box;
}

function progressCounts(progress) {
  const done = progress.completed + progress.pruned + progress.diverged + progress.failed;
  const total = Math.max(progress.planned, done + progress.running + progress.pending);
  return { done, total };
}

function stackedBar(progress, wide = false) {
  const { total } = progressCounts(progress);
  const bar = h("div", { class: `bar${wide ? " wide" : ""}`, "data-testid": "progress" });
  for (const state of ["completed", "pruned", "diverged", "failed", "running"]) {
    const share = total ? (100 * progress[state]) / total : 0;
    if (share > 0) bar.append(h("span", { class: state, style: `width: ${share}%`, title: `${state} ${progress[state]}` }));
  }
  return bar;
}

function every(ms, work) {
  const id = setInterval(work, ms);
  timers.push(id);
}

// ---- router ------------------------------------------------------------------------------------

const routes = [
  [/^#\/jobs\/(\d+)$/, (m) => jobPage(Number(m[1]))],
  [/^#\/trials\/(\d+)$/, (m) => trialPage(Number(m[1]))],
  [/^#\/new$/, () => newJobPage()],
  [/^#\/jobs$/, () => jobsPage()],
];

async function route() {
  timers.forEach(clearInterval);
  timers = [];
  generation += 1;
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

// ---- jobs list ---------------------------------------------------------------------------------

async function jobsPage() {
  const mine = generation;
  const state = { cursors: [null], status: "" };
  const body = h("tbody");
  const pageInfo = h("span", { class: "muted small" });
  const older = h("button", { "data-testid": "older" }, "Older →");
  const newer = h("button", { "data-testid": "newer" }, "← Newer");
  const statusFilter = h(
    "select",
    { "aria-label": "status filter" },
    h("option", { value: "" }, "all statuses"),
    ["queued", "running", "succeeded", "failed", "cancelling", "cancelled"].map((s) => h("option", { value: s }, s)),
  );
  view.replaceChildren(
    h("div", { class: "pagehead" },
      h("div", {}, h("h1", {}, "Jobs"), h("div", { class: "meta" }, "Schedule searches, newest first")),
      h("div", { class: "spacer" }),
      h("div", { class: "filters" }, statusFilter, h("a", { class: "button primary", href: "#/new" }, "New job"))),
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
    ? h("span", {}, h("b", {}, fmt(job.best.value)), " ", chip(job.best.policy))
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

// ---- job page ----------------------------------------------------------------------------------

async function jobPage(jobId) {
  const mine = generation;
  const job = await api(`/v1/jobs/${jobId}`);
  const [curves, recommendation, rangeTest, rungs, timeline] = await Promise.all([
    api(`/v1/jobs/${jobId}/curves?per_policy=25&max_points=200`),
    apiOptional(`/v1/jobs/${jobId}/recommendation`).catch(() => null),
    apiOptional(`/v1/jobs/${jobId}/range-test`).catch(() => null),
    apiOptional(`/v1/jobs/${jobId}/rungs`).catch(() => null),
    apiOptional(`/v1/jobs/${jobId}/timeline`).catch(() => null),
  ]);
  if (mine !== generation) return;

  const head = h("div", { class: "pagehead" });
  const progressCard = h("div", { class: "card", "data-testid": "progress-card" });
  const timelineCard = h("div", { class: "card", "data-testid": "timeline" });
  const recoCard = h("div", { class: "card reco", "data-testid": "recommendation" });
  const boardCard = h("div", { class: "card", "data-testid": "leaderboard" });
  const curvesCard = h("div", { class: "card", "data-testid": "curves" });
  const sweepCard = h("div", { class: "card", "data-testid": "sweep", hidden: true });
  const lrCard = h("div", { class: "card", "data-testid": "lr-curves" });
  const rangeCard = h("div", { class: "card", "data-testid": "range-test" });
  const rungsCard = h("div", { class: "card", "data-testid": "rungs" });
  const trialsCard = h("div", { class: "card", "data-testid": "trials" });
  view.replaceChildren(head, progressCard, timelineCard, recoCard, boardCard, curvesCard, sweepCard, rungsCard,
    h("div", { class: "grid2" }, lrCard, rangeCard), h("div", { style: "height:16px" }), trialsCard);

  const state = { job, curves, recommendation };
  renderJobHead(head, job);
  renderProgress(progressCard, job);
  renderTimeline(timelineCard, timeline);
  renderRecommendation(recoCard, recommendation, job);
  renderLeaderboard(boardCard, curves, winnerIds(state));
  renderCurves(curvesCard, curves, winnerIds(state));
  renderRungs(rungsCard, rungs, job);
  renderRangeTest(rangeCard, rangeTest);
  performance.mark("lrtune:job-page-drawn");
  document.body.dataset.jobPage = "drawn";
  renderLrCurves(lrCard, curves);
  renderSweep(sweepCard, job).catch((error) => sweepCard.append(errorBox(error)));
  trialsTable(trialsCard, jobId, curves.policies.map((p) => p.policy));

  if (!FINISHED_JOB.has(job.status)) {
    let tick = 0;
    every(POLL_MS, async () => {
      tick += 1;
      const fresh = await api(`/v1/jobs/${jobId}`).catch(() => null);
      if (!fresh || mine !== generation) return;
      state.job = fresh;
      renderJobHead(head, fresh);
      renderProgress(progressCard, fresh);
      const finished = FINISHED_JOB.has(fresh.status);
      if (tick % 2 === 0 || finished) {
        const [c, r, g, t] = await Promise.all([
          api(`/v1/jobs/${jobId}/curves?per_policy=25&max_points=200`).catch(() => null),
          apiOptional(`/v1/jobs/${jobId}/recommendation`).catch(() => null),
          apiOptional(`/v1/jobs/${jobId}/rungs`).catch(() => null),
          apiOptional(`/v1/jobs/${jobId}/timeline`).catch(() => null),
        ]);
        if (mine !== generation || !c) return;
        state.curves = c;
        state.recommendation = r;
        renderRecommendation(recoCard, r, fresh);
        renderLeaderboard(boardCard, c, winnerIds(state));
        renderCurves(curvesCard, c, winnerIds(state));
        renderRungs(rungsCard, g, fresh);
        renderTimeline(timelineCard, t);
        renderSweep(sweepCard, fresh).catch(() => null);
      }
      if (finished) {
        timers.forEach(clearInterval);
        timers = [];
      }
    });
  }
}

function winnerIds(state) {
  const ids = new Set();
  const winner = state.recommendation && state.recommendation.winner;
  if (winner) winner.trial_ids.forEach((id) => ids.add(Number(id)));
  else if (state.job.best) ids.add(state.job.best.trial_id);
  return ids;
}

function renderJobHead(head, job) {
  const spec = job.spec;
  const cancel = h("button", { class: "danger", "data-testid": "cancel" }, "Cancel job");
  cancel.onclick = async () => {
    if (!confirm(`Cancel job #${job.id}? Running trials are stopped and no new trial starts.`)) return;
    cancel.disabled = true;
    try {
      const updated = await api(`/v1/jobs/${job.id}/cancel`, { method: "POST" });
      renderJobHead(head, updated);
    } catch (error) {
      head.append(errorBox(error));
      cancel.disabled = false;
    }
  };
  const metric = `${spec.metric ? spec.metric.name : "val_loss"} (${spec.metric ? spec.metric.mode : "min"})`;
  head.replaceChildren(
    h("div", {},
      h("div", { class: "row" }, h("h1", {}, job.name || `Job #${job.id}`), badge(job.status)),
      h("div", { class: "meta" },
        `#${job.id} · ${spec.workload.name || spec.workload.entrypoint} · metric ${metric} · `,
        `${spec.budget.epochs} epochs × ${spec.budget.trials_per_policy} trials per policy · created ${when(job.created_at)}`,
        job.started_at ? ` · ran ${duration(job.started_at, job.finished_at)}` : ""),
      job.error ? errorBox({ message: job.error }) : null),
    h("div", { class: "spacer" }),
    ...(FINISHED_JOB.has(job.status) || job.status === "cancelling" ? [] : [cancel]),
  );
}

function renderProgress(card, job) {
  const p = job.progress;
  const { done, total } = progressCounts(p);
  const best = job.best
    ? h("span", {}, "best so far ", h("b", { "data-testid": "best-value" }, fmt(job.best.value)), " · ", chip(job.best.policy), " · ",
      h("a", { href: `#/trials/${job.best.trial_id}` }, `trial #${job.best.trial_id}`))
    : h("span", { class: "muted" }, "no result yet");
  card.replaceChildren(
    h("div", { class: "row" }, h("h2", { style: "margin:0" }, "Progress"), h("span", { class: "muted" }, `${done} of ${total} trials finished`), h("div", { class: "spacer" }), best),
    h("div", { style: "margin-top:10px" }, stackedBar(p, true)),
    h("div", { class: "legend" }, TRIAL_STATES.map((s) =>
      h("span", {}, h("span", { class: "dot", style: `background: var(--${{ completed: "ok", pruned: "warn", diverged: "bad", failed: "bad", running: "run" }[s] || "line"})` }), `${s} ${p[s]}`))),
  );
}

// Where the job's time went: its phases as one bar and a table (seconds, share of the whole), and
// the trials' start-up and busy time summed.
function renderTimeline(card, timeline) {
  card.hidden = !(timeline && timeline.phases.length);
  if (card.hidden) return;
  const total = timeline.phases_s;
  const share = (seconds) => (total > 0 ? `${((100 * seconds) / total).toFixed(1)}%` : "–");
  const bar = h("div", { class: "bar wide", "data-testid": "timeline-bar" });
  for (const p of timeline.phases) {
    if (total > 0 && p.seconds > 0) {
      bar.append(h("span", { class: `phase-${p.phase}`, style: `width: ${(100 * p.seconds) / total}%`, title: `${p.phase} ${p.seconds.toFixed(1)} s` }));
    }
  }
  const rows = timeline.phases.map((p) => h("tr", { "data-testid": "timeline-phase" },
    h("td", {}, h("span", { class: `dot phase-${p.phase}` }), p.phase, p.ended_at ? "" : h("span", { class: "muted" }, " (running)")),
    h("td", {}, when(p.started_at)),
    h("td", { class: "num" }, p.seconds.toFixed(1)),
    h("td", { class: "num" }, share(p.seconds)),
    h("td", { class: "small muted" }, p.worker_id || "–")));
  const finished = timeline.trials.filter((t) => t.start_up_s !== null).length;
  const trials = timeline.trials.length
    ? h("div", { class: "small muted", style: "margin-top:8px", "data-testid": "timeline-trials" },
      `${timeline.trials.length} trials: start-up ${timeline.trials_start_up_s.toFixed(1)} s (${finished} finished), busy ${timeline.trials_busy_s.toFixed(1)} s. `,
      "Start-up is a trial's wall-clock its own clock did not count (the trainable starting, restarts); busy is its clock up to its last epoch.")
    : null;
  card.replaceChildren(
    h("div", { class: "row" }, h("h2", { style: "margin:0" }, "Timeline"),
      h("span", { class: "muted" }, `${total.toFixed(1)} s from submission${timeline.status === "succeeded" ? " to the recommendation" : ""}`)),
    h("div", { style: "margin-top:10px" }, bar),
    h("table", { class: "compact", style: "margin-top:8px" },
      h("thead", {}, h("tr", {}, ["Phase", "Started", "Seconds", "Share", "Worker"].map((c, i) => h("th", { class: [2, 3].includes(i) ? "num" : "" }, c)))),
      h("tbody", {}, rows)),
    trials);
}

const CODE_FORMATS = [["pytorch", "PyTorch"], ["keras", "Keras"], ["huggingface", "Hugging Face"]];

function renderRecommendation(card, reco, job) {
  if (!reco) {
    const why = FINISHED_JOB.has(job.status) ? "not available for this job" : "not available yet: it appears once trials have finished";
    card.replaceChildren(h("h2", {}, "Recommendation"), h("div", { class: "notice" }, `Recommendation ${why}.`));
    return;
  }
  const winner = reco.winner;
  const parts = [h("div", { class: "row" }, h("h2", { style: "margin:0" }, "Recommendation"),
    reco.final ? badge("final") : h("span", { class: "badge running" }, "provisional"))];
  if (winner) {
    const spread = winner.metric_std === null || winner.metric_std === undefined ? "" : ` ± ${fmt(winner.metric_std)}`;
    parts.push(h("div", { class: "winner-line", "data-testid": "winner" }, "Use ", chip(winner.policy), ` — ${reco.metric} ${fmt(winner.metric_mean)}${spread} over ${winner.n_seeds} seed${winner.n_seeds === 1 ? "" : "s"}`));
    parts.push(h("pre", { class: "json" }, JSON.stringify(winner.schedule, null, 2)));
  }
  parts.push(h("p", { "data-testid": "rationale" }, reco.rationale));
  if (reco.comparison) {
    const c = reco.comparison;
    const ci = c.ci_low !== null && c.ci_high !== null ? ` (${Math.round(c.confidence * 100)}% CI ${fmt(c.ci_low)} to ${fmt(c.ci_high)})` : "";
    parts.push(h("p", { class: "muted small" }, `${c.winner} beats ${c.runner_up} by ${fmt(c.difference)}${ci}; ${c.method}`));
  }
  // One tab per exported format; a format that is not exact says so (its first line says why).
  const formats = CODE_FORMATS.filter(([key]) => reco.code && reco.code[key]);
  if (formats.length) {
    let shown = formats[0][0];
    const pre = h("pre", { "data-testid": "code" });
    const inexact = h("span", { class: "badge cancelled", "data-testid": "code-inexact" }, "not exact");
    const tabs = formats.map(([key, label]) =>
      h("button", { class: "tab", role: "tab", "data-testid": `code-tab-${key}`, onclick: () => show(key) }, label));
    const show = (key) => {
      shown = key;
      pre.textContent = reco.code[key];
      formats.forEach(([k], i) => tabs[i].setAttribute("aria-selected", String(k === key)));
      inexact.style.display = reco.exact && reco.exact[key] === false ? "" : "none";
    };
    const copy = h("button", { "data-testid": "copy-code" }, "Copy");
    copy.onclick = async () => {
      const code = reco.code[shown];
      try {
        await navigator.clipboard.writeText(code);
      } catch {
        const area = h("textarea", { style: "position:fixed;opacity:0" }, code);
        document.body.append(area);
        area.select();
        document.execCommand("copy");
        area.remove();
      }
      copy.textContent = "Copied";
      setTimeout(() => { copy.textContent = "Copy"; }, 1500);
    };
    show(shown);
    parts.push(h("div", { class: "codehead" }, h("div", { class: "tabs", role: "tablist" }, tabs, inexact), copy), pre);
  }
  card.replaceChildren(...parts);
}

function renderLeaderboard(card, curves, winners) {
  const rows = curves.policies.map((p, i) => h("tr", { class: winners.has(p.best_trial_id) ? "winner" : "" },
    h("td", { class: "num" }, String(i + 1)),
    h("td", {}, chip(p.policy)),
    h("td", { class: "num" }, String(p.trials)),
    ["completed", "pruned", "diverged", "failed"].map((s) => h("td", { class: "num" }, String(p.by_status[s] || 0))),
    h("td", { class: "num" }, h("b", {}, fmt(p.best_metric))),
    h("td", { class: "num" }, fmt(p.mean_best_metric)),
    h("td", {}, p.best_trial_id ? h("a", { href: `#/trials/${p.best_trial_id}` }, `#${p.best_trial_id}`) : "–"),
  ));
  card.replaceChildren(
    h("h2", {}, `Leaderboard by policy — ${curves.metric} (${curves.mode})`),
    h("table", {},
      h("thead", {}, h("tr", {}, ["#", "Policy", "Trials", "Completed", "Pruned", "Diverged", "Failed", "Best", "Mean of best", "Best trial"].map((c, i) => h("th", { class: i === 1 || i === 9 ? "" : "num" }, c)))),
      h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: 10, class: "muted" }, "No trial has reported yet.")))),
  );
}

function curveSeries(curves, key, winners) {
  // The winner last, so it is drawn on top.
  const ordered = [...curves.trials].sort((a, b) => Number(winners.has(a.trial_id)) - Number(winners.has(b.trial_id)));
  return ordered.map((t) => {
    const win = winners.has(t.trial_id);
    return {
      label: `${t.policy} #${t.trial_id}`,
      x: t.epoch,
      y: t[key],
      colour: win ? policyColour(t.policy) : withAlpha(policyColour(t.policy), 0.45),
      width: win ? 3.5 : 1.1,
    };
  });
}

function policyLegend(policies) {
  return h("div", { class: "policy-legend" }, policies.map((p) => chip(p)), h("span", { class: "muted" }, "thick line: the winner"));
}

function renderCurves(card, curves, winners) {
  const shown = curves.trials.length;
  const metricChart = h("div", { class: "chart", "data-testid": "metric-chart" });
  const lossChart = h("div", { class: "chart", "data-testid": "loss-chart" });
  card.replaceChildren(
    h("div", { class: "row" }, h("h2", { style: "margin:0" }, "Learning curves"),
      h("span", { class: "muted small", "data-testid": "curves-note" },
        shown < curves.total_trials
          ? `the best ${curves.per_policy} trials of each policy: ${shown} of ${curves.total_trials} trials`
          : `${shown} trial${shown === 1 ? "" : "s"}`)),
    policyLegend(curves.policies.map((p) => p.policy)),
    h("div", { class: "grid2" },
      h("div", {}, h("div", { class: "chart-title" }, `${curves.metric} by epoch`), metricChart),
      h("div", {}, h("div", { class: "chart-title" }, "validation loss by epoch"), lossChart)),
  );
  if (!shown) {
    metricChart.append(h("div", { class: "notice" }, "No epoch reported yet."));
    return;
  }
  lineChart(metricChart, curveSeries(curves, "metric", winners), { xLabel: "epoch", yLabel: curves.metric });
  lineChart(lossChart, curveSeries(curves, "val_loss", winners), { xLabel: "epoch", yLabel: "val_loss", logY: true });
}

// A training-length sweep (the job's `horizons`): the metric at the end of each horizon, one line
// per wsd trunk (a configuration cooled down to every length) and the best at each length.
async function renderSweep(card, job) {
  const horizons = job.spec.horizons;
  if (!horizons) return;
  const trials = [];
  let cursor = null;
  do {
    const params = new URLSearchParams({ limit: "200", policy: "wsd" });
    if (cursor) params.set("cursor", cursor);
    const page = await api(`/v1/jobs/${job.id}/trials?${params}`);
    trials.push(...page.items);
    cursor = page.next_cursor;
  } while (cursor);
  const metric = job.spec.metric ? job.spec.metric.name : "val_loss";
  const better = (a, b) => (job.spec.metric && job.spec.metric.mode === "max" ? a > b : a < b);
  // A horizon counts once it has trained its whole length.
  const ended = trials.filter((t) => t.search_config.horizon_epochs === t.epochs_done && finite(t.last_metric) !== null);
  const trunks = new Map();
  for (const t of ended) {
    const key = t.search_config.trunk;
    if (!trunks.has(key)) trunks.set(key, []);
    trunks.get(key).push(t);
  }
  const series = [...trunks.values()].map((runs) => {
    runs.sort((a, b) => a.search_config.horizon_epochs - b.search_config.horizon_epochs);
    return {
      label: `${runs[0].search_config.trunk} (lr ${fmt(runs[0].schedule.lr, 3)})`,
      x: runs.map((t) => t.search_config.horizon_epochs),
      y: runs.map((t) => finite(t.last_metric)),
      colour: withAlpha(policyColour("wsd"), 0.5),
      width: 1.2,
    };
  });
  const best = horizons.map((epochs) => ended
    .filter((t) => t.search_config.horizon_epochs === epochs)
    .reduce((found, t) => (found === null || better(finite(t.last_metric), finite(found.last_metric)) ? t : found), null));
  const reached = best.filter(Boolean);
  if (reached.length) {
    series.push({
      label: "best at each length",
      x: reached.map((t) => t.search_config.horizon_epochs),
      y: reached.map((t) => finite(t.last_metric)),
      colour: policyColour("wsd"),
      width: 3,
    });
  }
  const chart = h("div", { class: "chart", "data-testid": "sweep-chart" });
  card.hidden = false;
  card.replaceChildren(
    h("div", { class: "row" }, h("h2", { style: "margin:0" }, "How long to train"),
      h("span", { class: "muted small" }, `${trunks.size} wsd trunk${trunks.size === 1 ? "" : "s"}, each cooled down to ${horizons.length} lengths`)),
    h("div", { class: "grid2" },
      h("div", {}, h("div", { class: "chart-title" }, `${metric} against training length`), chart),
      h("table", {},
        h("thead", {}, h("tr", {}, ["Epochs", `Best ${metric}`, "Trial", "lr"].map((c, i) => h("th", { class: i === 2 ? "" : "num" }, c)))),
        h("tbody", {}, horizons.map((epochs, i) => h("tr", { "data-testid": "sweep-row" },
          h("td", { class: "num" }, String(epochs)),
          h("td", { class: "num" }, best[i] ? fmt(best[i].last_metric) : "–"),
          h("td", {}, best[i] ? h("a", { href: `#/trials/${best[i].id}` }, `#${best[i].id}`) : "–"),
          h("td", { class: "num" }, best[i] ? fmt(best[i].schedule.lr, 3) : "–"),
        ))))),
  );
  if (!series.length) {
    chart.append(h("div", { class: "notice" }, "No horizon has trained its whole length yet."));
    return;
  }
  lineChart(chart, series, { xLabel: "training length (epochs)", yLabel: metric });
}

// Early stopping's rungs: at each rung epoch, the trials that reached it best-first by the value
// they were judged by, and what was decided. Big rungs show their top rows and the rows where the
// decision changes (the cut), the rest behind "show all".
const RUNG_TOP_ROWS = 10;

function renderRungs(card, rungs, job) {
  card.hidden = !(rungs && rungs.length);
  if (card.hidden) {
    card.replaceChildren();
    return;
  }
  const showAll = card.dataset.showAll === "true";
  const judge = job.spec.early_stopping && job.spec.early_stopping.judge;
  const metric = job.spec.metric ? job.spec.metric.name : "val_loss";
  const tables = rungs.map((rung) => rungTable(rung, showAll));
  const folded = rungs.some((rung) => rung.trials.some((_, i) => !rungRowShown(rung.trials, i)));
  const toggle = h("button", { "data-testid": "rungs-toggle" }, showAll ? "show fewer" : "show all");
  toggle.onclick = () => {
    card.dataset.showAll = String(!showAll);
    renderRungs(card, rungs, job);
  };
  card.replaceChildren(
    h("div", { class: "row" }, h("h2", { style: "margin:0" }, "Rungs"),
      h("span", { class: "muted small" }, judge === "raw"
        ? `early stopping judged each trial by its ${metric} at the rung epoch`
        : `raw: ${metric} at the rung epoch · judged: ${metric} after a cooldown probe (the rate annealed to 0 from there), which early stopping compared`),
      h("div", { class: "spacer" }), folded ? toggle : null),
    h("div", { class: "rungs" }, tables),
  );
}

// The top rows, and the two rows either side of each change of decision.
function rungRowShown(trials, i) {
  const decision = trials[i].decision;
  return i < RUNG_TOP_ROWS || (i > 0 && trials[i - 1].decision !== decision)
    || (i + 1 < trials.length && trials[i + 1].decision !== decision);
}

function rungTable(rung, showAll) {
  const trials = rung.trials;
  const kept = trials.filter((t) => t.decision === "continue").length;
  // A clean cut: every continue above every stop (asynchronous ASHA need not decide so).
  const firstStop = trials.findIndex((t) => t.decision === "stop");
  const cut = firstStop > 0 && !trials.slice(firstStop).some((t) => t.decision === "continue") ? firstStop : -1;
  const rows = [];
  let skipped = 0;
  const flush = () => {
    if (skipped) rows.push(h("tr", { class: "gap" }, h("td", { colspan: 6, class: "muted small" }, `⋯ ${skipped} more`)));
    skipped = 0;
  };
  trials.forEach((t, i) => {
    if (!showAll && !rungRowShown(trials, i)) {
      skipped += 1;
      return;
    }
    flush();
    if (i === cut) rows.push(h("tr", { class: "cut", "data-testid": "cut" }, h("td", { colspan: 6 }, `cut: the ${kept} above continue`)));
    rows.push(h("tr", { "data-trial-id": t.trial_id, class: t.decision === "stop" ? "stopped" : "" },
      h("td", { class: "num muted" }, String(i + 1)),
      h("td", {}, h("a", { href: `#/trials/${t.trial_id}` }, `#${t.trial_id}`)),
      h("td", {}, chip(t.policy)),
      h("td", { class: "num" }, fmt(t.raw)),
      h("td", { class: "num" }, h("b", {}, fmt(t.judged))),
      h("td", {}, decisionBadge(t.decision))));
  });
  flush();
  return h("div", { class: "rung", "data-testid": `rung-${rung.epoch}` },
    h("div", { class: "chart-title" }, `epoch ${rung.epoch}`,
      h("span", { class: "muted small" }, ` · ${kept} of ${trials.length} continue`)),
    h("table", { class: "compact" },
      h("thead", {}, h("tr", {}, ["#", "Trial", "Policy", "Raw", "Judged", "Decision"].map((c, i) => h("th", { class: [0, 3, 4].includes(i) ? "num" : "" }, c)))),
      h("tbody", {}, rows)));
}

async function renderLrCurves(card, curves) {
  const chart = h("div", { class: "chart", "data-testid": "lr-chart" });
  card.replaceChildren(h("h2", {}, "Learning rate of each policy's best trial"), chart);
  const best = curves.policies.map((p) => curves.trials.find((t) => t.trial_id === p.best_trial_id)).filter(Boolean);
  if (!best.length) {
    chart.append(h("div", { class: "notice" }, "No finished trial yet."));
    return;
  }
  const series = await Promise.all(best.map(async (t) => {
    if (t.policy === "plateau") {
      // Its rate followed the trial's metric, which a preview does not know: the recorded rates.
      const rows = await api(`/v1/trials/${t.trial_id}/metrics`).catch(() => null);
      return rows && { label: t.policy, x: rows.map((m) => m.step), y: rows.map((m) => finite(m.lr)), colour: policyColour(t.policy), width: 1.6 };
    }
    const steps = Math.max(1, t.steps);
    const preview = await api("/v1/schedules/preview", {
      method: "POST", body: { schedule: t.schedule, steps, every: Math.max(1, Math.floor(steps / 300)) },
    }).catch(() => null);
    return preview && { label: t.policy, x: preview.step, y: preview.lr, colour: policyColour(t.policy), width: 1.6 };
  }));
  lineChart(chart, series.filter(Boolean), { xLabel: "optimizer step", yLabel: "learning rate", height: 240 });
}

function renderRangeTest(card, result) {
  card.replaceChildren(h("h2", {}, "LR range test"));
  if (!result) {
    card.append(h("div", { class: "notice" }, "Range test not available yet (the job has none, or it has not run)."));
    return;
  }
  const chart = h("div", { class: "chart", "data-testid": "range-chart" });
  const s = result.suggestion;
  card.append(
    h("div", { class: "small muted" }, `suggested: min_lr ${fmt(s.min_lr, 3)} (${s.min_method}), max_lr ${fmt(s.max_lr, 3)} (${s.max_method})`),
    chart);
  lineChart(chart, [
    { label: "loss", x: result.lr, y: result.loss, colour: "rgba(107,115,128,0.45)", width: 1 },
    { label: "smoothed", x: result.lr, y: result.smoothed_loss, colour: "#2f6fde", width: 2 },
  ], {
    xLabel: "learning rate (log)", yLabel: "loss", logX: true, height: 240,
    marks: [{ x: s.min_lr, label: "min_lr" }, { x: s.max_lr, label: "max_lr" }],
  });
}

function trialsTable(card, jobId, policies) {
  const state = { cursors: [null], policy: "", status: "" };
  const body = h("tbody");
  const older = h("button", {}, "Older →");
  const newer = h("button", {}, "← Newer");
  const info = h("span", { class: "muted small" });
  const policyFilter = h("select", { "aria-label": "policy filter" }, h("option", { value: "" }, "all policies"), policies.map((p) => h("option", { value: p }, p)));
  const statusFilter = h("select", { "aria-label": "trial status filter" }, h("option", { value: "" }, "all statuses"), TRIAL_STATES.map((s) => h("option", { value: s }, s)));
  card.replaceChildren(
    h("div", { class: "row" }, h("h2", { style: "margin:0" }, "Trials"), h("div", { class: "spacer" }), policyFilter, statusFilter),
    h("table", {},
      h("thead", {}, h("tr", {}, ["Trial", "Policy", "Status", "Epochs", "Last", "Best", "Seed", "Sampled settings"].map((c, i) => h("th", { class: [3, 4, 5, 6].includes(i) ? "num" : "" }, c)))),
      body),
    h("div", { class: "pager" }, info, newer, older),
  );
  async function load() {
    const params = new URLSearchParams({ limit: "50" });
    const cursor = state.cursors[state.cursors.length - 1];
    if (cursor) params.set("cursor", cursor);
    if (state.policy) params.set("policy", state.policy);
    if (state.status) params.set("status", state.status);
    const page = await api(`/v1/jobs/${jobId}/trials?${params}`);
    body.replaceChildren(...page.items.map((t) => h("tr", {},
      h("td", {}, h("a", { href: `#/trials/${t.id}` }, `#${t.id}`)),
      h("td", {}, chip(t.policy)),
      h("td", {}, badge(t.status)),
      h("td", { class: "num" }, String(t.epochs_done)),
      h("td", { class: "num" }, fmt(t.last_metric)),
      h("td", { class: "num" }, fmt(t.best_metric)),
      h("td", { class: "num" }, String(t.seed)),
      h("td", { class: "small muted" }, Object.entries(t.search_config).map(([k, v]) => `${k}=${typeof v === "number" ? fmt(v, 3) : JSON.stringify(v)}`).join(", ")),
    )));
    if (!page.items.length) body.append(h("tr", {}, h("td", { colspan: 8, class: "muted" }, "No trials.")));
    older.disabled = !page.next_cursor;
    older.onclick = () => { state.cursors.push(page.next_cursor); load(); };
    newer.disabled = state.cursors.length < 2;
    info.textContent = `page ${state.cursors.length}`;
  }
  newer.onclick = () => { state.cursors.pop(); load(); };
  policyFilter.onchange = () => { state.policy = policyFilter.value; state.cursors = [null]; load(); };
  statusFilter.onchange = () => { state.status = statusFilter.value; state.cursors = [null]; load(); };
  load().catch((error) => card.append(errorBox(error)));
}

// ---- trial page --------------------------------------------------------------------------------

async function trialPage(trialId) {
  const mine = generation;
  const trial = await api(`/v1/trials/${trialId}`);
  const [metrics, job, probes] = await Promise.all([
    api(`/v1/trials/${trialId}/metrics`),
    api(`/v1/jobs/${trial.job_id}`),
    apiOptional(`/v1/trials/${trialId}/probes`).catch(() => null),
  ]);
  if (mine !== generation) return;
  const probed = probes || [];
  const metricName = job.spec.metric ? job.spec.metric.name : "val_loss";
  const value = (row, name) => (name === "train_loss" || name === "val_loss" ? row[name] : row.metrics[name]);
  const extraNames = [...new Set(metrics.flatMap((m) => Object.keys(m.metrics)))];
  const metricChart = h("div", { class: "chart", "data-testid": "trial-metric-chart" });
  const lossChart = h("div", { class: "chart", "data-testid": "trial-loss-chart" });
  const lrChart = h("div", { class: "chart", "data-testid": "trial-lr-chart" });
  const colour = policyColour(trial.policy);
  // A job with snapshots: the single model's metric and its snapshot ensemble's side by side
  // (ensemble_<metric> from the first cycle end on).
  const single = metricName.replace(/^ensemble_/, "");
  const partner = metricName === single ? `ensemble_${single}` : single;
  const partnerRows = metrics.filter((m) => typeof value(m, partner) === "number" || typeof value(m, partner) === "string");
  const partnerColour = "#6b7380";
  const restored = trial.restored_from_epoch;
  view.replaceChildren(
    h("div", { class: "pagehead" }, h("div", {},
      h("div", { class: "row" }, h("h1", {}, `Trial #${trial.id}`), badge(trial.status), chip(trial.policy)),
      h("div", { class: "meta" }, "of ", h("a", { href: `#/jobs/${job.id}` }, job.name || `job #${job.id}`),
        ` · ${trial.epochs_done} epochs · best ${metricName} ${fmt(trial.best_metric)}`,
        restored === null || restored === undefined ? null
          : h("span", { "data-testid": "restored" }, ` · resumed from its epoch ${restored} checkpoint`)))),
    h("div", { class: "grid2" },
      h("div", { class: "card" }, h("h2", {}, "Spec"),
        h("dl", { class: "kv" },
          h("dt", {}, "policy"), h("dd", {}, chip(trial.policy)),
          h("dt", {}, "seed"), h("dd", {}, String(trial.seed)),
          h("dt", {}, "status"), h("dd", {}, badge(trial.status)),
          h("dt", {}, "epochs done"), h("dd", {}, String(trial.epochs_done)),
          h("dt", {}, `last ${metricName}`), h("dd", {}, fmt(trial.last_metric)),
          h("dt", {}, `best ${metricName}`), h("dd", {}, fmt(trial.best_metric)),
          h("dt", {}, "started"), h("dd", {}, when(trial.started_at)),
          h("dt", {}, "ran for"), h("dd", {}, duration(trial.started_at, trial.finished_at) || "–"),
          trial.error ? [h("dt", {}, "error"), h("dd", {}, errorBox({ message: trial.error }))] : null),
        h("div", { class: "chart-title", style: "margin-top:10px" }, "schedule (in optimizer steps)"),
        h("pre", { class: "json", "data-testid": "schedule" }, JSON.stringify(trial.schedule, null, 2)),
        h("div", { class: "chart-title" }, "sampled search point"),
        h("pre", { class: "json" }, JSON.stringify(trial.search_config, null, 2))),
      h("div", { class: "card" },
        h("div", { class: "chart-title" }, `${metricName} by epoch`), metricChart,
        probed.length || partnerRows.length ? h("div", { class: "legend", "data-testid": "trial-metric-legend", style: "margin: 0 0 10px" },
          h("span", {}, h("span", { class: "key-line", style: `--key: ${colour}` }), metricName),
          partnerRows.length ? h("span", {}, h("span", { class: "key-line", style: `--key: ${partnerColour}` }), partner) : null,
          probed.length ? h("span", {}, h("span", { class: "key-probe", style: `--key: ${colour}` }), "cooldown probe") : null) : null,
        h("div", { class: "chart-title" }, "loss by epoch"), lossChart,
        h("div", { class: "chart-title" }, "learning rate by epoch (last update of the epoch)"), lrChart)),
    probeCard(trial, probed, metrics, metricName, value),
    h("div", { class: "card", style: "margin-top:16px" }, h("h2", {}, "Metrics"),
      h("table", { "data-testid": "metrics-table" },
        h("thead", {}, h("tr", {}, ["epoch", "step", "lr", "train_loss", "val_loss", ...extraNames, "elapsed s"].map((c) => h("th", { class: "num" }, c)))),
        h("tbody", {}, metrics.map((m) => h("tr", {},
          [m.epoch, m.step, fmt(m.lr, 3), fmt(m.train_loss), fmt(m.val_loss), ...extraNames.map((n) => fmt(m.metrics[n])), fmt(m.elapsed_s, 3)]
            .map((v) => h("td", { class: "num" }, String(v)))))))),
  );
  if (!metrics.length) {
    metricChart.append(h("div", { class: "notice" }, "No epoch reported yet."));
    return;
  }
  const epochs = metrics.map((m) => m.epoch);
  const metricSeries = [{ label: metricName, x: epochs, y: metrics.map((m) => value(m, metricName)), colour, width: 2 }];
  if (partnerRows.length) {
    metricSeries.push({ label: partner, x: partnerRows.map((m) => m.epoch), y: partnerRows.map((m) => value(m, partner)), colour: partnerColour, width: 1.5 });
  }
  if (probed.length) {
    metricSeries.push({ label: "cooldown probe", x: probed.map((p) => p.epoch), y: probed.map((p) => value(p, metricName)), colour, hollow: true, linkTo: 0 });
  }
  lineChart(metricChart, metricSeries, { xLabel: "epoch", yLabel: metricName, height: 180 });
  metricChart.dataset.probes = String(probed.length);
  lineChart(lossChart, [
    { label: "train_loss", x: epochs, y: metrics.map((m) => m.train_loss), colour: "#6b7380", width: 1.5 },
    { label: "val_loss", x: epochs, y: metrics.map((m) => m.val_loss), colour, width: 2 },
  ], { xLabel: "epoch", yLabel: "loss", height: 180 });
  lineChart(lrChart, [{ label: "lr", x: epochs, y: metrics.map((m) => finite(m.lr)), colour, width: 2 }], { xLabel: "epoch", yLabel: "lr", height: 150 });
}

// The trial's cooldown probes, one a rung; none, no card. A pruned trial's last probe is the value
// it was stopped on.
function probeCard(trial, probes, metrics, metricName, value) {
  if (!probes.length) return "";  // replaceChildren would write a null out as the text "null"
  const raw = new Map(metrics.map((m) => [m.epoch, value(m, metricName)]));
  const stoppedOn = trial.status === "pruned" ? probes[probes.length - 1] : null;
  const note = stoppedOn && h("div", { class: "notice pruned-note", "data-testid": "pruned-note" },
    `pruned at epoch ${stoppedOn.epoch}; annealed there it reached ${metricName} ${fmt(value(stoppedOn, metricName))}`,
    raw.has(stoppedOn.epoch) ? ` (${fmt(raw.get(stoppedOn.epoch))} without the cooldown)` : "");
  return h("div", { class: "card", style: "margin-top:16px", "data-testid": "probes" },
    h("div", { class: "row" }, h("h2", { style: "margin:0" }, "Cooldown probes"),
      h("span", { class: "muted small" }, "at each rung a throw-away branch annealed the rate to 0 and was evaluated; early stopping judged the trial by it")),
    note,
    h("table", { class: "compact", "data-testid": "probes-table", style: "margin-top:8px" },
      h("thead", {}, h("tr", {}, ["epoch", "cooldown steps", `${metricName} annealed`, `${metricName} raw`, "val_loss annealed", "decision"].map((c, i) => h("th", { class: i < 5 ? "num" : "" }, c)))),
      h("tbody", {}, probes.map((p) => h("tr", { class: p === stoppedOn ? "stopped-on" : "", "data-epoch": p.epoch },
        h("td", { class: "num" }, String(p.epoch)),
        h("td", { class: "num" }, String(p.cooldown_steps)),
        h("td", { class: "num" }, h("b", {}, fmt(value(p, metricName)))),
        h("td", { class: "num" }, fmt(raw.get(p.epoch))),
        h("td", { class: "num" }, fmt(p.val_loss)),
        h("td", {}, decisionBadge(p.decision)))))));
}

// ---- new job form ------------------------------------------------------------------------------

const NOMINAL_STEPS_PER_EPOCH = 100;
const OPTIMIZERS = ["sgd", "adam", "adamw", "sgd_schedulefree", "adamw_schedulefree"];
// Schedule-free optimizers run with the fixed policy (plus warmup) only: the fixed card may take
// one as its own arm's optimizer, so one job compares the schedules with schedule-free.
const ARM_OPTIMIZERS = ["adamw_schedulefree", "sgd_schedulefree"];

async function newJobPage() {
  const mine = generation;
  const [policies, workloads] = await Promise.all([api("/v1/policies"), apiOptional("/v1/workloads").catch(() => null)]);
  if (mine !== generation) return;
  const builtins = workloads || [];
  const input = (name, attrs = {}) => h("input", { name, ...attrs });
  const field = (label, control) => h("label", { class: "field" }, label, control);

  const name = input("name", { value: "", placeholder: "e.g. digits: cosine vs clr" });
  const workload = builtins.length
    ? h("select", { name: "workload" }, builtins.map((w) => h("option", { value: w.name }, w.name)))
    : input("workload", { value: "digits" });
  const paramsBox = h("div", { class: "fields", style: "margin-top:10px" });
  const metric = h("select", { name: "metric" });
  const mode = h("select", { name: "mode" }, ["max", "min"].map((m) => h("option", { value: m }, m)));
  const optimizer = h("select", { name: "optimizer" }, OPTIMIZERS.map((o) => h("option", { value: o }, o)));
  const momentum = input("momentum", { type: "number", step: "any", value: "0.9" });
  const weightDecay = input("weight_decay", { type: "number", step: "any", value: "0.0005" });
  const epochs = input("epochs", { type: "number", value: "10" });
  const trialsPerPolicy = input("trials_per_policy", { type: "number", value: "4" });
  const concurrent = input("max_concurrent_trials", { type: "number", value: "2" });
  const algorithm = h("select", { name: "algorithm" }, ["random", "grid", "tpe"].map((a) => h("option", { value: a }, a)));
  const seed = input("seed", { type: "number", value: "0" });
  const early = h("select", { name: "early_stopping" }, ["none", "asha"].map((a) => h("option", { value: a }, a)));
  const bounds = h("select", { name: "lr_bounds" }, h("option", { value: "" }, "from each search space"), h("option", { value: "auto" }, "auto (LR range test first)"));
  const specPreview = h("pre", { class: "json", "data-testid": "spec-preview" });
  const result = h("div", { "data-testid": "submit-result" });
  const submit = h("button", { class: "primary", type: "submit", "data-testid": "submit" }, "Submit job");

  const cards = policies.map((p) => policyCard(p, () => update()));
  for (const card of cards) if (["fixed", "cosine", "clr", "one_cycle"].includes(card.policy)) card.setChecked(true);

  function workloadInfo() {
    return builtins.find((w) => w.name === workload.value);
  }
  function renderWorkload() {
    const info = workloadInfo();
    paramsBox.replaceChildren();
    const names = info ? [...info.metrics, "val_loss", "train_loss"] : ["val_accuracy", "val_loss", "train_loss"];
    metric.replaceChildren(...names.map((n) => h("option", { value: n }, n)));
    mode.value = metric.value.includes("acc") ? "max" : "min";
    if (info) {
      metric.value = info.default_metric;
      mode.value = info.default_mode;
      for (const param of info.params) {
        let control;
        if (param.choices) control = h("select", { "data-param": param.name, "data-type": param.type }, param.choices.map((c) => h("option", { value: String(c) }, String(c))));
        else if (param.type === "bool") control = h("select", { "data-param": param.name, "data-type": "bool" }, h("option", { value: "false" }, "false"), h("option", { value: "true" }, "true"));
        else control = h("input", { "data-param": param.name, "data-type": param.type, type: param.type === "str" ? "text" : "number", step: "any", placeholder: param.required ? "required" : "" });
        if (param.default !== null && param.default !== undefined) control.value = String(param.default);
        control.title = param.description;
        paramsBox.append(field(param.name, control));
      }
    }
    update();
  }

  function spec() {
    const params = {};
    for (const control of paramsBox.querySelectorAll("[data-param]")) {
      if (control.value === "") continue;
      const type = control.dataset.type;
      params[control.dataset.param] = type === "int" || type === "float" ? Number(control.value) : type === "bool" ? control.value === "true" : control.value;
    }
    const chosen = cards.filter((c) => c.checked());
    const body = {
      name: name.value,
      workload: { name: workload.value, params },
      optimizer: optimizer.value.startsWith("sgd")
        ? { name: optimizer.value, momentum: Number(momentum.value), weight_decay: Number(weightDecay.value) }
        : { name: optimizer.value, weight_decay: Number(weightDecay.value) },
      metric: { name: metric.value, mode: mode.value },
      policies: chosen.map((c) => c.entry()),
      budget: { epochs: Number(epochs.value), trials_per_policy: Number(trialsPerPolicy.value), max_concurrent_trials: Number(concurrent.value) },
      early_stopping: { kind: early.value },
      search: { algorithm: algorithm.value, seed: Number(seed.value) },
    };
    if (bounds.value) body.lr_bounds = bounds.value;
    return body;
  }

  function update() {
    momentum.disabled = !optimizer.value.startsWith("sgd");
    const body = spec();
    specPreview.textContent = JSON.stringify(body, null, 2);
    for (const card of cards) card.preview(Number(epochs.value) || 1);
  }

  const form = h("form", { novalidate: true, "data-testid": "new-job-form" },
    h("div", { class: "card" }, h("h2", {}, "Job"),
      h("div", { class: "fields" }, field("name", name), field("workload", workload), field("metric", metric), field("mode", mode)),
      paramsBox),
    h("div", { class: "card" }, h("h2", {}, "Training and search"),
      h("div", { class: "fields" },
        field("optimizer", optimizer), field("momentum (sgd*)", momentum), field("weight decay", weightDecay), field("learning-rate bounds", bounds),
        field("epochs", epochs), field("trials per policy", trialsPerPolicy), field("concurrent trials", concurrent), field("early stopping", early),
        field("search algorithm", algorithm), field("search seed", seed))),
    h("div", { class: "card" }, h("h2", {}, "Policies and their search spaces"),
      h("p", { class: "muted small", style: "margin-top:0" }, `Each card's curve is the schedule at the middle of its search space, assuming ${NOMINAL_STEPS_PER_EPOCH} steps per epoch; edit the JSON to change the space.`),
      h("div", { class: "policies" }, cards.map((c) => c.element))),
    h("div", { class: "card" },
      h("div", { class: "row" }, h("h2", { style: "margin:0" }, "Job spec"), h("div", { class: "spacer" }), submit),
      result, specPreview),
  );
  form.addEventListener("input", () => update());
  form.addEventListener("change", () => update());
  workload.addEventListener("change", renderWorkload);
  metric.addEventListener("change", () => { mode.value = metric.value.includes("acc") ? "max" : "min"; update(); });
  form.onsubmit = async (event) => {
    event.preventDefault();
    submit.disabled = true;
    result.replaceChildren();
    try {
      const job = await api("/v1/jobs", { method: "POST", body: spec(), headers: { "Idempotency-Key": crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) } });
      location.hash = `#/jobs/${job.id}`;
    } catch (error) {
      result.replaceChildren(errorBox(error));
      submit.disabled = false;
    }
  };
  view.replaceChildren(h("div", { class: "pagehead" }, h("div", {}, h("h1", {}, "New job"), h("div", { class: "meta" }, "Compare schedule policies on one workload, with the same budget for each"))), form);
  renderWorkload();
}

function policyCard(info, onChange) {
  const box = h("input", { type: "checkbox", "data-policy": info.name });
  const space = h("textarea", { "data-space": info.name, spellcheck: "false" }, spaceText(info.default_search_space));
  const chart = h("div", { class: "preview", "data-testid": `preview-${info.name}` });
  const message = h("div", { class: "preview-msg" });
  const armOptimizer = info.name === "fixed"
    ? h("select", { "data-arm-optimizer": info.name, title: "the optimizer this policy's trials train with" },
      h("option", { value: "" }, "job's optimizer"), ARM_OPTIMIZERS.map((o) => h("option", { value: o }, o)))
    : null;
  const element = h("div", { class: "policy-card", style: `--pc: ${policyColour(info.name)}` },
    h("header", {}, box, chip(info.name), h("span", { class: "muted small" }, info.family)),
    h("div", { class: "src" }, info.source),
    armOptimizer && h("label", { class: "muted small" }, "optimizer ", armOptimizer), space, message, chart);
  let timer = null;
  let lastKey = "";
  box.addEventListener("change", () => { element.classList.toggle("on", box.checked); onChange(); });

  function parsedSpace() {
    try {
      return JSON.parse(space.value);
    } catch {
      return undefined;
    }
  }
  return {
    policy: info.name,
    element,
    checked: () => box.checked,
    setChecked(on) { box.checked = on; element.classList.toggle("on", on); },
    entry() {
      const parsed = parsedSpace();
      const unchanged = JSON.stringify(parsed) === JSON.stringify(info.default_search_space);
      const own = armOptimizer && armOptimizer.value ? { optimizer: { name: armOptimizer.value } } : {};
      if (parsed === undefined) return { policy: info.name, search: space.value, ...own };
      if (unchanged) return own.optimizer ? { policy: info.name, ...own } : info.name;
      return { policy: info.name, search: parsed, ...own };
    },
    preview(epochs) {
      const parsed = parsedSpace();
      if (parsed === undefined) {
        message.textContent = "not valid JSON";
        return;
      }
      const total = Math.max(1, epochs * NOMINAL_STEPS_PER_EPOCH);
      const key = JSON.stringify([parsed, total]);
      if (key === lastKey) return;
      lastKey = key;
      clearTimeout(timer);
      timer = setTimeout(async () => {
        try {
          const schedule = middleSchedule(info, parsed, total);
          const curve = await api("/v1/schedules/preview", { method: "POST", body: { schedule, steps: total, every: Math.max(1, Math.floor(total / 150)) } });
          message.textContent = info.name === "plateau" ? "constant until the metric stalls: it follows the job's metric each epoch" : "";
          lineChart(chart, [{ label: info.name, x: curve.step, y: curve.lr, colour: policyColour(info.name), width: 1.6 }], { height: 86, bare: true });
          chart.title = `lr from ${fmt(Math.max(...curve.lr), 3)} (max) over ${total} steps`;
        } catch (error) {
          message.textContent = error.message;
          chart.replaceChildren();
        }
      }, 250);
    },
  };
}

// One field of the space a line: readable in a small box, and still JSON.
function spaceText(space) {
  const lines = Object.entries(space).map(([key, value]) => `  ${JSON.stringify(key)}: ${JSON.stringify(value)}`);
  return `{\n${lines.join(",\n")}\n}`;
}

// The point in the middle of a search space, resolved to steps as the service does (durations
// given in epochs or as a fraction of training; required durations left out span the training).
function middleSchedule(info, space, totalSteps) {
  const schedule = { policy: info.name };
  const durations = new Set(info.fields.filter((f) => f.duration).map((f) => f.name));
  const toSteps = (v, per) => (Array.isArray(v) ? v.map((x) => Math.max(1, Math.round(x * per))) : Math.max(1, Math.round(v * per)));
  for (const [key, raw] of Object.entries(space)) {
    let value = raw;
    if (raw && typeof raw === "object" && !Array.isArray(raw)) {
      if ("choice" in raw) value = raw.choice[0];
      else if ("loguniform" in raw) value = Math.sqrt(raw.loguniform[0] * raw.loguniform[1]);
      else if ("uniform" in raw) value = (raw.uniform[0] + raw.uniform[1]) / 2;
      else if ("int" in raw) value = Math.round((raw.int[0] + raw.int[1]) / 2);
    }
    if (key.endsWith("_epochs") && durations.has(key.slice(0, -7))) schedule[key.slice(0, -7)] = toSteps(value, NOMINAL_STEPS_PER_EPOCH);
    else if (key.endsWith("_frac") && durations.has(key.slice(0, -5))) schedule[key.slice(0, -5)] = toSteps(value, totalSteps);
    else schedule[key] = value;
  }
  for (const f of info.fields) {
    if (f.duration && f.required && !(f.name in schedule) && !["milestones", "boundaries"].includes(f.name)) schedule[f.name] = totalSteps;
  }
  return schedule;
}

