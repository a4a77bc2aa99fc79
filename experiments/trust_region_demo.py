"""Evidence that the trust region works, on a 1-D bandit, through the library's real update.

  python -m experiments.trust_region_demo                      # full: figures + table in docs/figures
  python -m experiments.trust_region_demo --quick --out_dir=/tmp/demo   # a CI-sized run

Setting. The observation is a constant, H = 1, A = 1. The pretrained flow pi_0 is fitted by BC
(method "bc" through `make_train_fn`) to a mixture of two Gaussians in [-1, 1]. The critic is known
(a flax module that never trains):
  true critic       Q_true(a) = SLOPE * a,
  perturbed critic  Q_pert(a) = Q_true(a) + BUMP_HEIGHT * exp(-(a - BUMP_CENTER)^2 / (2 BUMP_WIDTH^2)),
a narrow, high spurious bump in the valley between the two modes, where the data has little mass and
the true reward is no better than pi_0's average. The bump height is the critic's only parameter; a
stop_gradient keeps it fixed (zero gradient, so Adam leaves it and its EMA target unchanged), and one
compiled train function runs the true-critic and perturbed-critic seeds side by side on the vmapped
seed axis (twin states share their PRNG seed).

Runs (each vmapped over seeds; every fine-tuning run starts from the BC run of the same seed):
  trqam   TRQAM at budgets eps (true and perturbed critic): KL_hat and lambda_eff against steps.
  fixed   TRQAM with the dual frozen (dual_lr = 0, lam = lambda_eff / lam_scale set per state, so all
          lambdas share one compiled function) at fixed lambda_eff, true critic: the measured path KL
          against the closed form C / lambda_eff^2. (QAM at inv_temp = 1 / lambda_eff has the same loss
          up to the factor lambda_eff, conventions §5, but Adam and the global-norm clip see it scaled.)
  qam     QAM at fixed inverse temperatures beta (true and perturbed critic).
Evaluation uses ODE samples of each policy (`make_act_fn`, how the policy acts): the true expected
reward E[Q_true(a)], a histogram estimate of KL(pi_theta || pi_0) on the actions (also for the terminal
actions of the memoryless SDE, the process the path KL measures), and the closed-form tilted target
pi_0 * exp(Q / lambda_eff), by self-normalised importance weights on samples of pi_0 (actor_ref at the
end of the run: the EMA of the BC actor, which keeps training by BC during fine-tuning).

Outputs in --out_dir: fig1_kl_vs_steps.png, fig2_lambda_vs_steps.png, fig3_closed_form_kl.png,
fig4_perturbed_critic.png, fig5_tilted_target.png and trust_region_demo.md (also printed).
"""

import dataclasses
import functools
import math
import os
import time
from typing import Dict, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from trqam_jax import agent
from trqam_jax.dual import DualState
from trqam_jax.flow import memoryless_rollout
from trqam_jax.types import Batch

# The bandit.
MODE_MEANS = (-0.5, 0.5)
MODE_WEIGHTS = (0.65, 0.35)
MODE_STD = 0.12
SLOPE = 2.0
BUMP_HEIGHT, BUMP_CENTER, BUMP_WIDTH = 5.0, -0.15, 0.06
CRITICS = ("true", "perturbed")

FIGURES = ("fig1_kl_vs_steps.png", "fig2_lambda_vs_steps.png", "fig3_closed_form_kl.png",
           "fig4_perturbed_critic.png", "fig5_tilted_target.png")
TABLE = "trust_region_demo.md"


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    num_seeds: int = 3
    dataset_size: int = 8192
    hidden_dims: Tuple[int, ...] = (64, 64)
    batch_size: int = 128
    learning_rate: float = 1e-3
    bc_steps: int = 5000
    bc_batch_size: int = 256
    trqam_steps: int = 2000
    fixed_steps: int = 1500
    qam_steps: int = 1500
    budgets: Tuple[float, ...] = (0.1, 0.3, 1.0)
    fixed_lambdas: Tuple[float, ...] = (0.4, 0.7, 1.2, 2.0, 3.5)
    inv_temps: Tuple[float, ...] = (1.0, 3.0, 10.0)
    eval_samples: int = 8192
    tail_fraction: float = 0.2  # "final" values average the last 20% of the steps.
    smooth: int = 50  # moving-average window of the curves.


