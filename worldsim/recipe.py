"""``worldsim train recipe NAME``: reproduce a shipped world model from nothing, resumably.

A recipe is data (:data:`RECIPES`): the env and frame size, the agent and amount of data,
the preset and the training steps. Running it performs, in order:

1. **data**: ``worldsim record`` in parts (``data/part-NNN``), each with its own seed
   range, so an interrupted collection redoes only the part it was in. A part is complete
   when its ``.done.json`` marker exists; a part folder without one is recorded again;
2. **tokenizer**: ``worldsim train tokenizer --resume`` into ``tokenizer.safetensors``;
3. **decoder**: ``worldsim train tokenizer --init tokenizer.safetensors --decoder-only
   --resume`` into ``decoder.safetensors``: the decoder trains on, with the encoder and
   quantiser frozen, so every code stays what the dynamics learns it to mean while the
   pixels it decodes to get sharper (the tokenizer's long tail is all in the decoder);
4. **dynamics**: ``worldsim train dynamics --resume`` into ``dynamics.safetensors``, on the
   codes of ``tokenizer.safetensors``;
5. **finetune** (when the recipe has ``finetune_steps``): ``worldsim train dynamics --init
   dynamics.safetensors --resume`` into ``finetune.safetensors``: a second dynamics phase, a
   warm restart at a lower peak learning rate, with fresh data draws (``--seed 1``) and the
   first phase's validation split (``--split-seed 0``, which also reuses its code cache).
   With ``finetune_phases`` = n > 1, stages ``finetune 2`` .. ``finetune n`` repeat it into
   ``finetune-2.safetensors`` .., each ``--init`` the phase before, with ``--seed`` 2 .. n;
   **final** (when the recipe has ``final_steps``): one more phase like those into
   ``final.safetensors``, with its own batch and flags (``final_batch``, ``final_train_args``),
   and the only stage that trains on all ``data_parts`` when ``base_parts`` keeps the others
   to the first parts (so more data can be recorded for it without changing what the earlier
   stages learn);
   **polish** (when the recipe has ``polish_steps``): a last phase like those into
   ``polish.safetensors``, from the final phase's weights (or the last phase's), on all
   ``data_parts`` at ``dynamics_batch`` windows a step with ``polish_train_args``;
6. **refiner** (when the recipe has ``refiner_steps``): ``worldsim train refiner --checkpoint
   decoder.safetensors --resume`` (the tokenizer when there is no decoder stage) into
   ``refiner.safetensors``, a tokenizer with the decoder and a refiner trained on its frames,
   on all ``data_parts``. It needs no dynamics, so it runs after the decoder stage's work
   whatever the dynamics phases do; a refiner whose ``info.refiner.sha256`` is not the
   decoder file's is trained again;
7. **model**: ``worldsim train swap-decoder`` writes ``model.safetensors``, the last dynamics
   checkpoint with the fine-tuned decoder, and the refiner with a refiner stage (a plain copy
   when the recipe has neither), and ``worldsim train set-guidance`` stores the recipe's ``guidance`` and
   ``guided_actions`` in it;
8. with ``--install``: the model is checked to load and copied (atomically) to the
   package's default checkpoint, the file ``worldsim.load()`` opens with no argument.

A training stage is complete when its checkpoint's ``info.steps`` reaches the recipe's
steps; otherwise it resumes from the checkpoint and its ``.state.safetensors`` (exactly:
see docs/model.md). The model stage is complete when ``model.safetensors`` records the
finished dynamics and decoder steps and the recipe's guidance. So the command can be killed at any moment and run again, in the
background across sessions, and it only ever does the work that is left. ``recipe.json``
in the folder pins the recipe: a folder holding another recipe's work is refused (a pin
written before a recipe field existed still matches while that field keeps its default).
``recipe_log.jsonl`` records how long each stage took, which documents the training time. A run
holds ``recipe.lock`` in the folder while it works, so a second run there is refused.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from safetensors import safe_open

from worldsim.atomic import LockBusy, atomic_copy, atomic_write_text, exclusive_lock, naming
from worldsim.checkpoint import checkpoint_steps, sha256_file
from worldsim.cli import DEVICE_HELP
from worldsim.errors import WorldSimError

ASSEMBLY_FIELDS = ("guidance", "guided_actions")
"""Recipe fields used only by the model stage; changing them re-assembles the model, nothing else."""
EXTENSION_FIELDS = ("polish_steps", "polish_train_args", "refiner_steps", "refiner_batch", "refiner_train_args")
"""Recipe fields that only add a stage after the others: a folder pinned before the recipe had
them holds valid work for every earlier stage, and goes on to the new one."""


@dataclass(frozen=True)
class Recipe:
    """Everything that determines a trained model, from data collection to the last step."""

    env: str
    env_kwargs: dict[str, Any]
    agent: str
    data_parts: int
    """Recording parts; part i records with ``--seed 1000 * i`` (reset seeds below 10^5)."""
    part_steps: int
    num_envs: int
    """Vector envs per part (their seeds are ``1000 * i + j``)."""
    preset: str
    tokenizer_steps: int
    tokenizer_batch: int
    dynamics_steps: int
    dynamics_batch: int
    context: int | None
    """Dynamics context frames; None = the preset's."""
    asset: str | None
    """File name under ``worldsim/assets/`` that ``--install`` writes; None = not installable."""
    summary: str
    extra_train_args: tuple[str, ...] = field(default=())
    """Flags for every training stage."""
    decoder_steps: int = 0
    """Decoder fine-tuning steps (encoder frozen) at ``tokenizer_batch``; 0 = no decoder stage."""
    decoder_train_args: tuple[str, ...] = field(default=())
    """Flags for the decoder stage only, after ``extra_train_args`` (so they win)."""
    dynamics_train_args: tuple[str, ...] = field(default=())
    """Flags for the dynamics stage only, after ``extra_train_args`` (so they win)."""
    finetune_steps: int = 0
    """Steps of the second dynamics phase, from the first's weights; 0 = no such phase."""
    finetune_train_args: tuple[str, ...] = field(default=())
    """Flags for the second dynamics phase only, after ``extra_train_args`` (so they win)."""
    finetune_phases: int = 1
    """Dynamics phases after the first (when ``finetune_steps`` > 0), each ``finetune_steps`` with
    ``finetune_train_args`` from the weights of the phase before, with its own data draws
    (``--seed`` 1, 2, ...)."""
    record_workers: int = 2
    """``worldsim record --workers`` for every part. Each worker's agents draw from their own
    random streams, so the same seeds split across another number of workers record other
    actions; the recipe pins the split its parts were recorded with (the project's 2-vCPU
    machine's default, and the GPU machine's parts were recorded with it too)."""
    base_parts: int | None = None
    """Recording parts (the first N) that every stage but the final phase trains on; None = all
    ``data_parts``. The final phase trains on all of them."""
    final_steps: int = 0
    """Steps of the final dynamics phase, from the weights of the phase before, on all
    ``data_parts`` at ``final_batch`` windows a step with ``final_train_args``; 0 = no such phase."""
    final_batch: int = 0
    final_train_args: tuple[str, ...] = field(default=())
    """Flags for the final phase only, after ``extra_train_args`` (so they win)."""
    polish_steps: int = 0
    """Steps of a last dynamics phase after all the others, from their weights, on all
    ``data_parts`` at ``dynamics_batch`` windows a step with ``polish_train_args``; 0 = none."""
    polish_train_args: tuple[str, ...] = field(default=())
    """Flags for the polish phase only, after ``extra_train_args`` (so they win)."""
    refiner_steps: int = 0
    """Steps of the refiner stage (``worldsim train refiner``) on the decoder; 0 = none."""
    refiner_batch: int = 12
    """Chains a refiner step trains on."""
    refiner_train_args: tuple[str, ...] = field(default=())
    """Flags for the refiner stage only, after ``extra_train_args`` (so they win)."""
    guidance: float = 1.0
    """The action guidance the model samples with (``worldsim train set-guidance``); 1 = none."""
    guided_actions: tuple[int, ...] | None = None
    """The action components guided (None: all)."""

    def __post_init__(self) -> None:
        if not 1 <= self.record_workers <= self.num_envs:
            raise WorldSimError(f"record_workers must be between 1 and num_envs ({self.num_envs}), got {self.record_workers}")
        if self.base_parts is not None and not 1 <= self.base_parts <= self.data_parts:
            raise WorldSimError(f"base_parts must be between 1 and data_parts ({self.data_parts}), got {self.base_parts}")
        if self.final_steps > 0 and self.final_batch < 1:
            raise WorldSimError(f"a final phase needs final_batch >= 1, got {self.final_batch}")
        if not self.guidance >= 0:
            raise WorldSimError(f"guidance must be >= 0 (1 = none), got {self.guidance}")

    @property
    def data_steps(self) -> int:
        return self.data_parts * self.part_steps


