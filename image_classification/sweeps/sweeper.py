"""The Optuna sweeper of ``hydra-optuna-sweeper`` (its search-space syntax, samplers and batches of ``n_jobs``
trials launched together), and what it lacks:

- each job is told its trial (``trial={number, study_name, storage}``), so its run can report to it and be
  pruned (``image_classification.sweeps.pruning``); a pruned trial is recorded as PRUNED, not FAIL;
- a trial left RUNNING by a sweep on this machine that is no longer alive (killed, crashed) is marked FAIL
  when a sweep of the study starts again;
- Ctrl-C or SIGTERM stops the sweep: the trials of the batch that was running are marked FAIL, the report is
  written, and no further trial starts;
- a journal file (``journal:///shared/study.log``) as storage, for machines that share a file system;
- a study keeps the fixed overrides it was started with: continuing it with others (another optimizer, other
  epochs) is refused, since its best trial would compare runs of two settings;
- a sweep whose first trials all fail with the same error stops there, in one line, and a sweep in which no
  trial completed exits 1;
- at the end, the table of all the study's trials (printed, and ``trials.csv``) and its plots.
"""

import logging
import os
import signal
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
from hydra.utils import instantiate
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl, create_params_from_overrides
from omegaconf import OmegaConf
from optuna.trial import TrialState

from image_classification.errors import Diverged, UserError
from image_classification.sweeps.report import write_report
from image_classification.sweeps.storage import create_study

log = logging.getLogger(__name__)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def fail_abandoned_trials(study: optuna.Study) -> list[int]:
    """Mark FAIL the RUNNING trials whose sweep ran on this machine and is gone; returns their numbers. Trials of
    sweeps on other machines are left alone: they may be running."""
    failed = []
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner_host, _, pid = str(trial.user_attrs.get("sweeper", "")).rpartition(":")
        if owner_host == host and pid.isdigit() and not _alive(int(pid)):
            study.tell(trial.number, state=TrialState.FAIL)
            failed.append(trial.number)
    if failed:
        log.warning(f"Trials {failed} were left RUNNING by a sweep that stopped: marked FAIL")
    return failed


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM stops the sweep as Ctrl-C does (a KeyboardInterrupt), not by killing it between two trials."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def ask(study: optuna.Study) -> optuna.Trial:
    """The study's next trial, one whose parameters this sweep chooses: a trial put in the storage with parameters
    already set (a study's storage comes from outside; each parameter would become an override of the run) is
    marked FAIL, not run."""
    while True:
        trial = study.ask()
        if not trial.params:
            return trial
        study.tell(trial, state=TrialState.FAIL)
        log.warning(
            f"Trial {trial.number} of the study came with parameters this sweep did not choose "
            f"({', '.join(map(str, trial.params))}): marked FAIL, not run"
        )


# Overrides that change how a trial runs, not what it measures: a study may be continued with others.
NOT_THE_SETTING = (
    "data.num_workers", "print_config", "logger", "paths.", "trial", "hydra.", "cluster", "trainer.accelerator",
)  # fmt: skip
FIXED_KEY = "fixed_overrides"  # the study's user attribute that keeps them


def fixed_setting(fixed_params: dict[str, Any], fixed_overrides: list[str]) -> dict[str, str]:
    """The fixed overrides of a sweep (all but its search space) that decide what its trials measure."""
    setting = {name: str(value) for name, value in fixed_params.items()}
    setting.update({line: "" for line in fixed_overrides})  # deletions (~key)
    return {k: v for k, v in sorted(setting.items()) if not k.lstrip("+~").startswith(NOT_THE_SETTING)}


def check_same_setting(study: optuna.Study, setting: dict[str, str]) -> None:
    """Record the setting of a new study; refuse to continue one with another (one line naming the difference)."""
    recorded = study.user_attrs.get(FIXED_KEY)
    if recorded is None:
        if study.trials:  # a study of an earlier version, or of Optuna directly: its setting is not known
            log.warning(f"Study {study.study_name} does not say which overrides it was started with: from now, these")
        study.set_user_attr(FIXED_KEY, setting)
        return
    if not isinstance(recorded, dict) or recorded == setting:
        return
    shown = lambda key, where: f"{key}={where[key]}" if key in where else f"no {key}"  # noqa: E731
    differences = [
        f"{shown(key, recorded)} then, {shown(key, setting)} now"
        for key in sorted(set(recorded) | set(setting))
        if recorded.get(key) != setting.get(key)
    ]
    raise UserError(
        f"study {study.study_name} was started with other fixed overrides ({'; '.join(differences[:3])}"
        f"{'; ...' if len(differences) > 3 else ''}): its best trial would compare runs of two settings; give "
        "the same overrides to continue it, or start a new study with hydra.sweeper.study_name=<a new name>"
    )


