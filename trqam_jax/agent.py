"""The TRQAM training state and its one update step (conventions §8).

One implementation, four modes chosen by `AgentConfig.method` (a static value):
  "bc"    BC flow-matching pretraining: only L_BC.
  "trqam" L_Q + L_BC + L_AM with an adaptive lambda (projected dual update on the path KL).
  "qam"   the same losses with lambda fixed: an inverse temperature on the adjoint, no dual update.
  "sqam"  TRQAM's trust region with the scalar adjoint on a bridge grid instead of the SDE rollout and
          the lean adjoint, plus a value penalty in L_Q (conventions §12).

`update(state, batch)` is pure. `make_train_fn` scans n updates per call, draws the batches inside
jit with a sampling function, and vmaps the whole thing over a leading learner axis of the state.

A learner is one (task, seed, budget). The scalar hyperparameters that change no shape (eps, the QAM
inverse temperature, lam_scale, dual_lr, SQAM's gap_reg_coef) live in the state as `Hyperparams`
arrays, so learners with different values share one compiled program; `AgentConfig` gives their
defaults.
"""

import dataclasses
import functools
from typing import Any, Callable, NamedTuple, Optional, Sequence

import flax
import jax
import jax.numpy as jnp
import optax

from trqam_jax import adjoint as adj
from trqam_jax import scalar_adjoint as sa
from trqam_jax import losses
from trqam_jax.dual import DualState, dual_init, dual_update
from trqam_jax.flow import euler_endpoint, euler_sample, flow_times, memoryless_rollout
from trqam_jax.networks import COMPUTE_DTYPES, CriticEnsemble, VelocityField
from trqam_jax.types import Batch

METHODS = ("bc", "trqam", "qam", "sqam")
TRUST_REGION_METHODS = ("trqam", "sqam")  # the methods with the dual update on lam (conventions §6)
# kl_budget=None in AgentConfig: the method's reference default (conventions §6 and §12).
DEFAULT_KL_BUDGET = {"sqam": 0.5}


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    """Static hyperparameters of the update. Defaults are the reference values of conventions §1-§8."""

    method: str = "trqam"  # "bc", "trqam", "qam" or "sqam".
    hidden_dims: Sequence[int] = (512, 512, 512, 512)  # actor and critic MLP widths.
    actor_layer_norm: bool = False  # LayerNorm after each actor activation (on for 10M/100M data).
    critic_layer_norm: bool = True  # LayerNorm after each critic activation.
    num_critics: int = 10  # size of the critic ensemble.
    flow_steps: int = 10  # K, Euler / SDE steps of the flow.
    discount: float = 0.995  # gamma per env step; the bootstrap uses gamma^H.
    rho: float = 0.5  # pessimism: target uses mean - rho * std over the ensemble.
    tau: float = 0.005  # EMA rate of the target critic and of actor_ref.
    learning_rate: float = 3e-4  # one Adam over critic, actor_bc and actor.
    grad_clip_norm: float = 1.0  # global-norm clip over the whole gradient tree.
    batch_size: int = 256  # B, used by the scanned sampler.
    lam_scale: float = 3.0  # lambda_eff = lam_scale * lam (default of Hyperparams.lam_scale).
    lam_init: float = 1.0  # initial dual variable lam.
    # eps, the trust-region budget on the per-env-step path KL (default of Hyperparams); None: the method's
    # reference default, 0.5 for SQAM and 1.0 otherwise.
    kl_budget: Optional[float] = None
    dual_lr: float = 0.01  # step of the linear-space dual update (default of Hyperparams.dual_lr).
    kl_ema_decay: float = 0.9  # EMA decay of the clipped KL estimate.
    kl_clip_factor: float = 2.0  # the estimate is clipped at kl_clip_factor * eps.
    lam_min: float = 0.01  # projection interval of lam.
    lam_max: float = 100.0
    inv_temp: float = 1.0  # QAM only: inverse temperature multiplying the terminal adjoint (default of Hyperparams).
    compute_dtype: str = "float32"  # matmul inputs: "float32" (reference) or "bfloat16" (conventions §1).
    n_bridge: int = 10  # SQAM only: M, the bridge states per example (conventions §12).
    gap_reg_coef: float = 0.3  # SQAM only: c of the value penalty in L_Q (default of Hyperparams).

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"Unknown method {self.method!r}: use one of {METHODS}.")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"Unknown compute_dtype {self.compute_dtype!r}: use one of {COMPUTE_DTYPES}.")
        if self.flow_steps < 1:
            raise ValueError(f"flow_steps must be >= 1, got {self.flow_steps}.")
        if self.n_bridge < 1:
            raise ValueError(f"n_bridge must be >= 1, got {self.n_bridge}.")
        if self.kl_budget is None:
            object.__setattr__(self, "kl_budget", DEFAULT_KL_BUDGET.get(self.method, 1.0))


