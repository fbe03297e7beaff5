"""The window dataset: exactly the valid windows, uniform sampling, episode-wise splits."""

from __future__ import annotations

import collections
import json
import math
import os

import numpy as np
import pytest

from tests.worldsim.toy_env import record_toy
from worldsim.data import Window, WindowDataset
from worldsim.recording import RecordingError


def _truth(episodes, window):
    """Every window of `window` frames inside an episode, as comparable byte strings."""
    out = []
    for ep in episodes:
        frames = np.stack(ep["frames"])
        acts = np.stack(ep["actions"]) if ep["actions"] else np.zeros((0, 2), np.int64)
        for s in range(len(frames) - window + 1):
            out.append(
                (
                    frames[s : s + window].tobytes(),
                    acts[s : s + window - 1].tobytes(),
                    np.asarray(ep["rewards"][s : s + window - 1], np.float32).tobytes(),
                    np.asarray(ep["terminated"][s : s + window - 1], bool).tobytes(),
                )
            )
    return out


def _key(w):
    return (w.frames.tobytes(), w.actions.tobytes(), w.rewards.tobytes(), w.terminated.tobytes())


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data") / "shards"
    episodes = record_toy(folder, 14, shard_records=16, interleave=3, seed=5, max_len=25)
    return folder, episodes


@pytest.mark.parametrize("window", [1, 2, 6])
def test_windows_are_exactly_the_windows_inside_episodes(shards, window):
    folder, episodes = shards
    ds = WindowDataset([folder], window)
    truth = _truth(episodes, window)
    assert len(ds) == len(truth)
    got = [_key(ds[i]) for i in range(len(ds))]
    assert collections.Counter(got) == collections.Counter(truth)
    w = ds[-1]
    assert w.frames.shape == (window, 12, 16, 3) and w.frames.dtype == np.uint8
    assert w.actions.shape == (window - 1, 2) and w.actions.dtype == np.int64
    assert w.rewards.dtype == np.float32 and w.terminated.dtype == bool
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_sampling_is_uniform_over_window_starts(shards):
    folder, episodes = shards
    ds = WindowDataset([folder], 8)
    position = {k: i for i, k in enumerate(_key(ds[i]) for i in range(len(ds)))}
    counts = np.zeros(len(ds))
    rng = np.random.default_rng(0)
    for _ in range(40):
        batch = ds.sample(rng, 25)
        assert batch.frames.shape == (25, 8, 12, 16, 3)
        assert batch.actions.shape == (25, 7, 2)
        for b in range(25):
            one = Window(batch.frames[b], batch.actions[b], batch.rewards[b], batch.terminated[b])
            counts[position[_key(one)]] += 1
    # Pearson chi-square against uniform: episodes differ in length, so picking an episode
    # first and then a start would fail this by a wide margin.
    expected = counts.sum() / len(ds)
    chi2 = ((counts - expected) ** 2 / expected).sum()
    df = len(ds) - 1
    assert chi2 < df + 5 * math.sqrt(2 * df)


def test_split_is_by_whole_episodes_and_deterministic(shards):
    folder, _ = shards
    train = WindowDataset([folder], 3, split="train", val_fraction=0.2, seed=1)
    val = WindowDataset([folder], 3, split="val", val_fraction=0.2, seed=1)
    again = WindowDataset([folder], 3, split="val", val_fraction=0.2, seed=1)
    everything = WindowDataset([folder], 3)
    assert set(train.episodes).isdisjoint(val.episodes)
    assert set(train.episodes) | set(val.episodes) == set(everything.episodes)
    assert len(val.episodes) == 3 and val.episodes == again.episodes
    assert len(train) + len(val) == len(everything)
    other = WindowDataset([folder], 3, split="val", val_fraction=0.2, seed=2)
    assert other.episodes != val.episodes


