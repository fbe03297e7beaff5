"""``worldsim record``: roll out an agent in any Gymnasium pixel env and write a recording.

Small runs write one ``.msgpack`` file; anything else is a folder of shards plus
``index.json``. With ``--num-envs K`` the envs are stepped as vector envs, split across
``--workers`` processes (by default one per CPU core, up to K), each writing its own
shards; the parent merges their index entries and coverage counts at the end. Env j of the
run starts with reset seed ``--seed + j`` however the envs are split, but each worker's
agents draw from their own random streams, so the same ``--seed`` with another
``--workers`` records other actions: pass ``--workers`` to make a recording repeatable
across machines with other core counts. A coverage
summary (how often each action value is taken, how often blocks are mined and placed) is
printed and written beside the recording as JSON.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.coverage import Coverage
from agents.rollout import (
    AGENTS,
    RecordConfig,
    image_shape,
    make_agent,
    make_env,
    output_path,
    record_part,
)
from worldsim.atomic import output_lock
from worldsim.cli import json_object
from worldsim.cpus import usable_cpus
from worldsim.errors import WorldSimError
from worldsim.recording import RecordingError, RecordingTruncatedWarning, cut_in_header, read_header
from worldsim.recording_writer import now_iso, pack_readable
from worldsim.reference import HELDOUT_SEED_BASE
from worldsim.shard_index import INDEX_NAME, SHARD_SUFFIX, FileIndex, write_index

SEED_MAX = 2**63
"""Reset seeds stay below this, so that every reader (and numpy's int64) holds them."""
HELDOUT_SEEDS = (HELDOUT_SEED_BASE, HELDOUT_SEED_BASE + 100_000)
"""The reset seeds ``worldsim eval`` keeps for its held-out worlds (:mod:`worldsim.reference`)."""


class HeldOutSeedWarning(UserWarning):
    """A recording's opening reset seeds are worlds that ``worldsim eval`` holds out."""


@dataclass
class RecordResult:
    """What a recording run wrote and how fast."""

    out: Path
    steps: int
    records: int
    frame_bytes: int
    bytes: int
    seconds: float
    workers: int
    coverage: Coverage

    steady_steps_per_second: float
    """Rate after each worker's start-up (env creation, JIT loading), all workers summed."""

    @property
    def steps_per_second(self) -> float:
        """Wall-clock rate of the whole run, start-up included."""
        return self.steps / max(self.seconds, 1e-9)

    @property
    def bytes_per_frame(self) -> float:
        return self.frame_bytes / max(self.records, 1)


def _worker(
    cfg: RecordConfig, part: int, parts: int, steps: int, counter: Any, results: Any, parent: int
) -> None:
    """Record one part; ``parent`` is the recording process's pid, passed in because a worker
    still starting up when its parent dies would otherwise take the reaper's pid for it."""
    # On Windows a process keeps its dead parent's id (os.getppid never changes), so the pid
    # alone let orphaned workers record their whole share. The spawn sentinel (a pipe on
    # POSIX, the parent's process handle on Windows) says on every OS when the parent is gone.
    spawner = mp.parent_process()

    def progress(k: int) -> None:
        if os.getppid() != parent or (spawner is not None and not spawner.is_alive()):
            # The parent was killed: stop, keeping what was written, and exit without
            # waiting for anyone to read the queue.
            results.cancel_join_thread()
            raise WorldSimError("the recording's parent process is gone")
        with counter.get_lock():
            counter.value += k

    try:
        progress(0)  # a parent gone before this worker started: nothing to record
        results.put(("ok", part, record_part(cfg, part, parts, steps, progress)))
    except WorldSimError as e:
        results.put(("user", part, str(e)))
    except OSError as e:  # a full disk: one line naming the file, as a single process says it, not a traceback
        where = "" if e.filename is None else f": {str(e.filename)!r}"
        results.put(("user", part, f"{e.strerror or e}{where}"))
    except BaseException:  # report everything: the parent must not wait forever
        results.put(("crash", part, traceback.format_exc()))


def _preflight(cfg: RecordConfig, parts: int) -> None:
    """Make the first worker's env (a vector env for several worlds, as the worker makes it,
    so vector-only arguments such as ``render_threads`` pass) and its agent before anything
    at ``--out`` is touched, so that a bad ``--env``, env argument or agent fails without
    costing an existing recording."""
    import gymnasium as gym
    import numpy as np

    from worldsim.spaces import ActionSpec

    pack_readable({"env_kwargs": cfg.make_kwargs()}, "--env-kwargs")  # the header holds them
    n = cfg.num_envs // parts + (cfg.num_envs % parts > 0)
    env = make_env(cfg.env, n, cfg.make_kwargs())
    try:
        vector = isinstance(env, gym.vector.VectorEnv)
        image_shape(env.single_observation_space if vector else env.observation_space, cfg.env)
        space = env.single_action_space if vector else env.action_space
        make_agent(cfg.agent, cfg.env, ActionSpec.from_space(space), np.random.default_rng(0))
    finally:
        env.close()


def worker_shares(steps: int, num_envs: int, parts: int) -> list[int]:
    """Step records per worker: each env's share summed over the envs the worker holds.

    Every env gets ``steps // num_envs`` records, and the first ``steps % num_envs`` envs one
    more, as when one process steps them all. Sharing by worker instead would give an env of a
    worker that holds fewer envs than the others more steps than theirs (a lone env of three
    over two workers would get half the run).
    """
    k, extra = divmod(num_envs, parts)
    shares, first = [], 0
    for p in range(parts):
        n = k + (p < extra)  # as record_part splits the envs
        shares.append(sum(steps // num_envs + (j < steps % num_envs) for j in range(first, first + n)))
        first += n
    return shares


def _is_recording(path: Path) -> bool:
    """A WorldSim recording file, or one a writer left before its header was whole."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RecordingTruncatedWarning)
            read_header(path)
    except RecordingError:
        return cut_in_header(path)
    return True


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.suffix == SHARD_SUFFIX:
        if out.exists() and not _is_recording(out):  # --overwrite replaces a recording, nothing else
            raise WorldSimError(f"{out} exists and is not a WorldSim recording; choose another --out")
        if out.exists() and not overwrite:
            raise WorldSimError(f"{out} exists; pass --overwrite or choose another --out")
        if out.exists():
            out.unlink()
        # The old run's coverage goes with it: beside a new recording that stops short, it
        # would describe data that is gone.
        output_path(out).unlink(missing_ok=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        return
    if out.exists() and not out.is_dir():
        raise WorldSimError(f"{out} is a file; shard folders need a directory path")
    ours = (
        [
            p
            for p in out.glob("*")
            if p.suffix == SHARD_SUFFIX or p.name in (INDEX_NAME, "coverage.json")
        ]
        if out.is_dir()
        else []
    )
    # Readers take every *.msgpack in a folder for a shard, so a foreign one would spoil the
    # new recording; and --overwrite replaces a recording, not files that are none.
    foreign = [p.name for p in ours if p.suffix == SHARD_SUFFIX and not _is_recording(p)]
    if foreign:
        raise WorldSimError(
            f"{out} holds {', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}, not a "
            f"WorldSim recording, and a reader would take every {SHARD_SUFFIX} file there for a "
            "shard: move it or choose another --out"
        )
    if ours and not overwrite:
        raise WorldSimError(
            f"{out} already holds a recording; pass --overwrite or choose another --out"
        )
    for p in ours:
        p.unlink()


def record(
    cfg: RecordConfig, *, overwrite: bool = False, progress_bar: bool = True
) -> RecordResult:
    """Run a whole recording (in ``cfg.workers`` processes) and write index and coverage.

    Raises:
        WorldSimError: bad options, an unsupported env, or an existing output.
    """
    if cfg.steps < 1 or cfg.num_envs < 1 or cfg.workers < 1 or cfg.shard_steps < 1:
        raise WorldSimError("--steps, --num-envs, --workers and --shard-steps must be >= 1")
    # Checked before --out is touched: numpy and Gymnasium refuse negative seeds only once
    # recording has begun, and a recording holds integers below 2**64 (env j resets with seed + j).
    if not 0 <= cfg.seed <= SEED_MAX - cfg.num_envs:
        raise WorldSimError(f"--seed must be between 0 and {SEED_MAX - cfg.num_envs}, got {cfg.seed}")
    if cfg.agent not in AGENTS:
        raise WorldSimError(f"unknown agent {cfg.agent!r}; choose from {', '.join(AGENTS)}")
    low, high = HELDOUT_SEEDS
    if cfg.num_envs > 1 and cfg.seed < high and cfg.seed + cfg.num_envs > low:
        # Env j of several opens with seed + j (a lone env's seeds are hashes above the range):
        # a model trained on this recording would be evaluated on worlds it saw.
        warnings.warn(
            f"--seed {cfg.seed} opens {cfg.num_envs} env(s) with reset seeds {cfg.seed}..{cfg.seed + cfg.num_envs - 1}, "
            f"inside [{low}, {high}), the worlds `worldsim eval` holds out: an eval of a model trained on "
            "this recording would measure worlds it trained on; pick a --seed below "
            f"{max(0, low - cfg.num_envs + 1)} or from {high}",
            HeldOutSeedWarning,
            stacklevel=2,
        )
    parts = min(cfg.workers, cfg.num_envs)
    out = Path(cfg.out)
    if parts > 1 and out.suffix == SHARD_SUFFIX:
        raise WorldSimError(
            f"{parts} workers write shards: give --out a folder, not a {SHARD_SUFFIX} file"
        )
    _preflight(cfg, parts)
    # One run at a time into an --out: two started together both passed _prepare_out's check and
    # filled one folder with shards of both (or --overwrite deleted the other's under it).
    with output_lock(out, "record"):
        return _record_locked(cfg, out, parts, overwrite, progress_bar)


def _record_locked(cfg: RecordConfig, out: Path, parts: int, overwrite: bool, progress_bar: bool) -> RecordResult:
    """The part of :func:`record` that touches ``out``, run under its lock."""
    _prepare_out(out, overwrite)
    cfg.created = cfg.created or now_iso()
    shares = worker_shares(cfg.steps, cfg.num_envs, parts)

    from worldsim.progress import progress as progress_bar_for

    bars: list[Any] = []

    def progress(k: int) -> None:
        # Created on the first report, so that a bad env fails before a bar is drawn.
        if not bars:
            bars.append(progress_bar_for(cfg.steps, "record", unit="step", disable=not progress_bar))
        bars[0].update(k)

    start = time.perf_counter()
    try:
        if parts == 1:
            results = [record_part(cfg, 0, 1, cfg.steps, progress)]
        else:
            results = _run_parallel(cfg, parts, shares, progress)
    finally:
        for bar in bars:
            bar.close()
    seconds = time.perf_counter() - start

    coverage = Coverage(**results[0]["coverage"])
    for r in results[1:]:
        coverage = coverage + Coverage(**r["coverage"])
    if parts > 1:
        files: list[FileIndex] = [f for r in results for f in r["files"]]
        write_index(out, results[0]["header"], files)
    coverage.write(output_path(out))
    return RecordResult(
        out=out,
        steps=sum(r["steps"] for r in results),
        records=sum(r["records"] for r in results),
        frame_bytes=sum(r["frame_bytes"] for r in results),
        bytes=sum(r["bytes"] for r in results),
        seconds=seconds,
        workers=parts,
        coverage=coverage,
        steady_steps_per_second=sum(
            r["steady_steps"] / max(r["steady_seconds"], 1e-9) for r in results
        ),
    )


def _run_parallel(
    cfg: RecordConfig, parts: int, shares: list[int], progress: Any
) -> list[dict[str, Any]]:
    # spawn, not fork: the parent may hold threads (numba, torch) that fork would copy broken.
    ctx = mp.get_context("spawn")
    counter = ctx.Value("q", 0)
    results_q = ctx.Queue()
    procs = [
        ctx.Process(
            target=_worker, args=(cfg, p, parts, shares[p], counter, results_q, os.getpid()), daemon=True
        )
        for p in range(parts)
    ]
    for proc in procs:
        proc.start()
    results: dict[int, dict[str, Any]] = {}
    shown = 0

    def terminated(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)  # so that the workers are stopped below

    # Only where SIGTERM would kill outright: the worldsim command's own handler (an interrupt,
    # which stops the workers below just as well) is left to say "terminated".
    own_handler = threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    previous = signal.signal(signal.SIGTERM, terminated) if own_handler else None
    try:
        while len(results) < parts:
            try:
                status, part, payload = results_q.get(timeout=0.2)
            except queue.Empty:
                # Any one worker gone without a result fails the run now, not when the others
                # finish their shares (a dead worker's result would already be in the queue).
                dead = [p for p, proc in enumerate(procs) if p not in results and not proc.is_alive()]
                if dead and results_q.empty():
                    raise WorldSimError(
                        f"recording worker {dead[0]} died without a result (exit code "
                        f"{procs[dead[0]].exitcode}; out of memory?); what it wrote stays readable"
                    ) from None
            else:
                if status == "user":
                    raise WorldSimError(payload)
                if status == "crash":
                    raise RuntimeError(f"recording worker {part} failed:\n{payload}")
                results[part] = payload
            with counter.get_lock():
                done = counter.value
            if done > shown:
                progress(done - shown)
                shown = done
    finally:
        if own_handler:
            signal.signal(signal.SIGTERM, previous)
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
            proc.join()
    return [results[p] for p in range(parts)]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="worldsim record", description=__doc__.split("\n\n")[0])
    p.add_argument("--env", required=True, help="Gymnasium id (module:Id imports module first)")
    p.add_argument("--agent", choices=AGENTS, default="random",
                   help="who acts: random (any env) or explorer (a scripted BlockWorld player that walks, turns, mines and builds: the data world models train on) (default: random)")
    p.add_argument("--steps", type=int, required=True, help="step records to write in total")
    p.add_argument("--out", required=True, help="a .msgpack file, or a folder of shards")
    p.add_argument("--num-envs", type=int, default=1, help="envs stepped together (vector env; default 1)")
    p.add_argument(
        "--workers", type=int, default=None, help="processes (default: min(num-envs, the CPUs this process may use))"
    )
    p.add_argument("--seed", type=int, default=0,
                   help="seeds the run: the envs' resets and the agents' draws (docs/recording.md; default 0)")
    p.add_argument("--width", type=int, default=None, help="frame width, passed to the env")
    p.add_argument("--height", type=int, default=None, help="frame height, passed to the env")
    p.add_argument("--shard-steps", type=int, default=4096, help="records per shard file (default 4096)")
    p.add_argument("--env-kwargs", type=json_object, default={}, help="JSON object of more env keyword arguments")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing recording at --out"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    env_kwargs = args.env_kwargs
    if args.workers is not None and args.workers < 1:
        raise WorldSimError(f"--workers must be at least 1, got {args.workers}")
    workers = args.workers or min(args.num_envs, usable_cpus())
    cfg = RecordConfig(
        env=args.env, agent=args.agent, steps=args.steps, out=args.out, num_envs=args.num_envs,
        workers=workers, seed=args.seed, width=args.width, height=args.height,
        shard_steps=args.shard_steps, env_kwargs=env_kwargs,
    )  # fmt: skip
    result = record(cfg, overwrite=args.overwrite, progress_bar=not args.quiet)
    print(
        f"wrote {result.steps} steps ({result.records} frames) to {result.out} in {result.seconds:.1f}s: "
        f"{result.steps_per_second:.0f} steps/s ({result.steady_steps_per_second:.0f} after start-up), "
        f"{result.bytes_per_frame:.0f} bytes/frame (PNG), "
        f"{result.bytes / 1e6:.1f} MB, {result.workers} process(es)"
    )
    print(result.coverage.table())
    print(f"coverage written to {output_path(result.out)}")
    return 0
