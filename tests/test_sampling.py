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


# --- what mutation testing showed no test held (scripts/mutation.py) ------------------------------------------------
def test_a_step_count_below_one_is_refused_with_the_count():
    with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
        student_sigmas(0)


def test_teacher_sigmas_are_computed_in_float64():
    s = torch.tensor(teacher_sigmas(7, 3.0), dtype=torch.float64)
    t = 1 - torch.tensor([1 - i * 0.999 / 7 for i in range(8)], dtype=torch.float64)
    assert torch.allclose(s, (3 * t / (1 + 2 * t)).flip(0), rtol=0, atol=1e-15)  # float32 is off by ~1e-8


def test_per_item_generators_draw_each_items_own_noise():
    from pid_sdk.sampling import noise

    gens = [torch.Generator().manual_seed(s) for s in (3, 4)]
    z = noise((2, 3, 4, 5), gens, "cpu")
    assert z.shape == (2, 3, 4, 5)
    for i, seed in enumerate((3, 4)):
        assert torch.equal(z[i:i + 1], torch.randn(1, 3, 4, 5, generator=torch.Generator().manual_seed(seed)))


def test_noise_is_float32_on_the_requested_device_whatever_the_default_dtype():
    from pid_sdk.sampling import noise

    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        assert noise((1, 2), torch.Generator().manual_seed(0), "cpu").dtype == torch.float32
    finally:
        torch.set_default_dtype(before)
    assert noise((1, 2), None, "meta").device.type == "meta"
    assert noise((2, 2), [None, None], "meta").device.type == "meta"


@pytest.mark.parametrize("sampler", [sample_student, sample_teacher])
def test_samplers_run_on_the_requested_device_and_report_every_step(sampler):
    seen, steps = [], []
    zeros = lambda x, s: (seen.append(x.device.type), torch.zeros_like(x))[1]  # noqa: E731
    sampler(zeros, (1, 3, 2, 2), steps=3, device="meta", on_step=lambda i, n: steps.append((i, n)))
    assert set(seen) == {"meta"} and steps == [(1, 3), (2, 3), (3, 3)]


def test_default_step_counts_and_teacher_defaults():
    calls = []
    count = lambda x, s: (calls.append(s), torch.zeros_like(x))[1]  # noqa: E731
    sample_student(count, (1, 3, 2, 2))
    assert calls == [0.999, 0.866, 0.634, 0.342]
    calls.clear()
    unc = []
    sample_teacher(count, (1, 3, 2, 2), uncond_fn=lambda x, s: (unc.append(s), torch.zeros_like(x))[1])
    assert calls == teacher_sigmas(50, 4.0)[:-1] and unc == []  # guidance 1.0 by default: no unconditional pass


@pytest.mark.parametrize("sampler", [sample_student, sample_teacher])
@pytest.mark.parametrize("value", [3.0, -3.0])
def test_samplers_clamp_to_minus_one_one(sampler, value):
    far = lambda x, s: (x - value) / max(s, 1e-12)  # noqa: E731  x0 = value at every step
    out = sampler(far, (1, 3, 2, 2), steps=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, torch.full((1, 3, 2, 2), math.copysign(1.0, value)))
    inside = lambda x, s: (x - 0.5) / max(s, 1e-12)  # noqa: E731
    out = sampler(inside, (1, 3, 2, 2), steps=2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, torch.full((1, 3, 2, 2), 0.5), rtol=0, atol=1e-2)  # fp32 x0 near sigma 1


