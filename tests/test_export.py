"""save_pretrained / from_pretrained: self-contained and linked folders, moved folders, the LoRA
merge of LLM and SAM alike, unreadable files, the merge script's checkpoint safety, and
gradient checkpointing."""
from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file

import merge_lora_weights_and_save_hf_model as merge_script
from model.build import build_umedground, load_consolidated
from model.config import GroundingConfig
from model.grounding_model import GROUNDING_WEIGHTS, UMedGround
from utils.annotations import load_annotations
from utils.dataset import GroundingCollator, GroundingDataset

INPUTS = ("sam_images", "pixel_values", "input_ids", "attention_mask", "labels")


@pytest.fixture(scope="module")
def batch(tiny_dir, synth_dir):
    from model.llava_builder import load_processor

    samples = [s for s in load_annotations(synth_dir / "report_train.jsonl") if s.findings][:2]
    dataset = GroundingDataset(samples, load_processor(tiny_dir / "llava"), 256)
    collated = GroundingCollator(dataset.tokenizer.pad_token_id)([dataset[0], dataset[1]])
    return {k: collated[k] for k in INPUTS}


def build(tiny_dir: Path, sam_path: Path, **overrides) -> tuple[UMedGround, object]:
    torch.manual_seed(0)
    config = GroundingConfig(version=str(tiny_dir / "llava"), vision_pretrained=str(sam_path),
                             lora_dropout=0.0, **overrides)
    return build_umedground(config)[:2]


def trained_adapters(model: UMedGround) -> None:
    """Non-zero LoRA B matrices (as after training), so a merge that skips one shows."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)


def predict(model: UMedGround, batch) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        output = model(**batch)
    return torch.cat([output.prediction.hypotheses.flatten(), output.losses["ce"].view(1)])


def test_self_contained_folder_loads_after_it_is_moved_and_sam_is_gone(tiny_dir, batch,
                                                                       tmp_path):
    sam_copy = tmp_path / "sam_copy.pth"
    shutil.copy(tiny_dir / "sam_tiny.pth", sam_copy)
    shutil.copy(tiny_dir / "sam_tiny.pth.json", tmp_path / "sam_copy.pth.json")
    model, processor = build(tiny_dir, sam_copy, lora_r=4, lora_sam_rank=2)
    trained_adapters(model)
    before = predict(model, batch)
    model.save_pretrained(tmp_path / "export", processor)
    sam_copy.unlink()
    moved = shutil.move(tmp_path / "export", tmp_path / "elsewhere" / "model")
    config = json.loads((Path(moved) / "config.json").read_text())["grounding_config"]
    assert config["version"] == "." and config["vision_pretrained"] == GROUNDING_WEIGHTS
    assert not (Path(moved) / "grounding_config.json").exists()  # a sub-config, not a sidecar
    assert all(p.suffix != ".bin" for p in Path(moved).iterdir())
    loaded, _ = UMedGround.from_pretrained(moved)
    assert not isinstance(loaded.llava, PeftModel) and not isinstance(loaded.sam_encoder, PeftModel)
    assert not any("lora_" in key for key in loaded.state_dict())
    torch.testing.assert_close(predict(loaded, batch), before, atol=1e-5, rtol=1e-5)


def test_lora_merge_handles_llm_and_sam_alike(tiny_dir, batch, tmp_path):
    model, processor = build(tiny_dir, tiny_dir / "sam_tiny.pth", lora_r=4, lora_sam_rank=2)
    trained_adapters(model)
    before = predict(model, batch)
    model.merge_adapters()
    assert not isinstance(model.llava, PeftModel) and not isinstance(model.sam_encoder, PeftModel)
    torch.testing.assert_close(predict(model, batch), before, atol=1e-5, rtol=1e-5)


def test_link_sam_keeps_a_lighter_folder_with_an_absolute_path(tiny_dir, batch, tmp_path,
                                                               monkeypatch):
    monkeypatch.chdir(tiny_dir)  # a relative SAM path, as training often records it
    model, processor = build(tiny_dir, Path("sam_tiny.pth"), lora_r=4)
    before = predict(model, batch)
    model.save_pretrained(tmp_path / "linked", processor, link_sam=True)
    model.save_pretrained(tmp_path / "full", processor)
    config = json.loads((tmp_path / "linked" / "config.json").read_text())["grounding_config"]
    assert config["vision_pretrained"] == str((tiny_dir / "sam_tiny.pth").resolve())
    linked_keys = load_file(tmp_path / "linked" / GROUNDING_WEIGHTS)
    assert not any(key.startswith("sam_encoder.") for key in linked_keys)
    assert (tmp_path / "linked" / GROUNDING_WEIGHTS).stat().st_size < \
        (tmp_path / "full" / GROUNDING_WEIGHTS).stat().st_size
    monkeypatch.chdir(tmp_path)
    moved = shutil.move(tmp_path / "linked", tmp_path / "moved")
    loaded, _ = UMedGround.from_pretrained(moved)
    torch.testing.assert_close(predict(loaded, batch), before, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="holds its own SAM encoder"):
        UMedGround.from_pretrained(tmp_path / "full", vision_pretrained="other.pth")


def test_link_sam_is_refused_for_a_trained_sam(tiny_dir, tmp_path):
    model, processor = build(tiny_dir, tiny_dir / "sam_tiny.pth", lora_r=0,
                             train_vision_encoder=True)
    with pytest.raises(ValueError, match="SAM encoder was trained"):
        model.save_pretrained(tmp_path / "linked", processor, link_sam=True)


class WritesAFile:
    """A pickle payload: unpickling it would create ``path``."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