def test_dataset_without_index_or_with_a_stale_index_scans(shards, tmp_path):
    folder, episodes = shards
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in folder.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    doc = json.loads((copy / "index.json").read_text())
    doc["shards"] = doc["shards"][1:]  # the first shard is no longer indexed
    (copy / "index.json").write_text(json.dumps(doc))
    ds = WindowDataset([copy], 4)
    assert collections.Counter(_key(ds[i]) for i in range(len(ds))) == collections.Counter(
        _truth(episodes, 4)
    )
    (copy / "index.json").unlink()
    assert len(WindowDataset([copy], 4)) == len(ds)


def test_a_broken_or_stale_index_is_named_with_the_way_out_and_deleting_it_works(shards, tmp_path):
    """index.json is only an optimisation: when it is unreadable or no longer matches its
    shards, the error names it and says to delete it, and deleting it is enough."""
    from worldsim.errors import WorldSimError

    folder, episodes = shards
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in folder.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    index = copy / "index.json"
    good = index.read_text()
    doc = json.loads(good)
    del doc["shards"][0]["segments"]
    huge = json.loads(good)
    huge["shards"][0]["segments"][0]["offsets"][1] = 10**30  # was an OverflowError naming no file
    for text in (good[: len(good) // 2], json.dumps(doc), "[" * 100_000 + "]" * 100_000, json.dumps(huge)):
        index.write_text(text)
        with pytest.raises(WorldSimError, match=f"{index}: .*delete it to have the shards scanned"):
            WindowDataset([copy], 4)
    doc = json.loads(good)
    first = doc["shards"][0]["segments"][0]["offsets"]
    first[1:] = [o + 1 for o in first[1:]]  # as if the shard had been rewritten
    index.write_text(json.dumps(doc))
    ds = WindowDataset([copy], 1)
    with pytest.raises(RecordingError, match="changed since it was indexed.*delete index.json"):
        for i in range(len(ds)):
            ds[i]
    index.unlink()
    assert len(WindowDataset([copy], 4)) == len(_truth(episodes, 4))


def test_files_and_folders_combine_and_must_agree(shards, tmp_path):
    folder, episodes = shards
    single = tmp_path / "one.msgpack"
    more = record_toy(single, 3, seed=9, max_len=25)
    ds = WindowDataset([folder, single], 5)
    assert len(ds) == len(_truth(episodes, 5)) + len(_truth(more, 5))
    other = tmp_path / "discrete.msgpack"
    record_toy(other, 1, discrete=True)
    with pytest.raises(RecordingError, match="action_space"):
        WindowDataset([single, other], 2)
    assert WindowDataset([other], 2).action_spec.kind == "Discrete"
    assert WindowDataset([other], 2)[0].actions.shape == (1, 1)


def test_too_long_window_gives_an_empty_dataset_that_refuses_to_sample(shards):
    folder, _ = shards
    ds = WindowDataset([folder], 1000)
    assert len(ds) == 0
    with pytest.raises(RecordingError, match="1000 frames"):
        ds.sample(np.random.default_rng(0), 1)


def test_truncated_last_shard_still_serves_its_complete_records(tmp_path):
    folder = tmp_path / "run"
    episodes = record_toy(folder, 2, shard_records=1000, seed=4, max_len=20, end_prob=0.0)
    (folder / "index.json").unlink()  # as if killed before the index was written
    shard = next(folder.glob("*.msgpack"))
    shard.write_bytes(shard.read_bytes()[:-7])
    with pytest.warns(UserWarning, match="truncated"):
        ds = WindowDataset([folder], 20)
    # Episode 1 lost its last frame, so it holds one window of 20 frames, episode 0 two.
    episodes[1] = {k: v[:-1] for k, v in episodes[1].items()}
    assert collections.Counter(_key(ds[i]) for i in range(len(ds))) == collections.Counter(
        _truth(episodes, 20)
    )
    assert len(ds) == 3


def test_no_window_spans_the_gap_a_removed_middle_shard_leaves(tmp_path):
    """One 31-frame episode in shards of 10 records; the second shard (steps 10-19) is
    removed, with the index: the windows are those inside steps 0-9 and inside 20-30, none
    splicing step 9 onto step 20."""
    folder = tmp_path / "run"
    (episode,) = record_toy(folder, 1, shard_records=10, seed=3, max_len=30, end_prob=0.0)
    shards = sorted(folder.glob("*.msgpack"))
    assert len(shards) == 4
    shards[1].unlink()
    (folder / "index.json").unlink()
    ds = WindowDataset([folder], 5)
    # frames a..b and the b - a steps between them
    pieces = [{k: v[a : b + (k == "frames")] for k, v in episode.items()} for a, b in ((0, 9), (20, 30))]
    assert len(ds) == 6 + 7
    assert collections.Counter(_key(ds[i]) for i in range(len(ds))) == collections.Counter(_truth(pieces, 5))


def test_two_recordings_made_in_the_same_second_stay_apart(tmp_path):
    # The same toy env and agent, written back to back: their episode indices coincide, so
    # only the runs' creation times tell the episodes apart when they are combined. Were
    # they taken for one episode, the shards' pieces would be spliced into windows that
    # cross from one run's episode into the other's.
    folder, single = tmp_path / "shards", tmp_path / "one.msgpack"
    first = record_toy(folder, 3, shard_records=7, seed=1, max_len=25)
    second = record_toy(single, 3, seed=2, max_len=25)
    ds = WindowDataset([folder, single], 5)
    assert collections.Counter(_key(ds[i]) for i in range(len(ds))) == collections.Counter(
        _truth(first, 5) + _truth(second, 5)
    )


def test_a_reward_too_large_for_the_float32_loss_is_an_error_naming_the_record(tmp_path):
    import gymnasium as gym

    from worldsim.recording import RecordingError
    from worldsim.recording_writer import RecordingWriter

    frame = np.zeros((8, 8, 3), np.uint8)
    path = tmp_path / "big.msgpack"
    with RecordingWriter(path, env_id="X-v0", env_kwargs={}, observation_shape=(8, 8, 3),
                         action_space=gym.spaces.Discrete(2), agent="a") as w:  # fmt: skip
        w.reset(0, 0, frame)
        for t in range(1, 4):
            w.step(0, t, 0, 1e20 if t == 2 else 1e17, False, False, frame)  # 1e20 squared is inf in float32
    ds = WindowDataset([path], 4)
    with pytest.raises(RecordingError, match=r"big.msgpack: byte \d+: reward 1e\+20 is beyond the ±1e\+18 training takes"):
        ds[0]
    # a penalty as large overflows the loss all the same
    path = tmp_path / "penalty.msgpack"
    with RecordingWriter(path, env_id="X-v0", env_kwargs={}, observation_shape=(8, 8, 3),
                         action_space=gym.spaces.Discrete(2), agent="a") as w:  # fmt: skip
        w.reset(0, 0, frame)
        w.step(0, 1, 0, -1e20, False, False, frame)
    with pytest.raises(RecordingError, match=r"penalty.msgpack: byte \d+: reward -1e\+20 is beyond"):
        WindowDataset([path], 2)[0]


@pytest.mark.skipif(not os.path.isdir("/dev/fd"), reason="counts open file descriptors in /dev/fd")
def test_a_recording_of_many_shards_is_read_within_a_small_file_descriptor_limit(tmp_path):
    # Each memory map holds a file descriptor. One per shard, kept for good, ran a dataset of
    # a few hundred shards into the usual limit of 1,024 ("Too many open files", reported
    # as a file changed since it was indexed); here the limit leaves room for fewer maps
    # than there are shards.
    import resource

    import gymnasium as gym

    from worldsim.data import MAX_OPEN_MAPS
    from worldsim.recording_writer import RecordingWriter

    shards = MAX_OPEN_MAPS + 40
    folder = tmp_path / "many"
    with RecordingWriter(folder, env_id="X-v0", env_kwargs={}, observation_shape=(4, 4, 3),
                         action_space=gym.spaces.Discrete(2), agent="a", shard_records=2) as w:  # fmt: skip
        for ep in range(shards):
            w.reset(ep, ep, np.full((4, 4, 3), ep, np.uint8))
            w.step(ep, 1, ep % 2, 1.0, False, True, np.full((4, 4, 3), ep + 1, np.uint8))
    ds = WindowDataset([folder], 2)
    assert len(ds) == shards
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = len(os.listdir("/dev/fd")) + MAX_OPEN_MAPS + 16
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    try:
        firsts = sorted(int(ds[i].frames[0, 0, 0, 0]) for i in range(len(ds)))
        batch = ds.sample(np.random.default_rng(0), 64)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert firsts == list(range(shards))  # every shard's window, read once each
    assert batch.frames.shape == (64, 2, 4, 4, 3)


def test_threads_reading_one_dataset_never_see_a_map_another_closed(tmp_path, monkeypatch):
    # The LRU closes the map read longest ago. Threads reading one dataset at once read a map
    # another had just closed ("mmap closed or invalid") or lost it from the LRU's order (a
    # KeyError), and either was reported as a file changed since it was indexed.
    import sys
    import threading

    import gymnasium as gym

    import worldsim.data
    from worldsim.recording_writer import RecordingWriter

    folder = tmp_path / "many"
    with RecordingWriter(folder, env_id="X-v0", env_kwargs={}, observation_shape=(4, 4, 3),
                         action_space=gym.spaces.Discrete(2), agent="a", shard_records=2) as w:  # fmt: skip
        for ep in range(12):
            w.reset(ep, ep, np.full((4, 4, 3), ep, np.uint8))
            w.step(ep, 1, ep % 2, 1.0, False, True, np.full((4, 4, 3), ep + 1, np.uint8))
    monkeypatch.setattr(worldsim.data, "MAX_OPEN_MAPS", 2)  # every read but a few evicts a map
    ds = WindowDataset([folder], 2)
    errors: list[str] = []

    def read(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for _ in range(1500):
                i = int(rng.integers(len(ds)))
                assert ds[i].frames[0, 0, 0, 0] == i
        except Exception as e:  # noqa: BLE001 - collected for the assert below
            errors.append(repr(e))

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        threads = [threading.Thread(target=read, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(switch)
    assert not errors, errors[:3]
    assert len(ds._maps) <= 2


@pytest.fixture(scope="module")
def long_run(tmp_path_factory):
    """20,000 records of tiny frames in 4,096-record shards, 8 episodes interleaved, and
    each episode's records in step order."""
    import gymnasium as gym

    from worldsim.png import encode_png
    from worldsim.recording_writer import RecordingWriter

    folder = tmp_path_factory.mktemp("long") / "shards"
    frame = encode_png(np.zeros((2, 2, 3), np.uint8))
    by_episode: dict[int, list[int]] = {}
    with RecordingWriter(folder, env_id="X-v0", env_kwargs={}, observation_shape=(2, 2, 3),
                         action_space=gym.spaces.Discrete(3), agent="a", shard_records=4096) as w:  # fmt: skip
        for t in range(2500):
            for e in range(8):
                w.reset(e, None, frame) if t == 0 else w.step(e, t, t % 3, float(e), False, False, frame)
                by_episode.setdefault(e, []).append(t)
    return folder, by_episode


def test_opening_a_long_recording_costs_tens_of_bytes_a_frame(long_run):
    """The dataset keeps 28 bytes a frame (file, offset, end and step as numpy). It used to
    build them as Python lists of ints first, peaking at about 165 bytes a frame: 1.6 GB to
    open 10 million frames. Now the peak is the index's JSON parse, about 45."""
    import tracemalloc

    folder, by_episode = long_run
    tracemalloc.start()
    try:
        ds = WindowDataset([folder], 16)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert ds.num_frames == 20_000 and len(ds) == 8 * (2500 - 15)
    assert peak / ds.num_frames < 80, f"{peak / ds.num_frames:.0f} bytes a frame"
    first, last = ds.record_range(len(ds) - 1)  # the last window of the last episode
    recs = [ds.record(r) for r in range(first, last)]
    assert [(r.episode, r.t) for r in recs] == [(7, t) for t in range(2484, 2500)]
    assert all(r.action[0] == r.t % 3 and r.reward == 7.0 for r in recs)
