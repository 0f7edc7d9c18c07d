"""Code to paste: a recommended schedule written out for PyTorch, Keras and Hugging Face.

Each export reproduces a schedule spec as `schedule_math` computes it: `pytorch_snippet` with
`torch.optim.lr_scheduler`, every param group at the schedule's rate times its multiplier;
`keras_snippet` as a Keras 3 LearningRateSchedule; `huggingface_snippet` as transformers'
TrainingArguments (or a PyTorch scheduler handed to the Trainer). `export_snippets` gives all
three with whether each is exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from lrtune.schemas.schedules import (
    CosineSchedule,
    CyclicSchedule,
    ExponentialSchedule,
    FixedSchedule,
    InverseSqrtSchedule,
    InverseTimeSchedule,
    LinearCosineSchedule,
    MultiStepSchedule,
    NaturalExpSchedule,
    NoisyLinearCosineSchedule,
    OneCycleSchedule,
    ParamGroupRule,
    PiecewiseSchedule,
    PlateauSchedule,
    PolynomialSchedule,
    RexSchedule,
    ScheduleSpec,
    SgdrSchedule,
    StepSchedule,
    WsdSchedule,
)
from lrtune.schemas.trials import OptimizerSpec
from lrtune.workers.schedule_math import learning_rate

__all__ = [
    "FORMATS",
    "Snippet",
    "export_snippets",
    "huggingface_snippet",
    "keras_snippet",
    "pytorch_snippet",
]

FORMATS = ("pytorch", "keras", "huggingface")


# --- PyTorch export ---------------------------------------------------------------------------


def pytorch_snippet(
    spec: ScheduleSpec,
    *,
    param_groups: Sequence[ParamGroupRule] | None = None,
    training_steps: int | None = None,
    optimizer: OptimizerSpec | None = None,
    snapshots: int | None = None,
) -> str:
    """Python code that builds `scheduler` for an existing `optimizer` (any lr it was built with).

    Calling `scheduler.step()` after each `optimizer.step()` gives every param group exactly the
    schedule's rate times its multiplier (lrtune's `learning_rates`). A torch.optim.lr_scheduler
    class is used where it computes the same curve (StepLR, MultiStepLR, ExponentialLR,
    PolynomialLR, CyclicLR, CosineAnnealingWarmRestarts, OneCycleLR); otherwise, and whenever a
    warmup is present, a LambdaLR with the formula written out in plain Python. With
    `param_groups`, the snippet also needs `model`: each optimizer group's multiplier comes from
    the names of its parameters. `training_steps` (steps the training will run) matters only for
    one_cycle: past total_steps OneCycleLR raises, while lrtune holds the final rate, so a longer
    training gets a LambdaLR. plateau is torch's ReduceLROnPlateau, stepped with the metric
    after every epoch instead (and a LambdaLR for its warmup). With a schedule-free `optimizer`
    the snippet builds the optimizer too (over `model`, one group per rule as a trial does) and
    defines `lrtune_train()` and `lrtune_eval(train_batches)`, its train()/eval() swaps with
    BatchNorm recalibrated at x. With `snapshots` (clr and sgdr), it also shows how to collect
    a snapshot ensemble (`snapshot_ensemble_code`).
    """
    rules = list(param_groups or [])
    if isinstance(spec, PlateauSchedule):
        return _plateau_snippet(spec, rules)
    header = [
        f"# lrtune schedule ({spec.policy}): {spec.model_dump_json()}",
        "# Call scheduler.step() after every optimizer.step().",
    ]
    torch_class = None if spec.warmup_steps > 0 else _torch_class(spec, rules, training_steps)
    header += ["import fnmatch"] if rules else []
    header += ["import math"] if torch_class is None else []
    header += ["import numpy as np"] if torch_class is None and _sgdr_float_restarts(spec) else []
    schedule_free = optimizer is not None and optimizer.schedule_free
    header += ["", *(["import schedulefree"] if schedule_free else []), "import torch", ""]
    if optimizer is not None and schedule_free:
        header += _schedule_free_optimizer_code(optimizer, rules)
    header += _multiplier_code(rules)
    if torch_class is not None:
        start, build = torch_class
        body = [
            "",
            "# Each group starts from its own rate; the scheduler takes it from there.",
            "for group, mult in zip(optimizer.param_groups, lr_mults):",
            f"    group['initial_lr'] = group['lr'] = {start} * mult",
            f"scheduler = {build}",
        ]
    else:
        body = [
            *_lambda_code(spec),
            "# LambdaLR multiplies each group's initial_lr by lrtune_rate(t): the multiplier.",
            "for group, mult in zip(optimizer.param_groups, lr_mults):",
            "    group['initial_lr'] = group['lr'] = mult",
            "scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lrtune_rate)",
        ]
    if schedule_free:
        body += _SCHEDULE_FREE_SWAPS
    if snapshots is not None:
        body += snapshot_ensemble_code(spec, snapshots)
    return "\n".join([*header, *body, ""])


def snapshot_ensemble_code(spec: ScheduleSpec, snapshots: int) -> list[str]:
    """Huang et al. 2017's snapshot ensemble as lrtune measures it (ensemble_<metric>):
    `lrtune_cycle_ends(total_steps)`, the step counts after which a cycle ends (as
    `schedule_math.cycle_ends` finds them), the loop's few lines that keep the last
    `snapshots` weights, and `lrtune_ensemble_predict`, their average softmax."""
    warmup = spec.warmup_steps
    if isinstance(spec, CyclicSchedule):
        period = 2 * spec.step_size
        ends = [f"    return set(range({warmup + period}, total_steps + 1, {period}))"]
    elif isinstance(spec, SgdrSchedule) and spec.t_mult.is_integer():
        ends = [
            f"    ends, start, length = set(), 0, {spec.t_0}",
            f"    while {warmup} + start + length <= total_steps:",
            f"        start, length = start + length, length * {int(spec.t_mult)}",
            f"        ends.add({warmup} + start)",
            "    return ends",
        ]
    elif isinstance(spec, SgdrSchedule):
        # Restart i starts at t_0 (t_mult^i - 1) / (t_mult - 1), the first step past it.
        ends = [
            "    ends, i = set(), 1",
            "    while True:",
            f"        start = {spec.t_0} * math.expm1(i * math.log1p({spec.t_mult!r} - 1.0)) / "
            f"({spec.t_mult!r} - 1.0)",
            f"        if {warmup} + math.ceil(start) > total_steps:",
            "            return ends",
            f"        ends.add({warmup} + math.ceil(start))",
            "        i += 1",
        ]
    else:
        raise ValueError(f"only clr and sgdr have cycles, not {spec.policy}")
    return [
        "",
        "# Snapshot ensemble (Huang et al. 2017): keep the weights after each cycle's last step,",
        f"# where the rate is lowest, the last {snapshots} of them, and average their softmax.",
        "import copy",
        "import math",
        "",
        "def lrtune_cycle_ends(total_steps):",
        '    """The step counts after which a cycle ends (warmup counted)."""',
        *ends,
        "",
        "lrtune_snapshots = []",
        "# In the training loop, with cycle_ends = lrtune_cycle_ends(total_steps) computed once",
        "# and `step` the optimizer steps taken so far (after optimizer.step(), scheduler.step()):",
        "#     if step in cycle_ends:",
        "#         lrtune_snapshots.append(copy.deepcopy(model.state_dict()))",
        f"#         del lrtune_snapshots[:-{snapshots}]",
        "",
        "@torch.no_grad()",
        "def lrtune_ensemble_predict(model, inputs):",
        '    """The snapshots\' average softmax probabilities for `inputs` (`model`: the',
        '    architecture; its own weights are left alone)."""',
        "    member = copy.deepcopy(model).eval()",
        "    probabilities = 0",
        "    for state in lrtune_snapshots:",
        "        member.load_state_dict(state)",
        "        probabilities = probabilities + torch.softmax(member(inputs), dim=-1)",
        "    return probabilities / len(lrtune_snapshots)",
    ]


def _schedule_free_optimizer_code(
    optimizer: OptimizerSpec, rules: list[ParamGroupRule]
) -> list[str]:
    """`optimizer = schedulefree...(...)` as lrtune's trial builds it (build_optimizer)."""
    if optimizer.name == "sgd_schedulefree":
        build = "schedulefree.SGDScheduleFree("
        arguments = f"momentum={optimizer.momentum!r}, weight_decay={optimizer.weight_decay!r}"
    else:
        build = "schedulefree.AdamWScheduleFree("
        arguments = (
            f"betas={tuple(optimizer.betas)!r}, eps={optimizer.eps!r}, "
            f"weight_decay={optimizer.weight_decay!r}"
        )
    lines = [
        f"# The optimizer lrtune trained with ({optimizer.name}). Its own warmup stays 0: the",
        "# scheduler below sets its rate every step, warmup included. Needs `model`.",
    ]
    if not rules:
        lines += ["lrtune_params = list(model.parameters())"]
    else:
        patterns = [rule.match for rule in rules]
        lines += [
            "# One param group per rule, in order, then the unmatched parameters.",
            f"lrtune_patterns = {patterns!r}",
            "lrtune_grouped = [[] for _ in range(len(lrtune_patterns) + 1)]",
            "for name, parameter in model.named_parameters():",
            "    index = next(",
            "        (i for i, pattern in enumerate(lrtune_patterns)",
            "         if name.startswith(pattern) or fnmatch.fnmatchcase(name, pattern)),",
            "        len(lrtune_patterns),",
            "    )",
            "    lrtune_grouped[index].append(parameter)",
            "lrtune_params = [{'params': params} for params in lrtune_grouped if params]",
        ]
    return [
        *lines,
        f"optimizer = {build}",
        f"    lrtune_params, lr=0.0, {arguments}, warmup_steps=0",
        ")",
        "",
    ]


