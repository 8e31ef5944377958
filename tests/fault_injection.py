"""Run train.py and kill it with SIGKILL at a chosen point (for the resume tests).

    FAULT=forward:N python tests/fault_injection.py <train.py flags>  # in the N-th training forward
    FAULT=save:N    python tests/fault_injection.py <train.py flags>  # half-way through writing
                                                                      # the N-th optimizer file
The point comes from the environment so that the deepspeed launcher, which puts its own
``--local_rank`` first, can start this script too.
"""
from __future__ import annotations

import io
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import train  # noqa: E402
from model.grounding_model import UMedGround  # noqa: E402


def kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def kill_in_forward(at: int) -> None:
    forward, calls = UMedGround.forward, [0]

    def counted(self, *args, **kwargs):
        if self.training:
            calls[0] += 1
            if calls[0] == at:
                kill()
        return forward(self, *args, **kwargs)

    UMedGround.forward = counted


def kill_in_save(at: int) -> None:
    save, calls = torch.save, [0]

    def half_written(obj, path, *args, **kwargs):
        if "optim_states" in str(path):
            calls[0] += 1
            if calls[0] == at:
                buffer = io.BytesIO()
                save(obj, buffer)
                Path(path).write_bytes(buffer.getvalue()[: buffer.tell() // 2])
                kill()
        return save(obj, path, *args, **kwargs)

    torch.save = half_written


if __name__ == "__main__":
    point, count = os.environ["FAULT"].split(":")
    {"forward": kill_in_forward, "save": kill_in_save}[point](int(count))
    sys.exit(train.run(sys.argv[1:]))
