"""One pipeline run: shard -> pre-train -> fine-tune -> evaluate (+ a random-init baseline), resumable.

``run_pipeline(cfg, jobs)`` walks the stages in order. For each it first checks the stage's
outputs (the shard job's own verification; a final checkpoint + export; best/last weights +
registration; a report of this very model) and skips it when they are complete and were made
from the same config and the same upstream outputs. Otherwise the stage job's ``run(cfg)`` is
called in this process, inside one Ray session: an interrupted stage continues by itself (the
training jobs resume from their newest complete checkpoint, the shard job keeps its verified
prefix).

MLflow: one parent run per pipeline and a child run per stage (``mlflow.parentRunId``). The ids
live in ``<root>/pipeline_state.json`` (written atomically after every change), so a rerun
continues the same parent run, and a stage that did not finish logs into its own earlier child
run. The parent records, per invocation, which stages ran or were skipped and why, and the summary.

The modules, by responsibility:

- :mod:`~pipeline.workflow.stages`: what each stage job's outputs must be (one :class:`StageKind` per job);
- :mod:`~pipeline.workflow.state`: the state file and the fingerprints that tell stale outputs;
- :mod:`~pipeline.workflow.runs`: the parent and stage runs in MLflow (through :mod:`pipeline.infra.tracking`);
- :mod:`~pipeline.workflow.runner`: the loop over the stages;
- :mod:`~pipeline.workflow.summary`: what the pipeline produced, read back.
"""

from pipeline.workflow.runner import Outcome, Runner, StageError, compact_toml, run_pipeline
from pipeline.workflow.runs import Runs
from pipeline.workflow.stages import (
                                      EXPORTS,
                                      Check,
                                      StageKind,
                                      check,
                                      check_evaluate,
                                      check_finetune,
                                      check_pretrain,
                                      check_shard,
                                      kind_of,
)
from pipeline.workflow.state import STATE_FILE, changed_keys, fingerprint, load_state, save_state
from pipeline.workflow.summary import mlflow_ui_command, summarize

__all__ = ["Check", "EXPORTS", "Outcome", "Runner", "Runs", "STATE_FILE", "StageError", "StageKind", "changed_keys",
           "check", "check_evaluate", "check_finetune", "check_pretrain", "check_shard", "compact_toml",
           "fingerprint", "kind_of", "load_state", "mlflow_ui_command", "run_pipeline", "save_state", "summarize"]
