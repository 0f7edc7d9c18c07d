"""Code to paste: a recommended schedule written out for PyTorch.

`pytorch_snippet` writes code that reproduces a schedule spec with `torch.optim.lr_scheduler`,
every param group at the schedule's rate times its multiplier, as `schedule_math` computes it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

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

__all__ = ["pytorch_snippet"]


# --- PyTorch export ---------------------------------------------------------------------------


def pytorch_snippet(
    spec: ScheduleSpec,
    *,
    param_groups: Sequence[ParamGroupRule] | None = None,
    training_steps: int | None = None,
    optimizer: OptimizerSpec | None = None,
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
    BatchNorm recalibrated at x.
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
    return "\n".join([*header, *body, ""])


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