class Networks(NamedTuple):
    """Flax modules: actor.apply(params, s, x, t) -> (D,); critic.apply(params, s, a) -> (N,)."""

    actor: Any
    critic: Any


def make_networks(config: AgentConfig, chunk_dim: int) -> Networks:
    return Networks(
        actor=VelocityField(tuple(config.hidden_dims), chunk_dim, config.actor_layer_norm, config.compute_dtype),
        critic=CriticEnsemble(tuple(config.hidden_dims), config.num_critics, config.critic_layer_norm,
                              config.compute_dtype),
    )


class Trainable(NamedTuple):
    """The three parameter sets that the single Adam trains."""

    critic: Any
    actor_bc: Any
    actor: Any


class Hyperparams(NamedTuple):
    """A learner's scalar hyperparameters: float32 arrays in the state, so a sweep is one vmapped axis."""

    kl_budget: jax.Array  # eps of the TRQAM dual update (conventions §6).
    inv_temp: jax.Array  # QAM's inverse temperature (conventions §4).
    lam_scale: jax.Array  # lambda_eff = lam_scale * lam.
    dual_lr: jax.Array  # step of the dual update.
    gap_reg_coef: jax.Array  # c of SQAM's value penalty (conventions §12).


def hyperparams(config: "AgentConfig", **values) -> Hyperparams:
    """The config's values as float32 scalars, or (L,) arrays where `values` gives per-learner ones."""
    fields = {name: values.get(name, getattr(config, name)) for name in Hyperparams._fields}
    return Hyperparams(**{k: jnp.asarray(v, jnp.float32) for k, v in fields.items()})


@flax.struct.dataclass
class TrainState:
    critic: Any  # Q_j parameters.
    critic_target: Any  # EMA of critic (from before each step): Qbar in the TD target and the adjoint.
    actor_bc: Any  # velocity trained by BC throughout.
    actor_ref: Any  # EMA of actor_bc (from before each step): the reference pi_0 of the trust region.
    actor: Any  # fine-tuned velocity v_theta: acts, and gives the critic's next actions.
    opt_state: Any  # optax state of clip + Adam over Trainable(critic, actor_bc, actor).
    dual: DualState  # lam and the KL EMA.
    hparams: Hyperparams  # this learner's eps, inverse temperature, lam_scale, dual_lr and gap_reg_coef.
    step: jax.Array  # number of updates done.
    key: jax.Array  # PRNG key of this seed.


def make_optimizer(config: AgentConfig) -> optax.GradientTransformation:
    return optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), optax.adam(config.learning_rate))


def init_train_state(
    key: jax.Array,
    config: AgentConfig,
    networks: Networks,
    obs_dim: int,
    chunk_dim: int,
    pretrained_actor: Optional[Any] = None,
) -> TrainState:
    """A fresh state for one seed. pretrained_actor (BC params) initialises actor_bc, actor_ref, actor."""
    actor_key, critic_key, key = jax.random.split(key, 3)
    obs, x = jnp.zeros((obs_dim,)), jnp.zeros((chunk_dim,))
    actor = networks.actor.init(actor_key, obs, x, 0.0) if pretrained_actor is None else pretrained_actor
    critic = networks.critic.init(critic_key, obs, x)
    opt_state = make_optimizer(config).init(Trainable(critic, actor, actor))
    return TrainState(
        critic=critic,
        critic_target=critic,
        actor_bc=actor,
        actor_ref=actor,
        actor=actor,
        opt_state=opt_state,
        dual=dual_init(config.lam_init),
        hparams=hyperparams(config),
        step=jnp.zeros((), jnp.int32),
        key=key,
    )


