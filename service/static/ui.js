// What every page of the dashboard shares: the view it draws in, the navigation generation, polling,
// and small DOM helpers.

import { policyColour } from "./charts.js";
import { FINISHED_JOB_STATUSES, FINISHED_TRIAL_STATUSES, TRIAL_STATUSES } from "/status-words.js";

export const view = document.getElementById("view");
export const FINISHED_JOB = new Set(FINISHED_JOB_STATUSES);
// Finished first, then the ones still to finish (as the progress bar stacks them).
export const TRIAL_STATES = [...FINISHED_TRIAL_STATUSES, ...TRIAL_STATUSES.filter((s) => !FINISHED_TRIAL_STATUSES.includes(s)).reverse()];
export const POLL_MS = 3000;
let timers = [];
// Bumped on every navigation: a page compares it with its own to drop late answers of a left view.
export let generation = 0;

export function h(tag, attrs = {}, ...children) {
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

export function badge(status, testid = "status") {
  return h("span", { class: `badge ${status}`, "data-testid": testid }, status);
}

// What early stopping did at a rung: continue (promoted), stop (pruned), or nothing yet.
export function decisionBadge(decision) {
  return decision ? badge(decision, "decision") : h("span", { class: "muted" }, "–");
}

export function chip(policy) {
  return h("span", { class: "chip", style: `--chip: ${policyColour(policy)}` }, policy);
}

// "mean ± std" to the spread's precision (its two leading digits), as the CLI shows it.
export function fmtMeanStd(mean, std) {
  if (std === null || std === undefined) return fmt(mean);
  if (!Number.isFinite(mean) || !Number.isFinite(std) || std <= 0) return `${fmt(mean)} ± ${fmt(std)}`;
  const decimals = Math.min(20, Math.max(0, 1 - Math.floor(Math.log10(std))));
  return `${mean.toFixed(decimals)} ± ${std.toFixed(decimals)}`;
}

// A job's best so far (the recommendation's leader): its mean ± spread, and its policy with the
// horizon it was judged at while no trial has trained the whole budget (horizon_halving).
export function bestValue(best) {
  return fmtMeanStd(best.value, best.std);
}

export function bestHorizon(job) {
  const horizon = job.best.horizon_epochs;
  return horizon ? ` at ${horizon} of ${job.spec.budget.epochs} epochs` : "";
}

export function fmt(value, digits = 4) {
  if (value === null || value === undefined) return "–";
  const number = typeof value === "string" ? Number(value) : value;
  if (!Number.isFinite(number)) return String(value);
  if (Number.isInteger(number) && Math.abs(number) < 1e6) return String(number);
  const abs = Math.abs(number);
  return abs !== 0 && (abs < 1e-3 || abs >= 1e5) ? number.toExponential(2) : number.toPrecision(digits);
}

export function when(iso) {
  if (!iso) return "–";
  const date = new Date(iso);
  return date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

export function duration(start, end) {
  if (!start) return "";
  const seconds = Math.max(0, ((end ? new Date(end) : new Date()) - new Date(start)) / 1000);
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

export function errorBox(error) {
  const box = h("div", { class: "error-box", role: "alert", "data-testid": "error" }, error.message);
  if (error.fields && error.fields.length > 1) {
    box.append(h("ul", {}, error.fields.map((f) => h("li", {}, `${f.path}: ${f.message}`))));
  }
  return box;
}

export function progressCounts(progress) {
  const done = FINISHED_TRIAL_STATUSES.reduce((sum, state) => sum + progress[state], 0);
  const total = Math.max(progress.planned, done + progress.running + progress.pending);
  return { done, total };
}

export function stackedBar(progress, wide = false) {
  const { total } = progressCounts(progress);
  const bar = h("div", { class: `bar${wide ? " wide" : ""}`, "data-testid": "progress" });
  for (const state of [...FINISHED_TRIAL_STATUSES, "running"]) {
    const share = total ? (100 * progress[state]) / total : 0;
    if (share > 0) bar.append(h("span", { class: state, style: `width: ${share}%`, title: `${state} ${progress[state]}` }));
  }
  return bar;
}

// Polls `work` every `ms` until the page is left (or stopPolling).
export function every(ms, work) {
  const id = setInterval(work, ms);
  timers.push(id);
}

export function stopPolling() {
  timers.forEach(clearInterval);
  timers = [];
}

// A new page is shown: stop the last one's polls, and let its late answers know they are late.
export function leavePage() {
  stopPolling();
  generation += 1;
}