# A schedule-free optimizer's weights are y (where gradients are taken) while training and the
# average x for evaluation and checkpoints; BatchNorm's statistics gathered at y are recomputed
# at x, as schedulefree's README says and lrtune's trial does.
_SCHEDULE_FREE_SWAPS = [
    "",
    "",
    "def lrtune_train():",
    '    """Before training steps, where model.train() goes: the weights to y."""',
    "    model.train()",
    "    optimizer.train()",
    "",
    "",
    "@torch.no_grad()",
    "def lrtune_eval(train_batches=None, batches=50):",
    '    """Before every evaluation and checkpoint, where model.eval() goes: the weights to the',
    "    average x. With BatchNorm, pass training batches ((inputs, targets) pairs): its",
    '    statistics are recomputed at x from `batches` of them."""',
    "    optimizer.eval()",
    "    norms = [",
    "        m for m in model.modules()",
    "        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats",
    "    ]",
    "    if norms and train_batches is not None:",
    "        momenta = [norm.momentum for norm in norms]",
    "        for norm in norms:",
    "            norm.reset_running_stats()",
    "            norm.momentum = None  # an equal average over the batches",
    "        model.train()",
    "        for index, (inputs, _) in enumerate(train_batches):",
    "            if index == batches:",
    "                break",
    "            model(inputs)",
    "        for norm, momentum in zip(norms, momenta):",
    "            norm.momentum = momentum",
    "    model.eval()",
]


def _multiplier_code(rules: list[ParamGroupRule]) -> list[str]:
    if not rules:
        return ["lr_mults = [1.0] * len(optimizer.param_groups)"]
    pairs = ", ".join(f"({rule.match!r}, {rule.lr_mult!r})" for rule in rules)
    return [
        "# Discriminative rates: a parameter takes the multiplier of the first rule whose",
        "# pattern is a prefix of its name or a glob matching it (1.0 when none does); every",
        "# optimizer param group must hold parameters of one multiplier. Needs `model`.",
        f"lr_rules = [{pairs}]",
        "names = {id(p): n for n, p in model.named_parameters()}",
        "",
        "",
        "def lrtune_mult(name):",
        "    for pattern, mult in lr_rules:",
        "        if name.startswith(pattern) or fnmatch.fnmatchcase(name, pattern):",
        "            return mult",
        "    return 1.0",
        "",
        "",
        "lr_mults = []",
        "for group in optimizer.param_groups:",
        "    found = {lrtune_mult(names[id(p)]) for p in group['params']}",
        "    if len(found) != 1:",
        "        raise ValueError(f'a param group mixes lr multipliers {sorted(found)}')",
        "    lr_mults.append(found.pop())",
    ]


def _torch_class(
    spec: ScheduleSpec, rules: list[ParamGroupRule], training_steps: int | None
) -> tuple[str, str] | None:
    """(the rate each group starts from, the scheduler expression), or None for a LambdaLR."""
    sched = "torch.optim.lr_scheduler"
    if spec.policy == "step":
        return repr(spec.lr), (
            f"{sched}.StepLR(optimizer, step_size={spec.step_size}, gamma={spec.gamma!r})"
        )
    if spec.policy == "multistep":
        return repr(spec.lr), (
            f"{sched}.MultiStepLR(optimizer, milestones={list(spec.milestones)!r}, "
            f"gamma={spec.gamma!r})"
        )
    if spec.policy == "exponential":
        if spec.staircase:
            return repr(spec.lr), (
                f"{sched}.StepLR(optimizer, step_size={spec.decay_steps}, "
                f"gamma={spec.decay_rate!r})"
            )
        if spec.decay_steps == 1:
            return repr(spec.lr), f"{sched}.ExponentialLR(optimizer, gamma={spec.decay_rate!r})"
        return None
    if spec.policy == "polynomial" and spec.end_lr == 0 and not spec.cycle:
        return repr(spec.lr), (
            f"{sched}.PolynomialLR(optimizer, total_iters={spec.decay_steps}, power={spec.power!r})"
        )
    if spec.policy == "clr":
        # Per-group bounds scaled by the multipliers; cycle_momentum=False, else CyclicLR also
        # cycles the optimizer's momentum. CyclicLR sets each group's lr itself.
        return repr(spec.base_lr), (
            f"{sched}.CyclicLR(optimizer, base_lr=[{spec.base_lr!r} * m for m in lr_mults], "
            f"max_lr=[{spec.max_lr!r} * m for m in lr_mults], step_size_up={spec.step_size}, "
            f"mode={spec.mode!r}, gamma={spec.gamma!r}, cycle_momentum=False)"
        )
    if (
        spec.policy == "sgdr"
        and spec.restart_decay == 1.0
        and float(spec.t_mult).is_integer()
        # torch's eta_min is one number for every group, so multipliers need eta_min == 0.
        and (spec.eta_min == 0.0 or all(rule.lr_mult == 1.0 for rule in rules))
    ):
        return repr(spec.eta_max), (
            f"{sched}.CosineAnnealingWarmRestarts(optimizer, T_0={spec.t_0}, "
            f"T_mult={int(spec.t_mult)}, eta_min={spec.eta_min!r})"
        )
    if spec.policy == "one_cycle" and (
        training_steps is None or training_steps <= spec.total_steps
    ):
        return repr(spec.max_lr), (
            f"{sched}.OneCycleLR(optimizer, max_lr=[{spec.max_lr!r} * m for m in lr_mults], "
            f"total_steps={spec.total_steps}, pct_start={spec.pct_start!r}, "
            f"anneal_strategy={spec.anneal!r}, div_factor={spec.div_factor!r}, "
            f"final_div_factor={spec.final_div_factor!r}, three_phase={spec.three_phase!r}, "
            "cycle_momentum=False)  # train at most total_steps steps: OneCycleLR raises past it"
        )
    return None


def _lambda_code(spec: ScheduleSpec) -> list[str]:
    """`def lrtune_rate(t)`: the schedule's rate at step t, as schedule_math computes it."""
    inner = _INNER_CODE[spec.policy](spec)
    lines = [
        "",
        "",
        "def lrtune_inner(t):",
        *(f"    {line}" if line else "" for line in inner),
        "",
        "",
    ]
    if spec.warmup_steps > 0 and spec.policy == "wsd":
        lines += [
            "def lrtune_rate(t):",
            f"    # Linear warmup from {spec.warmup_start_lr!r} to lr; WSD's clock counts the",
            "    # warmup (total_steps includes it).",
            f"    if t < {spec.warmup_steps}:",
            f"        start = {spec.warmup_start_lr!r}",
            f"        first = lrtune_inner({spec.warmup_steps})",
            f"        return start + (first - start) * (t / {spec.warmup_steps})",
            "    return lrtune_inner(t)",
        ]
    elif spec.warmup_steps > 0:
        lines += [
            "def lrtune_rate(t):",
            f"    # Linear warmup from {spec.warmup_start_lr!r} to the schedule's first rate,",
            "    # whose clock starts after the warmup.",
            f"    if t < {spec.warmup_steps}:",
            f"        start = {spec.warmup_start_lr!r}",
            f"        return start + (lrtune_inner(0) - start) * (t / {spec.warmup_steps})",
            f"    return lrtune_inner(t - {spec.warmup_steps})",
        ]
    else:
        lines += ["def lrtune_rate(t):", "    return lrtune_inner(t)"]
    return [*lines, "", ""]


def _progress(spec: ExponentialSchedule | NaturalExpSchedule | InverseTimeSchedule) -> str:
    return f"p = t // {spec.decay_steps}" if spec.staircase else f"p = t / {spec.decay_steps}"


def _fixed_code(spec: FixedSchedule) -> list[str]:
    return [f"return {spec.lr!r}"]


def _step_code(spec: StepSchedule) -> list[str]:
    return [f"return {spec.lr!r} * {spec.gamma!r} ** (t // {spec.step_size})"]


def _multistep_code(spec: MultiStepSchedule) -> list[str]:
    return [
        f"passed = sum(1 for m in {list(spec.milestones)!r} if m <= t)",
        f"return {spec.lr!r} * {spec.gamma!r} ** passed",
    ]


