"""alma-export-pipeline: Alma export job -> verified webhook -> queue -> MARC stream -> destination.

Plain Python with no Azure imports, so the Azure functions, the CLI and the tests share it.
"""

__version__ = "0.1.0"
