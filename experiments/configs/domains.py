"""The OGBench domains and their per-domain settings (conventions §10): the one table of the domains.

Its keys, in the protocol's order, are the domains everywhere else (experiments.data's dataset layouts,
the report's and the published table's domain order); TASKS are the single tasks of every domain.

Fields of the run config that are left as None are taken from this table for the task's domain.
cube-single-play is not in the paper's table; it uses cube-double's settings for quick CPU runs
(SQAM's value penalty included: c = 0 there too).
"""

from typing import NamedTuple


class DomainSettings(NamedTuple):
    width: int  # hidden width of the 4-layer actor and critic MLPs
    actor_layer_norm: bool  # LayerNorm in the velocity MLP (on for the 10M/100M datasets)
    horizon: int  # H, the action-chunk length
    discount: float  # gamma per env step
    rho: float  # pessimism of the critic target, mean - rho * std
    sparse: bool  # r <- -1 if r != 0 else 0
    eval_steps: int  # evaluation episode length in env steps
    kl_budget: float  # eps, TRQAM's path-KL budget (the paper's per-domain values are unknown)
    qam_inv_temp: float  # the QAM baseline's inverse temperature
    sqam_kl_budget: float  # SQAM's eps (the reference default; the SQAM paper's per-domain values are unknown)
    sqam_gap_reg_coef: float  # SQAM's value-penalty coefficient c (0 on cube-double, as in the reference)


DOMAIN_SETTINGS = {
    "antmaze-large-navigate": DomainSettings(512, False, 1, 0.995, 0.5, False, 1000, 1.0, 10.0, 0.5, 0.3),
    "antmaze-giant-navigate": DomainSettings(1024, True, 1, 0.995, 0.5, False, 1000, 1.0, 3.0, 0.5, 0.3),
    "humanoidmaze-medium-navigate": DomainSettings(512, False, 1, 0.999, 0.0, False, 2000, 1.0, 3.0, 0.5, 0.3),
    "humanoidmaze-large-navigate": DomainSettings(512, False, 1, 0.999, 0.0, False, 2000, 1.0, 3.0, 0.5, 0.3),
    "scene-play": DomainSettings(512, False, 5, 0.995, 0.5, True, 750, 1.0, 1.0, 0.5, 0.3),
    "puzzle-3x3-play": DomainSettings(512, False, 5, 0.995, 0.5, True, 500, 1.0, 3.0, 0.5, 0.3),
    "puzzle-4x4-play": DomainSettings(1024, True, 5, 0.995, 0.5, True, 500, 1.0, 30.0, 0.5, 0.3),
    "cube-double-play": DomainSettings(512, False, 5, 0.995, 0.5, False, 500, 1.0, 1.0, 0.5, 0.0),
    "cube-triple-play": DomainSettings(1024, True, 5, 0.995, 0.5, False, 1000, 0.5, 3.0, 0.5, 0.3),
    "cube-quadruple-play": DomainSettings(1024, True, 5, 0.995, 0.5, False, 1000, 1.0, 1.0, 0.5, 0.3),
    "cube-single-play": DomainSettings(512, False, 5, 0.995, 0.5, False, 200, 1.0, 1.0, 0.5, 0.0),
}

TASKS = (1, 2, 3, 4, 5)  # the single tasks of every OGBench domain
EXTRA_DOMAINS = ("cube-single-play",)  # outside the protocol: quick runs only

# The 50 tasks of the protocol: 10 domains x task1..task5.
SUITE_DOMAINS = tuple(d for d in DOMAIN_SETTINGS if d not in EXTRA_DOMAINS)
SUITES = {
    "ogbench50": tuple(f"{d}-singletask-task{t}-v0" for d in SUITE_DOMAINS for t in TASKS),
}