FULL = DemoConfig()
QUICK = DemoConfig(num_seeds=1, dataset_size=4096, bc_steps=1500, trqam_steps=300, fixed_steps=200,
                   qam_steps=200, budgets=(0.1, 1.0), fixed_lambdas=(0.5, 2.0), inv_temps=(3.0,),
                   eval_samples=2048, smooth=20)


def q_true(a):
    return SLOPE * a


def q_critic(a, bump_height):
    return q_true(a) + bump_height * jnp.exp(-0.5 * jnp.square((a - BUMP_CENTER) / BUMP_WIDTH))


class BanditCritic(nn.Module):
    """Known critic Q(a) = SLOPE * a + bump * Gaussian bump, the same for every head.

    `bump_height` (0 for the true critic) is a parameter only so that the two critics can share one
    compiled train function on the seed axis; the stop_gradient makes its gradient exactly zero, so it
    never trains.
    """

    num_critics: int = 1

    @nn.compact
    def __call__(self, observations, actions):
        bump = jax.lax.stop_gradient(self.param("bump_height", nn.initializers.zeros, ()))
        q = q_critic(actions[..., 0], bump)
        return jnp.broadcast_to(q, (self.num_critics,) + q.shape)


def bump_height(critic: str) -> float:
    return {"true": 0.0, "perturbed": BUMP_HEIGHT}[critic]


def make_data(n: int, seed: int = 0) -> Batch:
    rng = np.random.default_rng(seed)
    modes = rng.choice(len(MODE_MEANS), size=n, p=MODE_WEIGHTS)
    actions = np.asarray(MODE_MEANS)[modes] + MODE_STD * rng.normal(size=n)
    actions = np.clip(actions, -1 + 1e-5, 1 - 1e-5).astype(np.float32)
    return Batch(jnp.zeros((n, 1)), jnp.asarray(actions)[:, None, None], jnp.zeros(n), jnp.ones(n),
                 jnp.zeros((n, 1)), jnp.ones(n))


def agent_config(cfg: DemoConfig, **kw) -> agent.AgentConfig:
    return agent.AgentConfig(hidden_dims=cfg.hidden_dims, batch_size=cfg.batch_size,
                             learning_rate=cfg.learning_rate, num_critics=1, **kw)


def tile(tree, reps: int):
    """Repeat a seed-stacked tree `reps` times along the seed axis: [s0..sn, s0..sn, ...]."""
    return jax.tree_util.tree_map(lambda x: jnp.concatenate([x] * reps, axis=0), tree)


def set_critic(states: agent.TrainState, heights: np.ndarray) -> agent.TrainState:
    heights = jnp.asarray(heights, jnp.float32)
    critic = {"params": {"bump_height": heights}}
    return states.replace(critic=critic, critic_target=jax.tree_util.tree_map(jnp.copy, critic))


def finetune(cfg: DemoConfig, acfg: agent.AgentConfig, nets: agent.Networks, bc_actor, data: Batch,
             num_steps: int, heights: Sequence[float], lams: Sequence[float] = None):
    """Fine-tune len(heights) states in one vmapped call; state i starts from BC seed i % num_seeds."""
    num = len(heights)
    reps = num // cfg.num_seeds
    states = agent.init_learners(np.arange(num) % cfg.num_seeds + 100, acfg, nets, 1, 1,
                                 pretrained_actor=tile(bc_actor, reps))
    states = set_critic(states, np.asarray(heights))
    if lams is not None:  # frozen dual: lam = lambda_eff / lam_scale per state.
        lam = jnp.asarray(np.asarray(lams) / acfg.lam_scale, jnp.float32)
        states = states.replace(dual=DualState(lam=lam, kl_ema=jnp.zeros_like(lam)))
    train = agent.make_train_fn(acfg, nets, agent.uniform_sampler(cfg.batch_size), num_steps)
    states, metrics = train(states, data)
    keep = ("kl_hat", "lambda_eff", "kl_const", "kl_closed_form", "kl_ema")
    return states, {k: np.asarray(v) for k, v in metrics.items() if k in keep}


