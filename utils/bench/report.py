"""The Markdown tables of a benchmark run (what the README's Performance section shows)."""
from __future__ import annotations

from typing import Any


def _spread(summary: dict[str, Any]) -> str:
    return f"{summary['median']:.3f} s ({summary['min']:.3f}–{summary['max']:.3f})"


def _mib(value: float | None) -> str:
    return "n/a (CPU)" if value is None else f"{value:,.0f} MiB"


def gpu_table(gpu: dict[str, Any]) -> str:
    """The GPU mode's block as two tables: training steps, then evaluation."""
    lines = [f"GPU mode: {gpu['shape']} on {gpu['device']}, {gpu['precision']}, ZeRO-"
             f"{gpu['zero_stage']} under the {gpu['launcher']} launcher ({gpu['world_size']} "
             f"rank), {gpu['wall_seconds']:.0f} s", "",
             "| training step | gradient checkpointing | batch (tokens) | median (min–max) | "
             "ratio | tokens/s | peak memory |", "|---|---|---:|---:|---:|---:|---:|"]
    for setting in gpu["train"].values():
        checkpointing = "on" if setting["activation_checkpointing"] else "off"
        for result in setting["batches"].values():
            for name, summary in result["steps"].items():
                lines.append(f"| {name} | {checkpointing} | {result['batch_size']} "
                             f"({result['tokens']}) | {_spread(summary)} | "
                             f"{result['ratio_vs_bare'][name]:.3f}x bare | "
                             f"{result['tokens_per_second'][name]:,.0f} | "
                             f"{_mib(result['peak_memory_mb'][name])} |")
    evaluation = gpu["eval"]
    lines += ["", f"| evaluation ({evaluation['n_samples']} samples, {evaluation['n_findings']} "
                  f"findings, {evaluation['max_new_tokens']} new tokens) | median (min–max) | "
                  "findings/s | peak memory |", "|---|---:|---:|---:|"]
    for name, summary in evaluation["runs"].items():
        lines.append(f"| {name.replace('_', ' ')} | {_spread(summary)} | "
                     f"{evaluation['findings_per_second'][name]:.2f} | "
                     f"{_mib(evaluation['peak_memory_mb'][name])} |")
    return "\n".join(lines) + "\n"


def markdown_table(bench: dict[str, Any]) -> str:
    records = bench["records"]
    lines = ["| measurement | median (min–max) | ratio |", "|---|---:|---:|"]
    for size in ("tiny", "small_real"):
        if size not in records["train_steps"]:
            continue
        result = records["train_steps"][size]
        for name, summary in result["steps"].items():
            lines.append(f"| a. {size} step, {name} (batch {result['batch_size']}) | "
                         f"{_spread(summary)} | {result['ratio_vs_bare'][name]:.3f}x bare |")
    evaluation = records["evaluation"]
    for name, rate in evaluation["findings_per_second"].items():
        lines.append(f"| b. evaluation, {name} ({evaluation['n_findings']} findings) | "
                     f"{rate:.2f} findings/s | "
                     f"{evaluation['speedup_vs_reference'][name]:.2f}x reference |")
    encoder = records["encoder"]
    for name, seconds in encoder["epoch_seconds"].items():
        lines.append(f"| c. SAM {encoder['sam']} at {encoder['image_size']} px, "
                     f"{encoder['n_images']} images, epoch {name} | {seconds:.2f} s | |")
    lines.append(f"| c. cached epoch speedup | | {encoder['cache_epoch_speedup']:.1f}x |")
    for key, label in (("step_vs_batch_size", "step time vs batch size"),
                       ("step_vs_sequence_tokens", "step time vs sequence tokens")):
        lines.append(f"| d. {label} | exponent | {records['step_scaling'][key]['exponent']:.2f} |")
    lines.append(f"| d. evaluation time vs samples | exponent | "
                 f"{records['eval_scaling']['eval_vs_samples']['exponent']:.2f} |")
    for name in ("train_steps", "evaluation", "encoder"):
        lines.append(f"| e. peak RSS, case {name} | {records[name]['peak_rss_mb']:.0f} MiB | |")
    flops = records["flops_7b_vit_h"]
    lines.append(f"| 7B + ViT-H FLOPs: head share of a cached step | "
                 f"{flops['head_step_tflop']:.3f} of {flops['lm_step_tflop']:.1f} TFLOP | "
                 f"{100 * flops['head_share_cached']:.2f} % |")
    lines.append(f"| 7B + ViT-H FLOPs: head + SAM share of an uncached step | "
                 f"+{flops['sam_vit_h_forward_tflop']:.2f} TFLOP SAM | "
                 f"{100 * flops['head_and_sam_share_uncached']:.1f} % |")
    table = "\n".join(lines) + "\n"
    return (table + "\n" + gpu_table(bench["gpu"])) if "gpu" in bench else table
