// The new-job form (#/new): a job spec built field by field, each policy's curve previewed by the
// service, submitted as is.

import { api, apiOptional, callerRights } from "./api.js";
import { lineChart, policyColour } from "./charts.js";
import { view, generation, h, chip, fmt, errorBox } from "./ui.js";

const NOMINAL_STEPS_PER_EPOCH = 100;
const OPTIMIZERS = ["sgd", "adam", "adamw", "sgd_schedulefree", "adamw_schedulefree"];
// Schedule-free optimizers run with the fixed policy (plus warmup) only: the fixed card may take
// one as its own arm's optimizer, so one job compares the schedules with schedule-free.
const ARM_OPTIMIZERS = ["adamw_schedulefree", "sgd_schedulefree"];

export async function newJobPage() {
  const mine = generation;
  const [rights, policies, workloads] = await Promise.all([callerRights(), api("/v1/policies"), apiOptional("/v1/workloads").catch(() => null)]);
  if (mine !== generation) return;
  if (!rights.has("submit")) {
    view.replaceChildren(h("div", { class: "pagehead" }, h("h1", {}, "New job")),
      h("div", { class: "notice", "data-testid": "read-only" },
        "This token's scope is read: it can look at jobs but not submit them. Ask an operator for a token of scope submit (lrtune token create --scope submit)."));
    return;
  }
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
  const early = h("select", { name: "early_stopping" }, ["none", "asha", "horizon_halving"].map((a) => h("option", { value: a }, a)));
  const execution = h("select", { name: "execution", title: "auto: populations when the model allows them; trials: one at a time; population: the trials train together as batched models" },
    ["auto", "trials", "population"].map((e) => h("option", { value: e }, e)));
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
    if (execution.value !== "auto") body.execution = execution.value;
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
        field("search algorithm", algorithm), field("search seed", seed), field("execution", execution))),
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
          // The service resolves the space's middle point as it would a trial's.
          const curve = await api("/v1/search-spaces/preview", {
            method: "POST",
            body: { policy: info.name, search_space: parsed, steps: total, steps_per_epoch: NOMINAL_STEPS_PER_EPOCH, every: Math.max(1, Math.floor(total / 150)) },
          });
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
