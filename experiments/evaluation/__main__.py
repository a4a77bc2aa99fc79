"""Speed benchmark of evaluation with a random policy: `python -m experiments.evaluation --benchmark`.

See `--help`; with `--workers` it prints env steps/s against the number of async worker processes.
"""

from __future__ import annotations

import argparse
import gc
import time

from experiments import evaluation
from experiments.evaluation.episodes import Evaluator, random_act_fn
from experiments.evaluation.vector import VECTORIZATIONS, available_cpus


def _parse_workers(text: str) -> list[int]:
    """'1,2,4' -> [1, 2, 4]; 'auto' -> 1, 2, 4, ... up to the CPU count (which is included)."""
    if text == 'auto':
        cpus = available_cpus()
        counts = [2**i for i in range(cpus.bit_length()) if 2**i <= cpus]
        return counts + ([cpus] if counts[-1] != cpus else [])
    counts = [int(x) for x in text.split(',') if x.strip()]
    if not counts or min(counts) < 1:
        raise ValueError(f'wants positive integers, got {text!r}.')
    return counts


def _time_evaluator(args: argparse.Namespace, num_seeds: int, num_episodes: int, vectorization: str):
    """Build an evaluator, warm it up, time `args.repeats` runs: (num_envs, T, build s, best s, result)."""
    H = args.horizon
    t0 = time.perf_counter()
    evaluator = Evaluator(
        args.env_name,
        num_seeds,
        num_episodes,
        max_episode_steps=args.max_episode_steps,
        episodes_per_round=args.episodes_per_round if not args.workers else None,
        vectorization=vectorization,
    )
    build = time.perf_counter() - t0
    act_fn = random_act_fn(num_seeds, evaluator.episodes_per_round, H, evaluator.action_dim)
    num_envs, max_steps = evaluator.envs.num_envs, evaluator.max_episode_steps
    with evaluator:
        evaluator.run(act_fn, 0, H)  # warm-up (jit, worker caches)
        times = []
        for rep in range(args.repeats):
            result = evaluator.run(act_fn, rep + 1, H)
            times.append(result.wall_time)
    del evaluator  # free the envs (160 to 390 MB each) before building the next set
    gc.collect()
    return num_envs, max_steps, build, min(times), result


def _benchmark(args: argparse.Namespace) -> None:
    S, E, H = args.num_seeds, args.num_episodes, args.horizon
    for vectorization in args.vectorization:
        num_envs, max_steps, build, best, result = _time_evaluator(args, S, E, vectorization)
        print(
            f'{vectorization:5s} S={S} E={E} ({num_envs} envs) H={H} T={max_steps}: build {build:.1f} s, '
            f'run {best:.2f} s (best of {args.repeats}), {result.env_steps / best:,.0f} env steps/s, '
            f'success {result.success_rate.mean():.2f}',
            flush=True,
        )


def _benchmark_workers(args: argparse.Namespace) -> None:
    """Env steps/s against the number of async worker processes (one env each), and sync in-process.

    Each row runs one episode on each of `workers` envs (1 seed x `workers` episodes, one round) with
    a random policy; the sync row runs max(workers) envs in this process.
    """
    counts = args.workers
    print(
        f'env {args.env_name}, {available_cpus()} CPUs, H={args.horizon}, random policy, '
        f'best of {args.repeats} after a warm-up run',
        flush=True,
    )
    print(f'{"mode":>5s} {"workers":>7s} {"envs":>5s} {"T":>4s} {"build s":>7s} {"run s":>6s} '
          f'{"env steps/s":>11s} {"per worker":>10s}', flush=True)
    rows = [('sync', max(counts))] + [('async', n) for n in counts]
    for vectorization, n in rows:
        num_envs, max_steps, build, best, result = _time_evaluator(args, 1, n, vectorization)
        workers = 0 if vectorization == 'sync' else num_envs
        rate = result.env_steps / best
        per_worker = f'{rate / workers:10,.0f}' if workers else f'{"-":>10s}'
        print(f'{vectorization:>5s} {workers:7d} {num_envs:5d} {max_steps:4d} {build:7.1f} {best:6.2f} '
              f'{rate:11,.0f} {per_worker}', flush=True)


def main(argv=None) -> None:
    # prog: argparse would name this file, '__main__.py'.
    parser = argparse.ArgumentParser(prog='evaluation.py', description=evaluation.__doc__.split('\n')[0])
    parser.add_argument('--benchmark', action='store_true', help='time evaluation with a random policy')
    parser.add_argument('--env_name', default='cube-single-play-singletask-task1-v0')
    parser.add_argument('--num_seeds', type=int, default=4)
    parser.add_argument('--num_episodes', type=int, default=10)
    parser.add_argument('--horizon', type=int, default=5)
    parser.add_argument('--max_episode_steps', type=int, default=None)
    parser.add_argument('--episodes_per_round', type=int, default=None)
    parser.add_argument('--vectorization', nargs='+', default=list(VECTORIZATIONS), choices=VECTORIZATIONS)
    parser.add_argument('--repeats', type=int, default=1)
    parser.add_argument(
        '--workers',
        nargs='?',
        const='auto',
        default=None,
        help='env steps/s against async worker processes, e.g. --workers=1,2,4; bare --workers: '
        '1, 2, 4, ... up to the CPU count. Uses --env_name --horizon --max_episode_steps --repeats.',
    )
    args = parser.parse_args(argv)
    if not args.benchmark:
        parser.error('nothing to do: pass --benchmark')
    if args.workers is not None:
        try:
            args.workers = _parse_workers(args.workers)
        except (ValueError, argparse.ArgumentTypeError) as e:
            parser.error(f'--workers: {e}')
        _benchmark_workers(args)
    else:
        _benchmark(args)


if __name__ == '__main__':
    main()
