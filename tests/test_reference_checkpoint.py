"""experiments/reference_checkpoint.py against checkpoints written in the reference layout.

The reference networks are rebuilt here, independently of trqam_jax.networks, from the reference
code's description: a flax ModuleDict whose submodules are named modules_<key>; a velocity field that
holds one MLP attribute `mlp` on concat[s, x, t]; a critic that holds a vmapped MLP attribute
`value_net` on concat[s, a]; MLPs whose widths include the output layer, with GELU then LayerNorm
after every layer but the last. The importer must turn their parameters into this project's layout
so that this project's networks compute the same outputs.
"""

import pickle
from typing import Dict, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import reference_checkpoint as rc
from trqam_jax.networks import CriticEnsemble, VelocityField

OBS, CHUNK, HIDDEN = 7, 6, (16, 16, 16)


class RefMLP(nn.Module):
    dims: Sequence[int]  # hidden widths then the output width
    layer_norm: bool

    @nn.compact
    def __call__(self, x):
        for i, width in enumerate(self.dims):
            x = nn.Dense(width)(x)
            if i + 1 < len(self.dims):
                x = nn.gelu(x)
                if self.layer_norm:
                    x = nn.LayerNorm()(x)
        return x


class RefVelocity(nn.Module):
    out: int
    layer_norm: bool = False

    def setup(self):
        self.mlp = RefMLP((*HIDDEN, self.out), self.layer_norm)

    def __call__(self, s, x, t):
        return self.mlp(jnp.concatenate([s, x, t], axis=-1))


class RefValue(nn.Module):
    num: int

    def setup(self):
        ensemble = nn.vmap(RefMLP, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=None,
                           out_axes=0, axis_size=self.num)
        self.value_net = ensemble((*HIDDEN, 1), True)

    def __call__(self, s, a):
        return self.value_net(jnp.concatenate([s, a], axis=-1))[..., 0]


class RefModuleDict(nn.Module):
    modules: Dict[str, nn.Module]

    @nn.compact
    def __call__(self, name=None, args=(), **init_args):
        if name is None:
            return {k: self.modules[k](*v) for k, v in init_args.items()}
        return self.modules[name](*args)


def reference_agent(num_critics=3, actor_layer_norm=False, obs_dim=OBS, seed=0):
    """The reference ModuleDict (6 modules) and its freshly initialised parameters."""
    s, x, t = jnp.zeros((1, obs_dim)), jnp.zeros((1, CHUNK)), jnp.zeros((1, 1))
    actor = lambda: RefVelocity(CHUNK, actor_layer_norm)
    modules = RefModuleDict({
        "critic": RefValue(num_critics), "target_critic": RefValue(num_critics),
        "actor_fast": actor(), "target_actor_fast": actor(),
        "actor_slow": actor(), "target_actor_slow": actor(),
    })
    init_args = {k: ((s, x) if "critic" in k else (s, x, t)) for k in modules.modules}
    params = modules.init(jax.random.PRNGKey(seed), **init_args)["params"]
    return modules, params


def write_reference_pickle(path, params, extra_state=None, numpy_leaves=False):
    """{'agent': to_state_dict(agent)} as the reference's save_agent writes it."""
    if numpy_leaves:
        params = jax.tree_util.tree_map(np.asarray, params)
    adam_mu = jax.tree_util.tree_map(jnp.zeros_like, params)
    state = {
        "rng": jax.random.PRNGKey(3),
        "network": {
            "step": 12,
            "params": params,
            # optax states are namedtuples; to_state_dict turns them into dicts keyed by field / index.
            "opt_state": {"0": {}, "1": {"0": {"count": jnp.zeros((), jnp.int32), "mu": adam_mu, "nu": adam_mu},
                                      "1": {}}},
        },
        **(extra_state or {}),
    }
    with open(path, "wb") as f:
        pickle.dump({"agent": state}, f)
    return str(path)


