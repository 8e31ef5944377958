"""Case b (evaluation throughput against the reference code's way) and the evaluation half
of case d (time against the number of samples)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from model.grounding_model import UMedGround
from utils.annotations import load_annotations
from utils.bench.models import build_model
from utils.bench.timing import device_sync, fit_exponent, interleaved
from utils.dataset import GroundingCollator, GroundingDataset
from utils.evaluate import build_eval_dataset, evaluate_model

MAX_NEW_TOKENS = 32


@torch.no_grad()
def reference_way(model: UMedGround, processor: Any, dataset: GroundingDataset,
                  max_new_tokens: int) -> None:
    """How the reference code evaluates (benchmark only): one sample at a time, generate the
    text, then a second forward over prompt + generated text for the boxes (SAM runs again),
    and the given-phrase pass from a second read of the sample (SAM a third time)."""
    tokenizer = processor.tokenizer
    generate_collate = GroundingCollator(tokenizer.pad_token_id, "generate")
    forced_collate = GroundingCollator(tokenizer.pad_token_id, "train")
    for index in range(len(dataset)):
        prompt = generate_collate([dataset[index]])
        generated = model.llava.generate(
            input_ids=prompt["input_ids"], attention_mask=prompt["attention_mask"],
            pixel_values=prompt["pixel_values"], max_new_tokens=max_new_tokens,
            do_sample=False, num_beams=1, pad_token_id=tokenizer.pad_token_id)
        labels = generated.clone()
        labels[:, : prompt["input_ids"].shape[1]] = -100
        model(prompt["sam_images"], prompt["pixel_values"], generated,
              torch.ones_like(generated), labels)
        forced = forced_collate([dataset[index]])
        model(**{key: forced[key] for key in ("sam_images", "pixel_values", "input_ids",
                                               "attention_mask", "labels")})


def evaluation_case(tiny_dir: Path, data_dir: Path, device: torch.device, repeats: int,
                    n_samples: int, batch_sizes: list[int]) -> dict[str, Any]:
    """Case b: findings per second on the same samples, single-pass batched evaluation at
    each batch size against the reference way at batch 1 (no embedding cache: each image is
    encoded as in one test.py pass)."""
    model, processor = build_model(tiny_dir, "tiny", device)
    model.eval()
    samples = load_annotations(data_dir / "report_test.jsonl")[:n_samples]
    findings = sum(len(s.findings) for s in samples)
    dataset = build_eval_dataset(model, processor, samples)

    def ours(batch_size: int):
        return lambda: evaluate_model(model, processor, dataset, batch_size=batch_size,
                                      max_new_tokens=MAX_NEW_TOKENS, progress=False,
                                      meteor=False)

    variants = {f"single_pass_batch_{b}": ours(b) for b in batch_sizes}
    variants["reference_batch_1"] = lambda: reference_way(model, processor, dataset,
                                                          MAX_NEW_TOKENS)
    timed = interleaved(variants, repeats, warmup=1, sync=device_sync(device))
    rates = {name: findings / value["median"] for name, value in timed.items()}
    return {"n_samples": len(samples), "n_findings": findings, "runs": timed,
            "findings_per_second": rates,
            "speedup_vs_reference": {name: rate / rates["reference_batch_1"]
                                     for name, rate in rates.items()}}


def evaluation_scaling_case(tiny_dir: Path, data_dir: Path, device: torch.device,
                            counts: list[int], batch_size: int) -> dict[str, Any]:
    """Case d, evaluation half: seconds of one single-pass evaluation against sample count."""
    model, processor = build_model(tiny_dir, "tiny", device)
    model.eval()
    samples = load_annotations(data_dir / "report_test.jsonl")
    sync = device_sync(device)
    seconds = []
    for count in counts:
        dataset = build_eval_dataset(model, processor, samples[:count])
        sync()
        started = time.perf_counter()
        evaluate_model(model, processor, dataset, batch_size=batch_size,
                       max_new_tokens=MAX_NEW_TOKENS, progress=False, meteor=False)
        sync()
        seconds.append(time.perf_counter() - started)
    return {"eval_vs_samples": {"x": counts, "seconds": seconds,
                                "exponent": fit_exponent(counts, seconds)}}
