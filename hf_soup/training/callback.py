"""``SoupCallback``: soup the checkpoints of a ``transformers.Trainer`` run, or the trials of a sweep.

One run — checkpoint averaging at the end of training::

    from hf_soup import SoupCallback
    callback = SoupCallback(method="uniform", last_k=3)          # or method="greedy"
    trainer = Trainer(model, args, train_dataset=..., eval_dataset=..., callbacks=[callback])
    trainer.train()                       # the soup is in <args.output_dir>/soup
    callback.result.report["ingredients"]  # every checkpoint that went in

A hyperparameter sweep — a soup of the trials' final models (Wortsman et al. 2022)::

    callback = SoupCallback(method="greedy")
    trainer = Trainer(model_init=..., args=args, ..., callbacks=[callback])
    trainer.hyperparameter_search(backend="optuna", n_trials=8, direction="minimize")
    result = callback.soup_sweep()        # <args.output_dir>/soup

How it works:

* ``on_save`` *harvests* each new ``checkpoint-N`` into ``<args.output_dir>/soup-ingredients``
  before ``save_total_limit`` rotation deletes it: weight files are hard-linked (no extra
  disk; copied only across filesystems), config files copied, with a record of the step,
  epoch and the latest eval metrics. Harvests survive a crash, so a run resumed with
  ``resume_from_checkpoint`` soups the checkpoints of both parts.
* ``on_train_end`` soups the harvested checkpoints (all, or the ``last_k``) with
  :func:`hf_soup.soup` into ``output_dir`` (default ``<args.output_dir>/soup``), atomically;
  the report (``soup_report.json``) and card list every checkpoint that went in.
* In a sweep (``state.trial_params`` is set), ``on_train_end`` fires once per trial —
  pruned trials included — and registers the trial's final model (``Trainer.save_model``)
  with its hyperparameters, metrics and objective under ``<args.output_dir>/soup-trials``.
  ``soup_sweep()`` soups them after ``hyperparameter_search`` returns. Pruned trials are
  left out unless ``include_pruned=True``; ``top_k`` keeps the best K trials by score.
  Ray Tune (``backend="ray"``): trials run in worker processes, so the registry lives on
  disk, tagged with this callback's sweep ID; it works when the workers share
  ``args.output_dir`` with the driver (one machine, or a shared file system — give an
  absolute path, as Ray changes the workers' working directory), and ``soup_sweep()`` is
  called on the driver as with optuna. A trial a Ray scheduler stops (ASHA, PBT...) is
  killed without ``on_train_end``, so only trials that finish, or that saved a final
  model before, are registered. (wandb sweeps run trials in-process like optuna; untested.)
* Data-driven methods (``greedy``, ``radin``) score candidates with ``evaluation`` when
  given, else through the Trainer's own evaluation loop — its ``eval_dataset`` (a list of
  dicts, a torch ``Dataset``, a ``datasets.Dataset``, an ``IterableDataset``; of a dict of
  eval datasets, the one ``metric_for_best_model`` names, e.g. ``eval_val_accuracy``), collator,
  ``compute_metrics``, eval batch size and mixed precision — ranking by
  ``args.metric_for_best_model`` / ``args.greater_is_better`` (default: eval loss, lower is
  better): a soup's score is what ``trainer.evaluate()`` prints for it. See
  :mod:`hf_soup.training.trainer_evaluator`. ``learned`` soups train on the data and take a
  ``datasets.Dataset`` (:mod:`hf_soup.training.trainer_evaluation`).
* Multi-process training (DDP, ``accelerate launch``): only the main process harvests.
  ``uniform`` / ``weighted`` soups are merged and written by the main process while the
  others wait at the end of training. Data-driven soups (``greedy``, ``radin``, ``learned``,
  ``compare=True``) run on every process, in the Trainer's own process group: they evaluate
  together (each process scores its share of the batches), the main process writes the soup
  (and pushes it), the others wait; the soup equals a single-process soup of the same
  checkpoints. Every process must see the harvested checkpoints (a shared ``output_dir``).
  See ``docs/distributed.md``.
* A failure inside the callback (nothing saved, an evaluation error, a full disk) is
  logged on the ``hf_soup`` logger and kept in ``callback.error`` / ``callback.errors``;
  it never stops or corrupts the training run.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from pathlib import Path
from typing import Any, Mapping

from ..compat.versions import check_installed

check_installed()  # before importing transformers: an unsupported version gets one line, not an ImportError inside it

from transformers import TrainerCallback  # noqa: E402

from ..errors import HfSoupError, NothingToSoupError, RecipeError  # noqa: E402
from ..methods.registry import build_method, get_method_class  # noqa: E402
from .annotate import annotate  # noqa: E402
from .harvest import commit, harvest_checkpoint, partial_path, prepare_target, read_records, write_record  # noqa: E402
from .runtime import called_from, checkpoint_dir, find_trainer, in_sweep, is_main, wait_for_everyone  # noqa: E402
from .trainer_evaluation import evaluation_from_trainer, metric_of  # noqa: E402

logger = logging.getLogger("hf_soup")

RUN_HARVEST = "soup-ingredients"
SWEEP_HARVEST = "soup-trials"


class SoupCallback(TrainerCallback):
    """Soup a Trainer's checkpoints at the end of training, or its sweep's trials on request.

    Args:
        method: a registered soup method (``uniform``, ``weighted``, ``greedy``, ``radin``...).
        evaluation: how data-driven methods score candidates (an ``evaluation`` mapping or
            ``EvaluationSpec``); default: the Trainer's eval dataset and ``compute_metrics``.
        output_dir: where the soup goes (default ``<args.output_dir>/soup``).
        push_to_hub: a repo ID (or ``{"repo_id": ..., "private": ...}``) to push the soup to.
        last_k: one run — soup only the last ``k`` checkpoints (default: all of them); older
            harvests are deleted as training goes, so at most ``k`` are kept on disk.
        top_k: a sweep — soup only the ``k`` best trials by score (default: all of them).
        include_pruned: a sweep — also soup trials the search pruned (default ``False``).
        harvest_dir: where harvested checkpoints / trial models are kept (default under
            ``args.output_dir``); a folder on the same file system lets them be hard links.
        keep_ingredients: keep the harvested folders after a successful soup (default: delete).
        overwrite: replace an existing soup in ``output_dir`` (default ``True``: the soup
            belongs to the run, like its checkpoints).
        compare: also score the ingredients, their uniform soup and their logit ensemble on the
            evaluation data and record the comparison in the report (as ``hf_soup.soup(compare=True)``).
        base_model: a PEFT model in the Trainer — the base model its adapter checkpoints were
            trained on (a path or repo ID), needed when the adapters do not name it
            (``base_model_name_or_path`` is empty when the base was built from a config).
        dtype, seed: as in :func:`hf_soup.soup`.
        **method_params: the method's parameters (``weights=[...]`` for ``weighted``: one per
            ingredient, in soup order — checkpoints by step; sweep trials best first).

    After training, ``callback.result`` is the :class:`~hf_soup.SoupResult` (main process),
    ``callback.error`` the last failure or ``None``.
    """

    def __init__(
        self,
        method: str = "uniform",
        evaluation: Any = None,
        output_dir: str | Path | None = None,
        push_to_hub: str | Mapping[str, Any] | None = None,
        *,
        last_k: int | None = None,
        top_k: int | None = None,
        include_pruned: bool = False,
        harvest_dir: str | Path | None = None,
        keep_ingredients: bool = False,
        overwrite: bool = True,
        dtype: str | None = None,
        seed: int = 0,
        compare: bool = False,
        base_model: str | Path | None = None,
        **method_params: Any,
    ):
        build_method(method, method_params)  # unknown method / bad parameters fail here, before training
        for name, value in (("last_k", last_k), ("top_k", top_k)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise RecipeError(f"SoupCallback({name}={value!r}): must be a positive integer, or None for all")
        if isinstance(push_to_hub, str):
            push_to_hub = {"repo_id": push_to_hub}
        if push_to_hub is not None:
            from ..recipe import PushSpec

            from pydantic import ValidationError

            from ..methods.registry import format_validation_error

            try:
                push_to_hub = PushSpec(**dict(push_to_hub)).model_dump()
            except ValidationError as error:  # never pydantic's own text: it echoes the values (a token...)
                hint = ("; the push uses HF_TOKEN or the stored login (`hf auth login`), never a token given here"
                        if "token" in dict(push_to_hub) else "")
                raise RecipeError("SoupCallback(push_to_hub=...): "
                                  + format_validation_error(error, "push_to_hub") + hint) from None
        self.method = method
        self.method_params = dict(method_params)
        self.evaluation = evaluation
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.push_to_hub = push_to_hub
        self.last_k, self.top_k = last_k, top_k
        self.include_pruned = include_pruned
        self.harvest_dir = Path(harvest_dir) if harvest_dir is not None else None
        self.keep_ingredients = keep_ingredients
        self.overwrite = overwrite
        self.dtype, self.seed, self.compare = dtype, seed, compare
        self.base_model = str(base_model) if base_model is not None else None
        self.needs_evaluation = get_method_class(method).needs_evaluation or compare
        self.result: Any = None
        self.errors: list[BaseException] = []
        self._sweep_id = uuid.uuid4().hex
        self._trainer: Any = None
        self._args: Any = None
        self._trainer_evaluation: Any = None
        self._last_metrics: dict[str, float] | None = None
        self._metrics_by_step: dict[int, dict[str, float]] = {}
        self._open_trial: Path | None = None
        self._last_save_step: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Ray Tune pickles the Trainer and its callbacks into worker processes: the Trainer is
        # found again there at the next event.
        return {**self.__dict__, "_trainer": None, "_trainer_evaluation": None}

    # ---- public -------------------------------------------------------------------

    @property
    def error(self) -> BaseException | None:
        """The last failure inside the callback, or ``None``."""
        return self.errors[-1] if self.errors else None

    def bind(self, trainer: Any) -> "SoupCallback":
        """Attach the Trainer (done automatically when the callback is given to ``Trainer(callbacks=...)``)."""
        self._trainer = trainer
        self._args = trainer.args
        return self

    def soup_sweep(self, output_dir: str | Path | None = None) -> Any:
        """Soup the final models of the trials of the last ``hyperparameter_search``.

        >>> trainer.hyperparameter_search(backend="optuna", n_trials=4)  # doctest: +SKIP
        >>> result = callback.soup_sweep()                                # doctest: +SKIP

        Returns the :class:`~hf_soup.SoupResult` on the main process (``None`` on the
        others, which wait for it). Raises :class:`NothingToSoupError` when no trial was
        registered; errors of the merge itself propagate (training is over by now).
        """
        if self._args is None:
            raise NothingToSoupError(
                "soup_sweep(): no trial was registered; add this callback to the Trainer (callbacks=[callback]) "
                "and call soup_sweep() after trainer.hyperparameter_search(...) returns"
            )
        args = self._args
        try:
            if not is_main(args) and not self._together(args):
                return None
            result = self._soup_sweep(args, Path(output_dir) if output_dir else None)
            self.result = result if is_main(args) else None
            return self.result
        finally:
            wait_for_everyone(args)

    # ---- Trainer events ---------------------------------------------------------------

    def on_init_end(self, args, state, control, **kwargs):
        trainer = self._trainer or find_trainer(self)
        if trainer is not None:
            self.bind(trainer)
        self._args = args
        if self.needs_evaluation and self.evaluation is None and trainer is not None and trainer.eval_dataset is None:
            raise RecipeError(
                f"SoupCallback(method={self.method!r}{', compare=True' if self.compare else ''}) scores on validation "
                "data: give the Trainer "
                "an eval_dataset, or SoupCallback(evaluation={...})"
            )
        destination = self._destination(args)
        if not self.overwrite and destination.is_dir() and any(destination.iterdir()):
            raise RecipeError(
                f"SoupCallback: the soup's output {destination} already exists; pass overwrite=True or another output_dir"
            )

    def on_train_begin(self, args, state, control, **kwargs):
        if self._trainer is None:
            trainer = find_trainer(self)
            if trainer is not None:
                self.bind(trainer)
        self._args = args
        self.result = None
        self._last_metrics = None
        self._metrics_by_step = {}
        self._open_trial = None
        self._last_save_step = None
        if self.needs_evaluation and self.evaluation is None and self._trainer is not None:
            with self._guard("preparing the evaluation from the Trainer"):
                self._trainer_evaluation = None
                self._trainer_evaluation = _evaluation_of(self._trainer, self.method)
        if not in_sweep(state) and state.is_world_process_zero:
            with self._guard("cleaning the harvest folder"):
                self._forget_checkpoints_after(self._root(args, sweep=False), state.global_step)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not metrics:
            return
        self._last_metrics = {k: v for k, v in metrics.items()
                              if isinstance(v, (int, float)) and not k.endswith(("_runtime", "_per_second"))}
        self._metrics_by_step[state.global_step] = self._last_metrics
        if self._open_trial is not None and state.is_world_process_zero:
            # the sweep evaluates a trial after training when it did not during training
            with self._guard("recording the trial's evaluation"):
                self._update_trial_metrics(args, self._open_trial)

    def on_save(self, args, state, control, **kwargs):
        self._last_save_step = state.global_step
        if in_sweep(state) or not state.is_world_process_zero:
            return
        with self._guard(f"harvesting checkpoint-{state.global_step}"):
            self._harvest(args, state)

    def on_train_end(self, args, state, control, **kwargs):
        if in_sweep(state):
            self._register_trial(args, state, kwargs.get("model"))
            return
        try:
            if self._together(args):
                wait_for_everyone(args)  # the main process has harvested the last checkpoint
            if state.is_world_process_zero or self._together(args):
                with self._guard("souping the checkpoints"):
                    result = self._soup_run(args)
                    self.result = result if state.is_world_process_zero else None
        finally:
            wait_for_everyone(args)

    # ---- one run ----------------------------------------------------------------------

    def _harvest(self, args, state) -> None:
        checkpoint = checkpoint_dir(self._run_dir(args), state.global_step)
        if checkpoint is None:
            logger.warning("SoupCallback: checkpoint-%d was not found on disk; it is left out of the soup",
                           state.global_step)
            return
        key, _ = metric_of(args)
        metrics = self._metrics_by_step.get(state.global_step)
        record = {
            "kind": "checkpoint",
            "label": checkpoint.name,
            "step": state.global_step,
            "epoch": state.epoch,
            "metrics": metrics,
            "score": metrics.get(key) if metrics else None,
        }
        root = self._root(args, sweep=False)
        mode = harvest_checkpoint(checkpoint, root / checkpoint.name, record)
        logger.info("SoupCallback: harvested %s (%s)", checkpoint.name, mode)
        if self.last_k:  # only the last k go into the soup: older harvests can go now
            older = sorted((r for r in read_records(root) if r[1].get("kind") == "checkpoint"),
                           key=lambda r: r[1]["step"])[: -self.last_k]
            for folder, _ in older:
                shutil.rmtree(folder, ignore_errors=True)

    def _forget_checkpoints_after(self, root: Path, step: int) -> None:
        """Drop harvests of an earlier run: all of them, or those after the step a resumed run restarts from."""
        for folder, record in read_records(root):
            if record.get("kind") == "checkpoint" and record.get("step", 0) > step:
                shutil.rmtree(folder, ignore_errors=True)

    def _soup_run(self, args):
        root = self._root(args, sweep=False)
        records = sorted((r for r in read_records(root) if r[1].get("kind") == "checkpoint"),
                         key=lambda r: r[1]["step"])
        if not records:
            raise NothingToSoupError(
                "no checkpoint was saved during training, so there is nothing to soup; set save_strategy='steps' "
                "(with save_steps) or 'epoch' in TrainingArguments"
            )
        chosen = records[-self.last_k:] if self.last_k else records
        if len(chosen) == 1:
            logger.warning("SoupCallback: only %s was saved; the soup is a copy of it", chosen[0][1]["label"])
        key, greater = metric_of(args)
        training = {
            "kind": "checkpoints",
            "ingredients_kept": self.keep_ingredients,  # the card's recipe says when its folders are gone
            "run_dir": str(self._run_dir(args)),
            "metric": key,
            "greater_is_better": greater,
            "selection": f"last {self.last_k}" if self.last_k else "all",
        }
        result = self._soup(chosen, records, training, self._destination(args))
        if self._together(args):
            wait_for_everyone(args)  # every process is done reading them
        if not self.keep_ingredients and is_main(args):
            shutil.rmtree(root, ignore_errors=True)
        if result is not None:
            logger.info("SoupCallback: souped %d checkpoint(s) into %s", len(chosen), result.output_dir)
        return result

    # ---- a sweep ----------------------------------------------------------------------

    def _register_trial(self, args, state, model) -> None:
        """Keep the trial's final model with its hyperparameters and score (``on_train_end`` of a trial).

        When a checkpoint of the trial holds the final weights (saved at the last step, or the
        best checkpoint with ``load_best_model_at_end``), it is harvested with hard links;
        otherwise the model is saved with ``Trainer.save_model`` (on every process, as FSDP and
        DeepSpeed need).
        """
        trainer = self._trainer
        run_dir = Path(self._run_dir(args))
        name = run_dir.name if run_dir != Path(args.output_dir) else (state.trial_name or f"trial-{state.global_step}")
        target = self._root(args, sweep=True) / name
        main = state.is_world_process_zero
        key, _ = metric_of(args)
        metrics = self._last_metrics
        record = {
            "kind": "trial",
            "sweep_id": self._sweep_id,
            "label": name,
            "number": getattr(getattr(trainer, "_trial", None), "number", None),
            "params": state.trial_params,
            "step": state.global_step,
            "epoch": state.epoch,
            "pruned": called_from("_report_to_hp_search"),
            "stopped_early": state.global_step < state.max_steps,
            "metrics": metrics,
            "score": metrics.get(key) if metrics else None,
            "objective": _number(getattr(trainer, "objective", None)),
        }
        # decided from the state alone, so that every process takes the same branch
        if args.load_best_model_at_end and state.best_model_checkpoint and not record["pruned"]:
            final_checkpoint: Path | None = Path(state.best_model_checkpoint)
        elif self._last_save_step == state.global_step:
            final_checkpoint = run_dir / f"checkpoint-{state.global_step}"
        else:
            final_checkpoint = None
        if final_checkpoint is not None:
            if main:
                with self._guard(f"registering trial {name}"):
                    try:
                        harvest_checkpoint(final_checkpoint, target, record)
                    except (OSError, HfSoupError):
                        logger.info("SoupCallback: %s cannot be harvested; saving trial %s's model instead",
                                    final_checkpoint, name)
                        partial = prepare_target(target)
                        model.save_pretrained(str(partial))
                        write_record(partial, record)
                        commit(partial, target)
                    self._open_trial = target
                    logger.info("SoupCallback: registered trial %s from %s (score %s)", name, final_checkpoint.name,
                                record["score"])
            wait_for_everyone(args)
            return
        partial = partial_path(target)
        if main:
            with self._guard(f"preparing the folder of trial {name}"):
                prepare_target(target)
        wait_for_everyone(args)
        saved = False
        with self._guard(f"saving the final model of trial {name}"):
            if trainer is not None and getattr(trainer, "model", None) is not None:
                trainer.save_model(str(partial), _internal_call=True)  # every process: FSDP / DeepSpeed gather
            elif main and model is not None:
                model.save_pretrained(str(partial))
            saved = True
        wait_for_everyone(args)
        if main and saved:
            with self._guard(f"registering trial {name}"):
                write_record(partial, record)
                commit(partial, target)
                self._open_trial = target
                logger.info("SoupCallback: registered trial %s (score %s)", name, record["score"])

    def _update_trial_metrics(self, args, folder: Path) -> None:
        records = dict(read_records(folder.parent))
        record = records.get(folder)
        if record is None:
            return
        key, _ = metric_of(args)
        record["metrics"] = self._last_metrics
        record["score"] = self._last_metrics.get(key)
        trainer = self._trainer
        if trainer is not None and getattr(trainer, "compute_objective", None) is not None:
            try:
                record["objective"] = _number(trainer.compute_objective(dict(self._last_metrics)))
            except Exception:  # a user objective that needs other metrics: keep the one the search reported
                pass
        write_record(folder, record)

    def _soup_sweep(self, args, output_dir: Path | None):
        root = self._root(args, sweep=True)
        records = [r for r in read_records(root) if r[1].get("kind") == "trial" and r[1].get("sweep_id") == self._sweep_id]
        if not records:
            raise NothingToSoupError(
                f"soup_sweep(): no trial model was registered under {root}; check the log for errors while saving "
                "trials (callback.errors) and that hyperparameter_search ran with this callback"
            )
        key, greater = metric_of(args)
        records.sort(key=lambda r: (r[1].get("number") is None, r[1].get("number") or 0, r[1]["label"]))
        eligible = [r for r in records if self.include_pruned or not r[1].get("pruned")]
        if not eligible:
            raise NothingToSoupError(
                f"soup_sweep(): all {len(records)} trials were pruned; pass SoupCallback(include_pruned=True) to soup them"
            )
        ranked = sorted(eligible, key=lambda r: _rank_key(r[1].get("score"), greater))
        chosen = ranked[: self.top_k] if self.top_k else ranked
        training = {
            "kind": "sweep",
            "ingredients_kept": self.keep_ingredients,
            "run_dir": str(args.output_dir),
            "metric": key,
            "greater_is_better": greater,
            "selection": (f"best {self.top_k} by {key}" if self.top_k else "all")
            + ("" if self.include_pruned else ", pruned trials left out"),
        }
        result = self._soup(chosen, records, training, output_dir or self._destination(args))
        if self._together(args):
            wait_for_everyone(args)  # every process is done reading them
        if not self.keep_ingredients and is_main(args):
            for folder, _ in records:
                shutil.rmtree(folder, ignore_errors=True)
            if not any(root.iterdir()):
                root.rmdir()
        if result is not None:
            logger.info("SoupCallback: souped %d of %d trial(s) into %s", len(chosen), len(records), result.output_dir)
        return result

    # ---- the merge itself -------------------------------------------------------------------

    def _soup(self, chosen, candidates, training: dict[str, Any], destination: Path):
        from ..api import soup
        from ..output.card import write_card
        from ..errors import AdapterBaseError
        from ..distributed import single_process
        from ..io.staging import staged_directory
        from ..pipeline import SoupResult
        from ..output.report import write_report

        evaluation = self.evaluation if self.evaluation is not None else self._trainer_evaluation
        if self.needs_evaluation and evaluation is None:
            raise RecipeError(
                f"method {self.method!r} needs validation data and none could be taken from the Trainer "
                "(see the earlier error); give SoupCallback(evaluation={...})"
            )
        if self._together(self._args):
            return self._soup_together(chosen, candidates, training, destination, evaluation)
        # process 0 soups alone while the other training processes wait at a barrier
        with staged_directory(destination, self.overwrite) as staging, single_process():
            try:
                result = soup([str(folder) for folder, _ in chosen], self.method, staging, evaluation=evaluation,
                              dtype=self.dtype, overwrite=True, seed=self.seed, compare=self.compare,
                              base_model=self.base_model, device=self._device(), **self.method_params)
            except AdapterBaseError as error:  # the recipe's advice (--base-model) does not apply here
                raise AdapterBaseError(f"{error}. In SoupCallback: pass SoupCallback(base_model=...) with the "
                                       "path or repo ID of the model the adapters were trained on") from None
            report = annotate(result.report, chosen, candidates, training, destination)
            write_report(staging, report)
            write_card(staging)
        result = SoupResult(destination, report)
        if self.push_to_hub is not None:
            with self._guard(f"pushing the soup to {self.push_to_hub['repo_id']}"):
                result.report["pushed_to"] = result.push_to_hub(**self.push_to_hub)
        return result

    def _soup_together(self, chosen, candidates, training: dict[str, Any], destination: Path, evaluation: Any):
        """Every training process soups (a data-driven method under DDP): they evaluate together, process 0 writes.

        The processes are those of the Trainer's accelerator state (:func:`hf_soup.distributed.get_dist`
        joins its process group); each reads the harvested checkpoints, so ``args.output_dir`` (or
        ``harvest_dir``) must be on a filesystem every node shares. Any process's failure stops
        them all (``RankFailedError`` on the others) and nothing is written.
        """
        from ..api import soup
        from ..distributed import get_dist
        from ..output.card import write_card
        from ..output.report import write_report
        from ..pipeline import SoupResult

        dist = get_dist(self._device())
        report = None
        with dist.staged_directory(destination, self.overwrite) as staging:
            result = soup([str(folder) for folder, _ in chosen], self.method, staging, evaluation=evaluation,
                          dtype=self.dtype, overwrite=True, seed=self.seed, compare=self.compare,
                          base_model=self.base_model, device=self._device(), **self.method_params)
            if dist.is_main:
                report = annotate(result.report, chosen, candidates, training, destination)
                write_report(staging, report)
                write_card(staging)
        if not dist.is_main:
            return None
        result = SoupResult(destination, report)
        if self.push_to_hub is not None:  # process 0 alone; the others do not wait in a collective for it
            with self._guard(f"pushing the soup to {self.push_to_hub['repo_id']}"):
                result.report["pushed_to"] = result.push_to_hub(**self.push_to_hub)
        return result

    # ---- plumbing ----------------------------------------------------------------------

    def _together(self, args) -> bool:
        """Whether every training process takes part in the soup: a data-driven method in multi-process training."""
        return self.needs_evaluation and getattr(args, "world_size", 1) > 1

    def _run_dir(self, args) -> Path:
        trainer = self._trainer
        if trainer is not None and hasattr(trainer, "_get_output_dir"):
            return Path(trainer._get_output_dir(getattr(trainer, "_trial", None)))
        return Path(args.output_dir)

    def _root(self, args, sweep: bool) -> Path:
        if self.harvest_dir is not None:
            return self.harvest_dir / (SWEEP_HARVEST if sweep else RUN_HARVEST)
        return Path(args.output_dir) / (SWEEP_HARVEST if sweep else RUN_HARVEST)

    def _destination(self, args) -> Path:
        return self.output_dir if self.output_dir is not None else Path(args.output_dir) / "soup"

    def _device(self) -> str:
        """``cpu`` when the Trainer runs on the CPU (``use_cpu``, no GPU), else ``auto``."""
        device = getattr(self._args, "device", None) if self._args is not None else None
        return "cpu" if getattr(device, "type", None) == "cpu" else "auto"

    def _guard(self, what: str) -> "_Guard":
        return _Guard(self, what)


def _evaluation_of(trainer: Any, method: str) -> Any:
    """Score through the Trainer's evaluation loop; learned soups train on the data itself, so they take a datasets.Dataset."""
    if get_method_class(method).name == "learned":
        return evaluation_from_trainer(trainer)
    from .trainer_evaluator import trainer_evaluation_spec

    return trainer_evaluation_spec(trainer)


class _Guard:
    """Log and record any exception of the block; never let it reach the training loop."""

    def __init__(self, callback: SoupCallback, what: str):
        self.callback, self.what = callback, what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, traceback) -> bool:
        if error is None or not isinstance(error, Exception):
            return False
        self.callback.errors.append(error)
        expected = isinstance(error, HfSoupError)
        logger.error("SoupCallback: %s failed: %s: %s. Training itself is not affected.",
                     self.what, type(error).__name__, error, exc_info=None if expected else (kind, error, traceback))
        return True


def _rank_key(score: float | None, greater: bool) -> tuple[bool, float]:
    if score is None:
        return (True, 0.0)
    return (False, -score if greater else score)


def _number(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None
