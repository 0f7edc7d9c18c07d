// A trial's page (#/trials/ID): its spec, curves, epochs and cooldown probes.

import { api, apiOptional, finite } from "./api.js";
import { lineChart, policyColour } from "./charts.js";
import { view, generation, h, badge, decisionBadge, chip, fmt, when, duration, errorBox } from "./ui.js";

export async function trialPage(trialId) {
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