def own_networks(num_critics=3, actor_layer_norm=False, obs_dim=OBS):
    actor = VelocityField(HIDDEN, CHUNK, actor_layer_norm)
    critic = CriticEnsemble(HIDDEN, num_critics, True)
    key = jax.random.PRNGKey(42)
    actor_like = actor.init(key, jnp.zeros((obs_dim,)), jnp.zeros((CHUNK,)), 0.0)
    critic_like = critic.init(key, jnp.zeros((obs_dim,)), jnp.zeros((CHUNK,)))
    return actor, critic, actor_like, critic_like


def random_inputs(n=5, obs_dim=OBS):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(7), 3)
    return (jax.random.normal(k1, (n, obs_dim)), jax.random.normal(k2, (n, CHUNK)),
            jax.random.uniform(k3, (n,)))


@pytest.mark.parametrize("actor_layer_norm,numpy_leaves", [(False, False), (True, True)])
def test_imported_actors_and_critics_compute_the_reference_outputs(tmp_path, actor_layer_norm, numpy_leaves):
    modules, params = reference_agent(actor_layer_norm=actor_layer_norm)
    # Make every module different, so a wrong module mapping cannot pass.
    params = {k: jax.tree_util.tree_map(lambda p, i=i: p + 0.01 * (i + 1), v)
              for i, (k, v) in enumerate(sorted(params.items()))}
    path = write_reference_pickle(tmp_path / "params_300000.pkl", params, {"lam": 0.7, "kl_ema": 0.4},
                                  numpy_leaves)
    actor, critic, actor_like, critic_like = own_networks(actor_layer_norm=actor_layer_norm)
    s, x, t = random_inputs()
    ref_apply = lambda name, *args: modules.apply({"params": params}, name=name, args=args)

    for which, ref_name in [("actor_bc", "actor_slow"), ("actor_ref", "target_actor_slow"),
                            ("actor", "actor_fast")]:
        imported = rc.import_actor(path, actor_like, which=which)
        assert jax.tree_util.tree_structure(imported) == jax.tree_util.tree_structure(actor_like)
        ours = actor.apply(imported, s, x, t)
        theirs = ref_apply(ref_name, s, x, t[:, None])
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)

    for which, ref_name in [("critic", "critic"), ("critic_target", "target_critic")]:
        imported = rc.import_critic(path, critic_like, which=which)
        ours = critic.apply(imported, s, x)
        theirs = ref_apply(ref_name, s, x)
        assert ours.shape == theirs.shape == (3, 5)
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)

    assert rc.import_dual(path) == pytest.approx({"lam": 0.7, "kl_ema": 0.4})
    raw = rc.load_reference_params(path)
    assert sorted(raw) == sorted(f"modules_{k}" for k in modules.modules)
    assert rc.describe(path)["modules_actor_slow"]["mlp/Dense_0/kernel"] == (OBS + CHUNK + 1, HIDDEN[0])


def test_a_run_directory_resolves_to_its_newest_checkpoint(tmp_path):
    _, params = reference_agent()
    write_reference_pickle(tmp_path / "params_50000.pkl", params)
    newer = jax.tree_util.tree_map(lambda p: p + 1.0, params)
    write_reference_pickle(tmp_path / "params_300000.pkl", newer)
    _, _, actor_like, _ = own_networks()
    imported = rc.import_actor(tmp_path, actor_like)
    np.testing.assert_allclose(imported["params"]["MLP_0"]["Dense_1"]["bias"],
                               newer["modules_actor_slow"]["mlp"]["Dense_1"]["bias"])


def test_a_bc_only_fql_checkpoint_falls_back_to_actor_bc_flow(tmp_path):
    _, params = reference_agent()
    path = write_reference_pickle(tmp_path / "params_1.pkl", {"modules_actor_bc_flow": params["modules_actor_slow"]})
    _, _, actor_like, _ = own_networks()
    imported = rc.import_actor(path, actor_like, which="actor_bc")
    np.testing.assert_array_equal(imported["params"]["MLP_0"]["Dense_0"]["kernel"],
                                  params["modules_actor_slow"]["mlp"]["Dense_0"]["kernel"])


