"""vspbfr_core.image: host IMAGE <-> BCHW conversions, channel layouts and input refusals."""
from __future__ import annotations

import pytest
import torch

from vspbfr_core.errors import InputError
from vspbfr_core.image import (
    RANGE_TOLERANCE, ImageLayout, check_bchw, check_image, from_host, from_signed, gray_to_rgb, rgb_to_gray, to_host,
    to_signed,
)


def test_rgb_round_trip_is_exact():
    x = torch.rand(2, 5, 7, 3)
    rgb, layout = from_host(x)
    assert rgb.shape == (2, 3, 5, 7) and layout == ImageLayout(3, None)
    assert torch.equal(rgb[:, 0], x[..., 0])
    assert torch.equal(to_host(rgb, layout), x)


def test_rgba_alpha_is_split_and_restored():
    x = torch.rand(1, 6, 4, 4)
    rgb, layout = from_host(x)
    assert rgb.shape == (1, 3, 6, 4) and layout.channels == 4
    assert torch.equal(layout.alpha[:, 0], x[..., 3])
    assert torch.equal(to_host(rgb, layout), x)


def test_rgba_alpha_follows_an_upscale():
    x = torch.rand(1, 6, 4, 4)
    rgb, layout = from_host(x)
    big = torch.nn.functional.interpolate(rgb, scale_factor=2, mode="bilinear")
    out = to_host(big, layout)
    assert out.shape == (1, 12, 8, 4)
    assert out[..., 3].min() >= 0 and out[..., 3].max() <= 1
    assert torch.allclose(out[..., 3].mean(), x[..., 3].mean(), atol=0.05)


def test_gray_is_replicated_and_reduced_with_luma():
    x = torch.rand(1, 3, 5, 1)
    rgb, layout = from_host(x)
    assert rgb.shape == (1, 3, 3, 5) and layout.channels == 1
    assert torch.equal(rgb[:, 0], rgb[:, 2])
    back = to_host(rgb, layout)
    assert back.shape == x.shape
    assert torch.allclose(back, x, atol=1e-6)
    colour = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    assert rgb_to_gray(colour).item() == pytest.approx(0.299)
    assert gray_to_rgb(torch.ones(1, 1, 2, 2)).shape == (1, 3, 2, 2)


def test_signed_range_helpers():
    x = torch.rand(1, 3, 4, 4)
    assert torch.allclose(from_signed(to_signed(x)), x, atol=1e-7)
    assert to_signed(torch.zeros(1)).item() == -1.0


def test_small_excursions_are_clamped():
    x = torch.full((1, 2, 2, 3), 0.5)
    x[0, 0, 0, 0] = 1.0 + RANGE_TOLERANCE / 2
    x[0, 1, 1, 1] = -RANGE_TOLERANCE / 2
    rgb, _ = from_host(x)
    assert rgb.max() == 1.0 and rgb.min() == 0.0


@pytest.mark.parametrize("value, hint", [(float("nan"), "NaN"), (float("inf"), "infinite"),
                                         (-float("inf"), "infinite")])
def test_non_finite_values_are_refused(value, hint):
    x = torch.rand(1, 4, 4, 3)
    x[0, 1, 2, 0] = value
    with pytest.raises(InputError, match=hint):
        from_host(x)


@pytest.mark.parametrize("x, message", [
    (torch.randint(0, 255, (1, 4, 4, 3), dtype=torch.uint8), "divide 8-bit images by 255"),
    (torch.rand(1, 4, 4, 3) * 255, "0..255"),
    (torch.rand(1, 4, 4, 3) * 2 - 1, r"\[-1, 1\]"),
    (torch.rand(4, 4, 3), "batch dimension"),
    (torch.rand(1, 3, 8, 8), "last dimension"),
    (torch.rand(1, 4, 4, 2), "last dimension"),
    (torch.zeros(1, 0, 4, 3), "empty"),
])
def test_bad_host_images_are_refused_with_a_hint(x, message):
    with pytest.raises(InputError, match=message):
        from_host(x)


def test_not_a_tensor_is_refused():
    with pytest.raises(InputError, match="torch.Tensor"):
        check_image([[0.5]])  # type: ignore[arg-type]


def test_check_bchw_spots_a_host_layout():
    with pytest.raises(InputError, match="host IMAGE"):
        check_bchw(torch.rand(1, 8, 8, 3), channels=(3,))
    assert check_bchw(torch.rand(2, 3, 4, 4), channels=(3,)).shape == (2, 3, 4, 4)


def test_half_precision_is_kept():
    x = torch.rand(1, 4, 4, 3).half()
    rgb, _ = from_host(x)
    assert rgb.dtype == torch.float16
