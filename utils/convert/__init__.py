"""Converters from public chest X-ray releases to the canonical annotation JSONL.

Run ``python -m utils.convert <source> --help``. Every converter reads what the user has on
disk (the project never downloads data), reports every bad input row as ``file:row: what,
what to do``, leaves such rows out, and ends with a summary of what was written and what was
left out per reason; ``--strict`` turns any problem into a failure (exit code 2, nothing
written). Sources: ``mscxr``, ``chestxray8``, ``diffvqa``, ``msclass``, ``coco``,
``reference``; tools: ``split``, ``stats``. See ``docs/data.md``.
"""
