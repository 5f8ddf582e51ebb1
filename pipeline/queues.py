"""The queue names the functions, the worker and the CLI share (no imports: cheap for `--help`).

Poison queues are the host's `<name>-poison`.
"""

JOBS_QUEUE = "alma-export-jobs"
"""Job messages: the webhook writes, `plan_export` reads."""

FILES_QUEUE = "alma-export-files"
"""File messages: `plan_export` and continuations write, `process_export_file` reads."""