def init_learners(seeds, config: AgentConfig, networks: Networks, obs_dim: int, chunk_dim: int,
                  pretrained_actor: Optional[Any] = None, hparams: Optional[Hyperparams] = None) -> TrainState:
    """States for L learners, stacked on a leading axis; learner i is seeded with seeds[i].

    pretrained_actor, if given, is stacked the same way (leading axis L): learner i starts from it.
    hparams, if given, holds (L,) arrays (see `hyperparams`); otherwise every learner has the config's.
    Learners with equal seeds start from equal parameters whatever their task or hyperparameters.
    """
    keys = jax.vmap(jax.random.PRNGKey)(jnp.asarray(seeds))
    init = functools.partial(init_train_state, config=config, networks=networks, obs_dim=obs_dim,
                             chunk_dim=chunk_dim)
    if pretrained_actor is None:
        states = jax.vmap(init)(keys)
    else:
        states = jax.vmap(lambda k, p: init(k, pretrained_actor=p))(keys, pretrained_actor)
    if hparams is not None:
        states = states.replace(hparams=with_learner_axis(hparams, len(keys)))
    # critic/critic_target and the three actors start equal; give each leaf its own buffer so the
    # donated state never hands XLA the same buffer twice.
    return jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), states)


def static_config(config: AgentConfig) -> AgentConfig:
    """The config with the Hyperparams fields at their defaults: the update reads those from the state, so
    programs whose learners differ only in them are one program (one compile)."""
    return dataclasses.replace(config, **{name: getattr(AgentConfig, name) for name in Hyperparams._fields})


def with_learner_axis(hparams: Hyperparams, num_learners: int) -> Hyperparams:
    """(L,) float32 arrays: scalars are broadcast to every learner."""
    return Hyperparams(*(jnp.broadcast_to(jnp.asarray(v, jnp.float32), (num_learners,)) for v in hparams))


def lambda_eff(config: AgentConfig, state: TrainState) -> jax.Array:
    """The effective multiplier: lam_scale * lam for TRQAM and SQAM, 1 / inv_temp for QAM (the state's values)."""
    if config.method == "qam":
        return 1.0 / state.hparams.inv_temp
    return state.hparams.lam_scale * state.dual.lam


def _bound(apply_fn, params, obs):
    """v(x, t) for one observation: the form the flow functions take."""
    return lambda x, t: apply_fn(params, obs, x, t)


def make_losses(config: AgentConfig, networks: Networks):
    """Loss factories. Each differentiates only its first argument; the others are held fixed."""
    num_steps = config.flow_steps
    actor_apply, critic_apply = networks.actor.apply, networks.critic.apply

    def bc_loss(actor_bc, batch: Batch, key):
        chunks = batch.actions.reshape(batch.actions.shape[0], -1)
        noise_key, time_key = jax.random.split(key)
        noise = jax.random.normal(noise_key, chunks.shape)
        t = jax.random.uniform(time_key, chunks.shape[:1])
        pred = actor_apply(actor_bc, batch.observations, losses.interpolate(noise, chunks, t), t)
        loss = losses.bc_flow_loss(pred, noise, chunks, batch.valid)
        return loss, {"bc_loss": loss}

    def sample_actions(actor, observations, key, chunk_dim):
        """Clipped ODE samples of v_theta, one per observation (conventions §2)."""
        noise = jax.random.normal(key, observations.shape[:1] + (chunk_dim,))
        return jax.vmap(lambda s, x0: euler_sample(_bound(actor_apply, actor, s), x0, num_steps))(
            observations, noise)

    def q_loss(critic, critic_target, actor, batch: Batch, key, endpoints=None, gap_reg_coef=None):
        """L_Q (conventions §7); with `endpoints` (SQAM's a_hat, (B, D)), plus gap_reg_coef times the value
        gap of the online critic at stopgrad(clip(a_hat)) against the data chunk (conventions §12)."""
        batch_size, horizon = batch.actions.shape[:2]
        chunks = batch.actions.reshape(batch_size, -1)
        next_actions = sample_actions(actor, batch.next_observations, key, chunks.shape[-1])
        next_q = critic_apply(critic_target, batch.next_observations, next_actions)
        target = losses.td_target(next_q, batch.rewards, batch.masks, config.discount, horizon,
                                      config.rho)
        q = critic_apply(critic, batch.observations, chunks)
        loss = losses.critic_loss(q, jax.lax.stop_gradient(target), batch.valid)
        metrics = {"critic_loss": loss, "q_mean": q.mean(), "target_mean": target.mean()}
        if endpoints is not None:
            policy_actions = jax.lax.stop_gradient(jnp.clip(endpoints, -1.0, 1.0))
            gap = losses.value_gap(critic_apply(critic, batch.observations, policy_actions), q)
            penalty = gap_reg_coef * gap
            loss = loss + penalty
            metrics.update(value_gap=gap, value_penalty=penalty)
        return loss, metrics

    def adjoint_matching(actor, actor_ref, critic_target, observations, key, scales, horizon, chunk_dim):
        """L_AM averaged over the batch, plus KL_hat and the closed-form constant C (conventions §3-§5)."""
        actor_fixed = jax.lax.stop_gradient(actor)
        times = flow_times(num_steps)

        def per_example(obs, noise, step_noises):
            v_ref = _bound(actor_apply, actor_ref, obs)
            states, action = memoryless_rollout(_bound(actor_apply, actor_fixed, obs), v_ref, noise,
                                                step_noises, num_steps)
            q_fn = lambda x: jnp.mean(critic_apply(critic_target, obs, jnp.clip(x, -1.0, 1.0)))
            adjoints = adj.lean_adjoint(v_ref, states, adj.terminal_adjoint(q_fn, action), num_steps)
            states, adjoints = jax.lax.stop_gradient((states, adjoints))
            diff = jax.vmap(lambda x, t: actor_apply(actor, obs, x, t) - v_ref(x, t))(states, times)
            loss = adj.adjoint_matching_loss(diff, adjoints, num_steps, scales)
            kl = adj.path_kl_estimate(jax.lax.stop_gradient(diff), num_steps, horizon)
            return loss, kl, adj.kl_constant(adjoints, num_steps)

        noise_key, steps_key = jax.random.split(key)
        batch_size = observations.shape[0]
        noise = jax.random.normal(noise_key, (batch_size, chunk_dim))
        step_noises = jax.random.normal(steps_key, (batch_size, num_steps - 1, chunk_dim))
        loss, kl, const = jax.vmap(per_example)(observations, noise, step_noises)
        return loss.mean(), {"actor_loss": loss.mean(), "kl_hat": kl.mean(), "kl_const": const.mean()}

    return bc_loss, q_loss, adjoint_matching, sample_actions