def _piecewise_code(spec: PiecewiseSchedule) -> list[str]:
    return [
        "# The value changes at boundary + 1 (TF piecewise_constant).",
        f"index = sum(1 for b in {list(spec.boundaries)!r} if b < t)",
        f"return {list(spec.values)!r}[index]",
    ]


def _exponential_code(spec: ExponentialSchedule) -> list[str]:
    return [_progress(spec), f"return {spec.lr!r} * {spec.decay_rate!r} ** p"]


def _natural_exp_code(spec: NaturalExpSchedule) -> list[str]:
    return [_progress(spec), f"return {spec.lr!r} * math.exp(-{spec.decay_rate!r} * p)"]


def _inverse_time_code(spec: InverseTimeSchedule) -> list[str]:
    return [_progress(spec), f"return {spec.lr!r} / (1.0 + {spec.decay_rate!r} * p)"]


def _polynomial_code(spec: PolynomialSchedule) -> list[str]:
    d = spec.decay_steps
    if spec.cycle:
        fraction = [
            "# The horizon grows to the next multiple of decay_steps: no return to lr.",
            f"periods = max(1, -(-t // {d}))",
            f"fraction = t / ({d} * periods)",
        ]
    else:
        fraction = [f"fraction = min(t, {d}) / {d}"]
    return [
        *fraction,
        f"return ({spec.lr!r} - {spec.end_lr!r}) * (1.0 - fraction) ** {spec.power!r} "
        f"+ {spec.end_lr!r}",
    ]


def _cosine_code(spec: CosineSchedule) -> list[str]:
    d = spec.decay_steps
    return [
        "# Held at the end after decay_steps (TF), unlike CosineAnnealingLR's swing back up.",
        f"fraction = min(t, {d}) / {d}",
        "cosine = 0.5 * (1.0 + math.cos(math.pi * fraction))",
        f"return {spec.lr!r} * ((1.0 - {spec.alpha!r}) * cosine + {spec.alpha!r})",
    ]


def _linear_cosine_code(spec: LinearCosineSchedule | NoisyLinearCosineSchedule) -> list[str]:
    d = spec.decay_steps
    lines = [
        f"clamped = min(t, {d})",
        f"linear = ({d} - clamped) / {d}",
        f"cosine = 0.5 * (1.0 + math.cos(2.0 * math.pi * {spec.num_periods!r} * clamped / {d}))",
    ]
    if isinstance(spec, LinearCosineSchedule):
        return [
            *lines,
            f"return {spec.lr!r} * (({spec.alpha!r} + linear) * cosine + {spec.beta!r})",
        ]
    return [
        *lines,
        "# Seeded noise, counter-based (SplitMix64 + Box-Muller), keyed on the clamped step.",
        "mask = (1 << 64) - 1",
        "",
        "def splitmix64(index):",
        f"    z = ((index + 1) * 0x9E3779B97F4A7C15 + {spec.seed}) & mask",
        "    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask",
        "    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask",
        "    return z ^ (z >> 31)",
        "",
        "u1 = ((splitmix64(2 * clamped) >> 11) + 1) * 2.0**-53",
        "u2 = (splitmix64(2 * clamped + 1) >> 11) * 2.0**-53",
        "noise = math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)",
        f"std = math.sqrt({spec.initial_variance!r} / (1.0 + clamped) ** {spec.variance_decay!r})",
        f"lr = {spec.lr!r} * (({spec.alpha!r} + linear + std * noise) * cosine + {spec.beta!r})",
        "return max(lr, 0.0)",
    ]


def _clr_code(spec: CyclicSchedule) -> list[str]:
    s = spec.step_size
    scale = {
        "triangular": "1.0",
        "triangular2": "2.0 ** -(cycle - 1)",
        "exp_range": f"{spec.gamma!r} ** t",
    }[spec.mode]
    return [
        f"cycle = 1 + t // {2 * s}",
        f"x = abs(t / {s} - 2 * cycle + 1)",
        f"return {spec.base_lr!r} + ({spec.max_lr!r} - {spec.base_lr!r}) * max(0.0, 1.0 - x) "
        f"* {scale}",
    ]


def _sgdr_code(spec: SgdrSchedule) -> list[str]:
    t_0, t_mult = spec.t_0, spec.t_mult
    if t_mult == 1:
        find = [f"restart, t_cur, t_i = t // {t_0}, t % {t_0}, {t_0}"]
    elif float(t_mult).is_integer():
        find = [
            "# Restart boundaries with exact integers (a float log misses some).",
            f"restart, start, t_i = 0, 0, {t_0}",
            "while start + t_i <= t:",
            f"    restart, start, t_i = restart + 1, start + t_i, t_i * {int(t_mult)}",
            "t_cur = t - start",
        ]
    else:
        # numpy's log1p and expm1, as schedule_math's: Python's math module may differ in the
        # last bit, enough to move a restart that starts at a whole step (t_0 1: start 1).
        find = [
            "# Restart i starts at t_0 * (t_mult**i - 1) / (t_mult - 1), computed as lrtune does.",
            f"count = int(math.log1p(t / {t_0} * ({t_mult!r} - 1.0)) / math.log({t_mult!r})) + 2",
            "index = np.arange(count, dtype=np.float64)",
            f"starts = {t_0} * np.expm1(index * np.log1p({t_mult!r} - 1.0)) / ({t_mult!r} - 1.0)",
            "restart = int(np.searchsorted(starts, t, side='right')) - 1",
            "t_cur = t - float(starts[restart])",
            f"t_i = {t_0} * {t_mult!r} ** float(restart)",
        ]
    return [
        *find,
        "cosine = 0.5 * (1.0 + math.cos(math.pi * t_cur / t_i))",
        f"return {spec.eta_min!r} + ({spec.eta_max!r} - {spec.eta_min!r}) "
        f"* {spec.restart_decay!r} ** float(restart) * cosine",
    ]


def _sgdr_float_restarts(spec: ScheduleSpec) -> bool:
    return isinstance(spec, SgdrSchedule) and not float(spec.t_mult).is_integer()


def _one_cycle_code(spec: OneCycleSchedule) -> list[str]:
    total = spec.total_steps
    initial = f"({spec.max_lr!r} / {spec.div_factor!r})"
    final = f"({initial} / {spec.final_div_factor!r})"
    peak_end = f"float({spec.pct_start!r} * {total}) - 1"
    if spec.three_phase:
        phases = [
            f"ends = [{peak_end}, float(2 * {spec.pct_start!r} * {total}) - 2, {total} - 1.0]",
            f"lrs = [{initial}, {spec.max_lr!r}, {initial}, {final}]",
        ]
    else:
        phases = [
            f"ends = [{peak_end}, {total} - 1.0]",
            f"lrs = [{initial}, {spec.max_lr!r}, {final}]",
        ]
    if spec.anneal == "cos":
        anneal = "return b + (a - b) / 2.0 * (math.cos(math.pi * pct) + 1)"
    else:
        anneal = "return (b - a) * pct + a"
    return [
        f"if t >= {total}:",
        f"    return {final}  # held after the last step (OneCycleLR would raise)",
        *phases,
        "# The first phase whose end is >= t, as OneCycleLR picks it.",
        "phase = next((i for i, end in enumerate(ends) if end >= t), len(ends) - 1)",
        "start = 0.0 if phase == 0 else ends[phase - 1]",
        "pct = (t - start) / (ends[phase] - start)",
        "a, b = lrs[phase], lrs[phase + 1]",
        anneal,
    ]


def _wsd_code(spec: WsdSchedule) -> list[str]:
    total, decay, ratio, lr = spec.total_steps, spec.decay_steps, spec.min_lr_ratio, spec.lr
    assert decay is not None  # WsdSchedule fills it in from decay_frac
    shape = {
        "linear": "1.0 - p",
        "1-sqrt": "1.0 - math.sqrt(p)",
        "cosine": "0.5 * (1.0 + math.cos(math.pi * p))",
    }[spec.decay_shape]
    return [
        "# t counts every step, the warmup's too: the decay ends at total_steps.",
        f"if t < {total - decay}:",
        f"    return {lr!r}  # stable",
        f"if t >= {total}:",
        f"    return {ratio!r} * {lr!r}",
        f"p = (t - {total - decay}) / {decay}",
        f"return {lr!r} * (({shape}) * (1.0 - {ratio!r}) + {ratio!r})",
    ]


def _inverse_sqrt_code(spec: InverseSqrtSchedule) -> list[str]:
    return [f"return {spec.lr!r} / math.sqrt((t + {spec.timescale}) / {spec.timescale})"]


def _rex_code(spec: RexSchedule) -> list[str]:
    total = spec.total_steps
    return [
        f"progress = min(t, {total}) / {total}",
        f"return {spec.min_lr!r} + ({spec.lr!r} - {spec.min_lr!r}) "
        "* ((1.0 - progress) / (1.0 - progress / 2.0))",
    ]


