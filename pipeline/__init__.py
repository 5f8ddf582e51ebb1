"""alma-export-pipeline: Alma export job -> verified webhook -> queue -> MARC stream -> destination.

Plain Python with no Azure imports, so the Azure functions, the CLI and the tests share it.
Importing the package installs the log redaction (`pipeline.redact`): whoever logs, at any level,
no secret setting's value reaches a log line.
"""

from pipeline import redact as _redact

__version__ = "0.1.0"

_redact.install()