def make_sqam_losses(config: AgentConfig, networks: Networks):
    """SQAM's endpoint sampler and scalar adjoint matching (conventions §12).

    policy_endpoints(actor, observations, key, chunk_dim) -> a_hat (B, D): K Euler steps of the ODE from
      x_0 ~ N(0, I) drawn from key, not clipped, without gradient.
    scalar_adjoint_matching(actor, actor_ref, critic_target, observations, endpoints, key, scales, horizon)
      -> (L_AM, metrics): bridge noise eps ~ N(0, I) of shape (B, M, D) drawn from key; differentiable
      in `actor` only.
    """
    num_steps, n_bridge = config.flow_steps, config.n_bridge
    actor_apply, critic_apply = networks.actor.apply, networks.critic.apply

    def policy_endpoints(actor, observations, key, chunk_dim):
        noise = jax.random.normal(key, observations.shape[:1] + (chunk_dim,))
        endpoints = jax.vmap(lambda s, x0: euler_endpoint(_bound(actor_apply, actor, s), x0, num_steps))(
            observations, noise)
        return jax.lax.stop_gradient(endpoints)

    def scalar_adjoint_matching(actor, actor_ref, critic_target, observations, endpoints, key, scales, horizon):
        """L_AM averaged over the batch, plus KL_hat and C, on the bridge grid tau_j = j / M."""
        times = sa.bridge_times(n_bridge)

        def per_example(obs, endpoint, noises):
            v_ref = _bound(actor_apply, actor_ref, obs)
            q_fn = lambda x: jnp.mean(critic_apply(critic_target, obs, jnp.clip(x, -1.0, 1.0)))
            states = sa.bridge_states(endpoint, noises)
            adjoints = sa.scalar_adjoint(q_fn, endpoint, n_bridge)
            states, adjoints = jax.lax.stop_gradient((states, adjoints))
            diff = jax.vmap(lambda x, t: actor_apply(actor, obs, x, t) - v_ref(x, t))(states, times)
            loss = adj.adjoint_matching_loss(diff, adjoints, n_bridge, scales, times)
            kl = adj.path_kl_estimate(jax.lax.stop_gradient(diff), n_bridge, horizon, times)
            return loss, kl, adj.kl_constant(adjoints, n_bridge, times)

        noises = jax.random.normal(key, endpoints.shape[:1] + (n_bridge,) + endpoints.shape[1:])
        loss, kl, const = jax.vmap(per_example)(observations, endpoints, noises)
        return loss.mean(), {"actor_loss": loss.mean(), "kl_hat": kl.mean(), "kl_const": const.mean()}

    return policy_endpoints, scalar_adjoint_matching


