"""SQAM (conventions §12), each piece against an independent computation.

- The maths for one example: the endpoint against a Python loop of Euler steps, the bridge states by
  hand, the scalar adjoint against `jax.grad` of a hand-written ensemble-mean critic (zero outside the
  clip), and the AM loss and path KL on the bridge grid against hand sums.
- One update, assembled by hand from the formulas (as tests/test_wiring.py does for TRQAM and QAM):
  every metric, the Adam step, the EMAs on every leaf, the dual step; and the gradient of each loss
  reaching its own parameter set only (L_AM -> actor, TD loss and value penalty -> critic, BC -> actor_bc).
- A program of SQAM learners with per-learner eps and gap_reg_coef equals separate SQAM runs.
- TRQAM and QAM are unchanged by SQAM's arrival: a few updates of each reproduce numbers recorded from
  the code before SQAM existed.
- Through the launcher: an SQAM program with a value-penalty axis trains, checkpoints, resumes, reports
  and loads as a policy; a reference SQAM checkpoint imports into an SQAM state.
(The toy trust region for SQAM: tests/test_toy_trust_region.py.)
"""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import test_learners as tl
from tests.test_wiring import (ATOL, B, D, EPS, H, K, LAM0, OBS, RTOL, assert_trees_close, leaves, make_batch,
                               make_state, one_adam_step)
from trqam_jax import adjoint as adj
from trqam_jax import agent, chunks
from trqam_jax import scalar_adjoint as sa
from trqam_jax.flow import euler_endpoint
from trqam_jax.types import Batch

M = 4  # bridge states in the update tests
fast_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def nonlinear_field(x, t):
    w = jnp.array([[0.5, -1.0, 0.2], [0.3, 0.4, -0.7], [-0.2, 0.9, 0.1]])
    return 2.0 * jnp.tanh(w @ x + t) + 0.8 * t * x


# ------------------------------------------------------------------------------------------------
# One example.


def test_endpoint_is_the_unclipped_euler_loop():
    x0, k = jnp.array([0.9, -1.2, 0.4]), 5
    x = np.asarray(x0, np.float64)
    for i in range(k):
        x = x + (1.0 / k) * np.asarray(nonlinear_field(jnp.asarray(x, jnp.float32), i / k), np.float64)
    endpoint = euler_endpoint(nonlinear_field, x0, k)
    np.testing.assert_allclose(endpoint, x, rtol=1e-5)
    assert np.max(np.abs(x)) > 1.2  # the loop leaves [-1, 1], and the endpoint is not clipped


