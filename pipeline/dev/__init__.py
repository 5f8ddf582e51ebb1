"""Development-only tooling: the local stand-in for the Functions host and the Azurite launcher.

Used by `make demo`, the tests and the benchmarks; excluded from the deployment by `.funcignore`,
and never imported by function_app.py or by anything that runs in Azure.
"""