class UpdateKeys(NamedTuple):
    """The three PRNG keys one update consumes, one per loss (see `split_update_key`)."""

    bc: jax.Array  # L_BC: split in two, noise x0 ~ N(0, I), shape (B, D), then t ~ U[0, 1], shape (B,).
    critic: jax.Array  # L_Q: the ODE start noise of the next actions, N(0, I) of shape (B, D).
    actor: jax.Array  # L_AM: split in two, x_0 ~ N(0, I) of shape (B, D), then eps of shape (B, K-1, D).
    # SQAM: split in two, the endpoint's x_0 ~ N(0, I) of shape (B, D), then the bridge eps of shape (B, M, D).


def split_update_key(key: jax.Array):
    """(next_key, UpdateKeys): the state's key for the next step and this step's keys, by one 4-way split.

    `next_key, bc, critic, actor = jax.random.split(key, 4)`. The losses draw from their keys as the
    UpdateKeys fields say, so a test can reproduce every random draw of an update.
    """
    next_key, bc_key, critic_key, actor_key = jax.random.split(key, 4)
    return next_key, UpdateKeys(bc_key, critic_key, actor_key)


def adjoint_scales(config: AgentConfig, state: TrainState) -> adj.AdjointMatchingScales:
    """The scales of L_AM: TRQAM (and SQAM) with the state's lambda_eff, or QAM with its inverse temperature."""
    if config.method == "qam":
        return adj.qam_scales(state.hparams.inv_temp)
    return adj.trqam_scales(lambda_eff(config, state))


def make_total_loss(config: AgentConfig, networks: Networks):
    """total_loss(params: Trainable, state, batch, keys: UpdateKeys) -> (loss, metrics).

    The wiring of conventions §8, with the network each loss reads named explicitly:
      L_BC(params.actor_bc);
      L_Q(params.critic), with the next actions from state.actor and the target from state.critic_target;
      L_AM(params.actor), rolled out with state.actor, its last step and the adjoint's base velocity
        from state.actor_ref, and the terminal adjoint from state.critic_target.
    SQAM (conventions §12) draws one endpoint a_hat from state.actor, used by both:
      L_Q(params.critic) plus value_penalty, the online critic's gap at stopgrad(clip(a_hat));
      L_AM(params.actor) on the bridge states, with the base velocity from state.actor_ref and the
        adjoint from state.critic_target.
    The loss is the sum of the metrics bc_loss, critic_loss, actor_loss and, in SQAM, value_penalty
    (only bc_loss in "bc" mode). Each of them is differentiable in its own parameter set only: the
    update's gradient is their sum.
    """
    bc_loss, q_loss, adjoint_matching, _ = make_losses(config, networks)
    policy_endpoints, scalar_adjoint_matching = make_sqam_losses(config, networks)

    def total_loss(params: Trainable, state: TrainState, batch: Batch, keys: UpdateKeys):
        loss, metrics = bc_loss(params.actor_bc, batch, keys.bc)
        if config.method != "bc":
            horizon, chunk_dim = batch.actions.shape[1], batch.actions.shape[1] * batch.actions.shape[2]
            # The loss uses lam from before this step's dual update.
            scales = adjoint_scales(config, state)
            if config.method == "sqam":
                endpoint_key, bridge_key = jax.random.split(keys.actor)
                endpoints = policy_endpoints(state.actor, batch.observations, endpoint_key, chunk_dim)
                l_q, m_q = q_loss(params.critic, state.critic_target, state.actor, batch, keys.critic,
                                  endpoints, state.hparams.gap_reg_coef)
                l_am, m_am = scalar_adjoint_matching(params.actor, state.actor_ref, state.critic_target,
                                                     batch.observations, endpoints, bridge_key, scales, horizon)
            else:
                l_q, m_q = q_loss(params.critic, state.critic_target, state.actor, batch, keys.critic)
                l_am, m_am = adjoint_matching(params.actor, state.actor_ref, state.critic_target,
                                              batch.observations, keys.actor, scales, horizon, chunk_dim)
            loss = loss + l_q + l_am
            metrics = {**metrics, **m_q, **m_am}
        return loss, metrics

    return total_loss