def sample_policy(act, actor_params, num: int, seed: int) -> np.ndarray:
    """ODE samples (clipped) of each seed-stacked policy: (S, num). act is make_act_fn vmapped on seeds."""
    num_states = jax.tree_util.tree_leaves(actor_params)[0].shape[0]
    keys = jax.random.split(jax.random.PRNGKey(seed), num_states)
    obs = jnp.zeros((num, 1))
    return np.asarray(act(actor_params, obs, keys))[..., 0]


def make_sde_sampler(nets: agent.Networks, num_steps: int):
    """Terminal actions (clipped) of the memoryless SDE rollout of conventions §3 -- the process whose path KL
    the trust region measures -- for seed-stacked (actor, actor_ref): (S, num)."""

    def one_state(actor, actor_ref, key, num):
        obs = jnp.zeros((1,))
        v = lambda x, t: nets.actor.apply(actor, obs, x, t)
        v_ref = lambda x, t: nets.actor.apply(actor_ref, obs, x, t)
        noise_key, steps_key = jax.random.split(key)
        noise = jax.random.normal(noise_key, (num, 1))
        step_noises = jax.random.normal(steps_key, (num, num_steps - 1, 1))
        rollout = lambda x0, eps: memoryless_rollout(v, v_ref, x0, eps, num_steps)[1]
        return jnp.clip(jax.vmap(rollout)(noise, step_noises), -1.0, 1.0)[:, 0]

    @functools.partial(jax.jit, static_argnums=(3,))
    def sample(actor, actor_ref, key, num):
        keys = jax.random.split(key, jax.tree_util.tree_leaves(actor)[0].shape[0])
        return jax.vmap(one_state, in_axes=(0, 0, 0, None))(actor, actor_ref, keys, num)

    return lambda actor, actor_ref, num, seed: np.asarray(sample(actor, actor_ref, jax.random.PRNGKey(seed), num))


def q_numpy(a, critic: str):
    return SLOPE * a + bump_height(critic) * np.exp(-0.5 * ((a - BUMP_CENTER) / BUMP_WIDTH) ** 2)


def tilt_weights(base: np.ndarray, critic: str, lam: float) -> np.ndarray:
    logw = q_numpy(base, critic) / lam
    w = np.exp(logw - logw.max())
    return w / w.sum()


def tilted_kl(base: np.ndarray, critic: str, lam: float) -> float:
    """KL(pi_lam || pi_0) = E_lam[Q] / lam - log E_0[exp(Q / lam)], with pi_0 the BC samples (conventions §5)."""
    q = q_numpy(base, critic) / lam
    m = q.max()
    log_z = m + np.log(np.mean(np.exp(q - m)))
    w = np.exp(q - m)
    return float(np.sum(w * q) / np.sum(w) - log_z)


def lambda_for_kl(base: np.ndarray, critic: str, eps: float) -> float:
    """The lambda at which the exact tilt of the BC samples has KL(pi_lam || pi_0) = eps (bisection)."""
    lo, hi = math.log(1e-3), math.log(1e3)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if tilted_kl(base, critic, math.exp(mid)) > eps:  # KL decreases in lambda
            lo = mid
        else:
            hi = mid
    return math.exp(0.5 * (lo + hi))


HIST_BINS = np.linspace(-1.0, 1.0, 81)


def histogram_kl(samples: np.ndarray, base: np.ndarray) -> float:
    """KL(pi_theta || pi_0) of the actions from 80-bin histograms (a biased but independent check)."""
    p = np.histogram(samples, HIST_BINS)[0] + 0.5
    q = np.histogram(base, HIST_BINS)[0] + 0.5
    p, q = p / p.sum(), q / q.sum()
    return float(np.sum(p * np.log(p / q)))


def tail(x: np.ndarray, frac: float) -> np.ndarray:
    """Mean over the last `frac` of the steps: (S, T) -> (S,)."""
    return x[:, -max(1, int(round(frac * x.shape[1]))):].mean(axis=1)


def moving_average(x: np.ndarray, window: int) -> np.ndarray:
    window = max(1, min(window, x.shape[-1]))
    kernel = np.ones(window) / window
    return np.stack([np.convolve(row, kernel, mode="valid") for row in np.atleast_2d(x)])