def _plateau_snippet(spec: PlateauSchedule, rules: list[ParamGroupRule]) -> str:
    """ReduceLROnPlateau on the monitored metric, each group from lr x its multiplier (torch
    keeps one rate per group, so min_lr is scaled per group too); a LambdaLR for the warmup."""
    warmup = spec.warmup_steps
    lines = [
        f"# lrtune schedule (plateau): {spec.model_dump_json()}",
        f"# torch's ReduceLROnPlateau on the metric lrtune monitored (mode {spec.mode!r}): call",
        "# scheduler.step(metric) after every epoch's evaluation with that epoch's value, not",
        "# after optimizer.step().",
    ]
    if warmup:
        lines += [
            f"# With the warmup: warmup.step() after each of the first {warmup} optimizer steps,",
            f"# and scheduler.step(metric) only for epochs that end at or after step {warmup}:",
            "#     optimizer.step(); steps_done += 1",
            f"#     if steps_done <= {warmup}: warmup.step()",
            "#     ...after evaluating an epoch:",
            f"#     if steps_done >= {warmup}: scheduler.step(metric)",
        ]
    lines += ["import fnmatch"] if rules else []
    lines += ["", "import torch", "", *_multiplier_code(rules)]
    if warmup:
        lines += [
            "",
            "",
            "def lrtune_warmup(t):",
            f"    # Linear from {spec.warmup_start_lr!r} to lr, then lr (ReduceLROnPlateau's).",
            f"    if t < {warmup}:",
            f"        start = {spec.warmup_start_lr!r}",
            f"        return start + ({spec.lr!r} - start) * (t / {warmup})",
            f"    return {spec.lr!r}",
            "",
            "",
            "# LambdaLR multiplies each group's initial_lr by lrtune_warmup(t): the multiplier.",
            "for group, mult in zip(optimizer.param_groups, lr_mults):",
            "    group['initial_lr'] = group['lr'] = mult",
            "warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lrtune_warmup)",
        ]
    else:
        lines += [
            "",
            "for group, mult in zip(optimizer.param_groups, lr_mults):",
            f"    group['lr'] = {spec.lr!r} * mult",
        ]
    lines += [
        "scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(",
        f"    optimizer, mode={spec.mode!r}, factor={spec.factor!r}, patience={spec.patience},",
        f"    threshold={spec.threshold!r}, threshold_mode={spec.threshold_mode!r}, "
        f"cooldown={spec.cooldown},",
        f"    min_lr=[{spec.min_lr!r} * m for m in lr_mults], eps={spec.eps!r},",
        ")",
    ]
    return "\n".join([*lines, ""])


# Each takes its own policy's spec; the policy name picks the right one.
_INNER_CODE: dict[str, Callable[[Any], list[str]]] = {
    "fixed": _fixed_code,
    "step": _step_code,
    "multistep": _multistep_code,
    "piecewise": _piecewise_code,
    "exponential": _exponential_code,
    "natural_exp": _natural_exp_code,
    "inverse_time": _inverse_time_code,
    "polynomial": _polynomial_code,
    "cosine": _cosine_code,
    "linear_cosine": _linear_cosine_code,
    "noisy_linear_cosine": _linear_cosine_code,
    "clr": _clr_code,
    "sgdr": _sgdr_code,
    "one_cycle": _one_cycle_code,
    "wsd": _wsd_code,
    "inverse_sqrt": _inverse_sqrt_code,
    "rex": _rex_code,
}


# --- every format -----------------------------------------------------------------------------


class Snippet(NamedTuple):
    """One format's code, and whether running it gives exactly lrtune's rates."""

    code: str
    exact: bool


def export_snippets(
    spec: ScheduleSpec,
    *,
    param_groups: Sequence[ParamGroupRule] | None = None,
    training_steps: int | None = None,
    optimizer: OptimizerSpec | None = None,
    metric: str | None = None,
    snapshots: int | None = None,
) -> dict[str, Snippet]:
    """The schedule's code in every format (FORMATS), keyed by format. `metric` (the job's, e.g.
    val_accuracy) is the one plateau watches; with `snapshots` the PyTorch code also collects a
    snapshot ensemble."""
    return {
        "pytorch": Snippet(
            pytorch_snippet(
                spec,
                param_groups=param_groups,
                training_steps=training_steps,
                optimizer=optimizer,
                snapshots=snapshots,
            ),
            exact=True,
        ),
        "keras": keras_snippet(spec, param_groups=param_groups, optimizer=optimizer, metric=metric),
        "huggingface": huggingface_snippet(
            spec,
            param_groups=param_groups,
            training_steps=training_steps,
            optimizer=optimizer,
            metric=metric,
        ),
    }


def _schedule_line(spec: ScheduleSpec) -> str:
    return f"# lrtune schedule ({spec.policy}): {spec.model_dump_json()}"


def _multiplied(param_groups: Sequence[ParamGroupRule] | None) -> list[ParamGroupRule]:
    return [rule for rule in param_groups or [] if rule.lr_mult != 1.0]


# --- Keras export -----------------------------------------------------------------------------

# Keras computes a schedule in its float type (keras.config.floatx(), float32 unless set).
_KERAS_PRECISION = [
    "# Keras computes the rate in keras.config.floatx(): float32 by default (about 7 digits);",
    "# keras.config.set_floatx('float64') before building the model gives lrtune's rates to 1e-9.",
]


def keras_snippet(
    spec: ScheduleSpec,
    *,
    param_groups: Sequence[ParamGroupRule] | None = None,
    optimizer: OptimizerSpec | None = None,
    metric: str | None = None,
) -> Snippet:
    """Python code that builds `schedule`, a Keras 3 LearningRateSchedule (or, for a plain fixed
    rate, the number), to pass as an optimizer's `learning_rate`.

    A built-in class is used where it computes the same curve (ExponentialDecay,
    PiecewiseConstantDecay, PolynomialDecay, InverseTimeDecay, CosineDecay with its warmup,
    CosineDecayRestarts with t_mult 1); otherwise a subclass with the formula in keras.ops, which
    runs on every backend and inside compiled train steps. Keras has one rate per optimizer, so
    discriminative multipliers cannot be expressed: such a snippet says so on its first line and
    is not exact, and so is one for a schedule-free optimizer (Keras has none). CosineDecayRestarts
    is not used for t_mult > 1: it finds the restart with a float logarithm, which misses
    boundaries (log(1000) / log(10) < 3). plateau is a schedule reading a variable that a
    callback lowers after each epoch, on `metric` as Keras logs it.
    """
    reasons = []
    multiplied = _multiplied(param_groups)
    if multiplied:
        mults = ", ".join(f"{rule.match!r}: {rule.lr_mult!r}" for rule in multiplied)
        reasons.append(
            "Keras has no param groups (one rate per optimizer), so every variable gets the "
            f"schedule's base rate, without the multipliers {{{mults}}}"
        )
    if optimizer is not None and optimizer.schedule_free:
        reasons.append(
            f"Keras has no schedule-free optimizer ({optimizer.name} is the schedulefree "
            "package's, for PyTorch): this is the rate alone, for an ordinary Keras optimizer"
        )
    if isinstance(spec, SgdrSchedule) and not _keras_restart_table(spec):
        reasons.append(
            f"with t_mult this close to 1 (over {_KERAS_MAX_RESTARTS:,} restarts below step "
            "2**31) the restarts are found with float arithmetic, which may put one a step off"
        )
    lines = [f"# NOT EXACT in Keras: {'; '.join(reasons)}."] if reasons else []
    lines.append(_schedule_line(spec))
    builtin = _keras_builtin(spec)
    if isinstance(spec, PlateauSchedule):
        lines += _keras_plateau(spec, metric)
    elif isinstance(spec, FixedSchedule) and spec.warmup_steps == 0:
        lines += [
            "# A constant rate: Keras optimizers take the number itself.",
            "# keras.optimizers.SGD(learning_rate=schedule)",
            "",
            f"schedule = {spec.lr!r}",
        ]
    elif builtin is not None:
        name, arguments = builtin
        lines += [
            f"# keras.optimizers.schedules.{name} computes exactly this schedule.",
            "# Pass it as the rate: keras.optimizers.SGD(learning_rate=schedule); the optimizer",
            "# calls it with its step count (the first update uses step 0).",
            *_KERAS_PRECISION,
            "import keras",
            "",
            f"schedule = keras.optimizers.schedules.{name}(",
            *(f"    {key}={value}," for key, value in arguments),
            ")",
        ]
    else:
        lines += [
            "# No built-in Keras schedule computes this one: a LearningRateSchedule with lrtune's",
            "# formula in keras.ops. Pass it as the rate: keras.optimizers.SGD(learning_rate=",
            "# schedule); the optimizer calls it with its step count (the first update uses 0).",
            *_KERAS_PRECISION,
            *(["import math", ""] if _keras_uses_math(spec) else []),
            "import keras",
            *(["import numpy as np"] if _keras_table(spec) else []),
            "from keras import ops",
            *_keras_class(spec),
            "",
            "",
            "schedule = LrtuneSchedule()",
        ]
    return Snippet("\n".join([*lines, ""]), exact=not reasons)