def _quoted(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class StudySweeperImpl(OptunaSweeperImpl):
    """See the module's docstring. Takes the upstream sweeper's settings, with ``storage`` a URL or ``journal:///``."""

    def __init__(
        self,
        sampler: Any,
        direction: Any,
        storage: str | None,
        study_name: str | None,
        n_trials: int,
        n_jobs: int,
        max_failure_rate: float,
        custom_search_space: str | None = None,
        params: Any = None,
        plots: bool = True,
        require_completion: bool = True,
    ):
        sampler = instantiate(
            sampler, _execution_whitelist_=("hydra_plugins.hydra_optuna_sweeper.*", "optuna.samplers.*")
        )
        super().__init__(
            sampler, direction, storage, study_name, n_trials, n_jobs, max_failure_rate, custom_search_space, params
        )
        self.storage_url = storage
        self.plots = plots
        self.require_completion = require_completion

    def _study(self, arguments: list[str]) -> tuple[optuna.Study, dict[str, Any], dict[str, Any], list[str]]:
        """The study (created, or continued), and the search space of ``params`` and the command line."""
        self._process_searchspace_config()
        lines = [*self._parse_sweeper_params_config(), *arguments]
        distributions, fixed_params, fixed_overrides = create_params_from_overrides(lines)
        for name in fixed_params:
            distributions.pop(name, None)
        if isinstance(self.sampler, optuna.samplers.CmaEsSampler) and self.storage_url is not None:
            # Optuna's CMA-ES keeps its state in the study's trials as a pickle and unpickles it: anyone who can
            # write the storage could run code in every sweep that continues the study (docs/trust.md)
            raise UserError(
                "hydra/sweeper/sampler=cmaes keeps its state in the study's storage as a pickle, which would run "
                "whatever was written there: use another sampler (tpe, random, qmc, grid, nsgaii), or "
                "hydra.sweeper.storage=null to keep the study in memory"
            )
        study = create_study(self.storage_url, self.study_name, self._get_directions(), self.sampler)
        check_same_setting(study, fixed_setting(fixed_params, fixed_overrides))
        log.info(f"Study {study.study_name} in {self.storage_url or 'memory'}: {len(study.trials)} trials so far")
        return study, distributions, fixed_params, fixed_overrides

    def sweep(self, arguments: list[str]) -> None:
        study, distributions, fixed_params, fixed_overrides = self._study(arguments)
        fail_abandoned_trials(study)
        storage = self.storage_url if isinstance(self.storage_url, str) else None
        owner = f"{socket.gethostname()}:{os.getpid()}"
        to_go = self.n_trials
        # this sweep's completed and pruned trials, and the errors of its failed ones (a diverged run's left out)
        self.completed, self.pruned, self.errors = 0, 0, []
        try:
            with sigterm_interrupts():
                while to_go > 0:
                    trials = [ask(study) for _ in range(min(to_go, self.n_jobs))]
                    for trial in trials:
                        trial.set_user_attr("sweeper", owner)
                    overrides = self._configure_trials(trials, distributions, fixed_params, fixed_overrides)
                    if storage is not None:  # the job reports to its trial through the storage
                        overrides = [
                            (
                                *lines,
                                f"++trial={{number:{t.number},study_name:{_quoted(study.study_name)},"
                                f"storage:{_quoted(storage)}}}",
                            )
                            for lines, t in zip(overrides, trials, strict=True)
                        ]
                    try:
                        returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
                    except (KeyboardInterrupt, SystemExit):
                        for trial in trials:
                            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
                        log.warning(
                            f"Sweep stopped: trials {[t.number for t in trials]} marked FAIL; run the same command "
                            "again to continue the study"
                        )
                        raise
                    self.job_idx += len(returns)
                    self._tell(study, trials, returns)
                    to_go -= len(trials)
                    self._stop_when_failing_alike()
            if not self.completed and not self.pruned and self.n_trials > 0 and self.require_completion:
                raise UserError(f"no trial of the sweep completed: {self._errors_summary()}")
        finally:
            best = write_report(study, self.config.hydra.sweep.dir, plots=self.plots)
            if best:
                OmegaConf.save(
                    OmegaConf.create({"name": "optuna", **best}),
                    Path(self.config.hydra.sweep.dir) / "optimization_results.yaml",
                )

    def _errors_summary(self) -> str:
        if not self.errors:
            return "every trial diverged (its loss or objective became NaN)"
        first = self.errors[0]
        same = sum(error == first for error in self.errors)
        return f"{same} of {len(self.errors)} failed trials with {first}"

    def _stop_when_failing_alike(self, first: int = 3) -> None:
        """The sweep's first trials (``first``, or all of them in fewer) all failed with the same error: the
        others would too (a dataset that cannot be read, a typo in a fixed override)."""
        tried = len(self.errors) + self.completed + self.pruned
        if self.completed or self.pruned or tried < min(first, self.n_trials) or len(set(self.errors)) != 1:
            return
        raise UserError(
            f"the sweep's first {tried} trials all failed with the same error, so it stops: {self.errors[0]}"
        )

    def _tell(self, study: optuna.Study, trials: list[optuna.Trial], returns: list[Any]) -> None:
        """Record each job's outcome: its value, PRUNED, or FAIL (an error, or a NaN value); stop when more than
        ``max_failure_rate`` of the batch failed."""
        failures = []
        for trial, job in zip(trials, returns, strict=True):
            trial.set_user_attr("run_dir", str(job.hydra_cfg.hydra.runtime.output_dir) if job.hydra_cfg else None)
            if isinstance(getattr(job, "_return_value", None), optuna.TrialPruned):  # not an error to report
                study.tell(trial, state=TrialState.PRUNED)
                self.pruned += 1
                continue
            try:
                value = float(job.return_value)
            except Exception as err:  # the job raised, or returned no number
                from image_classification.config import _root_cause, user_message

                study.tell(trial, state=TrialState.FAIL)
                error = f"{type(err).__name__}: {user_message(err)}"
                log.warning(f"Trial {trial.number} failed: {error}")
                failures.append(error)
                if not isinstance(_root_cause(err), Diverged):  # its settings' outcome, not every trial's error
                    self.errors.append(error)
                continue
            frozen = study.tell(trial, values=[value])  # Optuna records a NaN value as FAIL
            if frozen.state == TrialState.FAIL:
                failures.append(f"the objective is {value}")
            else:
                self.completed += 1
        if failures and len(failures) / len(returns) > self.max_failure_rate:
            raise UserError(
                f"{len(failures)} of {len(returns)} trials failed (max_failure_rate={self.max_failure_rate}): "
                f"{failures[0]}"
            )