# ``blockworld-64``'s first stages are sized to train from nothing in about three hours on
# the project's machine (2 vCPUs with AVX512-BF16, bf16). At the ``small`` preset's 24-frame
# context a dynamics step of 8 windows took 1.05 s; at 12 frames, with 30 % of the windows on
# rolled-out context, it takes about 0.42 s. A 24-frame (1.2 s) memory is still far short of
# what a full turn needs (72 frames at 5 degrees a step), so the shorter context costs little
# and makes each step 2.5 times cheaper. The decoder trains three times longer than the
# tokenizer because it is cheap (about 12 steps/s) and the tokenizer's reconstruction error is
# all in it. The dynamics' held-out loss was still falling at the end of its 10,000 steps, so a
# second phase (``finetune_steps``) trains 12,000 more from its weights at lr 3e-4 (78 min
# here): it lifted open loop by 0.36-0.74 dB and the IDM's move and attack ratios. A third
# phase of the same (``finetune_phases=2``, 76 min here) made the dream settle earlier into a
# still night view (``late_motion_ratio`` halved), so it was not kept. The final phase
# instead trains on twice the data (parts 12-23 are recorded for it alone: ``base_parts``
# keeps the earlier stages on parts 0-11, as they were trained) in batches of 64 windows: on
# one H200 its 2,900 steps took 4 min 54 s, beside two other trainings; on the project's CPU
# a step of 64 windows takes 3.25 s, 7.7 times one of 8, so about 2 h 37 min (docs/eval.md,
# "Training time"). Over three eval seeds it raised teacher-forced and open-loop PSNR, the
# full circle and the yaw ratio in each, and its long rollouts move more (docs/model.md,
# "Not met", which also has the two candidates trained beside it). A phase of its own, rather than one longer cosine
# schedule, keeps each earlier phase a finished, resumable stage that a session can build on.
# The polish phase then trains 2,000 steps of 8 windows on all the parts with rolled-out
# context of 8 passes instead of 2 (33 min here): a context carrying up to 8 steps of the
# model's own errors taught it to keep turning on its own frames (the open loop's turn rate
# rose from 0.20-0.26 to 0.30-0.37 of the world's, and open loop by 0.21-0.25 dB, at 0.2-0.5
# dB of teacher-forced PSNR; docs/model.md, "Not met", which has the 4-pass run beside it).
# Docs: docs/eval.md, "worldsim train recipe".
RECIPES: dict[str, Recipe] = {
    "blockworld-64": Recipe(
        env="worldsim/BlockWorld-v0", env_kwargs={"width": 64, "height": 64}, agent="explorer",
        data_parts=24, part_steps=10_000, num_envs=8, preset="small", base_parts=12,
        tokenizer_steps=6_000, tokenizer_batch=32, dynamics_steps=10_000, dynamics_batch=8, context=12,
        asset="blockworld-64.safetensors",
        summary="the shipped model: 240k explorer steps of BlockWorld at 64x64, `small` preset, 12-frame context",
        decoder_steps=18_000, decoder_train_args=("--lr", "5e-4", "--warmup", "50"),
        dynamics_train_args=("--lr", "1e-3", "--warmup", "100", "--rollout-share", "0.3", "--ckpt-every", "250"),
        finetune_steps=12_000, finetune_train_args=("--lr", "3e-4", "--rollout-share", "0.3", "--ckpt-every", "250"),
        final_steps=2_900, final_batch=64,
        final_train_args=("--lr", "3e-4", "--warmup", "100", "--rollout-share", "0.3", "--ckpt-every", "250"),
        polish_steps=2_000,
        polish_train_args=("--lr", "1e-4", "--warmup", "50", "--rollout-share", "0.3", "--rollout-passes", "8", "--seed", "5",
                           "--ckpt-every", "250", "--val-every", "1000"),
        guidance=1.0, guided_actions=(3,),  # off by default; `guidance=1.3` then guides yaw (docs/model.md, "Action guidance")
    ),
    "blockworld-16-smoke": Recipe(
        env="worldsim/BlockWorld-v0", env_kwargs={"width": 16, "height": 16}, agent="explorer",
        data_parts=2, part_steps=200, num_envs=2, preset="tiny",
        tokenizer_steps=100, tokenizer_batch=16, dynamics_steps=40, dynamics_batch=4, context=None, asset=None,
        summary="every stage of the recipe in about a minute, at 16x16 with the `tiny` preset (for tests)",
        extra_train_args=("--warmup", "10", "--lr", "3e-3", "--log-every", "10", "--val-every", "50", "--val-batches", "1", "--ckpt-every", "20"),
        decoder_steps=30, decoder_train_args=("--lr", "1e-3"), dynamics_train_args=("--rollout-share", "0.5"),
        finetune_steps=20, finetune_train_args=("--lr", "1e-3"), finetune_phases=2,
        base_parts=1, final_steps=10, final_batch=6, final_train_args=("--lr", "1e-3"),
        polish_steps=6, polish_train_args=("--lr", "1e-3", "--rollout-share", "0.5", "--rollout-passes", "3"),
        refiner_steps=4, refiner_batch=4, refiner_train_args=("--chain", "2", "--channels", "4", "--blocks", "1"),
        guidance=1.5, guided_actions=(3,),
    ),
}  # fmt: skip


