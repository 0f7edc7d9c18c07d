// A job's page (#/jobs/ID): its progress, timeline, recommendation, leaderboard, curves, rungs and
// trials, polled until the job has finished.

import { api, apiOptional, callerRights, finite } from "./api.js";
import { lineChart, policyColour, withAlpha } from "./charts.js";
import { FINISHED_TRIAL_STATUSES } from "/status-words.js";
import { view, FINISHED_JOB, TRIAL_STATES, POLL_MS, generation, h, badge, decisionBadge, chip, fmt, fmtMeanStd, bestValue, bestHorizon, when, duration, errorBox, progressCounts, stackedBar, every, stopPolling } from "./ui.js";

export async function jobPage(jobId) {
  const mine = generation;
  const job = await api(`/v1/jobs/${jobId}`);
  const [rights, curves, recommendation, rangeTest, rungs, timeline] = await Promise.all([
    callerRights(),
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
  const mayCancel = rights.has("submit");
  renderJobHead(head, job, mayCancel);
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
      renderJobHead(head, fresh, mayCancel);
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
        stopPolling();
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

// `mayCancel`: the caller's scope lets it cancel (a read-only token gets no button).
function renderJobHead(head, job, mayCancel) {
  const spec = job.spec;
  const cancel = h("button", { class: "danger", "data-testid": "cancel" }, "Cancel job");
  cancel.onclick = async () => {
    if (!confirm(`Cancel job #${job.id}? Running trials are stopped and no new trial starts.`)) return;
    cancel.disabled = true;
    try {
      const updated = await api(`/v1/jobs/${job.id}/cancel`, { method: "POST" });
      renderJobHead(head, updated, mayCancel);
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
      job.submitted_by || job.cancelled_by
        ? h("div", { class: "meta", "data-testid": "job-tokens" },
          job.submitted_by ? h("span", { "data-testid": "submitted-by" }, `submitted by ${tokenName(job.submitted_by)}`) : null,
          job.submitted_by && job.cancelled_by ? " · " : null,
          job.cancelled_by ? h("span", { "data-testid": "cancelled-by" }, `cancelled by ${tokenName(job.cancelled_by)}`) : null)
        : null,
      job.error ? errorBox({ message: job.error }) : null),
    h("div", { class: "spacer" }),
    ...(!mayCancel || FINISHED_JOB.has(job.status) || job.status === "cancelling" ? [] : [cancel]),
  );
}

// A token as a job names it: its label and id (jobs submitted with auth off name none).
function tokenName(token) {
  return token.label ? `${token.label} (token #${token.id})` : `token #${token.id}`;
}

function renderProgress(card, job) {
  const p = job.progress;
  const { done, total } = progressCounts(p);
  const best = job.best
    ? h("span", { "data-testid": "best" }, "best so far ", h("b", { "data-testid": "best-value" }, bestValue(job.best)), " · ", chip(job.best.policy), bestHorizon(job), " · ",
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
    parts.push(h("div", { class: "winner-line", "data-testid": "winner" }, "Use ", chip(winner.policy), ` — ${reco.metric} ${fmtMeanStd(winner.metric_mean, winner.metric_std)} over ${winner.n_seeds} seed${winner.n_seeds === 1 ? "" : "s"}`));
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
    FINISHED_TRIAL_STATUSES.map((s) => h("td", { class: "num" }, String(p.by_status[s] || 0))),
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
  const stopping = job.spec.early_stopping || {};
  const judge = stopping.judge;
  const metric = job.spec.metric ? job.spec.metric.name : "val_loss";
  const explained = stopping.kind === "horizon_halving"
    ? `each rung trains every candidate's whole schedule compressed to its horizon, from scratch; judged: its final ${metric}`
    : judge === "raw"
      ? `early stopping judged each trial by its ${metric} at the rung epoch`
      : `raw: ${metric} at the rung epoch · judged: ${metric} after a cooldown probe (the rate annealed to 0 from there), which early stopping compared`;
  const tables = rungs.map((rung) => rungTable(rung, showAll));
  const folded = rungs.some((rung) => rung.trials.some((_, i) => !rungRowShown(rung.trials, i)));
  const toggle = h("button", { "data-testid": "rungs-toggle" }, showAll ? "show fewer" : "show all");
  toggle.onclick = () => {
    card.dataset.showAll = String(!showAll);
    renderRungs(card, rungs, job);
  };
  card.replaceChildren(
    h("div", { class: "row" }, h("h2", { style: "margin:0" }, "Rungs"),
      h("span", { class: "muted small" }, explained),
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
    h("div", { class: "chart-title" }, rung.rung == null ? `epoch ${rung.epoch}` : `rung ${rung.rung}: ${rung.epoch} epochs`,
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
