"""MFU against the card's own peak (train/mfu.py): datasheet figures by device name; an unknown card gets none."""
import math

import pytest

from ftstudio.engine.train.mfu import mfu, mfu_text, peak_tflops, step_flops


@pytest.mark.parametrize("name,peak", [
    ("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H100 NVL", 835.0),
    ("NVIDIA H200", 989.0), ("NVIDIA H200 NVL", 835.0), ("NVIDIA GH200 480GB", 989.0),
    ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA A100-PCIE-40GB", 312.0), ("NVIDIA A100 80GB PCIe", 312.0),
    ("NVIDIA L40S", 362.0), ("NVIDIA L40", 181.0), ("NVIDIA L4", 121.0), ("NVIDIA A10", 125.0),
    ("NVIDIA GeForce RTX 4090", 165.2), ("NVIDIA GeForce RTX 3090", 71.0), ("NVIDIA RTX A6000", 154.8)])
def test_known_cards_get_their_datasheet_peak(name, peak):
    assert peak_tflops(name) == peak


@pytest.mark.parametrize("name", ["NVIDIA A10G", "NVIDIA GeForce RTX 4090 D", "NVIDIA GeForce RTX 3090 Ti",
                                  "Tesla V100-SXM2-16GB", "NVIDIA GB200", "", None])
def test_cards_not_in_the_table_get_no_peak_rather_than_a_neighbours(name):
    assert peak_tflops(name) is None


def test_mfu_uses_the_cards_peak_and_says_when_it_cannot():
    flops = step_flops(1_000_000_000, 16, 2048, 2048, 1) * 10_000        # 10 k tokens/s of a 1B model
    assert mfu(flops, 1.0, 989.0) == pytest.approx(flops / 989e12)
    assert mfu(flops, 1.0, 312.0) == pytest.approx(flops / 312e12)        # the A100's own peak, not the H100's
    assert math.isnan(mfu(flops, 1.0, None))
    assert mfu_text(flops, "NVIDIA A100-SXM4-80GB").startswith(f"MFU {100 * flops / 312e12:.1f} % of 312 TFLOP/s")
    assert mfu_text(flops, "NVIDIA A10G") == "unknown card (NVIDIA A10G): MFU not shown"


def test_the_old_speed_module_still_names_each_room():
    from ftstudio.engine.train import attention, compiling, in_backward, loss, offload, speed
    assert speed.causal_lm_loss is loss.training_loss and speed.compile_blocks is compiling.compile_blocks
    assert speed.choose_attention is attention.choose_attention and speed.offload_context is offload.offload_context
    assert speed.OptimizerInBackward is in_backward.OptimizerInBackward