def mean_std(x) -> Tuple[float, float]:
    x = np.asarray(x, np.float64)
    return float(x.mean()), float(x.std())


def fmt(x, std=None, digits=3) -> str:
    if std is None:
        return f"{x:.{digits}f}"
    return f"{x:.{digits}f} ± {std:.{digits}f}"


def run(cfg: DemoConfig, out_dir: str, log=print) -> Dict:
    """Train everything, write the figures and the table into out_dir; return the summary numbers."""
    os.makedirs(out_dir, exist_ok=True)
    start = time.perf_counter()
    n = cfg.num_seeds
    data = make_data(cfg.dataset_size)

    # 1. BC pretraining through the real update (method "bc").
    bc_cfg = dataclasses.replace(agent_config(cfg, method="bc"), batch_size=cfg.bc_batch_size)
    nets = agent.Networks(agent.make_networks(bc_cfg, 1).actor, BanditCritic())
    states = agent.init_learners(np.arange(n), bc_cfg, nets, 1, 1)
    states, _ = agent.make_train_fn(bc_cfg, nets, agent.uniform_sampler(cfg.bc_batch_size), cfg.bc_steps)(
        states, data)
    bc_actor = states.actor_bc
    act = jax.jit(jax.vmap(agent.make_act_fn(bc_cfg, nets), in_axes=(0, None, 0)))
    sample_sde = make_sde_sampler(nets, bc_cfg.flow_steps)
    base = sample_policy(act, bc_actor, cfg.eval_samples, seed=1)  # (n, M): pi_0 of each seed
    log(f"[{time.perf_counter() - start:6.1f}s] BC: {cfg.bc_steps} steps x {n} seeds")

    runs = {}  # (kind, critic, setting) -> dict of per-seed arrays

    def record(kind, settings_critics, states, metrics, seed):
        samples = sample_policy(act, states.actor, cfg.eval_samples, seed)
        # pi_0 at the end of the run: actor_ref, the EMA of actor_bc (which keeps training by BC).
        ref_samples = sample_policy(act, states.actor_ref, cfg.eval_samples, seed + 1000)
        sde_samples = sample_sde(states.actor, states.actor_ref, cfg.eval_samples, seed + 2000)
        ref_sde_samples = sample_sde(states.actor_ref, states.actor_ref, cfg.eval_samples, seed + 3000)
        for j, (setting, critic) in enumerate(settings_critics):
            rows = slice(j * n, (j + 1) * n)
            runs[(kind, critic, setting)] = dict(
                metrics={k: v[rows] for k, v in metrics.items()}, samples=samples[rows],
                ref_samples=ref_samples[rows], sde_samples=sde_samples[rows],
                ref_sde_samples=ref_sde_samples[rows])

    # 2. TRQAM at each budget, true and perturbed critic side by side.
    heights = [bump_height(c) for c in CRITICS for _ in range(n)]
    for i, eps in enumerate(cfg.budgets):
        acfg = agent_config(cfg, method="trqam", kl_budget=eps)
        states, metrics = finetune(cfg, acfg, nets, bc_actor, data, cfg.trqam_steps, heights)
        record("trqam", [(eps, c) for c in CRITICS], states, metrics, seed=10 + i)
        log(f"[{time.perf_counter() - start:6.1f}s] TRQAM eps={eps}: {cfg.trqam_steps} steps")

    # 3. Fixed lambda_eff: TRQAM with the dual frozen, true critic, all lambdas in one call.
    acfg = agent_config(cfg, method="trqam", dual_lr=0.0)
    lams = [lam for lam in cfg.fixed_lambdas for _ in range(n)]
    states, metrics = finetune(cfg, acfg, nets, bc_actor, data, cfg.fixed_steps, [0.0] * len(lams), lams)
    record("fixed", [(lam, "true") for lam in cfg.fixed_lambdas], states, metrics, seed=20)
    log(f"[{time.perf_counter() - start:6.1f}s] fixed lambda_eff {cfg.fixed_lambdas}: {cfg.fixed_steps} steps")

    # 4. QAM at fixed inverse temperatures, true and perturbed critic.
    for i, beta in enumerate(cfg.inv_temps):
        acfg = agent_config(cfg, method="qam", inv_temp=beta)
        states, metrics = finetune(cfg, acfg, nets, bc_actor, data, cfg.qam_steps, heights)
        record("qam", [(beta, c) for c in CRITICS], states, metrics, seed=30 + i)
        log(f"[{time.perf_counter() - start:6.1f}s] QAM beta={beta}: {cfg.qam_steps} steps")

    # Summaries per run: tail means per seed.
    summary = {}
    for key, r in runs.items():
        kind, critic, setting = key
        m, s, ref = r["metrics"], r["samples"], r["ref_samples"]
        lam_end = m["lambda_eff"][:, -1]
        summary[key] = dict(
            kl_hat=tail(m["kl_hat"], cfg.tail_fraction),
            kl_closed_form=tail(m["kl_closed_form"], cfg.tail_fraction),
            kl_const=tail(m["kl_const"], cfg.tail_fraction),
            kl_ema=tail(m["kl_ema"], cfg.tail_fraction) if "kl_ema" in m else np.full(n, np.nan),
            lambda_eff=lam_end,
            kl_hist=np.array([histogram_kl(s[i], ref[i]) for i in range(n)]),
            kl_hist_sde=np.array([histogram_kl(r["sde_samples"][i], r["ref_sde_samples"][i]) for i in range(n)]),
            reward_true=np.array([q_numpy(s[i], "true").mean() for i in range(n)]),
            reward_critic=np.array([q_numpy(s[i], critic).mean() for i in range(n)]),
            target_reward_true=np.array([
                np.sum(tilt_weights(ref[i], critic, lam_end[i]) * q_numpy(ref[i], "true"))
                for i in range(n)]),
            target_kl=np.array([tilted_kl(ref[i], critic, lam_end[i]) for i in range(n)]),
        )
    base_reward = np.array([q_numpy(base[i], "true").mean() for i in range(n)])
    lam_star = {(eps, c): lambda_for_kl(runs[("trqam", c, eps)]["ref_samples"].reshape(-1), c, eps)
                for eps in cfg.budgets for c in CRITICS}

    elapsed = time.perf_counter() - start
    table = make_table(cfg, summary, base_reward, lam_star, elapsed)
    with open(os.path.join(out_dir, TABLE), "w") as f:
        f.write(table)
    log(table)
    make_figures(cfg, runs, summary, base, base_reward, lam_star, out_dir)
    log(f"[{time.perf_counter() - start:6.1f}s] wrote {', '.join(FIGURES)} and {TABLE} to {out_dir}")
    return dict(summary=summary, base_reward=base_reward, lam_star=lam_star, runs=runs)