def _keras_builtin(spec: ScheduleSpec) -> tuple[str, list[tuple[str, str]]] | None:
    """(a keras.optimizers.schedules class, its arguments as code), or None for a subclass."""
    if spec.warmup_steps > 0:
        # Of the built-ins only CosineDecay has a warmup, and it is lrtune's: a linear ramp from
        # initial_learning_rate to warmup_target, then decay_steps (which exclude the warmup).
        if isinstance(spec, CosineSchedule):
            return "CosineDecay", [
                ("initial_learning_rate", repr(spec.warmup_start_lr)),
                ("decay_steps", str(spec.decay_steps)),
                ("alpha", repr(spec.alpha)),
                ("warmup_target", repr(spec.lr)),
                ("warmup_steps", str(spec.warmup_steps)),
            ]
        return None
    if isinstance(spec, StepSchedule):
        return "ExponentialDecay", [
            ("initial_learning_rate", repr(spec.lr)),
            ("decay_steps", str(spec.step_size)),
            ("decay_rate", repr(spec.gamma)),
            ("staircase", "True"),
        ]
    # PiecewiseConstantDecay compares the step with int32 boundaries (the optimizer's step count
    # is an int32 too).
    if isinstance(spec, MultiStepSchedule) and spec.milestones[-1] < 2**31:
        # The rate changes AT a milestone: after boundary milestone - 1.
        values = [spec.lr * spec.gamma ** float(i) for i in range(len(spec.milestones) + 1)]
        return "PiecewiseConstantDecay", [
            ("boundaries", repr([m - 1 for m in spec.milestones])),
            ("values", repr(values)),
        ]
    if isinstance(spec, PiecewiseSchedule) and spec.boundaries[-1] < 2**31:
        return "PiecewiseConstantDecay", [
            ("boundaries", repr(list(spec.boundaries))),
            ("values", repr(list(spec.values))),
        ]
    if isinstance(spec, ExponentialSchedule | InverseTimeSchedule):
        name = "ExponentialDecay" if isinstance(spec, ExponentialSchedule) else "InverseTimeDecay"
        return name, [
            ("initial_learning_rate", repr(spec.lr)),
            ("decay_steps", str(spec.decay_steps)),
            ("decay_rate", repr(spec.decay_rate)),
            ("staircase", repr(spec.staircase)),
        ]
    if isinstance(spec, PolynomialSchedule):
        return "PolynomialDecay", [
            ("initial_learning_rate", repr(spec.lr)),
            ("decay_steps", str(spec.decay_steps)),
            ("end_learning_rate", repr(spec.end_lr)),
            ("power", repr(spec.power)),
            ("cycle", repr(spec.cycle)),
        ]
    if isinstance(spec, CosineSchedule):
        return "CosineDecay", [
            ("initial_learning_rate", repr(spec.lr)),
            ("decay_steps", str(spec.decay_steps)),
            ("alpha", repr(spec.alpha)),
        ]
    if isinstance(spec, SgdrSchedule) and spec.t_mult == 1:
        # lrtune's eta_min is Keras's alpha * initial_learning_rate; m_mul scales the cosine
        # term only, as restart_decay does.
        return "CosineDecayRestarts", [
            ("initial_learning_rate", repr(spec.eta_max)),
            ("first_decay_steps", str(spec.t_0)),
            ("t_mul", "1.0"),
            ("m_mul", repr(spec.restart_decay)),
            ("alpha", repr(spec.eta_min / spec.eta_max)),
        ]
    return None


def _keras_uses_math(spec: ScheduleSpec) -> bool:
    return any("math." in line for line in _KERAS_INNER[spec.policy](spec))


def _keras_class(spec: ScheduleSpec) -> list[str]:
    """`class LrtuneSchedule`: the rate at the optimizer's step, as schedule_math computes it.

    The formula keeps to operators, ops.where and ops on tensors alone: Keras's ops.floor, and
    ops.minimum or ops.maximum with a Python number, promote to float32 even when floatx is
    float64 (Keras follows JAX's 32-bit default), which would cap the precision at float32.
    """
    inner = _KERAS_INNER[spec.policy](spec)
    table = _keras_table(spec)
    lines = [
        *(table[0] if table else []),
        "",
        "",
        "class LrtuneSchedule(keras.optimizers.schedules.LearningRateSchedule):",
        f'    """lrtune\'s {spec.policy} schedule; every number is written into the class."""',
        "",
    ]
    if table:
        lines += [
            "    def __init__(self):",
            "        super().__init__()",
            *(f"        {line}" if line else "" for line in table[1]),
            "",
        ]
    lines += [
        "    def __call__(self, step):",
        "        t = ops.cast(step, keras.config.floatx())",
    ]
    if spec.warmup_steps > 0:
        w, start = spec.warmup_steps, spec.warmup_start_lr
        first = learning_rate(spec, w)  # the rate the warmup ramps to
        if isinstance(spec, WsdSchedule):
            clock = [
                "        # WSD's clock counts the warmup (total_steps includes it).",
                f"        after = self.inner(ops.where(t < {w}, {float(w)!r}, t))",
            ]
        else:
            clock = [
                "        # The schedule's clock starts after the warmup.",
                f"        after = self.inner(ops.where(t < {w}, 0.0, t - {w}))",
            ]
        lines += [
            f"        # Linear warmup from {start!r} to the schedule's first rate ({first!r}).",
            f"        ramp = {start!r} + ({first!r} - {start!r}) * (t / {w})",
            *clock,
            f"        return ops.where(t < {w}, ramp, after)",
        ]
    else:
        lines.append("        return self.inner(t)")
    lines += [
        "",
        "    def inner(self, t):",
        *(f"        {line}" if line else "" for line in inner),
        "",
        "    def get_config(self):",
        "        return {}",
    ]
    return lines


def _keras_table(spec: ScheduleSpec) -> tuple[list[str], list[str]] | None:
    """(a module-level numpy function, the __init__ lines that keep its tables), or None."""
    if isinstance(spec, NoisyLinearCosineSchedule):
        return _keras_noisy_table(spec), [
            "# The rate holds still after decay_steps, so a table of every rate up to it is the",
            "# whole schedule (the noise is lrtune's, keyed by seed and step).",
            "self.table = ops.convert_to_tensor(lrtune_noisy_rates(), dtype=keras.config.floatx())",
        ]
    if isinstance(spec, SgdrSchedule):
        function = _keras_restart_table(spec)
        if function:
            return function, [
                "first, starts, lengths = lrtune_restarts()",
                "self.first = ops.convert_to_tensor(first, dtype='int32')",
                "self.starts = ops.convert_to_tensor(starts, dtype=keras.config.floatx())",
                "self.lengths = ops.convert_to_tensor(lengths, dtype=keras.config.floatx())",
            ]
    return None


def _keras_noisy_table(spec: NoisyLinearCosineSchedule) -> list[str]:
    d = spec.decay_steps
    return [
        "",
        "",
        "def lrtune_noisy_rates():",
        f'    """The rate at steps 0..{d}; the noise is counter-based (SplitMix64, Box-Muller)."""',
        f"    clamped = np.arange({d + 1}, dtype=np.uint64)",
        "",
        "    def splitmix64(index):  # uint64 arrays wrap modulo 2**64, as SplitMix64 wants",
        "        z = (index + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)",
        f"        z += np.uint64({spec.seed})",
        "        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)",
        "        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)",
        "        return z ^ (z >> np.uint64(31))",
        "",
        "    u1 = ((splitmix64(2 * clamped) >> np.uint64(11)) + np.uint64(1)) * 2.0**-53",
        "    u2 = (splitmix64(2 * clamped + np.uint64(1)) >> np.uint64(11)) * 2.0**-53",
        "    noise = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)",
        "    steps = clamped.astype(np.float64)",
        f"    linear = ({d} - steps) / {d}",
        f"    cosine = 0.5 * (1.0 + np.cos(2.0 * np.pi * {spec.num_periods!r} * steps / {d}))",
        f"    std = np.sqrt({spec.initial_variance!r} / (1.0 + steps) ** {spec.variance_decay!r})",
        f"    lr = {spec.lr!r} * (({spec.alpha!r} + linear + std * noise) * cosine "
        f"+ {spec.beta!r})",
        "    return np.maximum(lr, 0.0)",
    ]


def _keras_fixed(spec: FixedSchedule) -> list[str]:
    return [f"return ops.ones_like(t) * {spec.lr!r}"]


def _keras_step(spec: StepSchedule) -> list[str]:
    return [f"return {spec.lr!r} * ops.power({spec.gamma!r}, t // {spec.step_size})"]


def _keras_multistep(spec: MultiStepSchedule) -> list[str]:
    return [
        f"passed = sum(ops.cast(t >= m, t.dtype) for m in {list(spec.milestones)!r})",
        f"return {spec.lr!r} * ops.power({spec.gamma!r}, passed)",
    ]


def _keras_piecewise(spec: PiecewiseSchedule) -> list[str]:
    return [
        "# The value changes at boundary + 1 (TF piecewise_constant).",
        f"index = sum(ops.cast(t > b, 'int32') for b in {list(spec.boundaries)!r})",
        f"return ops.take(ops.convert_to_tensor({list(spec.values)!r}, dtype=t.dtype), index)",
    ]