def make_update_fn(config: AgentConfig, networks: Networks) -> Callable[[TrainState, Batch], Any]:
    """update(state, batch) -> (state, metrics): one gradient step of conventions §8.

    Order: the keys (`split_update_key`); the gradient of `make_total_loss` at the current
    parameters; one clip + Adam step; the EMAs critic_target <- tau * critic + (1 - tau) * critic_target
    and actor_ref <- tau * actor_bc + (1 - tau) * actor_ref, which mix in the parameters from before
    the step (the reference order); then the dual update on KL_hat, which was measured with the
    parameters from before the step, while the loss used lam from before the dual update.
    """
    optimizer = make_optimizer(config)
    total_loss = make_total_loss(config, networks)

    def update(state: TrainState, batch: Batch):
        key, keys = split_update_key(state.key)
        params = Trainable(state.critic, state.actor_bc, state.actor)
        grads, metrics = jax.grad(total_loss, has_aux=True)(params, state, batch, keys)
        updates, opt_state = optimizer.update(grads, state.opt_state, params)
        new_params = optax.apply_updates(params, updates)
        metrics["grad_norm"] = optax.tree.norm(grads)

        dual = state.dual
        if config.method != "bc":
            lam_eff = lambda_eff(config, state)  # lam from before the dual update
            metrics["lambda_eff"] = lam_eff
            metrics["kl_closed_form"] = adj.closed_form_kl(metrics["kl_const"], lam_eff)
        if config.method in TRUST_REGION_METHODS:
            dual, info = dual_update(dual, metrics["kl_hat"], state.hparams.kl_budget, state.hparams.dual_lr,
                                     config.kl_ema_decay, config.kl_clip_factor, config.lam_min,
                                     config.lam_max)
            metrics.update(kl_ema=dual.kl_ema, kl_clip_active=info.clip_active)

        new_state = state.replace(
            critic=new_params.critic,
            # The targets mix in the online parameters from before the step (params, not new_params).
            critic_target=optax.incremental_update(params.critic, state.critic_target, config.tau),
            actor_bc=new_params.actor_bc,
            actor_ref=optax.incremental_update(params.actor_bc, state.actor_ref, config.tau),
            actor=new_params.actor,
            opt_state=opt_state,
            dual=dual,
            step=state.step + 1,
            key=key,
        )
        return new_state, metrics

    return update


SampleFn = Callable[[Any, jax.Array], Batch]


def make_train_fn(config: AgentConfig, networks: Networks, sample_fn: SampleFn, num_steps: int,
                  data_in_axes: Any = None, donate: bool = True):
    """jit(vmap(scan of num_steps updates)) over a leading seed axis of the state.

    sample_fn(data, key) -> Batch draws a batch inside jit. `data` is shared by all seeds by default
    (vmap axis None, so it is not copied); pass data_in_axes (a pytree prefix) for per-seed parts.
    Returns train(states, data) -> (states, metrics), metrics of shape (S, num_steps). The states
    argument is donated: do not reuse it after the call.
    """
    update = make_update_fn(config, networks)

    def train_one_seed(state: TrainState, data):
        def body(state, _):
            key, sample_key = jax.random.split(state.key)
            return update(state.replace(key=key), sample_fn(data, sample_key))

        return jax.lax.scan(body, state, None, length=num_steps)

    vmapped = jax.vmap(train_one_seed, in_axes=(0, data_in_axes))
    return jax.jit(vmapped, donate_argnums=(0,) if donate else ())


def make_act_fn(config: AgentConfig, networks: Networks):
    """act(actor_params, observations (B, O), key) -> clipped chunks (B, D) from the ODE policy (conventions §2).

    Vmap it over a seed axis for seed-stacked params.
    """
    _, _, _, sample_actions = make_losses(config, networks)

    def act(actor_params, observations, key):
        chunk_dim = networks.actor.chunk_dim
        return sample_actions(actor_params, observations, key, chunk_dim)

    return act


def uniform_sampler(batch_size: int) -> SampleFn:
    """sample(data, key): B rows drawn uniformly from a Batch of precomputed chunks (leading axis N)."""

    def sample(data: Batch, key) -> Batch:
        idx = jax.random.randint(key, (batch_size,), 0, data.observations.shape[0])
        return jax.tree_util.tree_map(lambda x: x[idx], data)

    return sample
