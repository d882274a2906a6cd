"""The names of the files a run keeps in its ``--save_dir`` beside the checkpoints, in one place: the
run writes them, ``--overwrite`` removes them, ``python -m minimind.report`` reads and writes them.
Imports nothing, so the report reads the names without loading the training side."""

METRICS_FILE = "metrics.jsonl"  # a row per logged step and per evaluation
SAMPLES_FILE = "samples.jsonl"  # a row per prompt per evaluation
RUN_SETTINGS_FILE = "run_settings.json"  # the latest run's command and resolved settings
REPORT_IMAGE = "report.png"
REPORT_MARKDOWN = "report.md"
RUN_RECORDS = (METRICS_FILE, SAMPLES_FILE, RUN_SETTINGS_FILE, REPORT_IMAGE, REPORT_MARKDOWN)
# The folders a run keeps beside them: a later stage's records folder (``--save_weight``) may not take these names.
RUN_FOLDERS = ("checkpoints", "wandb")


def is_validation_record(record: dict) -> bool:
    """Whether a ``metrics.jsonl`` record is an evaluation's (``val_loss``) rather than a logged step's."""
    return "val_loss" in record