RESUME_HINT = "run the same command again to resume"
"""What ``worldsim train recipe`` says when it is interrupted: its finished work stands."""


def _cli(argv: list[str]) -> None:
    from worldsim.cli import Terminated, _resolve
    from worldsim.cli import main as cli

    rc = cli(argv)
    if rc in (130, 143):
        # The stage took the Ctrl-C or SIGTERM (it said so, and its last checkpoint stands): the
        # recipe is interrupted too, and exits as the stage did, not 2 as if it had failed.
        raise KeyboardInterrupt if rc == 130 else Terminated
    if rc != 0:
        found = _resolve(argv)
        name = found[0] if found else argv[0]  # `record`, not `record --env`
        raise WorldSimError(f"`worldsim {name}` failed (exit {rc}); fix the cause and run the recipe again to resume")


@contextlib.contextmanager
def _folder_lock(path: Path, log: Any = print) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` while the recipe works in its folder.

    A second run in the same folder (the command started again while a background one still
    runs) used to work beside the first: both recorded and trained the same stages at once,
    and one stage's files came from one run and the next's from the other. A kill leaves no
    lock behind (:func:`worldsim.atomic.exclusive_lock`). A file system that takes no locks
    gets a note in ``log`` and the run goes on unlocked.

    Raises:
        WorldSimError: another process holds it.
    """

    def note(why: str) -> None:
        # NFS without its lock daemon ("No locks available") and some network file systems
        # take no locks: the recipe ran there before it took one, and still does.
        log(f"recipe: note: {path.parent} takes no file locks ({why}), so nothing stops a second recipe run there; "
            "start only one")  # fmt: skip

    try:
        with exclusive_lock(path, note):
            yield
    except LockBusy as e:
        raise WorldSimError(f"{path.parent} is in use by another `worldsim train recipe` (process {e.holder}); let it "
                            "finish or stop it, then run this again to resume") from None  # fmt: skip


@dataclass
class RecipeRun:
    """One run of a recipe in a folder."""

    name: str
    root: Path
    device: str = "auto"
    threads: int | None = None
    log: Any = print

    def __post_init__(self) -> None:
        if self.name not in RECIPES:
            raise WorldSimError(f"unknown recipe {self.name!r}; choose one of {sorted(RECIPES)}")
        self.recipe = RECIPES[self.name]
        self.root = Path(self.root)

    @property
    def model_path(self) -> Path:
        return self.root / "model.safetensors"

    @property
    def tokenizer_path(self) -> Path:
        return self.root / "tokenizer.safetensors"

    @property
    def decoder_path(self) -> Path:
        return self.root / "decoder.safetensors"

    @property
    def refiner_path(self) -> Path:
        return self.root / "refiner.safetensors"

    @property
    def refined_from(self) -> Path:
        """The tokenizer the refiner stage trains on: the decoder stage's, else the first one."""
        return self.decoder_path if self.recipe.decoder_steps > 0 else self.tokenizer_path

    @property
    def decoded_by(self) -> Path | None:
        """The tokenizer whose decoder (and refiner) the model stage puts into the model (None: its own)."""
        r = self.recipe
        return self.refiner_path if r.refiner_steps > 0 else self.decoder_path if r.decoder_steps > 0 else None

    @property
    def dynamics_path(self) -> Path:
        return self.root / "dynamics.safetensors"

    @property
    def finetune_path(self) -> Path:
        return self.root / "finetune.safetensors"

    def phase_path(self, k: int) -> Path:
        """The checkpoint of dynamics phase ``k`` (1 = the first, 2 = ``finetune``, 3 = ``finetune-2``, ...;
        the final phase, when the recipe has one, is ``final``, and the polish phase after it ``polish``)."""
        if k == self.phases and self.recipe.polish_steps > 0:
            return self.root / "polish.safetensors"
        if k == self.final_phase:
            return self.root / "final.safetensors"
        return self.dynamics_path if k == 1 else self.finetune_path if k == 2 else self.root / f"finetune-{k - 1}.safetensors"

    @property
    def phases(self) -> int:
        """How many dynamics phases the recipe trains."""
        r = self.recipe
        return (1 + (r.finetune_phases if r.finetune_steps > 0 else 0) + (1 if r.final_steps > 0 else 0)
                + (1 if r.polish_steps > 0 else 0))

    @property
    def final_phase(self) -> int | None:
        """The final phase's number (None: the recipe has none)."""
        r = self.recipe
        return None if r.final_steps == 0 else self.phases - (1 if r.polish_steps > 0 else 0)

    @property
    def world_model_path(self) -> Path:
        """The last dynamics checkpoint: the one the model stage assembles."""
        return self.phase_path(self.phases)

    @property
    def world_model_steps(self) -> int:
        r = self.recipe
        if r.polish_steps > 0:
            return r.polish_steps
        return r.final_steps if r.final_steps > 0 else r.finetune_steps if r.finetune_steps > 0 else r.dynamics_steps

    def part_dir(self, i: int) -> Path:
        return self.root / "data" / f"part-{i:03d}"

    def _pin(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        pin = self.root / "recipe.json"
        want = {"name": self.name, "recipe": asdict(self.recipe)}
        want = json.loads(json.dumps(want))  # tuples -> lists, as they read back
        if pin.is_file():
            try:
                have = json.loads(pin.read_text())
            except (OSError, UnicodeDecodeError, ValueError) as e:
                raise WorldSimError(f"{pin}: unreadable ({e}); restore it, or choose another --dir") from None
            if not isinstance(have, dict):
                raise WorldSimError(f"{pin}: not a recipe pin; restore it, or choose another --dir")
            if isinstance(have.get("recipe"), dict):  # a field added since the pin was written, at its default, is the same recipe
                defaults = json.loads(json.dumps({f.name: f.default for f in fields(Recipe) if f.default is not MISSING}))
                have["recipe"] = {**{k: v for k, v in defaults.items() if want["recipe"].get(k) == v}, **have["recipe"]}
                # Fields that only shape the model stage do not make the trained stages another
                # recipe's: the model is assembled again with them (_model_is_current).
                have["recipe"].update({k: want["recipe"][k] for k in ASSEMBLY_FIELDS})
                have["recipe"].update({k: want["recipe"][k] for k in EXTENSION_FIELDS if k not in have["recipe"]})
            if have != want:
                if have.get("name") != want["name"]:
                    raise WorldSimError(f"{self.root} holds the work of another recipe ({have.get('name')}); choose another --dir")
                old, new = have.get("recipe") or {}, want["recipe"]
                changed = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
                said = "; ".join(f"{k} pinned {old.get(k)!r}, now {new.get(k)!r}" for k in changed[:4])
                raise WorldSimError(f"{self.root} holds the work of recipe {want['name']} as it was pinned, and the recipe "
                                    f"has changed since ({said}); choose another --dir, or restore those values")  # fmt: skip
        atomic_write_text(pin, json.dumps(want, indent=2) + "\n")  # half a pin would refuse the next run

    def _stage(self, name: str, fn: Any) -> None:
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
        log = self.root / "recipe_log.jsonl"
        with naming(log), open(log, "a") as f:  # a full disk: say it was this log, not only "No space left"
            f.write(json.dumps({"stage": name, "seconds": round(seconds, 1), "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}) + "\n")
        self.log(f"recipe {self.name}: {name} done in {seconds:.0f}s")

    def _record(self, i: int) -> None:
        r, out = self.recipe, self.part_dir(i)
        argv = ["record", "--env", r.env, "--agent", r.agent, "--steps", str(r.part_steps), "--num-envs", str(r.num_envs),
                "--seed", str(1000 * i), "--env-kwargs", json.dumps(r.env_kwargs), "--workers", str(r.record_workers),
                "--out", str(out), "--overwrite", "--quiet"]  # fmt: skip
        _cli(argv)
        done = {"steps": r.part_steps, "seed": 1000 * i, "num_envs": r.num_envs, "workers": r.record_workers}  # what made these episodes
        atomic_write_text(out.parent / f"{out.name}.done.json", json.dumps(done) + "\n")

    def _training_stages(self) -> list[tuple[str, Path, int, int]]:
        """(stage, checkpoint, steps, dynamics phase or 0) of each training stage, in order."""
        r = self.recipe
        stages = [("tokenizer", self.tokenizer_path, r.tokenizer_steps, 0)]
        if r.decoder_steps > 0:
            stages.append(("decoder", self.decoder_path, r.decoder_steps, 0))
        stages.append(("dynamics", self.dynamics_path, r.dynamics_steps, 1))
        last = self.phases - (1 if r.final_steps > 0 else 0) - (1 if r.polish_steps > 0 else 0)
        for k in range(2, last + 1):
            stages.append(("finetune" if k == 2 else f"finetune {k - 1}", self.phase_path(k), r.finetune_steps, k))
        if self.final_phase is not None:
            stages.append(("final", self.phase_path(self.final_phase), r.final_steps, self.final_phase))
        if r.polish_steps > 0:
            stages.append(("polish", self.phase_path(self.phases), r.polish_steps, self.phases))
        return stages

    def _train(self, stage: str, out: Path, steps: int, phase: int) -> None:
        r = self.recipe
        kind = "dynamics" if phase else "tokenizer"  # the decoder stage fine-tunes a tokenizer
        final = phase == self.final_phase  # the stage _training_stages names "final"
        polish = r.polish_steps > 0 and phase == self.phases
        parts = r.data_parts if final or polish or r.base_parts is None else r.base_parts
        data = [str(self.part_dir(i)) for i in range(parts)]
        batch = r.final_batch if final else r.dynamics_batch if kind == "dynamics" else r.tokenizer_batch
        argv = ["train", kind, "--data", *data, "--out", str(out), "--preset", r.preset, "--steps", str(steps),
                "--batch", str(batch), "--device", self.device, "--resume", *r.extra_train_args]  # fmt: skip
        if stage == "decoder":
            argv += ["--init", str(self.tokenizer_path), "--decoder-only", *r.decoder_train_args]
        if phase == 1:
            argv += ["--tokenizer", str(self.tokenizer_path)]
            if r.context is not None:
                argv += ["--context", str(r.context)]
            argv += list(r.dynamics_train_args)
        if phase > 1:
            # Phase k starts from phase k - 1, with --seed k - 1; the architecture and context are
            # the first phase's (--init wins over --preset).
            argv += ["--tokenizer", str(self.tokenizer_path), "--init", str(self.phase_path(phase - 1)),
                     "--seed", str(phase - 1), "--split-seed", "0",
                     *(r.final_train_args if final else r.polish_train_args if polish else r.finetune_train_args)]  # fmt: skip
        _cli(argv)

    def _model_is_current(self) -> bool:
        """Whether ``model.safetensors`` was assembled from the finished dynamics and decoder."""
        r = self.recipe
        if checkpoint_steps(self.model_path) != self.world_model_steps:
            return False
        with safe_open(str(self.model_path), framework="pt") as f:
            meta = f.metadata() or {}
        info, config = json.loads(meta.get("info", "{}")), json.loads(meta.get("config", "{}"))
        guided = config.get("guided_actions")
        if config.get("guidance", 1.0) != r.guidance or (None if guided is None else tuple(guided)) != r.guided_actions:
            return False
        init = Path(info["init"]).name if "init" in info else None  # the phase its dynamics started from
        if init != (self.phase_path(self.phases - 1).name if self.phases > 1 else None):
            return False
        if r.refiner_steps > 0:
            refiner = info.get("refiner", {})
            if refiner.get("steps") != r.refiner_steps or not self._refined_from_current(refiner):
                return False
        return r.decoder_steps == 0 or info.get("decoder", {}).get("steps") == r.decoder_steps

    def _refined_from_current(self, record: dict[str, Any]) -> bool:
        """Whether a refiner's ``info.refiner`` record names the current :attr:`refined_from` file."""
        return self.refined_from.is_file() and record.get("sha256") == sha256_file(self.refined_from)

    def _refine(self) -> None:
        """The refiner stage: a refiner for the decoder the model will have."""
        from worldsim.train import state_path

        r, out, base = self.recipe, self.refiner_path, self.refined_from
        if out.is_file():
            with safe_open(str(out), framework="pt") as f:
                info = json.loads((f.metadata() or {}).get("info", "{}"))
            if not self._refined_from_current(info.get("refiner", {})):
                # trained on another decoder (its resume would be refused): start again
                self.log(f"recipe {self.name}: {out.name} was trained on another {base.name}; training it again")
                out.unlink()
                state_path(out).unlink(missing_ok=True)
        done = checkpoint_steps(out)
        if done is not None and done >= r.refiner_steps:
            self.log(f"recipe {self.name}: refiner complete ({done} steps), skipped")
            return
        self.log(f"recipe {self.name}: training the refiner ({f'from step {done}' if done else 'from scratch'} to {r.refiner_steps})")
        argv = ["train", "refiner", "--checkpoint", str(base), "--data", *(str(self.part_dir(i)) for i in range(r.data_parts)),
                "--out", str(out), "--steps", str(r.refiner_steps), "--batch", str(r.refiner_batch), "--device", self.device,
                "--resume", *r.extra_train_args, *r.refiner_train_args]  # fmt: skip
        self._stage("refiner", lambda: _cli(argv))

    def _assemble(self) -> None:
        if self.decoded_by is not None:
            _cli(["train", "swap-decoder", "--checkpoint", str(self.world_model_path), "--tokenizer", str(self.decoded_by),
                  "--out", str(self.model_path)])  # fmt: skip
        else:
            atomic_copy(self.world_model_path, self.model_path)
        r = self.recipe
        if r.guidance != 1.0 or r.guided_actions is not None:
            actions = [] if r.guided_actions is None else ["--actions", ",".join(map(str, r.guided_actions))]
            _cli(["train", "set-guidance", "--checkpoint", str(self.model_path), "--guidance", str(r.guidance), *actions,
                  "--out", str(self.model_path)])  # fmt: skip

    def run(self, install: bool = False) -> Path:
        """Do the work that is left; returns the model checkpoint."""
        from worldsim.cpus import set_threads
        from worldsim.torch_backend import pick_device

        # Checked before any work: a device this machine lacks failed only at the first training
        # stage, after every data part was recorded (hours, for blockworld-64).
        pick_device(self.device)
        set_threads(self.threads)
        self.root.mkdir(parents=True, exist_ok=True)
        with _folder_lock(self.root / "recipe.lock", self.log):
            return self._run(install)

    def _run(self, install: bool) -> Path:
        r = self.recipe
        self._pin()
        for i in range(r.data_parts):
            if (self.part_dir(i).parent / f"part-{i:03d}.done.json").is_file():
                self.log(f"recipe {self.name}: data part {i + 1}/{r.data_parts} complete, skipped")
                continue
            self.log(f"recipe {self.name}: recording data part {i + 1}/{r.data_parts} ({r.part_steps} {r.agent} steps)")
            self._stage(f"data part {i}", lambda i=i: self._record(i))
        for stage, path, steps, phase in self._training_stages():
            done = checkpoint_steps(path)
            if done is not None and done >= steps:
                self.log(f"recipe {self.name}: {stage} complete ({done} steps), skipped")
                continue
            start = f"from step {done}" if done else "from the previous phase's weights" if phase > 1 else "from scratch"
            self.log(f"recipe {self.name}: training the {stage} ({start} to {steps})")
            self._stage(stage, lambda stage=stage, path=path, steps=steps, phase=phase: self._train(stage, path, steps, phase))
        if r.refiner_steps > 0:
            self._refine()
        if self._model_is_current():
            self.log(f"recipe {self.name}: model complete, skipped")
        else:
            self._stage("model", self._assemble)
        if install:
            self.install()
        return self.model_path

    def install(self) -> Path:
        """Copy the finished model to the package's default checkpoint, atomically."""
        from worldsim.checkpoint import load_model
        from worldsim.runtime import DEFAULT_CHECKPOINT

        if self.recipe.asset is None:
            raise WorldSimError(f"recipe {self.name} is not a shipped model; it cannot be installed")
        if not self._model_is_current():
            raise WorldSimError(f"{self.model_path} is not finished; run the recipe without --install first")
        load_model(self.model_path)  # refuse to ship a file that does not load
        dest = DEFAULT_CHECKPOINT.parent / self.recipe.asset
        atomic_copy(self.model_path, dest)
        self.log(f"recipe {self.name}: installed {dest} ({dest.stat().st_size / 1e6:.1f} MB)")
        return dest


def build_parser() -> argparse.ArgumentParser:
    lines = "\n".join(f"  {k}: {v.summary}" for k, v in RECIPES.items())
    p = argparse.ArgumentParser(prog="worldsim train recipe", description=__doc__.split("\n\n")[0],
                                epilog=f"recipes:\n{lines}", formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("name", help="the recipe (see below)")
    p.add_argument("--dir", default=None, help="working folder (default: runs/NAME); run again to resume")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--install", action="store_true", help="when finished, make it the package's default model")
    return p


def main(argv: list[str]) -> int:
    a = build_parser().parse_args(argv)
    root = Path(a.dir or Path("runs") / a.name)
    run = RecipeRun(a.name, root, device=a.device, threads=a.threads)
    try:
        model = run.run(install=a.install)
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM (Terminated): the CLI prints the hint after the word
        raise type(e)(RESUME_HINT) from None
    print(f"recipe {a.name}: model {model} ({model.stat().st_size / 1e6:.1f} MB); evaluate it with "
          f"`worldsim eval --checkpoint {model} --out {root / 'eval'}`")  # fmt: skip
    return 0
