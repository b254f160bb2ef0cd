import math

import pytest
import torch

from pid_sdk.sampling import (
    dynamic_shift,
    sample_student,
    sample_teacher,
    shift_sigma,
    student_sigmas,
    teacher_sigmas,
)

X0 = torch.linspace(-0.9, 0.9, 2 * 3 * 4 * 4).view(2, 3, 4, 4)


def exact_velocity(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """The true v = eps - x0 of x = (1-sigma) x0 + sigma eps, for a known x0."""
    return (x - X0) / max(sigma, 1e-12)


@pytest.mark.parametrize("steps,expected", [
    (1, [1.0, 0.0]),
    (2, [0.999, 0.634, 0.0]),
    (3, [0.999, 0.866, 0.342, 0.0]),
    (4, [0.999, 0.866, 0.634, 0.342, 0.0]),
    (5, [0.999, 0.866, 0.634, 0.634, 0.342, 0.0]),
    (8, [0.999, 0.999, 0.866, 0.634, 0.634, 0.634, 0.342, 0.0, 0.0]),
])
def test_student_sigma_lists(steps, expected):
    assert student_sigmas(steps) == expected


def test_one_step_returns_noise_minus_v():
    seen = []

    def model_fn(x, sigma):
        seen.append(sigma)
        return x - X0  # exact v at sigma 1

    out = sample_student(model_fn, X0.shape, steps=1, generator=torch.Generator().manual_seed(0))
    assert seen == [1.0]
    torch.testing.assert_close(out, X0)


@pytest.mark.parametrize("steps", [1, 2, 4, 5, 8])
@pytest.mark.parametrize("mode", ["sde", "ode"])
def test_exact_velocity_recovers_x0(steps, mode):
    out = sample_student(exact_velocity, X0.shape, steps=steps, mode=mode, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, X0, rtol=0, atol=1e-5)


def test_sde_and_ode_agree_at_the_end_for_a_linear_model():
    a, b = sample_student(exact_velocity, X0.shape, mode="sde", generator=torch.Generator().manual_seed(2)), \
        sample_student(exact_velocity, X0.shape, mode="ode", generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_student_draws_noise_in_order_from_one_generator():
    calls = []

    def model_fn(x, sigma):
        calls.append(x.clone())
        return torch.zeros_like(x)  # x0 = x: each re-noise mixes x with fresh eps

    sample_student(model_fn, (1, 3, 2, 2), generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    first = torch.randn(1, 3, 2, 2, generator=g)
    eps = torch.randn(1, 3, 2, 2, generator=g)
    torch.testing.assert_close(calls[0], first)
    torch.testing.assert_close(calls[1], (1 - 0.866) * first + 0.866 * eps)


def test_student_clamps_and_is_reproducible():
    fn = lambda x, s: -5 * torch.ones_like(x)  # noqa: E731  x0 = x + 5 sigma, pushes above 1
    a = sample_student(fn, (1, 3, 4, 4), generator=torch.Generator().manual_seed(5))
    b = sample_student(fn, (1, 3, 4, 4), generator=torch.Generator().manual_seed(5))
    assert a.max() <= 1 and torch.equal(a, b)


def test_teacher_schedule_shift_and_dynamic_shift():
    s = teacher_sigmas(10, 4.0)
    assert len(s) == 11 and s[-1] == 0.0
    assert s[0] == pytest.approx(4 * 0.999 / (1 + 3 * 0.999))
    assert all(a > b for a, b in zip(s, s[1:]))
    assert shift_sigma(torch.tensor(0.5), 3.0).item() == pytest.approx(0.75)
    assert dynamic_shift(2048, 2048) == pytest.approx(6.0)
    assert dynamic_shift(4096, 4096) == pytest.approx(6.0 * math.sqrt(2))


@pytest.mark.parametrize("steps", [1, 2, 6])
def test_teacher_with_exact_velocity_recovers_x0(steps):
    calls = []

    def fn(x, sigma):
        calls.append(sigma)
        return exact_velocity(x, sigma)

    out = sample_teacher(fn, X0.shape, steps=steps, shift=4.0, generator=torch.Generator().manual_seed(0))
    # x0 = (x - sigma eps) / (1 - sigma) is a division, as in the official solver: fp32 rounding grows by 1/(1-sigma)
    atol = 1e-6 / (1 - teacher_sigmas(steps, 4.0)[0])
    torch.testing.assert_close(out, X0, rtol=0, atol=atol)
    assert len(calls) == steps  # the last step to sigma 0 needs no extra call


def test_dpm_solver_second_order_update_is_more_accurate_than_first_order():
    # x0(sigma) = X0 (1 - sigma/2) gives the exact flow ODE solution x = C sigma + X0 + X0 sigma ln(sigma) / 2.
    from pid_sdk.sampling import _dpmpp_update

    X = X0.double()

    def exact(c, sigma):
        return c * sigma + X + 0.5 * X * sigma * math.log(sigma)

    def x0_of(sigma):
        return X * (1 - 0.5 * sigma)

    c = torch.full_like(X, 0.7)
    prev, cur, nxt = 0.55, 0.5, 0.45
    x = exact(c, cur)
    first = _dpmpp_update(x, cur, nxt, x0_of(cur), None)
    second = _dpmpp_update(x, cur, nxt, x0_of(cur), (prev, x0_of(prev)))
    err1, err2 = (first - exact(c, nxt)).abs().max(), (second - exact(c, nxt)).abs().max()
    assert err2 < err1 / 10


def test_guidance_one_or_outside_interval_ignores_uncond():
    cond = lambda x, s: exact_velocity(x, s)  # noqa: E731
    uncond = lambda x, s: torch.zeros_like(x)  # noqa: E731
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    base = sample_teacher(cond, X0.shape, steps=3, generator=g())
    torch.testing.assert_close(sample_teacher(cond, X0.shape, steps=3, guidance=1.0, uncond_fn=uncond, generator=g()),
                               base)
    torch.testing.assert_close(sample_teacher(cond, X0.shape, steps=3, guidance=3.0, uncond_fn=uncond,
                                              interval=(0.0, 0.0), generator=g()), base)
    guided = sample_teacher(cond, X0.shape, steps=3, guidance=3.0, uncond_fn=uncond, generator=g())
    assert not torch.allclose(guided, base)


def test_guidance_is_applied_to_eps():
    # eps_cond = x + (1-s) v_c, eps_uncond = x + (1-s) v_u  -> guided eps = x + (1-s)(v_u + w (v_c - v_u))
    x = torch.randn(1, 3, 2, 2)
    from pid_sdk.sampling import _data_prediction

    vc, vu = torch.randn_like(x), torch.randn_like(x)
    x0 = _data_prediction(lambda a, s: vc, lambda a, s: vu, x, 0.5, 2.0, (0.0, 1.0))
    v = vu + 2.0 * (vc - vu)
    torch.testing.assert_close(x0, x - 0.5 * v, rtol=1e-5, atol=1e-5)