def _keras_exponential(spec: ExponentialSchedule) -> list[str]:
    return [_progress(spec), f"return {spec.lr!r} * ops.power({spec.decay_rate!r}, p)"]


def _keras_natural_exp(spec: NaturalExpSchedule) -> list[str]:
    return [_progress(spec), f"return {spec.lr!r} * ops.exp(-{spec.decay_rate!r} * p)"]


def _keras_inverse_time(spec: InverseTimeSchedule) -> list[str]:
    return [_progress(spec), f"return {spec.lr!r} / (1.0 + {spec.decay_rate!r} * p)"]


def _keras_polynomial(spec: PolynomialSchedule) -> list[str]:
    d = spec.decay_steps
    if spec.cycle:
        fraction = [
            "# The horizon grows to the next multiple of decay_steps: no return to lr.",
            f"periods = ops.where(t > 0, -(-t // {d}), 1.0)",
            f"fraction = t / ({d} * periods)",
        ]
    else:
        fraction = [f"fraction = ops.where(t < {d}, t, {float(d)!r}) / {d}"]
    return [
        *fraction,
        f"return ({spec.lr!r} - {spec.end_lr!r}) * ops.power(1.0 - fraction, {spec.power!r}) "
        f"+ {spec.end_lr!r}",
    ]


def _keras_cosine(spec: CosineSchedule) -> list[str]:
    d = spec.decay_steps
    return [
        "# Held at the end after decay_steps (TF).",
        f"fraction = ops.where(t < {d}, t, {float(d)!r}) / {d}",
        "cosine = 0.5 * (1.0 + ops.cos(math.pi * fraction))",
        f"return {spec.lr!r} * ((1.0 - {spec.alpha!r}) * cosine + {spec.alpha!r})",
    ]


def _keras_linear_cosine(spec: LinearCosineSchedule) -> list[str]:
    d = spec.decay_steps
    return [
        f"clamped = ops.where(t < {d}, t, {float(d)!r})",
        f"linear = ({d} - clamped) / {d}",
        f"cosine = 0.5 * (1.0 + ops.cos(2.0 * math.pi * {spec.num_periods!r} * clamped / {d}))",
        f"return {spec.lr!r} * (({spec.alpha!r} + linear) * cosine + {spec.beta!r})",
    ]


def _keras_noisy_linear_cosine(spec: NoisyLinearCosineSchedule) -> list[str]:
    d = spec.decay_steps
    return [f"return ops.take(self.table, ops.cast(ops.where(t < {d}, t, {float(d)!r}), 'int32'))"]


def _keras_clr(spec: CyclicSchedule) -> list[str]:
    s = spec.step_size
    scale = {
        "triangular": "1.0",
        "triangular2": "ops.power(2.0, 1.0 - cycle)",
        "exp_range": f"ops.power({spec.gamma!r}, t)",
    }[spec.mode]
    return [
        f"cycle = 1.0 + t // {2 * s}",
        f"x = ops.abs(t / {s} - 2.0 * cycle + 1.0)",
        "triangle = ops.where(x < 1.0, 1.0 - x, 0.0)",
        f"return {spec.base_lr!r} + ({spec.max_lr!r} - {spec.base_lr!r}) * triangle * {scale}",
    ]


# Keras counts optimizer steps in int32; a restart table covers every step below this.
_KERAS_STEP_LIMIT = 2**31
_KERAS_MAX_RESTARTS = 100_000


def _keras_restart_table(spec: SgdrSchedule) -> list[str]:
    """`def lrtune_restarts()`: every restart below _KERAS_STEP_LIMIT as schedule_math finds
    them; empty for t_mult 1 (a division finds those) or for too many restarts."""
    t_0, t_mult = spec.t_0, spec.t_mult
    if t_mult == 1:
        return []
    count = int(math.log1p(_KERAS_STEP_LIMIT / t_0 * (t_mult - 1.0)) / math.log(t_mult)) + 2
    if count > _KERAS_MAX_RESTARTS:
        return []
    if float(t_mult).is_integer():
        build = [
            "# Whole numbers: exact integers (a float logarithm misses some boundaries).",
            f"starts, lengths = [0], [{t_0}]",
            f"while starts[-1] + lengths[-1] < {_KERAS_STEP_LIMIT}:",
            "    starts.append(starts[-1] + lengths[-1])",
            f"    lengths.append(lengths[-1] * {int(t_mult)})",
            "starts = np.asarray(starts, dtype=np.float64)",
            "lengths = np.asarray([float(length) for length in lengths])",
        ]
    else:
        build = [
            "# Each start is t_0 * (t_mult**i - 1) / (t_mult - 1), with expm1 and log1p.",
            f"index = np.arange({count}, dtype=np.float64)",
            f"lengths = {t_0} * np.power({t_mult!r}, index)",
            f"starts = {t_0} * np.expm1(index * np.log1p({t_mult!r} - 1.0)) / ({t_mult!r} - 1.0)",
        ]
    return [
        "",
        "",
        "def lrtune_restarts():",
        '    """Each restart that begins below step 2**31 (Keras counts steps in int32): its',
        "    first step, its start and its length, found exactly as lrtune finds them (a restart",
        '    starts at the first step t >= its start)."""',
        *(f"    {line}" for line in build),
        "    return np.ceil(starts), starts, lengths",
    ]


def _keras_sgdr(spec: SgdrSchedule) -> list[str]:
    t_0, t_mult = spec.t_0, spec.t_mult
    if t_mult == 1:
        find = [
            f"restart = t // {t_0}",
            f"t_cur = t - restart * {t_0}",
            f"t_i = {float(t_0)!r}",
        ]
    elif _keras_restart_table(spec):
        find = [
            "# The restart whose first step is the last one <= t, from the table.",
            "index = ops.searchsorted(self.first, ops.cast(t, 'int32'), side='right') - 1",
            "restart = ops.cast(index, t.dtype)",
            "t_cur = t - ops.take(self.starts, index)",
            "t_i = ops.take(self.lengths, index)",
        ]
    else:
        find = [
            "",
            "def restart_start(i):  # t_0 * (t_mult**i - 1) / (t_mult - 1)",
            f"    return {t_0} * ops.expm1(i * {math.log1p(t_mult - 1.0)!r}) / {t_mult - 1.0!r}",
            "",
            "# A logarithm's guess, then checked against the restart starts themselves.",
            f"guess = ops.log(1.0 + t / {t_0} * {t_mult - 1.0!r}) / {math.log(t_mult)!r} // 1.0",
            "restart = (",
            "    guess",
            "    + ops.cast(restart_start(guess + 1.0) <= t, t.dtype)",
            "    - ops.cast(restart_start(guess) > t, t.dtype)",
            ")",
            "t_cur = t - restart_start(restart)",
            f"t_i = {t_0} * ops.power({t_mult!r}, restart)",
        ]
    return [
        *find,
        "cosine = 0.5 * (1.0 + ops.cos(math.pi * t_cur / t_i))",
        f"return {spec.eta_min!r} + ({spec.eta_max!r} - {spec.eta_min!r}) "
        f"* ops.power({spec.restart_decay!r}, restart) * cosine",
    ]


def _keras_one_cycle(spec: OneCycleSchedule) -> list[str]:
    total = spec.total_steps
    initial = spec.max_lr / spec.div_factor
    final = initial / spec.final_div_factor
    # Phase ends and endpoints exactly as torch OneCycleLR builds them.
    peak_end = float(spec.pct_start * total) - 1
    if spec.three_phase:
        ends = [peak_end, float(2 * spec.pct_start * total) - 2, total - 1.0]
        lrs = [initial, spec.max_lr, initial, final]
    else:
        ends = [peak_end, total - 1.0]
        lrs = [initial, spec.max_lr, final]
    if spec.anneal == "cos":
        anneal = "lr = b + (a - b) / 2.0 * (ops.cos(math.pi * pct) + 1.0)"
    else:
        anneal = "lr = (b - a) * pct + a"
    return [
        "# The first phase whose end is >= t, as OneCycleLR picks it.",
        f"phase = sum(ops.cast(t > end, 'int32') for end in {ends[:-1]!r})",
        "",
        "def pick(values):",
        "    return ops.take(ops.convert_to_tensor(values, dtype=t.dtype), phase)",
        "",
        f"start, end = pick({[0.0, *ends[:-1]]!r}), pick({ends!r})",
        f"a, b = pick({lrs[:-1]!r}), pick({lrs[1:]!r})",
        "pct = (t - start) / (end - start)",
        anneal,
        f"return ops.where(t >= {total}, {final!r}, lr)  # held after the last step",
    ]