def test_bridge_states_by_hand():
    endpoint = jnp.array([0.5, -2.0, 1.5])
    noises = jax.random.normal(jax.random.PRNGKey(0), (M, 3))
    np.testing.assert_allclose(sa.bridge_times(M), [0.25, 0.5, 0.75, 1.0])
    states = sa.bridge_states(endpoint, noises)
    for j in range(1, M + 1):
        tau = j / M
        np.testing.assert_allclose(states[j - 1], (1 - tau) * noises[j - 1] + tau * endpoint, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(states[-1], endpoint)  # tau = 1 is a_hat itself


def test_scalar_adjoint_is_tau_times_one_critic_gradient_zero_outside_the_clip():
    w = jnp.array([[1.0, -0.5, 2.0, 0.3], [0.2, 0.7, -1.1, 0.9], [-0.6, 0.4, 0.8, -1.3]])  # 3 heads

    def heads(a):  # Q_k(a) = w_k . sin(a) + 0.5 k |a|^2: a hand-written ensemble, shape (3,)
        return w @ jnp.sin(a) + 0.5 * jnp.arange(3.0) * jnp.sum(a**2)

    endpoint = jnp.array([0.3, -1.4, 0.9, 1.2])  # dims 1 and 3 lie outside [-1, 1]
    adjoints = sa.scalar_adjoint(lambda a: jnp.mean(heads(jnp.clip(a, -1.0, 1.0))), endpoint, M)
    # The gradient of the ensemble mean without the clip, at the endpoint; the clip zeroes dims 1 and 3.
    g = np.asarray(jax.grad(lambda a: jnp.mean(heads(a)))(endpoint), np.float64)
    assert np.all(np.abs(g) > 0.1)
    inside = np.abs(np.asarray(endpoint)) <= 1.0
    for j in range(1, M + 1):
        np.testing.assert_allclose(adjoints[j - 1], -(j / M) * g * inside, rtol=1e-5, atol=1e-7)
    assert np.all(np.asarray(adjoints)[:, ~inside] == 0.0)


def hand_noise_sq(j, m):
    """gb_j^2 = 2 (1 - tau_j + h_b) / (tau_j + h_b) with tau_j = j / M, h_b = 1 / M, j = 1..M."""
    tau, h = j / m, 1.0 / m
    return 2.0 * (1.0 - tau + h) / (tau + h)


def test_am_loss_and_path_kl_on_the_bridge_grid_match_hand_sums():
    m, d, horizon, lam_eff = 5, 3, 2, 1.7
    # Differences that vary with the step and the dimension, and adjoints that do too.
    diff = jnp.asarray(np.arange(1, m + 1)[:, None] * np.array([0.3, -0.2, 0.05]) + 0.1 * np.arange(d), jnp.float32)
    adjoints = jax.random.normal(jax.random.PRNGKey(3), (m, d))
    times = sa.bridge_times(m)
    loss_total = kl_total = 0.0
    for j in range(1, m + 1):
        sigma = np.sqrt(hand_noise_sq(j, m)) / np.sqrt(lam_eff)
        for k in range(d):
            dv, a = float(diff[j - 1, k]), float(adjoints[j - 1, k])
            loss_total += (2 * dv / sigma + sigma * a) ** 2
            kl_total += 2 * (1 / m) / hand_noise_sq(j, m) * dv**2
    np.testing.assert_allclose(adj.adjoint_matching_loss(diff, adjoints, m, adj.trqam_scales(lam_eff), times),
                               loss_total, rtol=1e-5)
    np.testing.assert_allclose(adj.path_kl_estimate(diff, m, horizon, times), kl_total / horizon, rtol=1e-5)
    # The bridge grid is not the flow grid: the same differences weigh differently there.
    assert abs(float(adj.path_kl_estimate(diff, m, horizon)) - kl_total / horizon) > 1e-3


# ------------------------------------------------------------------------------------------------
# One update, by hand.

GAP = 0.7  # gap_reg_coef of the update tests (not the default, so a config default cannot stand in)


def make_config():
    return agent.AgentConfig(method="sqam", hidden_dims=(16, 16), num_critics=3, flow_steps=K, batch_size=B,
                             discount=0.97, rho=0.5, lam_init=LAM0, kl_budget=EPS, n_bridge=M, gap_reg_coef=GAP)


def hand_reference(cfg, nets, state, batch):
    """Every quantity of one SQAM update by hand, naming the parameter set that each step reads.

    Returns a dict; each loss is a function of the one parameter set it trains, and `grads` holds each
    loss's gradient in that set. Jit it: the loops unroll.
    """
    v = lambda params, obs, x, t: nets.actor.apply(params, obs, x, t)
    q = lambda params, obs, a: nets.critic.apply(params, obs, a)  # (N, B)
    h = 1.0 / K
    obs, next_obs = batch.observations, batch.next_observations
    chunks_ = batch.actions.reshape(B, D)

    # The draws: next_key, bc, critic, actor = split(state.key, 4); actor -> (endpoint x0, bridge eps).
    next_key, bc_key, critic_key, actor_key = jax.random.split(state.key, 4)
    bc_noise_key, bc_time_key = jax.random.split(bc_key)
    bc_x0, bc_t = jax.random.normal(bc_noise_key, (B, D)), jax.random.uniform(bc_time_key, (B,))
    next_x0 = jax.random.normal(critic_key, (B, D))
    endpoint_key, bridge_key = jax.random.split(actor_key)
    endpoint_x0 = jax.random.normal(endpoint_key, (B, D))
    bridge_eps = jax.random.normal(bridge_key, (B, M, D))

    # Critic target: K Euler steps of ACTOR at s', clipped; heads of CRITIC_TARGET.
    x = next_x0
    for i in range(K):
        x = x + h * v(state.actor, next_obs, x, i * h)
    next_q = q(state.critic_target, next_obs, jnp.clip(x, -1.0, 1.0))
    target = batch.rewards + cfg.discount**H * batch.masks * (next_q.mean(0) - cfg.rho * next_q.std(0))

    # Endpoint: K Euler steps of ACTOR at s, NOT clipped.
    a_hat = endpoint_x0
    for i in range(K):
        a_hat = a_hat + h * v(state.actor, obs, a_hat, i * h)
    # One gradient of CRITIC_TARGET's ensemble mean at clip(a_hat) (examples do not interact: batched grad).
    g = jax.grad(lambda a: jnp.sum(q(state.critic_target, obs, jnp.clip(a, -1.0, 1.0)).mean(0)))(a_hat)
    taus = [j / M for j in range(1, M + 1)]
    states = [(1 - tau) * bridge_eps[:, j] + tau * a_hat for j, tau in enumerate(taus)]
    adjoints = [-tau * g for tau in taus]
    lam_eff = cfg.lam_scale * state.dual.lam

    def bc_loss(actor_bc):
        x_t = (1 - bc_t[:, None]) * bc_x0 + bc_t[:, None] * chunks_
        return jnp.mean(jnp.mean((v(actor_bc, obs, x_t, bc_t) - (chunks_ - bc_x0)) ** 2, -1) * batch.valid)

    def critic_loss(critic):  # TD loss of CRITIC
        return jnp.mean((q(critic, obs, chunks_) - target[None]) ** 2 * batch.valid[None])

    def value_gap(critic):  # CRITIC at the clipped endpoint (a constant) against the data chunk
        a_pi = jnp.clip(a_hat, -1.0, 1.0)
        return jnp.mean(q(critic, obs, a_pi).mean(0) - q(critic, obs, chunks_).mean(0))

    def diff(actor, j):  # ACTOR - ACTOR_REF at (x_j, tau_j)
        return v(actor, obs, states[j], taus[j]) - v(state.actor_ref, obs, states[j], taus[j])

    def actor_loss(actor):
        total = 0.0
        for j in range(M):
            sigma = np.sqrt(hand_noise_sq(j + 1, M)) / jnp.sqrt(lam_eff)
            total = total + jnp.sum((2 * diff(actor, j) / sigma + sigma * adjoints[j]) ** 2, -1)
        return jnp.mean(total)

    kl_hat = jnp.mean(sum(2 / M / hand_noise_sq(j + 1, M) * jnp.sum(diff(state.actor, j) ** 2, -1)
                          for j in range(M))) / H
    kl_const = jnp.mean(sum(0.5 / M * hand_noise_sq(j + 1, M) * jnp.sum(adjoints[j] ** 2, -1) for j in range(M)))
    critic_total = lambda critic: critic_loss(critic) + GAP * value_gap(critic)
    return dict(
        next_key=next_key, target=target, kl_hat=kl_hat, kl_const=kl_const, lam_eff=lam_eff, a_hat=a_hat,
        bc_loss=bc_loss(state.actor_bc), critic_loss=critic_loss(state.critic), value_gap=value_gap(state.critic),
        actor_loss=actor_loss(state.actor), q_mean=q(state.critic, obs, chunks_).mean(),
        grads=agent.Trainable(jax.grad(critic_total)(state.critic), jax.grad(bc_loss)(state.actor_bc),
                              jax.grad(actor_loss)(state.actor)),
        penalty_grad=jax.grad(lambda c: GAP * value_gap(c))(state.critic),
    )


@functools.lru_cache(maxsize=None)
def update_case():
    cfg = make_config()
    nets = agent.make_networks(cfg, D)
    state, batch = fast_jit(lambda: (make_state(cfg, nets), make_batch()))()
    new_state, metrics = fast_jit(agent.make_update_fn(cfg, nets))(state, batch)
    ref = fast_jit(lambda state, batch: hand_reference(cfg, nets, state, batch))(state, batch)
    return cfg, nets, state, batch, new_state, metrics, ref


def test_update_equals_hand_reference():
    cfg, nets, state, batch, new_state, metrics, ref = update_case()
    assert float(state.hparams.gap_reg_coef) == pytest.approx(GAP) and float(state.hparams.kl_budget) == EPS
    # The endpoint leaves [-1, 1] somewhere, so the clip of the adjoint and of the penalty both act.
    assert np.max(np.abs(np.asarray(ref["a_hat"]))) > 1.0
    expected = {name: ref[name] for name in ("bc_loss", "critic_loss", "q_mean", "actor_loss", "kl_hat", "kl_const",
                                             "value_gap")}
    kl_ema = 0.9 * float(state.dual.kl_ema) + 0.1 * min(float(ref["kl_hat"]), 2 * EPS)
    lam = float(np.clip(float(state.dual.lam) + 0.01 * (kl_ema - EPS), 0.01, 100.0))
    expected.update(
        target_mean=ref["target"].mean(), lambda_eff=ref["lam_eff"], value_penalty=GAP * ref["value_gap"],
        kl_closed_form=ref["kl_const"] / ref["lam_eff"] ** 2, kl_ema=kl_ema, kl_clip_active=0.0,
        grad_norm=np.sqrt(sum(np.sum(g**2) for g in leaves(ref["grads"]))))
    assert set(metrics) == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(metrics[name], value, rtol=RTOL, atol=ATOL, err_msg=name)
    assert float(metrics["kl_hat"]) > 1e-3 and abs(float(metrics["value_gap"])) > 1e-3
    np.testing.assert_allclose(new_state.dual.lam, lam, rtol=1e-6)  # the dual step of TRQAM, on SQAM's KL
    # One clip + Adam step with the hand gradients; the EMAs mix in the pre-step parameters, on every leaf.
    params = agent.Trainable(state.critic, state.actor_bc, state.actor)
    stepped, _ = one_adam_step(params, ref["grads"], cfg)
    for name in agent.Trainable._fields:
        assert_trees_close(getattr(new_state, name), getattr(stepped, name), rtol=0, atol=0.02 * cfg.learning_rate)
    mix = lambda online, target: jax.tree_util.tree_map(lambda o, t: cfg.tau * o + (1 - cfg.tau) * t, online, target)
    assert_trees_close(new_state.critic_target, mix(state.critic, state.critic_target), rtol=1e-6, atol=1e-7)
    assert_trees_close(new_state.actor_ref, mix(state.actor_bc, state.actor_ref), rtol=1e-6, atol=1e-7)
    assert int(new_state.step) == 1
    np.testing.assert_array_equal(new_state.key, ref["next_key"])


def test_each_loss_moves_only_its_own_parameters():
    """L_AM -> actor; the TD loss and the value penalty -> critic; L_BC -> actor_bc; nothing else."""
    cfg, nets, state, batch, _, _, ref = update_case()
    total_loss = agent.make_total_loss(cfg, nets)
    _, keys = agent.split_update_key(state.key)
    params = agent.Trainable(state.critic, state.actor_bc, state.actor)
    names = ("critic_loss", "value_penalty", "bc_loss", "actor_loss")
    owners = ("critic", "critic", "actor_bc", "actor")

    def per_loss(p):
        loss, metrics = total_loss(p, state, batch, keys)
        values = jnp.stack([metrics[name] for name in names])
        return values, (loss, values)

    jacobian, (loss, values) = fast_jit(jax.jacrev(per_loss, has_aux=True))(params)
    np.testing.assert_allclose(loss, jnp.sum(values), rtol=1e-6)  # the total is the sum of the four
    hand = {"critic_loss": None, "value_penalty": ref["penalty_grad"], "bc_loss": ref["grads"].actor_bc,
            "actor_loss": ref["grads"].actor}
    for row, (name, owner) in enumerate(zip(names, owners)):
        for field in agent.Trainable._fields:
            grads = jax.tree_util.tree_map(lambda g: g[row], getattr(jacobian, field))
            if field != owner:
                assert all(np.all(g == 0) for g in leaves(grads)), (name, field)
            elif hand[name] is not None:
                assert_trees_close(grads, hand[name])
            else:  # the TD part: the critic's hand gradient less the penalty's
                assert_trees_close(grads, jax.tree_util.tree_map(lambda a, b: a - b, ref["grads"].critic,
                                                                 ref["penalty_grad"]))
        assert max(np.max(np.abs(g)) for g in leaves(getattr(jacobian, owner))) > 0  # each loss does move its own


# ------------------------------------------------------------------------------------------------
# Learners.


def test_sqam_learners_with_per_learner_eps_and_gap_equal_separate_runs():
    """4 learners (2 tasks x 2 (eps, c) pairs, one seed) in one program = 4 single-task SQAM runs whose
    configs hold those values. The first pair is SQAM's default (0.5, 0.3)."""
    cfg = tl.config(method="sqam", n_bridge=3)
    assert (cfg.kl_budget, cfg.gap_reg_coef) == (0.5, 0.3)
    pairs = [(0.5, 0.3), (0.05, 2.0)]
    per_learner = [pairs[i % 2] for i in range(len(tl.TASKS))]
    hparams = agent.hyperparams(cfg, kl_budget=np.array([p[0] for p in per_learner]),
                                gap_reg_coef=np.array([p[1] for p in per_learner]))
    arrays = tl.domain_arrays()
    multi = tl.run(cfg, "task", [tl.SEED0] * len(tl.TASKS), chunks.TaskData(tl.domain_data(arrays),
                                                                          jnp.asarray(tl.TASKS)), hparams=hparams)
    offline = [tl.task_data(arrays, task) for task in (0, 1)]
    for i, (task, (eps, gap)) in enumerate(zip(tl.TASKS, per_learner)):
        single_cfg = tl.config(method="sqam", n_bridge=3, kl_budget=eps, gap_reg_coef=gap)
        single = tl.run(single_cfg, "offline", [tl.SEED0], offline[task])
        np.testing.assert_allclose(single[0].hparams.gap_reg_coef, [gap])
        tl.assert_learner_equals(multi, i, single)
    # The values bite: learners 0 and 1 (same seed and task) end with different critics and multipliers.
    states, metrics = multi
    assert tl.max_abs_diff(tl.learner(states.critic, 0), tl.learner(states.critic, 1)) > 1e-4
    assert abs(float(metrics["value_penalty"][0, -1] / metrics["value_gap"][0, -1]) - 0.3) < 1e-4
    assert abs(float(metrics["value_penalty"][1, -1] / metrics["value_gap"][1, -1]) - 2.0) < 1e-4
    assert abs(float(states.dual.lam[0] - states.dual.lam[1])) > 1e-5


# ------------------------------------------------------------------------------------------------
# TRQAM and QAM are unchanged.

# Recorded with the code before SQAM was added (commit 3b831fd): for each method, 3 scanned updates of
# 2 seeds, every metric of the last update, and the sum and the sum of squares of each parameter set.
PINNED = {
    "trqam": {
        "m/actor_loss": [0.18402086198329926, 0.1385471075773239],
        "m/bc_loss": [0.9623934030532837, 1.0635839700698853],
        "m/critic_loss": [3.54103946685791, 0.9790621995925903],
        "m/grad_norm": [10.471826553344727, 4.975128650665283],
        "m/kl_clip_active": [0.0, 0.0],
        "m/kl_closed_form": [0.010382883250713348, 0.008189422078430653],
        "m/kl_const": [0.09325914829969406, 0.07355745881795883],
        "m/kl_ema": [3.2776513307908317e-06, 4.357726993475808e-06],
        "m/kl_hat": [2.6489633455639705e-05, 2.9951101168990135e-05],
        "m/lambda_eff": [2.996999979019165, 2.996999979019165],
        "m/q_mean": [-0.2801485061645508, -0.4110602140426636],
        "m/target_mean": [-0.5278996229171753, -0.547751784324646],
        "p/critic": [176.93333624173079, 356.4401846813789],
        "p/critic_target": [176.94932832781944, 356.4797136985483],
        "p/actor_bc": [-4.704216473870474, 65.52550966497029],
        "p/actor_ref": [-4.698000863313496, 65.52507685557815],
        "p/actor": [-4.695230463221378, 65.51711632983688],
        "dual": [[0.9985000491142273, 0.9985000491142273], [3.2776513307908317e-06, 4.357726993475808e-06]],
    },
    "qam": {
        "m/actor_loss": [2.231304883956909, 1.7458606958389282],
        "m/bc_loss": [0.9623940587043762, 1.0635581016540527],
        "m/critic_loss": [3.5408787727355957, 0.9788565039634705],
        "m/grad_norm": [12.414338111877441, 6.9560723304748535],
        "m/kl_closed_form": [0.3730224668979645, 0.2942355275154114],
        "m/kl_const": [0.09325561672449112, 0.07355888187885284],
        "m/kl_hat": [2.7351004973752424e-05, 3.121795452898368e-05],
        "m/lambda_eff": [0.5, 0.5],
        "m/q_mean": [-0.28015583753585815, -0.4108906686306],
        "m/target_mean": [-0.5278621912002563, -0.5477156639099121],
        "p/critic": [176.9340526145342, 356.44005829352284],
        "p/critic_target": [176.94933092969006, 356.4797134691506],
        "p/actor_bc": [-4.704525037621352, 65.5255699882215],
        "p/actor_ref": [-4.698001890572414, 65.52507701594851],
        "p/actor": [-4.693246643832026, 65.51776552963193],
        "dual": [[1.0, 1.0], [0.0, 0.0]],
    },
}


def fingerprint(method):
    """3 updates of 2 seeds of `method` on a fixed synthetic dataset: {name: values}, float64."""
    cfg = agent.AgentConfig(method=method, hidden_dims=(16, 16), num_critics=3, flow_steps=3, batch_size=8,
                            inv_temp=2.0, kl_budget=0.05)
    nets = agent.make_networks(cfg, 4)

    def inputs():
        k = jax.random.split(jax.random.PRNGKey(11), 5)
        n = 64
        data = Batch(jax.random.normal(k[0], (n, 3)), jnp.clip(0.7 * jax.random.normal(k[1], (n, 2, 2)), -1, 1),
                     jax.random.normal(k[2], (n,)), (jnp.arange(n) % 3 != 0).astype(jnp.float32),
                     jax.random.normal(k[3], (n, 3)), (jnp.arange(n) % 4 != 1).astype(jnp.float32))
        return agent.init_learners(jnp.array([0, 5]), cfg, nets, 3, 4), data

    states, data = fast_jit(inputs)()
    train = agent.make_train_fn(cfg, nets, agent.uniform_sampler(8), 3)
    states, metrics = train.lower(states, data).compile(compiler_options=tl.FAST_COMPILE)(states, data)
    out = {f"m/{name}": np.asarray(v, np.float64)[:, -1] for name, v in metrics.items()}
    for field in ("critic", "critic_target", "actor_bc", "actor_ref", "actor"):
        tree = [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(getattr(states, field))]
        out[f"p/{field}"] = np.array([sum(np.sum(x) for x in tree), sum(np.sum(x**2) for x in tree)])
    out["dual"] = np.array([np.asarray(states.dual.lam, np.float64), np.asarray(states.dual.kl_ema, np.float64)])
    return out


@pytest.mark.parametrize("method", ["trqam", "qam"])
def test_trqam_and_qam_reproduce_the_numbers_from_before_sqam(method):
    """Every metric of the last update and every parameter set's checksums, recorded before SQAM existed.

    The numbers were recorded with the default jit; on the recording machine the code after SQAM gave
    bit-identical results there. Here both programs compile at XLA's lowest backend optimisation level
    (faster), which changes float32 rounding by about 1e-5 relative on the KL and its EMA (small
    differences of large velocities) and 1e-8 on the checksums: the tolerances leave room for that only,
    while one Adam step moves a checksum by about 1e-3 relative.
    """
    got = fingerprint(method)
    assert set(got) == set(PINNED[method])
    for name, expected in PINNED[method].items():
        tol = dict(rtol=2e-6, atol=0) if name.startswith("p/") else dict(rtol=1e-4, atol=1e-8)
        np.testing.assert_allclose(got[name], np.asarray(expected, np.float64), err_msg=name, **tol)


# ------------------------------------------------------------------------------------------------
# Through the launcher.


def test_sqam_program_trains_checkpoints_resumes_reports_and_shares_bc(dataset_dir, tmp_path, capsys):
    """--method=sqam with a value-penalty axis: one program, run dirs sqam_gap0 and sqam_gap0.3, each with
    its c in train.csv and its checkpoints; a resume finds them finished; the report reads them; the
    policy loads; and the BC cache is the domain's, shared with the other methods."""
    from experiments import report
    from experiments.infra import checkpointing
    from experiments.policy import load_policy
    from experiments.runner import bc, plan, program, spec
    from tests.test_launcher import ENV, read_csv, tiny_config

    overrides = dict(method="sqam", num_seeds=1, offline_steps=100, eval_every=100, save_every=100, bc_steps=50,
                     eval_async=False, **{"sweep.gap_reg_coef": "0,0.3", "agent.n_bridge": 3})
    config = tiny_config(dataset_dir, tmp_path, **overrides)
    run_dirs = program.run_program(config, plan.task_names(config))
    assert [os.path.basename(d) for d in run_dirs] == ["sqam_gap0", "sqam_gap0.3"]
    assert "Program of 2 learners (1 task x 2 budgets x 1 seed)" in capsys.readouterr().out
    for run_dir, gap in zip(run_dirs, (0.0, 0.3)):
        rows = read_csv(os.path.join(run_dir, "train.csv"))
        assert len(rows) == 2  # 1 seed x 2 log rows of 50 steps
        for row in rows:
            assert float(row["value_penalty"]) == pytest.approx(gap * float(row["value_gap"]), rel=1e-5, abs=1e-7)
            assert float(row["kl_hat"]) > 0 and float(row["lambda_eff"]) > 0
        assert abs(float(rows[-1]["value_gap"])) > 0
        assert checkpointing.Checkpointer(os.path.join(run_dir, "checkpoints")).steps() == [100]
        with open(os.path.join(run_dir, "task.json")) as f:
            task = json.load(f)
        assert task["offline"]["kl_budget"] == 0.5 and task["offline"]["gap_reg_coef"] == gap  # SQAM's eps
    # A resume of the same program finds both runs finished; the report and the policy read them.
    assert program.run_program(config, plan.task_names(config), resume=True) == run_dirs
    assert "already finished" in capsys.readouterr().out
    rows = report.stats.aggregate(report.runs.load_runs(str(tmp_path)), "offline")
    assert {r.method for r in rows if r.level == "task"} == {"sqam_gap0", "sqam_gap0.3"}
    policy = load_policy(run_dirs[1])
    assert policy.step == 100
    # The BC cache is the domain's, and what it depends on does not depend on the method: a TRQAM or QAM
    # run of the domain reuses it (tests/test_lifecycle.py shows the reuse across methods).
    assert os.path.isdir(os.path.join(str(tmp_path), bc.BC_DIR, "cube-single-play"))
    bc_of = lambda method: spec.resolve(tiny_config(dataset_dir, tmp_path, method=method), ENV).bc
    for field in ("hidden_dims", "actor_layer_norm", "batch_size", "learning_rate", "grad_clip_norm", "method"):
        assert getattr(bc_of("sqam"), field) == getattr(bc_of("trqam"), field) == getattr(bc_of("qam"), field)


def test_a_reference_sqam_checkpoint_imports_into_an_sqam_state(tmp_path):
    """The authors' SQAM agent saves the same six modules and the dual (lam, kl_ema) as their TRQAM agent,
    so `experiments.infra.reference_checkpoint` imports it as it imports TRQAM's: here into an SQAM state,
    whose policy then computes the reference's actor_fast, with the reference's multiplier."""
    from experiments.infra import reference_checkpoint as rc
    from tests import test_reference_checkpoint as trc

    modules, params = trc.reference_agent()
    params = {k: jax.tree_util.tree_map(lambda p, i=i: p + 0.01 * (i + 1), v)
              for i, (k, v) in enumerate(sorted(params.items()))}
    path = trc.write_reference_pickle(tmp_path / "params_1000000.pkl", params, {"lam": 0.7, "kl_ema": 0.4})
    cfg = agent.AgentConfig(method="sqam", hidden_dims=trc.HIDDEN, num_critics=3, flow_steps=3, batch_size=4,
                            n_bridge=3)
    nets = agent.make_networks(cfg, trc.CHUNK)
    like = fast_jit(lambda: agent.init_train_state(jax.random.PRNGKey(0), cfg, nets, trc.OBS, trc.CHUNK))()
    dual = rc.import_dual(path)
    state = like.replace(
        **{name: rc.import_actor(path, like.actor, which=name) for name in ("actor", "actor_bc", "actor_ref")},
        **{name: rc.import_critic(path, like.critic, which=name) for name in ("critic", "critic_target")},
        dual=like.dual._replace(lam=jnp.float32(dual["lam"]), kl_ema=jnp.float32(dual["kl_ema"])))
    s, x, t = trc.random_inputs()
    reference = modules.apply({"params": params}, name="actor_fast", args=(s, x, t[:, None]))
    np.testing.assert_allclose(nets.actor.apply(state.actor, s, x, t), reference, rtol=1e-5, atol=1e-6)
    assert float(agent.lambda_eff(cfg, state)) == pytest.approx(3 * 0.7)  # the dual carries over


def test_sqam_settings_come_from_the_domain_table_and_overrides_win():
    from experiments.configs import ogbench
    from experiments.runner import plan, spec

    assert (agent.AgentConfig(method="sqam").kl_budget, agent.AgentConfig().kl_budget) == (0.5, 1.0)
    assert agent.AgentConfig(method="sqam", kl_budget=2.0).kl_budget == 2.0
    assert agent.static_config(agent.AgentConfig(method="sqam", kl_budget=2.0, gap_reg_coef=0.0)) == \
        agent.AgentConfig(method="sqam")
    config = ogbench.get_config()
    config.method = "sqam"
    config.lock()
    suite = ogbench.get_config()
    suite.suite = "ogbench50"
    for env_name in spec.task_list(suite):
        offline = spec.resolve(config, env_name).offline
        cube_double = env_name.startswith("cube-double-play")
        assert (offline.method, offline.kl_budget, offline.n_bridge) == ("sqam", 0.5, 10), env_name
        assert offline.gap_reg_coef == (0.0 if cube_double else 0.3), env_name
    env = "scene-play-singletask-task1-v0"
    with config.unlocked():
        config.agent.gap_reg_coef, config.agent.n_bridge, config.agent.kl_budget = 0.1, 4, 0.7
    offline = spec.resolve(config, env).offline
    assert (offline.gap_reg_coef, offline.n_bridge, offline.kl_budget) == (0.1, 4, 0.7)
    assert plan.run_name(config, "sqam") == "sqam_eps0.7_gap0.1"
    with config.unlocked():
        config.agent.gap_reg_coef, config.agent.kl_budget = None, None
    assert plan.run_name(config, "sqam") == "sqam"
    # Bad values are one line naming the field.
    for field, value, message in [("agent.gap_reg_coef", -0.1, "gap_reg_coef"), ("agent.n_bridge", 0, "n_bridge"),
                                  ("sweep.gap_reg_coef", "0,-1", ">= 0"), ("sweep.inv_temp", "1,3", "QAM budget")]:
        bad = ogbench.get_config()
        bad.method = "sqam"
        bad.update_from_flattened_dict({field: value})
        with pytest.raises(spec.ConfigError, match=message):
            plan.plan(bad, [env])
