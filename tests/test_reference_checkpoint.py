"""experiments/infra/reference_checkpoint.py against checkpoints written in the reference layout.

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

from experiments.infra import reference_checkpoint as rc
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


# ------------------------------------------------------------------ pickles that try to run code
#
# Each payload, loaded with plain pickle, creates a marker file (checked first, so the payload is
# known to work); the project's loader must refuse it in one line and the marker must not appear.

import builtins
import functools
import importlib
import operator
import os
import subprocess
import sys

import numpy.testing._private.utils as np_testing_utils

from experiments.infra import safe_pickle

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Call:
    """Pickles as the call f(*args): f pickled by reference, by its own reduce, or another Call."""

    def __init__(self, f, *args):
        self.f, self.args = f, args

    def __reduce__(self):
        return self.f, self.args

    def __call__(self, *args):  # pickle requires the reduce function to be callable
        raise AssertionError("only pickled")


def touch(marker):
    return f"open({str(marker)!r}, 'w').close()"


def payloads(tmp_path, marker):
    """name -> the object pickled as {'agent': object}."""
    code, cmd = touch(marker), f"touch {marker}"
    npy = tmp_path / "evil.npy"
    np.save(npy, np.array([Call(exec, code), 0], dtype=object), allow_pickle=True)
    os_module = Call(importlib.import_module, "os")
    return {
        "numpy runstring (exec)": Call(np_testing_utils.runstring, code, {}),
        "numpy.load of a pickled .npy": Call(np.load, str(npy), None, True),
        "jax.numpy.load of a pickled .npy": Call(jnp.load, str(npy), None, True),
        "pickle.loads": Call(pickle.loads, pickle.dumps(Call(exec, code))),
        "builtins.exec": Call(exec, code),
        "builtins.eval": Call(eval, f"exec({code!r})"),
        "os.system": Call(os.system, cmd),
        "subprocess.call": Call(subprocess.call, ["touch", str(marker)]),
        "builtins.getattr chain": Call(Call(getattr, Call(builtins.__import__, "os"), "system"), cmd),
        "operator.attrgetter": Call(Call(operator.attrgetter("system"), os_module), cmd),
        "operator.attrgetter into numpy": Call(
            Call(operator.attrgetter("testing._private.utils.runstring"), Call(importlib.import_module, "numpy")),
            code, {}),
        "operator.methodcaller": Call(operator.methodcaller("system", cmd), os_module),
        "functools.partial": Call(functools.partial(exec, code)),
        "functools.reduce": Call(functools.reduce, exec, [{}], code),
        "jax rebuild with another function": Call(jax._src.array._reconstruct_array, np_testing_utils.runstring,
                                                  (code, {}), None, {}),
        "object array element": np.array([Call(exec, code)], dtype=object),
        "inside a FrozenDict": __import__("flax").core.FrozenDict({"x": Call(exec, code)}),
    }


def raw_payloads(marker):
    """Hand-written pickles. At protocol 4 a dotted name reaches attributes of the named module."""
    code = touch(marker)
    call = lambda module, name: f"\x80\x04(dp0\nVagent\nc{module}\n{name}\n(V{code}\n(dtRs.".encode("latin1")
    return {
        "dotted name under numpy": call("numpy", "testing._private.utils.runstring"),
        "dotted name under an allowed module": call("jax._src.array", "np.testing._private.utils.runstring"),
        "__builtin__ (protocol 0) exec": f"(dp0\nVagent\nc__builtin__\nexec\n(V{code}\ntRs.".encode(),
        "posix.system": f"(dp0\nVagent\ncposix\nsystem\n(Vtouch {marker}\ntRs.".encode(),
    }


def assert_refused(path, marker):
    message = one_line_error(rc.load_reference_state, path)
    assert message.startswith(f"{path} is not a reference checkpoint")
    assert not marker.exists()
    return message


def test_pickles_that_run_code_are_refused_and_run_nothing(tmp_path):
    marker = tmp_path / "marker"
    cases = {name: pickle.dumps({"agent": obj}, protocol=4) for name, obj in payloads(tmp_path, marker).items()}
    cases.update(raw_payloads(marker))
    for protocol in (0, 2, 5):
        cases[f"runstring, protocol {protocol}"] = pickle.dumps(
            {"agent": Call(np_testing_utils.runstring, touch(marker), {})}, protocol=protocol)
    for name, data in cases.items():
        path = tmp_path / "evil.pkl"
        path.write_bytes(data)
        try:  # the payload works: plain pickle runs it
            pickle.loads(data)
        except Exception:
            pass
        assert marker.exists(), f"{name}: the payload did not run under plain pickle"
        marker.unlink()
        message = assert_refused(path, marker)
        assert "not loaded" in message or "not a reference checkpoint" in message, name
        with pytest.raises(safe_pickle.UnsafePickleError):
            safe_pickle.loads(data)
        assert not marker.exists(), name


def test_allowed_stand_ins_check_their_arguments(tmp_path):
    # A jax array rebuilt with an allowed function other than numpy's _reconstruct.
    with pytest.raises(safe_pickle.UnsafePickleError, match="rebuild function"):
        safe_pickle.loads(pickle.dumps(Call(jax._src.array._reconstruct_array, np.dtype, ("f4",), None, {})))
    # _codecs.encode for another codec than latin-1.
    import _codecs

    with pytest.raises(safe_pickle.UnsafePickleError, match="latin-1"):
        safe_pickle.loads(pickle.dumps(Call(_codecs.encode, "eA==", "base64")))
    # BUILD (set state) on an allowed class or function: refused, the object left as it was.
    for target in ("collections\nOrderedDict", "_codecs\nencode"):
        data = f"c{target}\n(N(dVx\nI1\nstb.".encode()
        with pytest.raises(safe_pickle.UnsafePickleError, match="sets the state"):
            safe_pickle.loads(data)
    assert not hasattr(safe_pickle.ALLOWED[("_codecs", "encode")], "x")
    # Exact pairs only: no dotted names, and only these modules.
    assert all("." not in name for _, name in safe_pickle.ALLOWED)
    assert {module for module, _ in safe_pickle.ALLOWED} == {
        "numpy", "numpy._core.multiarray", "numpy._core.numeric", "numpy.core.multiarray", "numpy.core.numeric",
        "jax._src.array", "flax.core.frozen_dict", "ml_dtypes", "builtins", "__builtin__", "collections", "_codecs"}


def test_every_array_kind_loads_with_numpy_1_and_2_module_paths(tmp_path):
    import flax

    tree = {"np": np.arange(6, dtype=np.float32).reshape(2, 3), "scalar": np.float64(2.5), "int": np.int32(3),
            "jax": jnp.ones((2, 2)), "key": jax.random.PRNGKey(1), "bf16": jnp.ones(3, jnp.bfloat16),
            "frozen": flax.core.freeze({"a": {"b": np.ones(2)}}), "plain": [1, (2.0, None), {3}, b"\xff", 1j],
            "ordered": __import__("collections").OrderedDict(a=np.zeros(1))}
    for protocol in range(6):
        data = pickle.dumps({"agent": tree}, protocol=protocol)
        legacy = data.replace(b"numpy._core", b"numpy.core")  # numpy 1.x writes numpy.core.*
        if protocol >= 4:  # length-prefixed strings: rewrite through the opcodes instead
            legacy = _rename_module(data, "numpy._core.multiarray", "numpy.core.multiarray")
            legacy = _rename_module(legacy, "numpy._core.numeric", "numpy.core.numeric")
        assert b"numpy._core" in data and b"numpy._core" not in legacy and b"numpy.core." in legacy
        for blob in (data, legacy):
            out = safe_pickle.loads(blob)["agent"]
            np.testing.assert_array_equal(out["np"], tree["np"])
            assert out["scalar"] == 2.5 and out["int"].dtype == np.int32
            assert isinstance(out["jax"], np.ndarray) and out["jax"].shape == (2, 2)
            np.testing.assert_array_equal(out["key"], np.asarray(tree["key"]))
            assert out["bf16"].dtype == jnp.bfloat16
            assert out["frozen"] == {"a": {"b": out["frozen"]["a"]["b"]}} and type(out["frozen"]) is dict
            assert out["plain"] == [1, (2.0, None), {3}, b"\xff", 1j]
            assert list(out["ordered"]) == ["a"] and out["ordered"]["a"].shape == (1,)


def _rename_module(data, old, new):
    """Rewrites protocol 4/5 SHORT_BINUNICODE strings equal to `old` (length prefix included)."""
    o, n = old.encode(), new.encode()
    return data.replace(b"\x8c" + bytes([len(o)]) + o, b"\x8c" + bytes([len(n)]) + n)


def test_a_malicious_bc_checkpoint_through_the_training_command(dataset_dir, tmp_path):
    """--config.bc_checkpoint=<malicious.pkl>: one line, no traceback, no marker, earlier runs kept."""
    marker = tmp_path / "marker"
    evil = tmp_path / "params_300000.pkl"
    evil.write_bytes(pickle.dumps({"agent": Call(np_testing_utils.runstring, touch(marker), {})}))
    out = tmp_path / "runs"
    saved = out / "cube-single-play-singletask-task2-v0" / "trqam" / "eval.csv"  # an earlier run's results
    saved.parent.mkdir(parents=True)
    saved.write_text("step,phase,seed,success\n0,offline,0,0.5\n")
    tiny = {"num_seeds": 1, "bc_steps": 10, "offline_steps": 20, "online_steps": 0, "log_every": 10,
            "eval_every": 10, "save_every": 10, "eval_episodes": 1, "eval_envs_per_seed": 1, "eval_steps": 5,
            "generate_missing_data": False, "agent.width": 16, "agent.depth": 2, "agent.num_critics": 2,
            "agent.batch_size": 16, "agent.flow_steps": 3}
    cmd = [sys.executable, "-m", "experiments.train", "--config=experiments/configs/quickstart.py",
           *[f"--config.{k}={v}" for k, v in tiny.items()], f"--config.dataset_dir={dataset_dir}",
           f"--output_dir={out}", f"--config.bc_checkpoint={evil}", "--noreport"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error")]
    assert errors == [f"Error: {evil} is not a reference checkpoint: it needs numpy.testing._private.utils.runstring, "
                      "which is not an array, a dtype, a scalar or a plain container, and was not loaded"], proc.stderr
    assert not marker.exists()
    assert saved.read_text() == "step,phase,seed,success\n0,offline,0,0.5\n"