def _keras_wsd(spec: WsdSchedule) -> list[str]:
    total, decay, ratio, lr = spec.total_steps, spec.decay_steps, spec.min_lr_ratio, spec.lr
    assert decay is not None  # WsdSchedule fills it in from decay_frac
    shape = {
        "linear": "1.0 - p",
        "1-sqrt": "1.0 - ops.sqrt(p)",
        "cosine": "0.5 * (1.0 + ops.cos(math.pi * p))",
    }[spec.decay_shape]
    stable = total - decay
    return [
        "# t counts every step, the warmup's too: the decay ends at total_steps.",
        f"p = (ops.where(t < {stable}, {float(stable)!r}, ops.where(t < {total}, t, "
        f"{float(total)!r})) - {stable}) / {decay}",
        f"decayed = {lr!r} * (({shape}) * (1.0 - {ratio!r}) + {ratio!r})",
        f"return ops.where(t < {stable}, {lr!r}, decayed)  # stable, then the decay",
    ]


def _keras_inverse_sqrt(spec: InverseSqrtSchedule) -> list[str]:
    return [f"return {spec.lr!r} / ops.sqrt((t + {spec.timescale}) / {spec.timescale})"]


def _keras_rex(spec: RexSchedule) -> list[str]:
    total = spec.total_steps
    return [
        f"progress = ops.where(t < {total}, t, {float(total)!r}) / {total}",
        f"return {spec.min_lr!r} + ({spec.lr!r} - {spec.min_lr!r}) "
        "* ((1.0 - progress) / (1.0 - progress / 2.0))",
    ]


def _plateau_state_code(spec: PlateauSchedule) -> list[str]:
    """`class LrtunePlateau`: torch's ReduceLROnPlateau per param group, in plain Python."""
    w, start, lr = spec.warmup_steps, spec.warmup_start_lr, spec.lr
    better = {
        ("min", "rel"): f"value < self.best * (1.0 - {spec.threshold!r})",
        ("min", "abs"): f"value < self.best - {spec.threshold!r}",
        ("max", "rel"): f"value > self.best * ({spec.threshold!r} + 1.0)",
        ("max", "abs"): f"value > self.best + {spec.threshold!r}",
    }[(spec.mode, spec.threshold_mode)]
    rate = ["    return self.rates[group]"]
    if w:
        rate = [
            f"    if step < {w}:  # linear warmup from {start!r} to lr",
            f"        return ({start!r} + ({lr!r} - {start!r}) * (step / {w})) * self.mults[group]",
            "    return self.rates[group]",
        ]
    return [
        "",
        "",
        "class LrtunePlateau:",
        '    """lrtune\'s plateau: torch\'s ReduceLROnPlateau on the watched metric, by group."""',
        "",
        "    def __init__(self, mults):",
        "        self.mults = list(mults)",
        f"        self.rates = [{lr!r} * m for m in self.mults]",
        f"        self.floors = [{spec.min_lr!r} * m for m in self.mults]",
        f"        self.best = {'math.inf' if spec.mode == 'min' else '-math.inf'}",
        "        self.bad_epochs = self.cooldown_left = 0",
        "",
        "    def rate(self, step, group=0):",
        '        """The rate of param group `group` at optimizer step `step`."""',
        *(f"    {line}" for line in rate),
        "",
        "    def after_epoch(self, step, value):",
        '        """The metric `value` of an epoch that ended once `step` steps were taken."""',
        *(
            [
                f"        if step < {w}:",
                "            return  # a warmup epoch judges a rate still ramping",
            ]
            if w
            else []
        ),
        "        value = float(value)  # NaN is never an improvement",
        f"        if {better}:",
        "            self.best, self.bad_epochs = value, 0",
        "        else:",
        "            self.bad_epochs += 1",
        "        if self.cooldown_left > 0:",
        "            self.cooldown_left -= 1",
        "            self.bad_epochs = 0  # bad epochs in cooldown do not count",
        f"        if self.bad_epochs > {spec.patience}:",
        "            for i, (rate, floor) in enumerate(zip(self.rates, self.floors)):",
        f"                reduced = max(rate * {spec.factor!r}, floor)",
        f"                if rate - reduced > {spec.eps!r}:  # smaller changes are skipped",
        "                    self.rates[i] = reduced",
        f"            self.cooldown_left, self.bad_epochs = {spec.cooldown}, 0",
    ]


def _keras_plateau(spec: PlateauSchedule, metric: str | None) -> list[str]:
    monitor = metric or "val_loss"
    w, start, lr = spec.warmup_steps, spec.warmup_start_lr, spec.lr
    if w:
        call = [
            "        t = ops.cast(step, keras.config.floatx())",
            f"        ramp = {start!r} + ({lr!r} - {start!r}) * (t / {w})  # linear warmup",
            f"        return ops.where(t < {w}, ramp, self.rate)",
        ]
    else:
        call = ["        return ops.convert_to_tensor(self.rate)"]
    return [
        "# torch's ReduceLROnPlateau in Keras: `schedule` reads a rate that `callback` lowers",
        f"# after each epoch on the metric lrtune monitored (mode {spec.mode!r}), {monitor!r} in",
        "# Keras's logs: keras.optimizers.SGD(learning_rate=schedule) and",
        "# model.fit(..., callbacks=[callback]).",
        "import math",
        "",
        "import keras",
        "from keras import ops",
        *_plateau_state_code(spec),
        "",
        "",
        "class LrtuneSchedule(keras.optimizers.schedules.LearningRateSchedule):",
        '    """The plateau\'s rate, a variable, so that compiled train steps see it change."""',
        "",
        "    def __init__(self, plateau):",
        "        super().__init__()",
        "        # The rate after the warmup: lr until the callback lowers it.",
        "        self.rate = keras.Variable(",
        "            plateau.rates[0], dtype=keras.config.floatx(), trainable=False",
        "        )",
        "",
        "    def __call__(self, step):",
        *call,
        "",
        "    def get_config(self):",
        "        return {}",
        "",
        "",
        "class LrtuneCallback(keras.callbacks.Callback):",
        '    """After each epoch: the metric to the plateau, its new rate to the schedule."""',
        "",
        "    def __init__(self, plateau, schedule, monitor):",
        "        super().__init__()",
        "        self.plateau, self.schedule, self.monitor = plateau, schedule, monitor",
        "",
        "    def on_epoch_end(self, epoch, logs=None):",
        "        step = int(self.model.optimizer.iterations)",
        "        self.plateau.after_epoch(step, logs[self.monitor])",
        "        self.schedule.rate.assign(self.plateau.rates[0])",
        "",
        "",
        "plateau = LrtunePlateau([1.0])",
        "schedule = LrtuneSchedule(plateau)",
        f"callback = LrtuneCallback(plateau, schedule, monitor={monitor!r})",
    ]


# Each takes its own policy's spec; the policy name picks the right one.
_KERAS_INNER: dict[str, Callable[[Any], list[str]]] = {
    "fixed": _keras_fixed,
    "step": _keras_step,
    "multistep": _keras_multistep,
    "piecewise": _keras_piecewise,
    "exponential": _keras_exponential,
    "natural_exp": _keras_natural_exp,
    "inverse_time": _keras_inverse_time,
    "polynomial": _keras_polynomial,
    "cosine": _keras_cosine,
    "linear_cosine": _keras_linear_cosine,
    "noisy_linear_cosine": _keras_noisy_linear_cosine,
    "clr": _keras_clr,
    "sgdr": _keras_sgdr,
    "one_cycle": _keras_one_cycle,
    "wsd": _keras_wsd,
    "inverse_sqrt": _keras_inverse_sqrt,
    "rex": _keras_rex,
}


# --- Hugging Face export ----------------------------------------------------------------------