@pytest.fixture(scope="module")
def exported(tiny_dir, tmp_path_factory) -> Path:
    model, processor = build(tiny_dir, tiny_dir / "sam_tiny.pth", lora_r=4)
    return model.save_pretrained(tmp_path_factory.mktemp("export"), processor)


def corrupt(folder: Path, case: str, marker: Path) -> None:
    weights = folder / GROUNDING_WEIGHTS
    if case == "truncated grounding weights":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif case == "pickle as grounding weights":
        weights.write_bytes(pickle.dumps(WritesAFile(marker)))
    elif case == "truncated llava weights":
        path = folder / "model.safetensors"
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif case == "no grounding sub-config":
        config = json.loads((folder / "config.json").read_text())
        del config["grounding_config"]
        (folder / "config.json").write_text(json.dumps(config))
    elif case == "unknown config key":
        config = json.loads((folder / "config.json").read_text())
        config["grounding_config"]["no_such_key"] = 1
        (folder / "config.json").write_text(json.dumps(config))
    elif case == "foreign tensors":
        save_file({"other.weight": torch.zeros(2)}, weights)


@pytest.mark.parametrize("case, names", [
    ("truncated grounding weights", GROUNDING_WEIGHTS),
    ("pickle as grounding weights", GROUNDING_WEIGHTS),
    ("truncated llava weights", "the llava-hf weights cannot be read"),
    ("no grounding sub-config", "not an exported uMedGround folder"),
    ("unknown config key", "no_such_key"),
    ("foreign tensors", "unexpected part(s) ['other']"),
])
def test_unreadable_exports_give_one_message_naming_the_file(exported, tmp_path, case, names):
    folder = Path(shutil.copytree(exported, tmp_path / "copy"))
    marker = tmp_path / "unpickled"
    corrupt(folder, case, marker)
    with pytest.raises((ValueError, OSError)) as raised:
        UMedGround.from_pretrained(folder)
    assert names in str(raised.value) and str(folder) in str(raised.value)
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".bin", ".safetensors"])
def test_training_weights_are_never_unpickled(tmp_path, suffix):
    marker = tmp_path / "unpickled"
    weight = tmp_path / f"pytorch_model{suffix}"
    torch.save({"x": WritesAFile(marker)}, weight) if suffix == ".bin" else \
        weight.write_bytes(b"\x00" * 5)
    with pytest.raises(ValueError, match=f"--weight {weight}: not a readable state dict"):
        load_consolidated(weight)
    assert not marker.exists()


def test_merge_script_turns_a_bad_checkpoint_into_one_message(tiny_dir, tmp_path):
    config = GroundingConfig(version=str(tiny_dir / "llava"),
                             vision_pretrained=str(tiny_dir / "sam_tiny.pth"))
    config.save(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"truncated")
    with pytest.raises(SystemExit, match="cannot merge: --weight .*model.safetensors"):
        merge_script.main(["--version", str(tiny_dir / "llava"), "--weight", str(tmp_path),
                           "--save_path", str(tmp_path / "out")])


def test_gradient_checkpointing_gives_the_same_gradients(tiny_dir, batch, synth_dir):
    from model.llava_builder import load_processor

    samples = [s for s in load_annotations(synth_dir / "report_train.jsonl") if s.findings][:2]
    dataset = GroundingDataset(samples, load_processor(tiny_dir / "llava"), 256)
    targets = GroundingCollator(dataset.tokenizer.pad_token_id)([dataset[0], dataset[1]])
    gradients = []
    for flag in (False, True):
        model, _ = build(tiny_dir, tiny_dir / "sam_tiny.pth", lora_r=4,
                         gradient_checkpointing=flag)
        model.train()
        assert model.llava.is_activation_checkpointing == flag
        model(**batch, box_targets=targets["box_targets"]).losses["total"].backward()
        gradients.append({n: p.grad.clone() for n, p in model.named_parameters()
                          if p.grad is not None})
    assert gradients[0].keys() == gradients[1].keys() and gradients[0]
    for name, grad in gradients[0].items():
        torch.testing.assert_close(gradients[1][name], grad, atol=1e-5, rtol=1e-4, msg=name)
