"""``make bench``: what uMedGround costs next to bare LLaVA-LoRA, measured side by side.

``python -m utils.bench --out runs/bench [--quick]`` writes ``bench.json``, ``bench.md`` and
the scaling plots. Every comparison interleaves its variants within one process (a repeat of
each in turn), drops warm-up runs and reports the median and the spread; each case runs in a
process of its own so that its peak RSS is its own.
"""
