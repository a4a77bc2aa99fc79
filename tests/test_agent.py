"""The update step, its losses through the real networks, and vmapping over seeds."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trqam_jax import agent
from trqam_jax.adjoint import qam_scales, trqam_scales
from trqam_jax.types import Batch

OBS, H, A, K = 3, 2, 2, 4
D = H * A
# Each program here runs a few times at most: skipping XLA's backend optimisations halves compile time.
fast_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def tiny_config(**kw):
    return agent.AgentConfig(hidden_dims=(32, 32), num_critics=4, flow_steps=K, batch_size=8, **kw)


def random_batch(n=8, seed=0):
    k = jax.random.split(jax.random.PRNGKey(seed), 5)
    return Batch(
        observations=jax.random.normal(k[0], (n, OBS)),
        actions=jnp.clip(jax.random.normal(k[1], (n, H, A)), -1, 1),
        rewards=jax.random.normal(k[2], (n,)),
        masks=(jnp.arange(n) % 3 != 0).astype(jnp.float32),
        next_observations=jax.random.normal(k[3], (n, OBS)),
        valid=(jnp.arange(n) % 4 != 1).astype(jnp.float32),
    )


class OffsetVelocity(nn.Module):
    """v(s, x, t) = -x + offset: a field whose difference between two parameter sets is the offset."""

    chunk_dim: int

    @nn.compact
    def __call__(self, observations, x, t):
        return -x + self.param("offset", nn.initializers.zeros, (self.chunk_dim,))


class StateCritic(nn.Module):
    """Q_j(s, a) = w_j . s + b_j: ignores the action, so TD targets can be computed by hand."""

    num_critics: int = 3

    @nn.compact
    def __call__(self, observations, actions):
        w = self.param("w", nn.initializers.normal(1.0), (self.num_critics, observations.shape[-1]))
        b = self.param("b", nn.initializers.normal(1.0), (self.num_critics,))
        return jnp.einsum("no,...o->n...", w, observations) + b.reshape((-1,) + (1,) * (observations.ndim - 1))


def test_networks_shapes_and_independent_heads():
    cfg = tiny_config()
    nets = agent.make_networks(cfg, D)
    s, x = jax.random.normal(jax.random.PRNGKey(2), (5, OBS)), jax.random.normal(jax.random.PRNGKey(3), (5, D))
    critic = nets.critic.init(jax.random.PRNGKey(0), s[0], x[0])
    q = nets.critic.apply(critic, s, x)
    assert q.shape == (4, 5) and nets.critic.apply(critic, s[0], x[0]).shape == (4,)
    assert len(np.unique(np.round(np.asarray(q[:, 0]), 6))) == 4  # heads are initialised apart
    # Every head reads the action chunk, not only the observation.
    assert np.min(np.abs(np.asarray(nets.critic.apply(critic, s, x + 0.5) - q))) > 1e-4
    actor = nets.actor.init(jax.random.PRNGKey(1), s[0], x[0], 0.0)
    scalar_t = nets.actor.apply(actor, s, x, 0.3)
    np.testing.assert_allclose(scalar_t, nets.actor.apply(actor, s, x, jnp.full((5,), 0.3)), rtol=1e-6)
    assert scalar_t.shape == (5, D)
    # The velocity reads each of t, s and x: changing one alone changes every example's output.
    changed = {"t": nets.actor.apply(actor, s, x, 0.8), "s": nets.actor.apply(actor, s + 0.5, x, 0.3),
               "x": nets.actor.apply(actor, s, x + 0.5, 0.3)}
    for name, out in changed.items():
        assert np.min(np.max(np.abs(np.asarray(out - scalar_t)), axis=-1)) > 1e-4, name
    # Per-example times are used per example: a time vector gives row i the output of its own t_i.
    times = jnp.linspace(0.0, 1.0, 5)
    per_example = nets.actor.apply(actor, s, x, times)
    for i in (0, 4):
        np.testing.assert_allclose(per_example[i], nets.actor.apply(actor, s[i], x[i], times[i]), rtol=1e-5, atol=1e-6)


def test_path_kl_through_agent_zero_and_constant_offset():
    cfg = tiny_config()
    nets = agent.Networks(OffsetVelocity(D), agent.make_networks(cfg, D).critic)
    _, _, adjoint_matching, _ = agent.make_losses(cfg, nets)
    adjoint_matching = fast_jit(adjoint_matching, static_argnums=(6, 7))
    critic = nets.critic.init(jax.random.PRNGKey(0), jnp.zeros(OBS), jnp.zeros(D))
    ref = {"params": {"offset": jnp.zeros(D)}}
    obs = jax.random.normal(jax.random.PRNGKey(1), (16, OBS))
    args = (obs, jax.random.PRNGKey(2), trqam_scales(1.0), H, D)
    _, same = adjoint_matching(ref, ref, critic, *args)
    assert float(same["kl_hat"]) == 0.0
    offset = jnp.array([0.3, -0.1, 0.2, 0.5])
    _, moved = adjoint_matching({"params": {"offset": offset}}, ref, critic, *args)
    hand = sum(2 * (1 / K) / (2 * (1 - i / K + 1 / K) / (i / K + 1 / K)) for i in range(K))
    np.testing.assert_allclose(moved["kl_hat"], hand * float(jnp.sum(offset**2)) / H, rtol=1e-5)


def test_trqam_loss_equals_lambda_times_qam_loss_on_same_trajectories():
    cfg = tiny_config()
    nets = agent.make_networks(cfg, D)
    _, _, adjoint_matching, _ = agent.make_losses(cfg, nets)
    adjoint_matching = fast_jit(adjoint_matching, static_argnums=(6, 7))
    state = agent.init_train_state(jax.random.PRNGKey(0), cfg, nets, OBS, D)
    actor = agent.init_train_state(jax.random.PRNGKey(5), cfg, nets, OBS, D).actor  # differs from ref
    obs = random_batch().observations
    for lam_eff in (0.3, 3.0):
        trqam, _ = adjoint_matching(actor, state.actor_ref, state.critic_target, obs, jax.random.PRNGKey(7),
                                    trqam_scales(lam_eff), H, D)
        qam, _ = adjoint_matching(actor, state.actor_ref, state.critic_target, obs, jax.random.PRNGKey(7),
                                  qam_scales(1.0 / lam_eff), H, D)
        np.testing.assert_allclose(trqam, lam_eff * qam, rtol=1e-4)


def test_critic_loss_through_agent_matches_numpy():
    cfg = tiny_config(rho=0.5, discount=0.99)
    nets = agent.Networks(agent.make_networks(cfg, D).actor, StateCritic())
    _, q_loss, _, _ = agent.make_losses(cfg, nets)
    batch = random_batch()
    critic = nets.critic.init(jax.random.PRNGKey(0), jnp.zeros(OBS), jnp.zeros(D))
    target_critic = nets.critic.init(jax.random.PRNGKey(1), jnp.zeros(OBS), jnp.zeros(D))
    actor = nets.actor.init(jax.random.PRNGKey(2), jnp.zeros(OBS), jnp.zeros(D), 0.0)
    loss, _ = q_loss(critic, target_critic, actor, batch, jax.random.PRNGKey(3))
    w, b = (np.asarray(target_critic["params"][k], np.float64) for k in ("w", "b"))
    w0, b0 = (np.asarray(critic["params"][k], np.float64) for k in ("w", "b"))
    total = 0.0
    for i in range(batch.rewards.shape[0]):
        heads = w @ np.asarray(batch.next_observations[i]) + b
        y = float(batch.rewards[i]) + 0.99**H * float(batch.masks[i]) * (heads.mean() - 0.5 * heads.std())
        q = w0 @ np.asarray(batch.observations[i]) + b0
        total += float(batch.valid[i]) * np.sum((q - y) ** 2)
    np.testing.assert_allclose(loss, total / (3 * batch.rewards.shape[0]), rtol=1e-5)


def test_update_order_ema_and_pre_update_lambda():
    """Two steps: each EMA mixes in the online parameters from BEFORE its step, on every leaf."""
    cfg = tiny_config(method="trqam", lam_init=0.7)
    nets = agent.make_networks(cfg, D)
    state = agent.init_train_state(jax.random.PRNGKey(0), cfg, nets, OBS, D)
    other = agent.init_train_state(jax.random.PRNGKey(1), cfg, nets, OBS, D)
    state = state.replace(critic_target=other.critic, actor_ref=other.actor)  # targets apart from online
    update = fast_jit(agent.make_update_fn(cfg, nets))
    one, metrics = update(state, random_batch())
    two, _ = update(one, random_batch(seed=1))
    assert float(metrics["lambda_eff"]) == pytest.approx(3 * 0.7)  # the loss used lam before the step
    np.testing.assert_allclose(one.dual.kl_ema, 0.1 * min(float(metrics["kl_hat"]), 2.0), rtol=1e-6)
    tau = cfg.tau
    for online, target in (("critic", "critic_target"), ("actor_bc", "actor_ref")):
        c0, c1, c2 = (jax.tree_util.tree_leaves(getattr(x, online)) for x in (state, one, two))
        t0, t2 = jax.tree_util.tree_leaves(getattr(state, target)), jax.tree_util.tree_leaves(getattr(two, target))
        assert len(t2) == len(c0) > 2
        for a0, a1, a2, b0, b2 in zip(c0, c1, c2, t0, t2):
            a0, a1, b0 = (np.asarray(x, np.float64) for x in (a0, a1, b0))
            np.testing.assert_allclose(b2, tau * a1 + (1 - tau) * (tau * a0 + (1 - tau) * b0), rtol=1e-6, atol=1e-8)
            assert np.max(np.abs(np.asarray(a2) - a1)) > 1e-4  # the post-update parameters would differ
    assert not np.allclose(jax.tree_util.tree_leaves(one.actor)[0], jax.tree_util.tree_leaves(state.actor)[0])
    assert int(one.step) == 1 and int(two.step) == 2


def test_bc_mode_trains_only_actor_bc():
    # QAM's fixed lambda and its metrics are pinned in tests/test_wiring.py.
    nets = agent.make_networks(tiny_config(), D)
    state = agent.init_train_state(jax.random.PRNGKey(0), tiny_config(), nets, OBS, D)
    new, metrics = fast_jit(agent.make_update_fn(tiny_config(method="bc"), nets))(state, random_batch())
    assert set(metrics) == {"bc_loss", "grad_norm"}
    for name in ("critic", "actor"):
        for a, b in zip(jax.tree_util.tree_leaves(getattr(new, name)), jax.tree_util.tree_leaves(getattr(state, name))):
            np.testing.assert_array_equal(a, b)
    assert not np.allclose(jax.tree_util.tree_leaves(new.actor_bc)[0], jax.tree_util.tree_leaves(state.actor_bc)[0])


def test_vmapped_seeds_are_independent_and_compile_once():
    """Each seed's run does not depend on its position or its neighbours on the seed axis."""
    cfg = tiny_config()
    nets = agent.make_networks(cfg, D)
    data = random_batch(n=64, seed=1)
    traces = []

    def sample(data, key):
        traces.append(1)  # runs at trace time only
        return agent.uniform_sampler(cfg.batch_size)(data, key)

    train = agent.make_train_fn(cfg, nets, sample, num_steps=5)
    seeds = jnp.array([3, 4, 5])
    states, metrics = train(agent.init_learners(seeds, cfg, nets, OBS, D), data)
    states, metrics2 = train(states, data)
    assert metrics["critic_loss"].shape == (3, 5)
    order = np.array([2, 0, 1])  # the same seeds, each at another position with other neighbours
    moved, m_moved = train(agent.init_learners(seeds[order], cfg, nets, OBS, D), data)
    moved, m_moved2 = train(moved, data)
    assert len(traces) == 1  # four calls, one compilation
    for name in ("critic_loss", "actor_loss", "kl_hat", "lambda_eff"):
        np.testing.assert_allclose(m_moved2[name], metrics2[name][order], rtol=1e-6, atol=1e-7)
    assert not np.allclose(metrics["actor_loss"][0], metrics["actor_loss"][1])  # seeds differ
