"""Benchmarks, profiles and the GPU report behind ``tools/analysis/`` (importable, tested).

Nothing here is imported by ``import mmvolo``. Each module has ``main(argv)``; the scripts in
``tools/analysis/`` parse nothing themselves and call it through
:func:`mmvolo.cli.run_tool` (one-line errors, exit codes).
"""
