"""Why the training loop calls ``scaler.update()`` only after ``unscale_`` (fp16 on CUDA; shown on CPU's scaler)."""
import pytest
import torch


def test_update_without_unscale_asserts():
    # what a non-finite loss (no backward, no unscale_) used to do in the loop
    p = torch.nn.Parameter(torch.ones(3))
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(p.sum())
    with pytest.raises(AssertionError, match="No inf checks were recorded"):
        scaler.update()


def test_update_after_unscale_reads_the_inf_checks():
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale((p * float("inf")).sum()).backward()
    scaler.unscale_(opt)
    scaler.update()
    assert scaler.get_scale() == 512.0
