"""Async env workers and dataset workers never load jax, and a worker's private memory stays under
`ENV_WORKER_MB`; the default worker count is sized by cores and by free memory.

The probes run as `python -m <module that imports jax>`, as the launcher does: multiprocessing would
otherwise import that main module (and jax with it) in every 'forkserver' or 'spawn' child.
"""

import os
import subprocess
import sys
import textwrap

import pytest

from experiments import env_workers as ew
from experiments.evaluation import vector as ev

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = 'cube-single-play-singletask-task1-v0'
linux_only = pytest.mark.skipif(not sys.platform.startswith('linux'), reason='reads /proc')

# The launcher's shape: jax at the top of the main module. A child that imported this module would
# append its pid to the marker file.
MAIN = textwrap.dedent(
    """
    import os, sys, warnings
    import jax.numpy as jnp
    if __name__ != '__main__':
        with open(os.environ['MARKER'], 'a') as f:
            f.write(f'{os.getpid()} imported the main module as {__name__}\\n')
    warnings.filterwarnings('ignore')

    if __name__ == '__main__':
        jnp.zeros(1).block_until_ready()
    """
)

ASYNC_BODY = """
        import numpy as np
        from experiments import evaluation as ev
        online = ev.OnlineEnvs(%r, 2, 0, max_episode_steps=10, vectorization='async')
        for _ in range(30):
            online.step(np.zeros((2, 5), np.float32))
        print(*[p.pid for p in online.envs.processes], flush=True)
        sys.stdin.read()  # the test reads /proc, then closes stdin
        online.close()
""" % ENV

DATASET_BODY = """
        from experiments import make_dataset as md
        md.generate_dataset('cube-single-play-v0', sys.argv[1], num_episodes=2, episode_length=11,
                            val_fraction=0.5, num_workers=2, chunk_episodes=1, progress=False)
        print('done', flush=True)
"""


def _probe(tmp_path, body, *args, stdin=None):
    (tmp_path / 'probe_main.py').write_text(MAIN + textwrap.indent(textwrap.dedent(body), '    '))
    env = dict(os.environ, MARKER=str(tmp_path / 'marker'),
               PYTHONPATH=os.pathsep.join([REPO, str(tmp_path), os.environ.get('PYTHONPATH', '')]))
    return subprocess.Popen([sys.executable, '-m', 'probe_main', *args], cwd=REPO, env=env, text=True,
                            stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _marker(tmp_path):
    path = tmp_path / 'marker'
    return path.read_text() if path.exists() else ''


@linux_only
def test_async_workers_load_no_jax_and_fit_their_memory(tmp_path):
    owner = _probe(tmp_path, ASYNC_BODY, stdin=subprocess.PIPE)
    try:
        line = owner.stdout.readline()
        assert line, owner.stderr.read()[-3000:]
        pids = [int(x) for x in line.split()]
        assert len(pids) == 2
        with open(f'/proc/{owner.pid}/maps') as f:
            assert 'jaxlib' in f.read()  # the probe's owner does run jax
        for pid in pids:
            with open(f'/proc/{pid}/maps') as f:
                mapped = sorted({l.split()[-1] for l in f if 'jax' in l})
            assert mapped == [], f'worker {pid} mapped {mapped[:3]}'
            mb = ew.private_mb(pid)
            # Measured 385 MB for cube-single (docs/data.md, experiments/env_workers.py); 531 MB with jax.
            assert 100 < mb < ew.ENV_WORKER_MB, f'worker {pid}: {mb:.0f} MB private'
        assert _marker(tmp_path) == ''
    finally:
        owner.stdin.close()
        try:
            owner.wait(60)
        finally:
            if owner.poll() is None:
                owner.kill()


@linux_only
def test_dataset_workers_do_not_import_the_launcher(tmp_path):
    # make_dataset's 'spawn' workers, started from a main module that imports jax (the launcher's
    # auto-generation), import make_dataset only.
    proc = _probe(tmp_path, DATASET_BODY, str(tmp_path / 'data'))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and out.strip() == 'done', err[-3000:]
    assert _marker(tmp_path) == ''
    assert sorted(os.listdir(tmp_path / 'data')) == ['cube-single-play-v0-val.npz', 'cube-single-play-v0.generation.json',
                                                     'cube-single-play-v0.npz']


def test_worker_import_chain_has_no_jax():
    # What a worker imports, env build and dataset collection included.
    code = textwrap.dedent(
        """
        import sys, warnings
        warnings.filterwarnings('ignore')
        from experiments import env_workers, make_dataset
        import ogbench.manipspace.oracles.plan.cube_plan
        env = env_workers.make_env(%r)
        env.reset(seed=0)
        print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib', 'trqam_jax', 'flax')))
        """
        % ENV
    )
    out = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == '[]'


def test_mem_available_is_read_from_meminfo(tmp_path):
    meminfo = tmp_path / 'meminfo'
    meminfo.write_text('MemTotal:       24683520 kB\nMemFree:         1000000 kB\nMemAvailable:    4096000 kB\n')
    assert ew.mem_available_mb(str(meminfo)) == 4000.0
    meminfo.write_text('MemTotal:       24683520 kB\n')
    assert ew.mem_available_mb(str(meminfo)) is None
    assert ew.mem_available_mb(str(tmp_path / 'missing')) is None


def test_default_workers_sized_by_cores_and_free_memory(monkeypatch):
    assert ew.ENV_WORKER_MB == 450 and ew.WORKER_MEMORY_FRACTION == 0.5
    # 16 cores leave 15 workers; 4000 MB free: floor(4000 * 0.5 / 450) = floor(4.44) = 4.
    assert ev.default_num_workers(cpus=16, available_mb=4000.0) == 4
    # 24 GB machine, 22000 MB free: floor(11000 / 450) = 24 > 15, so the cores decide.
    assert ev.default_num_workers(cpus=16, available_mb=22000.0) == 15
    assert ev.default_num_workers(cpus=64, available_mb=22000.0) == 24
    assert ev.default_num_workers(cpus=2, available_mb=22000.0) == 1
    assert ev.default_num_workers(cpus=16, available_mb=100.0) == 1  # never fewer than one
    # A faked MemAvailable through the default path, and none at all (no /proc): cores alone.
    monkeypatch.setattr(ev, 'available_cpus', lambda: 32)
    monkeypatch.setattr(ev, 'mem_available_mb', lambda: 9000.0)
    assert ev.default_num_workers() == 10  # floor(4500 / 450) = 10 < 31
    monkeypatch.setattr(ev, 'mem_available_mb', lambda: None)
    assert ev.default_num_workers() == 31