def huggingface_snippet(
    spec: ScheduleSpec,
    *,
    param_groups: Sequence[ParamGroupRule] | None = None,
    training_steps: int | None = None,
    optimizer: OptimizerSpec | None = None,
    metric: str | None = None,
) -> Snippet:
    """Python code for transformers' Trainer: `training_args`, and `optimizers` when needed.

    Where transformers has the same schedule (`_huggingface_builtin`), TrainingArguments names it
    (lr_scheduler_type, lr_scheduler_kwargs, warmup_steps) and the Trainer builds it. Otherwise,
    with discriminative multipliers, and for a schedule-free optimizer, the PyTorch export's
    scheduler (a LambdaLR or an exact torch class) goes to `Trainer(optimizers=(optimizer,
    scheduler))`, which steps it after every optimizer step; that snippet needs `model` and
    `optimizer`, as the PyTorch one does (a schedule-free one it builds itself; Trainer does its
    train()/eval() swaps). plateau outside the built-in is a LambdaLR reading a plateau that a
    callback lowers at each evaluation. Every form is exact. `training_steps` (the job's
    optimizer steps) becomes max_steps; `metric` is the one plateau watches.
    """
    schedule_free = optimizer is not None and optimizer.schedule_free
    builtin = (
        None
        if _multiplied(param_groups) or schedule_free
        else _huggingface_builtin(spec, training_steps, metric)
    )
    lines = [_schedule_line(spec)]
    if builtin is not None:
        steps_it = (
            "on the metric of each evaluation."
            if builtin.name == "reduce_lr_on_plateau"
            else "after every optimizer step."
        )
        lines += [
            f"# transformers' {builtin.name!r} scheduler computes exactly this schedule: Trainer",
            f"# builds it from these arguments (add your own) and steps it {steps_it}",
            "from transformers import TrainingArguments",
            "",
            "training_args = TrainingArguments(",
            f"    learning_rate={_lr_of(spec)!r},",
            f"    lr_scheduler_type={builtin.name!r},",
            *([f"    lr_scheduler_kwargs={builtin.kwargs!r},"] if builtin.kwargs else []),
            *([f"    warmup_steps={spec.warmup_steps},"] if spec.warmup_steps > 0 else []),
            *(f"    {line}" for line in builtin.more),
            *(
                [f"    max_steps={builtin.max_steps},  # {builtin.max_steps_note}"]
                if builtin.max_steps
                else []
            ),
            ")",
            "# trainer = Trainer(model=model, args=training_args, train_dataset=...)",
        ]
    elif isinstance(spec, PlateauSchedule):
        lines += _huggingface_plateau(spec, list(param_groups or []), training_steps, metric)
    else:
        torch_code = pytorch_snippet(
            spec, param_groups=param_groups, training_steps=training_steps, optimizer=optimizer
        )
        kept = [
            line
            for line in torch_code.rstrip("\n").split("\n")
            if not line.startswith(("# lrtune schedule (", "# Call scheduler.step() after"))
        ]
        needs = (
            "Needs `model`; Trainer calls the optimizer's train() and eval() itself, but with\n"
            "# BatchNorm call lrtune_eval(train_batches) before evaluating (it recomputes the\n"
            "# statistics at x)."
            if schedule_free
            else "Needs `model` and `optimizer` (a torch.optim optimizer over its parameters)."
        )
        lines += [
            "# transformers has no built-in scheduler for this schedule"
            + (" and optimizer" if schedule_free else "")
            + ": the PyTorch export's",
            "# scheduler goes to Trainer(optimizers=...), which steps it after every optimizer",
            f"# step. {needs}",
            *kept,
            "",
            "from transformers import TrainingArguments",
            "",
            "training_args = TrainingArguments(",
            *_max_steps_line(training_steps),
            ")",
            "optimizers = (optimizer, scheduler)",
            "# trainer = Trainer(model=model, args=training_args, optimizers=optimizers, ...)",
        ]
    return Snippet("\n".join([*lines, ""]), exact=True)


def _max_steps_line(training_steps: int | None) -> list[str]:
    if not training_steps:
        return []
    return [f"    max_steps={training_steps},  # the training length lrtune tuned for"]


def _huggingface_metric(metric: str | None) -> str:
    """The name the Trainer gives lrtune's metric (val_accuracy is its eval_accuracy)."""
    return (metric or "val_loss").removeprefix("val_")


def _huggingface_plateau(
    spec: PlateauSchedule,
    rules: list[ParamGroupRule],
    training_steps: int | None,
    metric: str | None,
) -> list[str]:
    key = "eval_" + _huggingface_metric(metric)
    return [
        "# torch's ReduceLROnPlateau for the Trainer, with lrtune's warmup and multipliers: a",
        "# LambdaLR reads each group's rate from `plateau`, which the callback lowers after each",
        f"# evaluation on the metric lrtune monitored (mode {spec.mode!r}), {key!r} in the",
        "# Trainer's metrics; evaluate once per epoch. Needs `model` and `optimizer` (a",
        "# torch.optim optimizer over its parameters).",
        *(["import fnmatch"] if rules else []),
        "import math",
        "",
        "import torch",
        "from transformers import TrainerCallback, TrainingArguments",
        "",
        *_multiplier_code(rules),
        *_plateau_state_code(spec),
        "",
        "",
        "plateau = LrtunePlateau(lr_mults)",
        "# LambdaLR multiplies each group's initial_lr (1) by the plateau's rate for the group.",
        "for group in optimizer.param_groups:",
        "    group['initial_lr'] = group['lr'] = 1.0",
        "scheduler = torch.optim.lr_scheduler.LambdaLR(",
        "    optimizer,",
        "    lr_lambda=[lambda t, i=i: plateau.rate(t, i) for i in range(len(lr_mults))],",
        ")",
        "",
        "",
        "class LrtuneCallback(TrainerCallback):",
        '    """After each evaluation: the metric to the plateau, its rates to the optimizer."""',
        "",
        "    def on_evaluate(self, args, state, control, metrics=None, **kwargs):",
        f"        plateau.after_epoch(state.global_step, metrics[{key!r}])",
        "        # The scheduler already set the next step's rates: set them again.",
        "        for i, group in enumerate(optimizer.param_groups):",
        "            group['lr'] = plateau.rate(state.global_step, i)",
        "",
        "",
        "training_args = TrainingArguments(",
        "    eval_strategy='epoch',",
        *_max_steps_line(training_steps),
        ")",
        "optimizers = (optimizer, scheduler)",
        "callbacks = [LrtuneCallback()]",
        "# trainer = Trainer(model=model, args=training_args, optimizers=optimizers,",
        "#                   callbacks=callbacks, train_dataset=..., eval_dataset=...)",
    ]


class _HuggingfaceBuiltin(NamedTuple):
    name: str  # lr_scheduler_type
    kwargs: dict[str, Any]  # lr_scheduler_kwargs
    max_steps: int | None
    max_steps_note: str
    more: list[str]  # further TrainingArguments, as code


def _lr_of(spec: ScheduleSpec) -> float:
    """The peak rate, Hugging Face's learning_rate, of a schedule it has built in."""
    return learning_rate(spec.model_copy(update={"warmup_steps": 0}), 0)


def _huggingface_builtin(
    spec: ScheduleSpec, training_steps: int | None, metric: str | None
) -> _HuggingfaceBuiltin | None:
    """transformers' own scheduler for this spec, or None where it has none that is exact.

    Hugging Face's warmups ramp from 0 (WSD's from min_lr_ratio), so a warmup from another rate
    needs the LambdaLR. Its decays span the training (num_training_steps = max_steps, warmup
    included), and its cosine swings back up past it: they are used only when the training
    length is the schedule's horizon, or unknown, in which case max_steps is set to the horizon.
    Its reduce_lr_on_plateau has no warmup, and steps on the metric of each evaluation.
    """
    ramps_from = spec.min_lr_ratio * spec.lr if isinstance(spec, WsdSchedule) else 0.0
    if spec.warmup_steps > 0 and spec.warmup_start_lr != ramps_from:
        return None
    length = "the training length lrtune tuned for"
    if isinstance(spec, FixedSchedule):
        name = "constant_with_warmup" if spec.warmup_steps > 0 else "constant"
        return _HuggingfaceBuiltin(name, {}, training_steps, length, [])
    if isinstance(spec, InverseSqrtSchedule):
        return _HuggingfaceBuiltin(
            "inverse_sqrt", {"timescale": spec.timescale}, training_steps, length, []
        )
    if isinstance(spec, PlateauSchedule):
        if spec.warmup_steps > 0:
            return None
        kwargs = {
            name: getattr(spec, name)
            for name in (
                "mode", "factor", "patience", "threshold", "threshold_mode", "cooldown",
                "min_lr", "eps",
            )
        }  # fmt: skip
        more = [
            "eval_strategy='epoch',  # an evaluation, and so a plateau step, per epoch",
            f"metric_for_best_model={_huggingface_metric(metric)!r},  # lrtune watched "
            f"{metric or 'val_loss'}",
        ]
        return _HuggingfaceBuiltin("reduce_lr_on_plateau", kwargs, training_steps, length, more)
    horizon = None
    if isinstance(spec, PolynomialSchedule | CosineSchedule):
        horizon = spec.warmup_steps + spec.decay_steps
    if isinstance(spec, WsdSchedule):
        horizon = spec.total_steps
    if horizon is None or training_steps not in (None, horizon):
        return None
    note = "the schedule's horizon: Trainer decays over max_steps, warmup included"
    if isinstance(spec, WsdSchedule):
        kwargs = {
            "num_decay_steps": spec.decay_steps,
            "decay_type": spec.decay_shape,
            "min_lr_ratio": spec.min_lr_ratio,
        }
        return _HuggingfaceBuiltin("warmup_stable_decay", kwargs, horizon, note, [])
    if isinstance(spec, CosineSchedule):
        if spec.alpha == 0.0:
            return _HuggingfaceBuiltin("cosine", {}, horizon, note, [])
        return _HuggingfaceBuiltin(
            "cosine_with_min_lr", {"min_lr_rate": spec.alpha}, horizon, note, []
        )
    if isinstance(spec, PolynomialSchedule) and not spec.cycle and spec.end_lr < spec.lr:
        if spec.end_lr == 0.0 and spec.power == 1.0:
            return _HuggingfaceBuiltin("linear", {}, horizon, note, [])
        kwargs = {"lr_end": spec.end_lr, "power": spec.power}
        return _HuggingfaceBuiltin("polynomial", kwargs, horizon, note, [])
    return None