def make_table(cfg, summary, base_reward, lam_star, elapsed) -> str:
    n = cfg.num_seeds
    ms = lambda s, key: fmt(*mean_std(s[key]))
    lines = [
        "# Trust-region demo (1-D bandit, real update)",
        "",
        f"Generated by `python -m experiments.trust_region_demo{' --quick' if cfg != FULL else ''}`: "
        f"{n} seed(s), BC {cfg.bc_steps} steps, TRQAM {cfg.trqam_steps}, fixed-lambda {cfg.fixed_steps}, "
        f"QAM {cfg.qam_steps} steps, batch {cfg.batch_size}, MLP {list(cfg.hidden_dims)}, K = 10; "
        f"{elapsed:.0f} s on CPU. Values are mean ± std over seeds; KL_hat, C / lambda_eff^2 and kl_ema "
        f"are averaged over the last {cfg.tail_fraction:.0%} of the steps; the rest is measured at the end "
        f"on {cfg.eval_samples} samples per seed. pi_0 is the BC policy; its true reward E[Q_true] is "
        f"{fmt(*mean_std(base_reward))}. Critics: Q_true(a) = {SLOPE} a; perturbed = "
        f"Q_true + {BUMP_HEIGHT} exp(-(a - {BUMP_CENTER})^2 / (2 * {BUMP_WIDTH}^2)).",
        "",
        "Columns: KL_hat is the library's path-KL estimate (metric `kl_hat`). lambda* is the lambda at "
        "which the exact tilt pi_0 exp(Q / lambda) of pi_0 samples has KL(pi_lambda || pi_0) = eps. "
        "Histogram KL (ODE) compares 80-bin histograms of the acting policy's ODE samples with pi_0's "
        "(actor_ref at the end of the run); histogram KL (SDE) does the same for the terminal actions of "
        "the memoryless SDE rollout (conventions §3), the process whose path KL KL_hat estimates, so it should "
        "not exceed KL_hat. E[Q_true] and E[Q_critic] are over the acting policy's ODE samples.",
        "",
        "## 1. TRQAM: the measured path KL settles at the budget",
        "",
        "| critic | eps | KL_hat | kl_ema | lambda_eff (end) | lambda* (exact tilt) | C / lambda_eff^2 |"
        " E[Q_true] |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for critic in CRITICS:
        for eps in cfg.budgets:
            s = summary[("trqam", critic, eps)]
            lines.append(
                f"| {critic} | {eps} | {ms(s, 'kl_hat')} | {ms(s, 'kl_ema')} | {ms(s, 'lambda_eff')} | "
                f"{fmt(lam_star[(eps, critic)])} | {ms(s, 'kl_closed_form')} | {ms(s, 'reward_true')} |")
    lines += [
        "",
        "## 2. Fixed lambda_eff (TRQAM with dual_lr = 0), true critic: measured KL against the closed form",
        "",
        "| lambda_eff | KL_hat | C / lambda_eff^2 | C | KL(pi_lambda \\|\\| pi_0) exact tilt |"
        " histogram KL (ODE) | histogram KL (SDE) | E[Q_true] | E[Q_true] of the exact tilt |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for lam in cfg.fixed_lambdas:
        s = summary[("fixed", "true", lam)]
        lines.append(
            f"| {lam} | {ms(s, 'kl_hat')} | {ms(s, 'kl_closed_form')} | {ms(s, 'kl_const')} | "
            f"{ms(s, 'target_kl')} | {ms(s, 'kl_hist')} | {ms(s, 'kl_hist_sde')} | {ms(s, 'reward_true')} | "
            f"{ms(s, 'target_reward_true')} |")
    lines += [
        "",
        "## 3. TRQAM against QAM, true and perturbed critic",
        "",
        "| method | setting | critic | lambda_eff | KL_hat (path) | histogram KL (ODE) | histogram KL (SDE) |"
        " E[Q_true] | E[Q_critic] |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for critic in CRITICS:
        for kind, settings, label in (("qam", cfg.inv_temps, "beta"), ("trqam", cfg.budgets, "eps")):
            for setting in settings:
                s = summary[(kind, critic, setting)]
                lines.append(
                    f"| {kind.upper()} | {label} = {setting} | {critic} | {ms(s, 'lambda_eff')} | "
                    f"{ms(s, 'kl_hat')} | {ms(s, 'kl_hist')} | {ms(s, 'kl_hist_sde')} | "
                    f"{ms(s, 'reward_true')} | {ms(s, 'reward_critic')} |")
    return "\n".join(lines) + "\n"


def make_figures(cfg, runs, summary, base, base_reward, lam_star, out_dir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    dpi = 90

    def band(ax, y, color, label, x0=0):
        y = moving_average(y, cfg.smooth)
        x = np.arange(y.shape[1]) + x0 + (min(cfg.smooth, y.shape[1] + cfg.smooth) - 1) / 2
        mu, sd = y.mean(0), y.std(0)
        ax.plot(x, mu, color=color, label=label)
        ax.fill_between(x, mu - sd, mu + sd, color=color, alpha=0.25, lw=0)

    # Figure 1 and 2: KL_hat and lambda_eff against steps.
    for name, metric, ylabel in (("fig1_kl_vs_steps.png", "kl_hat", "path KL estimate KL_hat"),
                                 ("fig2_lambda_vs_steps.png", "lambda_eff", "lambda_eff")):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
        for ax, critic in zip(axes, CRITICS):
            for i, eps in enumerate(cfg.budgets):
                band(ax, runs[("trqam", critic, eps)]["metrics"][metric], colors[i], f"eps = {eps}")
                if metric == "kl_hat":
                    ax.axhline(eps, color=colors[i], ls="--", lw=1)
                else:
                    ax.axhline(lam_star[(eps, critic)], color=colors[i], ls=":", lw=1)
            ax.set_yscale("log")
            ax.set_xlabel("gradient step")
            ax.set_title(f"TRQAM, {critic} critic")
            ax.grid(alpha=0.3, which="both")
        axes[0].set_ylabel(ylabel)
        axes[0].legend(title=("dashed: budget eps" if metric == "kl_hat" else
                              "dotted: lambda with exact KL(pi_lambda||pi_0) = eps"), fontsize=8,
                       title_fontsize=8)
        fig.suptitle(f"{'Path KL' if metric == 'kl_hat' else 'lambda_eff'} per step "
                     f"(moving average over {cfg.smooth} steps; mean ± std over {cfg.num_seeds} seed(s))")
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, name), dpi=dpi)
        plt.close(fig)

    # Figure 3: closed-form KL*(lambda) = C / lambda^2 against the measured KL at fixed lambdas.
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    lams = np.asarray(cfg.fixed_lambdas)
    grid = np.geomspace(lams.min() / 1.5, lams.max() * 1.5, 60)
    ref_pooled = np.concatenate([runs[("fixed", "true", lam)]["ref_samples"].reshape(-1) for lam in lams])
    ax.plot(grid, [tilted_kl(ref_pooled, "true", g) for g in grid], color="k", lw=1,
            label="exact KL(pi_lambda || pi_0): tilt of pi_0 samples")
    for key, color, marker, label in (
            ("kl_closed_form", colors[0], "s", "closed form C / lambda_eff^2 (metric kl_closed_form)"),
            ("kl_hat", colors[1], "o", "measured path KL_hat (fixed lambda)"),
            ("kl_hist_sde", colors[2], "^", "histogram KL, memoryless-SDE actions"),
            ("kl_hist", colors[4], "v", "histogram KL, ODE actions (acting policy)")):
        mu = np.array([summary[("fixed", "true", lam)][key].mean() for lam in lams])
        sd = np.array([summary[("fixed", "true", lam)][key].std() for lam in lams])
        ax.errorbar(lams, mu, yerr=sd, color=color, marker=marker, ls="-" if key == "kl_closed_form" else "",
                    capsize=3, label=label, ms=7 if key in ("kl_closed_form", "kl_hat") else 5)
    for i, eps in enumerate(cfg.budgets):
        s = summary[("trqam", "true", eps)]
        ax.plot(s["lambda_eff"], s["kl_hat"], marker="*", ms=11, ls="", color=colors[3],
                label="TRQAM (adaptive): end point" if i == 0 else None)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(lams)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("lambda_eff")
    ax.set_ylabel("KL")
    ax.set_title("KL against lambda_eff (true critic)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "fig3_closed_form_kl.png"), dpi=dpi)
    plt.close(fig)

    # Figure 4: the perturbed critic. Critics, KL against true reward, final densities.
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    axes = axes.reshape(-1)
    a = np.linspace(-1, 1, 801)
    pooled = base.reshape(-1)
    ax = axes[0]
    ax.plot(a, q_numpy(a, "true"), label="Q_true", color="k")
    ax.plot(a, q_numpy(a, "perturbed"), label="Q_perturbed", color=colors[3])
    ax2 = ax.twinx()
    ax2.hist(pooled, HIST_BINS, density=True, color="gray", alpha=0.3)
    ax2.set_yticks([])
    ax.set_xlabel("action a")
    ax.set_ylabel("Q")
    ax.set_title("critics (gray: BC policy pi_0)")
    ax.legend(fontsize=8, loc="upper left")

    ax = axes[1]
    ax.axhline(base_reward.mean(), color="gray", ls="--", lw=1, label="pi_0 (BC)")
    for kind, settings, marker, label in (("qam", cfg.inv_temps, "o", "QAM beta"),
                                          ("trqam", cfg.budgets, "*", "TRQAM eps")):
        for critic, fill in (("true", "none"), ("perturbed", None)):
            for i, setting in enumerate(settings):
                s = summary[(kind, critic, setting)]
                color = colors[(i + (4 if kind == "qam" else 0)) % len(colors)]
                ax.errorbar(s["kl_hat"].mean(), s["reward_true"].mean(), xerr=s["kl_hat"].std(),
                            yerr=s["reward_true"].std(), marker=marker, ms=10 if kind == "trqam" else 7,
                            color=color, mfc=fill if fill else color, ls="", capsize=2,
                            label=f"{label} = {setting}" if critic == "perturbed" else None)
    ax.set_xscale("log")
    ax.set_xlabel("path KL_hat from pi_0 (end of training)")
    ax.set_ylabel("true reward E[Q_true(a)]")
    ax.set_title("filled: perturbed critic, hollow: true critic")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2)

    for ax, kind, settings, label, offset in ((axes[2], "qam", cfg.inv_temps, "QAM beta", 4),
                                              (axes[3], "trqam", cfg.budgets, "TRQAM eps", 0)):
        ax.hist(pooled, HIST_BINS, density=True, histtype="stepfilled", color="gray", alpha=0.3,
                label="pi_0 (BC)")
        for i, setting in enumerate(settings):
            s = runs[(kind, "perturbed", setting)]["samples"].reshape(-1)
            ax.hist(s, HIST_BINS, density=True, histtype="step", lw=1.5, color=colors[(i + offset) % len(colors)],
                    label=f"{label} = {setting}")
        ax.axvline(BUMP_CENTER, color=colors[3], lw=0.8, ls=":")
        ax.set_xlabel("action a")
        ax.set_ylabel("density")
        ax.set_title(f"{label.split()[0]} policies (ODE samples), perturbed critic; dotted: bump")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "fig4_perturbed_critic.png"), dpi=dpi)
    plt.close(fig)

    # Figure 5: final samples against the tilted target pi_0 exp(Q / lambda_eff) for the lambda reached.
    fig, axes = plt.subplots(2, len(cfg.budgets), figsize=(4.5 * len(cfg.budgets), 7), squeeze=False)
    for row, critic in enumerate(CRITICS):
        for col, eps in enumerate(cfg.budgets):
            ax = axes[row, col]
            r, s = runs[("trqam", critic, eps)], summary[("trqam", critic, eps)]
            ref = r["ref_samples"]
            weights = np.concatenate([tilt_weights(ref[i], critic, s["lambda_eff"][i]) for i in range(len(ref))])
            ax.hist(ref.reshape(-1), HIST_BINS, density=True, histtype="stepfilled", color="gray", alpha=0.3,
                    label="pi_0 (actor_ref samples)")
            ax.hist(ref.reshape(-1), HIST_BINS, weights=weights, density=True, histtype="step", color="k",
                    lw=1.5, label="target pi_0 exp(Q / lambda_eff)")
            ax.hist(r["samples"].reshape(-1), HIST_BINS, density=True, histtype="stepfilled",
                    color=colors[col], alpha=0.5, label="TRQAM policy (ODE samples: acting)")
            ax.hist(r["sde_samples"].reshape(-1), HIST_BINS, density=True, histtype="step", color=colors[col],
                    lw=1, ls="--", label="same policy, memoryless SDE rollout (K = 10): what KL_hat sees")
            if critic == "perturbed":
                ax.axvline(BUMP_CENTER, color=colors[3], lw=0.8, ls=":")
            ax.set_title(f"{critic} critic, eps = {eps}, lambda_eff = {s['lambda_eff'].mean():.2f}", fontsize=9)
            ax.set_xlabel("action a")
        axes[row, 0].set_ylabel("density")
    axes[0, 0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "fig5_tilted_target.png"), dpi=dpi)
    plt.close(fig)


FLAGS = flags.FLAGS


def define_flags():
    """Defined only when run as a script: another module (experiments.report) also defines --out_dir."""
    flags.DEFINE_string("out_dir", "docs/figures", "Where to write the figures and the table.")
    flags.DEFINE_bool("quick", False, "A small, fast configuration (CI).")


def main(argv):
    del argv
    run(QUICK if FLAGS.quick else FULL, FLAGS.out_dir)


if __name__ == "__main__":
    define_flags()
    app.run(main)