class NotAStateDict:  # a class from outside numpy/jax/flax: the loader must refuse, not execute
    pass


def one_line_error(fn, *args, **kwargs):
    with pytest.raises(rc.ReferenceCheckpointError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and message
    assert isinstance(info.value, ValueError)
    return message


def test_each_bad_checkpoint_gets_a_one_line_error(tmp_path):
    _, params = reference_agent()
    _, _, actor_like, critic_like = own_networks()

    missing = tmp_path / "nope" / "params_1.pkl"
    assert one_line_error(rc.import_actor, missing, actor_like) == f"reference checkpoint {missing} does not exist"

    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    assert "no params_<step>.pkl" in one_line_error(rc.import_actor, empty_dir, actor_like)

    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(b"this is not a pickle at all")
    assert one_line_error(rc.load_reference_params, garbage).startswith(f"{garbage} is not a reference checkpoint")

    a_list = tmp_path / "list.pkl"
    a_list.write_bytes(pickle.dumps([1, 2, 3]))
    assert "'agent' state dict" in one_line_error(rc.import_actor, a_list, actor_like)

    foreign = tmp_path / "foreign.pkl"
    foreign.write_bytes(pickle.dumps({"agent": NotAStateDict()}))
    message = one_line_error(rc.import_actor, foreign, actor_like)
    assert "NotAStateDict" in message and "not a reference checkpoint" in message

    critic_only = write_reference_pickle(tmp_path / "critic_only.pkl",
                                         {"modules_critic": params["modules_critic"]})
    assert one_line_error(rc.import_actor, critic_only, actor_like, which="actor") == (
        f"{critic_only} has no modules_actor_fast module for actor; it holds ['modules_critic']")

    # A checkpoint trained on 6-dim observations, imported into a run with 7-dim observations.
    _, params6 = reference_agent(obs_dim=OBS - 1)
    path6 = write_reference_pickle(tmp_path / "obs6.pkl", params6)
    in_dim = CHUNK + 1
    assert one_line_error(rc.import_actor, path6, actor_like) == (
        f"modules_actor_slow/mlp/Dense_0/kernel has shape ({OBS - 1 + in_dim}, {HIDDEN[0]}); "
        f"this run expects ({OBS + in_dim}, {HIDDEN[0]})")

    # Ensemble size: every critic leaf has the leading ensemble axis.
    _, params5 = reference_agent(num_critics=5)
    path5 = write_reference_pickle(tmp_path / "critics5.pkl", params5)
    assert one_line_error(rc.import_critic, path5, critic_like) == (
        f"modules_critic/value_net/Dense_0/bias has shape (5, {HIDDEN[0]}); this run expects (3, {HIDDEN[0]})")

    # Layer norm on in the checkpoint's actor, off in this run (and the reverse).
    _, params_ln = reference_agent(actor_layer_norm=True)
    path_ln = write_reference_pickle(tmp_path / "ln.pkl", params_ln)
    assert one_line_error(rc.import_actor, path_ln, actor_like) == (
        "modules_actor_slow/mlp/LayerNorm_0/bias is in the checkpoint but not in this run (check the depth "
        "and layer norm settings)")
    _, _, actor_like_ln, _ = own_networks(actor_layer_norm=True)
    path_plain = write_reference_pickle(tmp_path / "plain.pkl", params)
    assert one_line_error(rc.import_actor, path_plain, actor_like_ln).startswith(
        "modules_actor_slow/mlp/LayerNorm_0/bias is missing from the checkpoint")

    assert "which in" in one_line_error(rc.import_actor, path_plain, actor_like, which="critic")