def test_teacher_draws_its_noise_from_the_generator():
    fn = lambda x, s: torch.zeros_like(x)  # noqa: E731  x0 = x / (1 - s): the noise shows through
    a, b, c = (sample_teacher(fn, (1, 3, 2, 2), steps=2, generator=torch.Generator().manual_seed(s)) for s in (1, 1, 2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_ode_mode_steps_along_v_and_ends_on_the_float64_x0():
    x0 = torch.linspace(-0.5, 0.5, 12).view(1, 3, 2, 2)
    eps = torch.randn(1, 3, 2, 2, generator=torch.Generator().manual_seed(9))
    seen = []

    def line(x, sigma):  # one v everywhere: the ODE path is the straight line along it from the first noise
        seen.append(x.clone())
        return eps - x0

    sample_student(line, (1, 3, 2, 2), mode="ode", generator=torch.Generator().manual_seed(9))
    for x, sigma in zip(seen, [0.999, 0.866, 0.634, 0.342]):
        torch.testing.assert_close(x, eps + (sigma - 0.999) * (eps - x0), rtol=0, atol=1e-5)
    v = torch.randn(1, 3, 2, 2, generator=torch.Generator().manual_seed(4)) * 7
    out = sample_student(lambda x, s: v, (1, 3, 2, 2), steps=1, mode="ode", generator=torch.Generator().manual_seed(8))
    x = torch.randn(1, 3, 2, 2, generator=torch.Generator().manual_seed(8))
    assert torch.equal(out, (x.double() - v.double()).float().clamp(-1, 1))


def reference_dpmpp_2m(x, sigmas, x0_fn):
    """DPM-Solver++(2M) as its paper writes it (data prediction, D = (1 + 1/2r) x0_i - 1/2r x0_{i-1}), for flow
    models (alpha = 1 - sigma): an independent statement of what sample_teacher computes."""
    lam = [math.log((1 - s) / s) if 0 < s < 1 else None for s in sigmas]
    prev = None
    for i in range(len(sigmas) - 1):
        s, t = sigmas[i], sigmas[i + 1]
        x0 = x0_fn(x, s)
        if t == 0:
            return x0
        h = lam[i + 1] - lam[i]
        d = x0 if prev is None else (1 + 1 / (2 * ((lam[i] - lam[i - 1]) / h))) * x0 - prev / (
            2 * ((lam[i] - lam[i - 1]) / h))
        x = (t / s) * x - (1 - t) * math.expm1(-h) * d
        prev = x0
    return x


def test_teacher_is_dpm_solver_pp_2m_as_its_paper_writes_it():
    eps = torch.randn(1, 3, 2, 2, generator=torch.Generator().manual_seed(0)).double()
    c = X0[:1, :, :2, :2].double()

    def x0_of(x, sigma):  # an x0 prediction that moves with sigma and with x: the solver's path shows in the end
        return c * (1 - 3 * sigma) + 0.5 * x

    out = sample_teacher(lambda x, s: ((x.double() - x0_of(x.double(), s)) / s).float(), (1, 3, 2, 2), steps=8,
                         shift=1.0, generator=torch.Generator().manual_seed(0))
    sigmas = teacher_sigmas(8, 1.0)
    ref = reference_dpmpp_2m(eps, sigmas, x0_of)
    assert ref.abs().max() < 1  # nothing clamped away
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=1e-5)  # 1.8e-6 measured: fp32 arithmetic
    first_order = eps
    for i in range(8):  # each step alone: DPM-Solver++ of order 1, which the check must tell apart
        first_order = reference_dpmpp_2m(first_order, sigmas[i:i + 2], x0_of)
    assert (first_order - ref).abs().max() > 0.1


@pytest.mark.parametrize("sigma,guided", [(0.3, False), (0.5, True), (0.7, False)])
def test_the_guidance_interval_is_open_at_both_ends(sigma, guided):
    from pid_sdk.sampling import _data_prediction

    x = torch.randn(1, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    used = []
    _data_prediction(lambda a, s: torch.zeros_like(a), lambda a, s: (used.append(s), torch.zeros_like(a))[1], x,
                     sigma, 2.0, (0.3, 0.7))
    assert used == ([sigma] if guided else [])


@pytest.mark.parametrize("steps", [392, 784, 999])
def test_student_indices_round_half_to_even_exactly(steps):
    from fractions import Fraction

    from pid_sdk.sampling import STUDENT_SIGMAS

    halves = [i for i in range(steps + 1) if Fraction(4 * i, steps).denominator == 2]
    expected = [STUDENT_SIGMAS[round(Fraction(4 * i, steps))] for i in range(steps + 1)]
    assert student_sigmas(steps) == expected and (steps == 999 or halves)  # 392 and 784 have exact halves


def test_the_student_draws_exactly_one_noise_per_step_after_the_first():
    """The last step (to sigma 0) draws no noise: a generator shared with the caller continues where it should."""
    g = torch.Generator().manual_seed(3)
    sample_student(lambda x, s: torch.zeros_like(x), (1, 3, 2, 2), steps=4, generator=g)
    ref = torch.Generator().manual_seed(3)
    for _ in range(4):  # the starting noise and the re-noise of steps 1-3
        torch.randn(1, 3, 2, 2, generator=ref)
    assert torch.equal(torch.randn(5, generator=g), torch.randn(5, generator=ref))


@pytest.mark.parametrize("block", [1, 7, 64, 1 << 22])
def test_x0_by_blocks_of_rows_is_the_whole_float64_computation_bit_for_bit(block):
    from pid_sdk.sampling import denoised

    gen = torch.Generator().manual_seed(0)
    x, v = torch.randn(2, 3, 10, 6, generator=gen), torch.randn(2, 3, 10, 6, generator=gen) * 3
    whole = (x.double() - 0.866 * v.double()).float()
    assert torch.equal(denoised(x, v, 0.866, block=block), whole)
    assert not torch.equal((x - 0.866 * v), whole)  # float32 arithmetic rounds differently: the check can fail
