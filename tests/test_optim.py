"""The per-pair Adam is torch's Adam, step for step, without torch._dynamo's import."""

import subprocess
import sys

import pytest
import torch

from srnet_core.optim import SingleTensorAdam


def _run(optimiser_for, lr, steps=60):
    torch.manual_seed(0)
    target = torch.randn(2, 33, 17)
    weights = torch.rand(2, 33, 17) + 0.1
    u = torch.zeros(2, 33, 17, requires_grad=True)
    opt = optimiser_for(u, lr)
    trace = []
    for _ in range(steps):
        loss = (weights * (u - target) ** 2).sum() + 0.1 * torch.sin(3 * u).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        trace.append(u.detach().clone())
    return trace


@pytest.mark.parametrize("lr,betas", [(0.2, (0.9, 0.999)), (0.004, (0.9, 0.999)), (0.01, (0.93, 0.999))])
def test_steps_are_bit_identical_to_torch_adam(lr, betas):
    ours = _run(lambda u, lr: SingleTensorAdam(u, lr=lr, betas=betas), lr)
    theirs = _run(lambda u, lr: torch.optim.Adam([u], lr=lr, betas=betas), lr)
    assert not torch.equal(ours[0], ours[-1])
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)


def test_no_dynamo_import():
    code = ("import sys, torch\n"
            "from srnet_core.optim import SingleTensorAdam\n"
            "u = torch.zeros(4, requires_grad=True)\n"
            "opt = SingleTensorAdam(u, lr=0.1)\n"
            "for _ in range(3):\n"
            "    opt.zero_grad(); ((u - 1) ** 2).sum().backward(); opt.step()\n"
            "assert float(u[0]) > 0.2\n"
            "print('torch._dynamo' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
