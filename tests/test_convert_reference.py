"""Reference-code .pth files -> canonical JSONL, without loss."""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from utils.annotations import load_annotations
from utils.convert.__main__ import main

IMAGE = "files/p10/p10000001/s50000001/aaaaaaaa.jpg"
NIH = "00000009_001.png"


def test_reference_pth_rescaled_from_640_px(tmp_path, capsys):
    for path, size in ((IMAGE, (1280, 640)), (NIH, (512, 512))):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", size, 50).save(tmp_path / path)
    pth = tmp_path / "MS_CXR_train.pth"
    torch.save({"image_paths": [IMAGE, NIH, "missing.png"],
                "bboxes": [(64, 128, 64, 32), [(0, 0, 320, 320), (320, 320, 64, 64)], (1, 1, 5, 5)],
                "phrases": ["Left effusion", ["Nodule a", "Nodule b"], "x"],
                "all_reports": [["Left effusion."], ["Nodule a. Nodule b."], ["x."]]}, pth)
    out = tmp_path / "out" / "reference.jsonl"
    code = main(["reference", "--pth", str(pth), "--image_root", str(tmp_path), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["findings"] == [{"phrase": "Left effusion", "boxes": [[128, 128, 256, 160]]}]
    assert rows[0]["patient"] == "p10000001" and rows[1]["patient"] == "9"
    assert rows[1]["findings"][1]["boxes"] == [[256, 256, 307.2, 307.2]]
    assert f"{pth}:2: missing image" in err and "missing.png" in err
    converted = load_annotations(out, tmp_path)
    direct = load_annotations(pth, tmp_path, skip_invalid=True)
    assert [f.phrase for s in converted for f in s.findings] == \
        [f.phrase for s in direct for f in s.findings]
    assert [v for s in converted for f in s.findings for b in f.boxes for v in b] == pytest.approx(
        [v for s in direct for f in s.findings for b in f.boxes for v in b])
    assert [s.report for s in converted] == [s.report for s in direct]
    strict = tmp_path / "strict.jsonl"
    assert main(["reference", "--pth", str(pth), "--image_root", str(tmp_path),
                 "--out", str(strict), "--strict"]) == 2 and not strict.exists()


def test_reference_takes_no_encoding(tmp_path, capsys):
    """A .pth holds no encoded text: --encoding would do nothing, so it is not a flag."""
    with pytest.raises(SystemExit):
        main(["reference", "--pth", str(tmp_path / "x.pth"), "--image_root", str(tmp_path),
              "--out", str(tmp_path / "out.jsonl"), "--encoding", "latin-1"])
    assert "unrecognized arguments: --encoding latin-1" in capsys.readouterr().err
