import math

import pytest
import torch

from pid_sdk.model.rope import apply_rope, ntk_theta, rope_1d_angles, rope_2d_angles, rotation


def test_ntk_equals_plain_at_reference_grid():
    plain = rope_2d_angles(64, 128, 128, theta=10000, scale=16)
    ntk = rope_2d_angles(64, 128, 128, theta=10000, scale=16, ref_grid=128)
    torch.testing.assert_close(ntk, plain, rtol=0, atol=0)


def test_ntk_differs_off_reference_and_scales_each_axis():
    plain = rope_2d_angles(72, 64, 128, theta=10000, scale=16)
    ntk = rope_2d_angles(72, 64, 128, theta=10000, scale=16, ref_grid=128)
    assert not torch.equal(plain, ntk)
    # columns are at the reference (x pairs unchanged), rows are not (y pairs change)
    torch.testing.assert_close(ntk[:, 0::2], plain[:, 0::2])
    assert not torch.allclose(ntk[:, 1::2], plain[:, 1::2])
    assert ntk_theta(10000, 64, 256, 128) == pytest.approx(10000 * 2 ** (32 / 30))


def test_2d_layout_is_axial_interleaved_with_normalised_positions():
    a = rope_2d_angles(8, 3, 5, theta=100, scale=16)  # 4 pairs: x f0, y f0, x f1, y f1
    f = [1.0, 100 ** (-4 / 8)]
    row, col = 2, 4
    t = row * 5 + col
    x, y = 16.0 * col / 4, 16.0 * row / 2
    expect = torch.tensor([x * f[0], y * f[0], x * f[1], y * f[1]], dtype=torch.float64)
    torch.testing.assert_close(a[t], expect)


def test_text_rope_is_1d_over_positions():
    a = rope_1d_angles(8, 5, theta=10000)
    torch.testing.assert_close(a[3], 3 * torch.tensor([1, 10000 ** -0.25, 10000 ** -0.5, 10000 ** -0.75],
                                                      dtype=torch.float64))


def test_rotation_equals_complex_multiplication_of_pairs():
    x = torch.randn(2, 3, 6, 8)
    angles = torch.rand(6, 4, dtype=torch.float64) * 10
    out = apply_rope(x, *rotation(angles))
    z = torch.view_as_complex(x.reshape(2, 3, 6, 4, 2).contiguous())
    ref = torch.view_as_real(z * torch.polar(torch.ones_like(angles), angles).to(torch.complex64)).flatten(-2)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert out.dtype == x.dtype and math.isclose(out.norm().item(), x.norm().item(), rel_tol=1e-5)
