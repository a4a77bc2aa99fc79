"""The update's wiring: which network each loss reads, where each gradient goes, which draws it uses.

The reference below is assembled by hand from the formulas of the flow, the critic, the adjoint and
the losses, calling the networks' `apply` directly and naming every parameter set explicitly. It
shares no code with the library's composition: only the networks and the PRNG key layout of one
update (documented at `agent.split_update_key`). The state makes every pair that a wrong wiring could
confuse differ: actor, actor_bc and actor_ref are three independent initialisations, critic and
critic_target are two, and the critic reads the action.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trqam_jax import agent
from trqam_jax.dual import DualState
from trqam_jax.types import Batch

OBS, H, A, K, B, N = 3, 2, 2, 3, 8, 3
D = H * A
LAM0, KL_EMA0, INV_TEMP, EPS = 0.8, 0.3, 2.0, 4.0
RTOL, ATOL = 2e-4, 1e-6
# Each program here runs once: skipping XLA's backend optimisations halves the compile time.
fast_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def make_config(method):
    return agent.AgentConfig(method=method, hidden_dims=(16, 16), num_critics=N, flow_steps=K, batch_size=B,
                             discount=0.97, rho=0.5, lam_init=LAM0, inv_temp=INV_TEMP, kl_budget=EPS)


def make_batch():
    k = jax.random.split(jax.random.PRNGKey(100), 5)
    return Batch(
        observations=jax.random.normal(k[0], (B, OBS)),
        actions=jnp.clip(0.7 * jax.random.normal(k[1], (B, H, A)), -1 + 1e-5, 1 - 1e-5),
        rewards=jax.random.normal(k[2], (B,)),
        masks=(jnp.arange(B) % 3 != 0).astype(jnp.float32),
        next_observations=jax.random.normal(k[3], (B, OBS)),
        valid=(jnp.arange(B) % 4 != 1).astype(jnp.float32),
    )


def make_state(cfg, nets):
    """A state whose five parameter sets are all different, with lam and the KL EMA off their inits."""
    s, x = jnp.zeros(OBS), jnp.zeros(D)
    actor_init = lambda seed: nets.actor.init(jax.random.PRNGKey(seed), s, x, 0.0)
    critic_init = lambda seed: nets.critic.init(jax.random.PRNGKey(seed), s, x)
    critic, actor_bc, actor = critic_init(1), actor_init(2), actor_init(3)
    return agent.TrainState(
        critic=critic,
        critic_target=critic_init(4),
        actor_bc=actor_bc,
        actor_ref=actor_init(5),
        actor=actor,
        opt_state=agent.make_optimizer(cfg).init(agent.Trainable(critic, actor_bc, actor)),
        dual=DualState(lam=jnp.float32(LAM0), kl_ema=jnp.float32(KL_EMA0)),
        hparams=agent.hyperparams(cfg),
        step=jnp.zeros((), jnp.int32),
        key=jax.random.PRNGKey(7),
    )


def g_sq(i):
    """g_i^2 = 2 (1 - t_i + h) / (t_i + h) at t_i = i / K."""
    h = 1.0 / K
    return 2.0 * (1.0 - i * h + h) / (i * h + h)


def hand_reference(cfg, nets, state, batch):
    """Every quantity of one update, by hand, naming the parameter set that each step reads.

    Returns a dict of arrays; the losses are written as functions of the one parameter set they train,
    and `grads` holds each loss's gradient in that set. Jit it: the loops unroll.
    """
    v = lambda params, obs, x, t: nets.actor.apply(params, obs, x, t)
    q = lambda params, obs, a: nets.critic.apply(params, obs, a)  # (N, B)
    h = 1.0 / K
    obs, next_obs = batch.observations, batch.next_observations
    chunks = batch.actions.reshape(B, D)

    # The draws of one update: next_key, bc, critic, actor = split(state.key, 4).
    next_key, bc_key, critic_key, actor_key = jax.random.split(state.key, 4)
    bc_noise_key, bc_time_key = jax.random.split(bc_key)
    bc_x0 = jax.random.normal(bc_noise_key, (B, D))
    bc_t = jax.random.uniform(bc_time_key, (B,))
    next_x0 = jax.random.normal(critic_key, (B, D))
    sde_x0_key, sde_eps_key = jax.random.split(actor_key)
    sde_x0 = jax.random.normal(sde_x0_key, (B, D))
    sde_eps = jax.random.normal(sde_eps_key, (B, K - 1, D))

    # Critic target: next actions by K Euler steps of ACTOR at s', clipped; heads of CRITIC_TARGET.
    x = next_x0
    for i in range(K):
        x = x + h * v(state.actor, next_obs, x, i * h)
    next_q = q(state.critic_target, next_obs, jnp.clip(x, -1.0, 1.0))
    target = batch.rewards + cfg.discount**H * batch.masks * (next_q.mean(axis=0) - cfg.rho * next_q.std(axis=0))

    # Memoryless SDE with ACTOR for steps 0..K-2, then one ODE step of ACTOR_REF.
    x, states = sde_x0, []
    for i in range(K - 1):
        states.append(x)
        t = i * h
        x = x + h * (2.0 * v(state.actor, obs, x, t) - x / (t + h)) + np.sqrt(h * g_sq(i)) * sde_eps[:, i]
    states.append(x)
    x_k = x + h * v(state.actor_ref, obs, x, (K - 1) * h)

    # Lean adjoint: a_K = -grad mean_j CRITIC_TARGET_j(s, clip(x_K)); backward with ACTOR_REF.
    # The examples do not interact, so a batched grad / VJP is the per-example one.
    q_sum = lambda a: jnp.sum(q(state.critic_target, obs, jnp.clip(a, -1.0, 1.0)).mean(axis=0))
    adjoint, adjoints = -jax.grad(q_sum)(x_k), [None] * K
    for i in reversed(range(K)):
        t = i * h + h
        _, vjp = jax.vjp(lambda y: 2.0 * v(state.actor_ref, obs, y, t) - y / t, states[i])
        adjoint = adjoint + h * vjp(adjoint)[0]
        adjoints[i] = adjoint

    if cfg.method == "qam":
        lam_eff, noise_scale, adjoint_scale = jnp.float32(1.0 / cfg.inv_temp), 1.0, cfg.inv_temp
    else:
        lam_eff = cfg.lam_scale * state.dual.lam
        noise_scale, adjoint_scale = 1.0 / jnp.sqrt(lam_eff), 1.0

    def bc_loss(actor_bc):  # flow matching of ACTOR_BC on the dataset chunks
        x_t = (1 - bc_t[:, None]) * bc_x0 + bc_t[:, None] * chunks
        pred = v(actor_bc, obs, x_t, bc_t)
        return jnp.mean(jnp.mean((pred - (chunks - bc_x0)) ** 2, -1) * batch.valid)

    def critic_loss(critic):  # CRITIC against the target
        return jnp.mean((q(critic, obs, chunks) - target[None]) ** 2 * batch.valid[None])

    def diff(actor, i):  # d_i = ACTOR - ACTOR_REF at (x_i, t_i)
        return v(actor, obs, states[i], i * h) - v(state.actor_ref, obs, states[i], i * h)

    def actor_loss(actor):  # sum over steps and dims of (2 d_i / sigma_i + sigma_i a_i)^2
        total = 0.0
        for i in range(K):
            sigma = np.sqrt(g_sq(i)) * noise_scale
            total = total + jnp.sum((2 * diff(actor, i) / sigma + sigma * adjoint_scale * adjoints[i]) ** 2, -1)
        return jnp.mean(total)

    kl_hat = jnp.mean(sum(2 * h / g_sq(i) * jnp.sum(diff(state.actor, i) ** 2, -1) for i in range(K))) / H
    kl_const = jnp.mean(sum(0.5 * h * g_sq(i) * jnp.sum(adjoints[i] ** 2, -1) for i in range(K)))
    return dict(
        next_key=next_key, target=target, kl_hat=kl_hat, kl_const=kl_const, lam_eff=lam_eff,
        bc_loss=bc_loss(state.actor_bc), critic_loss=critic_loss(state.critic), actor_loss=actor_loss(state.actor),
        q_mean=q(state.critic, obs, chunks).mean(),
        grads=agent.Trainable(jax.grad(critic_loss)(state.critic), jax.grad(bc_loss)(state.actor_bc),
                              jax.grad(actor_loss)(state.actor)),
    )


def hand_dual(cfg, state, kl_hat):
    """(lam, kl_ema) after the dual step of TRQAM; unchanged in QAM."""
    kl_ema, lam = float(state.dual.kl_ema), float(state.dual.lam)
    if cfg.method == "trqam":
        kl_ema = 0.9 * kl_ema + 0.1 * min(float(kl_hat), 2.0 * cfg.kl_budget)
        lam = float(np.clip(lam + 0.01 * (kl_ema - cfg.kl_budget), 0.01, 100.0))
    return lam, kl_ema


def leaves(tree):
    return [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(tree)]


def assert_trees_close(got, expected, rtol=RTOL, atol=ATOL):
    got, expected = leaves(got), leaves(expected)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=rtol, atol=atol)


def one_adam_step(params, grads, cfg):
    """First step of clip-by-global-norm + Adam from zero moments, by hand: -lr * g / (|g| + 1e-8)."""
    norm = np.sqrt(sum(np.sum(g**2) for g in leaves(grads)))
    scale = min(1.0, cfg.grad_clip_norm / norm)
    step = lambda p, g: p - cfg.learning_rate * (g * scale) / (np.abs(g * scale) + 1e-8)
    return jax.tree_util.tree_map(lambda p, g: step(np.asarray(p, np.float64), np.asarray(g, np.float64)),
                                  params, grads), norm


@functools.lru_cache(maxsize=None)
def run_case(method):
    """One jitted update of `method` on the test state, and the hand reference of the same step."""
    cfg = make_config(method)
    nets = agent.make_networks(cfg, D)
    state, batch = fast_jit(lambda: (make_state(cfg, nets), make_batch()))()
    new_state, metrics = fast_jit(agent.make_update_fn(cfg, nets))(state, batch)
    ref = fast_jit(lambda state, batch: hand_reference(cfg, nets, state, batch))(state, batch)
    return cfg, nets, state, batch, new_state, metrics, ref


@pytest.fixture(params=["trqam", "qam"])
def case(request):
    return run_case(request.param)


def test_state_makes_every_wiring_visible(case):
    cfg, nets, state, batch, *_ = case
    flat = lambda name: np.concatenate([x.ravel() for x in leaves(getattr(state, name))])
    for a, b in [("actor", "actor_bc"), ("actor", "actor_ref"), ("actor_bc", "actor_ref"), ("critic", "critic_target")]:
        assert np.max(np.abs(flat(a) - flat(b))) > 0.1, (a, b)
    q = nets.critic.apply(state.critic, batch.observations, batch.actions.reshape(B, D))
    q_moved = nets.critic.apply(state.critic, batch.observations, -batch.actions.reshape(B, D))
    assert np.min(np.abs(np.asarray(q - q_moved))) > 1e-3  # every head reads the action


def test_metrics_equal_hand_reference(case):
    cfg, nets, state, batch, new_state, metrics, ref = case
    expected = {name: ref[name] for name in ("bc_loss", "critic_loss", "q_mean", "actor_loss", "kl_hat", "kl_const")}
    expected.update(
        target_mean=ref["target"].mean(),
        lambda_eff=ref["lam_eff"],
        kl_closed_form=ref["kl_const"] / ref["lam_eff"] ** 2,
        grad_norm=np.sqrt(sum(np.sum(g**2) for g in leaves(ref["grads"]))),
    )
    lam, kl_ema = hand_dual(cfg, state, ref["kl_hat"])
    if cfg.method == "trqam":
        assert float(ref["kl_hat"]) < 2 * EPS  # the KL reaches the dual unclipped
        expected.update(kl_ema=kl_ema, kl_clip_active=0.0)
    assert set(metrics) == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(metrics[name], value, rtol=RTOL, atol=ATOL, err_msg=name)
    assert float(metrics["kl_hat"]) > 1e-3 and float(metrics["actor_loss"]) > 0  # the actors differ
    np.testing.assert_allclose(new_state.dual.lam, lam, rtol=1e-6)
    np.testing.assert_allclose(new_state.dual.kl_ema, kl_ema, rtol=1e-6)
    if cfg.method == "qam":  # lam and its EMA do not move in QAM
        assert float(new_state.dual.lam) == pytest.approx(LAM0) and float(new_state.dual.kl_ema) == pytest.approx(KL_EMA0)


def test_update_applies_hand_gradients_and_pre_step_targets(case):
    cfg, nets, state, batch, new_state, metrics, ref = case
    params = agent.Trainable(state.critic, state.actor_bc, state.actor)
    expected, _ = one_adam_step(params, ref["grads"], cfg)
    # A first Adam step moves each weight by about lr: compare to a small fraction of it.
    for name in agent.Trainable._fields:
        assert_trees_close(getattr(new_state, name), getattr(expected, name), rtol=0, atol=0.02 * cfg.learning_rate)
    # The targets mix in the parameters from BEFORE the step, on every leaf.
    tau = cfg.tau
    mix = lambda online, target: jax.tree_util.tree_map(lambda o, t: tau * o + (1 - tau) * t, online, target)
    assert_trees_close(new_state.critic_target, mix(state.critic, state.critic_target), rtol=1e-6, atol=1e-7)
    assert_trees_close(new_state.actor_ref, mix(state.actor_bc, state.actor_ref), rtol=1e-6, atol=1e-7)
    assert int(new_state.step) == 1
    np.testing.assert_array_equal(new_state.key, ref["next_key"])


def test_each_loss_moves_only_its_own_parameters():
    """Per-loss gradients of the update's total loss: L_Q -> critic, L_BC -> actor_bc, L_AM -> actor.

    TRQAM only: QAM shares the wiring and differs only in the scales, which test_metrics pins.
    """
    cfg, nets, state, batch, _, _, ref = run_case("trqam")
    total_loss = agent.make_total_loss(cfg, nets)
    _, keys = agent.split_update_key(state.key)
    params = agent.Trainable(state.critic, state.actor_bc, state.actor)
    names = ("critic_loss", "bc_loss", "actor_loss")

    def per_loss(p):
        loss, metrics = total_loss(p, state, batch, keys)
        values = jnp.stack([metrics[name] for name in names])
        return values, (loss, values)

    # A Trainable of leaves (3, ...): one row per loss.
    jacobian, (loss, values) = fast_jit(jax.jacrev(per_loss, has_aux=True))(params)
    np.testing.assert_allclose(loss, jnp.sum(values), rtol=1e-6)  # the total is the sum of the three
    hand = ref["grads"]
    for row, owner in enumerate(agent.Trainable._fields):  # critic, actor_bc, actor: in the order of names
        for field in agent.Trainable._fields:
            grads = jax.tree_util.tree_map(lambda g: g[row], getattr(jacobian, field))
            if field == owner:
                assert_trees_close(grads, getattr(hand, field))
            else:
                assert all(np.all(g == 0) for g in leaves(grads)), (names[row], field)
